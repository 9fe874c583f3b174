"""The server of mini_qwen_serve.py: the official `openai` client against it, bad requests, disconnects,
the bounded queue, a load test, and arena votes that mini_qwen_dpo.py trains on.

The server runs in a thread of this process (uvicorn on 127.0.0.1, a free port) over random tiny
models, so answers are gibberish but every byte goes through the real HTTP stack. One checkpoint
("eos") is edited so that greedy decoding always picks <|im_end|>: the only way to test the
`stop` finish of a random model.
"""

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MINI_DPO = Path(__file__).resolve().parents[1] / "mini_data" / "dpo"


@contextmanager
def running_server(app):
    """`app` served by uvicorn on 127.0.0.1 in a daemon thread; yields the base URL, stops on exit."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def eos_checkpoint(src: Path, dst: Path, tokenizer) -> Path:
    """A copy of a tiny model whose greedy answer is always <|im_end|>: the residual stream's
    dimension 0 is a constant 10 (embeddings) that no layer writes to, the final norm keeps only
    that dimension, and the (untied) output layer reads it for <|im_end|> alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    model.config.tie_word_embeddings = False
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0
            layer.mlp.down_proj.weight[0, :] = 0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        head.weight.zero_()
        head.weight[tokenizer.convert_tokens_to_ids("<|im_end|>"), 0] = 1.0
    model.lm_head = head
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def slots(tiny_checkpoint, tokenizer, tmp_path_factory):
    from mini_qwen.serve.engine import load_slots

    eos = eos_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("eos_ckpt"), tokenizer)
    specs = [f"sft={tiny_checkpoint}", f"dpo={tiny_checkpoint}", f"pt={tiny_checkpoint}", f"eos={eos}"]
    return load_slots(specs, log=lambda *a: None)


@pytest.fixture(scope="module")
def server(slots, tmp_path_factory):
    from mini_qwen.serve.app import create_app

    app = create_app(slots, tmp_path_factory.mktemp("votes"), max_concurrent=1, max_queue=16)
    with running_server(app) as url:
        yield url, app


def post(url: str, path: str, body, headers=None, timeout=60):
    """(status, headers, parsed JSON or text) of a POST; `body` bytes are sent as they are."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, raw, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    try:
        return resp.status, resp.headers, json.loads(data)
    except json.JSONDecodeError:
        return resp.status, resp.headers, data


def get(url: str, path: str, headers=None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    return resp.status, data


def sse_events(text: str) -> list:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def wait_idle(app, seconds: float) -> float:
    """Seconds until the engine has no running or waiting job; fails after `seconds`."""
    start = time.monotonic()
    while app.state.engine.admitted:
        assert time.monotonic() - start < seconds, f"generation still running after {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


# --------------------------------------------------------------------------- the chat format


def test_serving_renders_the_training_chat_format(tokenizer):
    from mini_qwen.chat import encode_conversations, encode_prompt, format_messages, format_prompt

    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "李白是谁？"},
                {"role": "assistant", "content": "唐代诗人。"}, {"role": "user", "content": "\n  and Du Fu?"}]
    answer = {"role": "assistant", "content": "Also a poet."}
    trained = encode_conversations(tokenizer, [messages + [answer]], max_length=512)["input_ids"][0]
    prompt = encode_prompt(tokenizer, messages)
    assert trained[:len(prompt)] == prompt  # the server's prompt ids are exactly what SFT trained on
    assert tokenizer.decode(prompt) == format_messages(messages)
    assert tokenizer.decode(trained) == format_messages(messages) + "Also a poet.<|im_end|>\n"
    assert format_messages(messages[1:2]) == format_prompt("李白是谁？")
    assert format_messages(messages[:2]) == format_prompt("李白是谁？", "You are brief.")


def _sink_output(tokenizer, ids, stop=()):
    """(emitted text, stop hit) of the streamer fed `ids` one token at a time, as generate() does."""
    import asyncio

    import torch

    from mini_qwen.serve.engine import Job, ModelSlot, Sampling, _TokenSink

    loop = asyncio.new_event_loop()
    slot = ModelSlot("m", "p", "chat", None, tokenizer)
    job = Job(slot, [], Sampling(max_tokens=1, stop=list(stop)), loop)
    pieces = []
    job.emit = lambda kind, text=None, *rest: pieces.append(text)  # collect on this thread
    sink = _TokenSink(job, set())
    sink.put(torch.tensor([[1, 2]]))  # the prompt
    for token in ids:
        sink.put(torch.tensor([token]))
        if sink.stop_hit:
            break
    sink.end()
    loop.close()
    return "".join(pieces), sink.stop_hit


def test_streamed_text_equals_the_whole_decode(tokenizer):
    text = ("李白（701年－762年），字太白 🌙🏔️ — a poet of the Tang dynasty. " * 12) + "床前明月光，疑是地上霜。"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 100  # longer than the decode window, so the kept-prefix path is exercised
    out, hit = _sink_output(tokenizer, ids)
    assert out == tokenizer.decode(ids) and not hit
    out, hit = _sink_output(tokenizer, ids, stop=["明月"])
    assert hit and out == text.split("明月")[0]


# --------------------------------------------------------------------------- OpenAI client


def test_openai_client_chat_completions_and_models(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert sorted(m.id for m in client.models.list().data) == ["dpo", "eos", "pt", "sft"]

    messages = [{"role": "user", "content": "who are you?"}]
    full = client.chat.completions.create(model="sft", messages=messages, max_tokens=6, temperature=0)
    choice = full.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant" and choice.message.content
    assert full.usage.completion_tokens == 6 and full.usage.prompt_tokens == 12  # "who are you?" in the chat format
    assert full.usage.total_tokens == 18

    chunks = list(client.chat.completions.create(model="sft", messages=messages, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: streamed and whole answers agree
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6 and sum(1 for c in chunks if c.choices) >= 3

    ended = client.chat.completions.create(model="eos", messages=messages, max_tokens=20, temperature=0)
    assert ended.choices[0].finish_reason == "stop" and ended.choices[0].message.content == ""
    assert ended.usage.completion_tokens == 1  # the <|im_end|> itself
    streamed = list(client.chat.completions.create(model="eos", messages=messages, max_tokens=20, stream=True))
    assert streamed[-1].choices[0].finish_reason == "stop"

    # a stop string ends the answer before it, with finish_reason "stop"
    long = client.chat.completions.create(model="sft", messages=messages, max_tokens=12, temperature=0)
    cut_at = long.choices[0].message.content[3:6]
    cut = client.chat.completions.create(model="sft", messages=messages, max_tokens=12, temperature=0, stop=[cut_at])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == long.choices[0].message.content.split(cut_at)[0]


def test_openai_client_completions_for_pt(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.completions.create(model="pt", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert out.choices[0].finish_reason == "length" and out.choices[0].text
    assert out.usage.prompt_tokens == 4 and out.usage.completion_tokens == 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="pt", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == out.choices[0].text
    with pytest.raises(openai.BadRequestError, match="PT model"):
        client.chat.completions.create(model="pt", messages=[{"role": "user", "content": "hi"}], max_tokens=3)


# --------------------------------------------------------------------------- bad input

BAD = [  # (path, body, status, words the message must contain)
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/chat/completions", {"model": "sft"}, 400, "missing 'messages'"),
    ("/v1/chat/completions", {"model": "sft", "messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ("/v1/chat/completions", {"model": "sft", "messages": []}, 400, "'messages' must be a non-empty list"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "robot", "content": "hi"}]}, 400,
     "messages[0].role is \"robot\""),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content must be a string"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "'gpt-4' does not exist"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "'model' must be one of"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
     400, "'max_tokens' must be at least 1"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999},
     400, "context of 4096"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4090},
     400, "ask for at most 4087"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"},
     400, "'max_tokens' must be an integer"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
     400, "'temperature' must be a number"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "top_p": 0},
     400, "'top_p' must be > 0"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
     400, "'stream' must be true or false"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "stop": 3},
     400, "'stop' must be"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "n": 2},
     400, "'n' must be"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "a"},
                                                           {"role": "system", "content": "b"}]},
     400, "system message after the start"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "assistant", "content": "hi"}]}, 400,
     "alternate user / assistant"),
    ("/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "word " * 5000}]}, 400,
     "tokens long but model 'sft' has a context of 4096"),
    ("/v1/completions", {"model": "pt"}, 400, "missing 'prompt'"),
    ("/v1/completions", {"model": "pt", "prompt": ["a", "b"]}, 400, "'prompt' must be a string"),
    ("/v1/nothing", {}, 404, "no route POST /v1/nothing"),
]


@pytest.mark.parametrize("path,body,status,words", BAD, ids=[f"{i}-{b[3][:24]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_one_openai_error(server, path, body, status, words):
    url, _ = server
    got, _, data = post(url, path, body)
    assert got == status, data
    assert isinstance(data, dict) and set(data["error"]) == {"message", "type", "param", "code"}, data
    assert words in data["error"]["message"], data["error"]["message"]
    assert "Traceback" not in json.dumps(data)


def test_long_prompt_error_says_both_lengths(server):
    url, _ = server
    _, _, data = post(url, "/v1/chat/completions",
                      {"model": "sft", "messages": [{"role": "user", "content": "word " * 5000}]})
    message = data["error"]["message"]
    assert data["error"]["code"] == "context_length_exceeded"
    assert "the prompt is 50" in message and "4096 tokens" in message  # 5000 words + chat headers


def test_api_key(slots, tmp_path):
    openai = pytest.importorskip("openai")
    from mini_qwen.serve.app import create_app

    with running_server(create_app(slots, tmp_path / "votes", api_key="s3cret")) as url:
        body = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, _, data = post(url, "/v1/chat/completions", body, headers)
            assert status == 401 and data["error"]["type"] == "authentication_error"
        assert get(url, "/v1/models")[0] == 401
        assert post(url, "/v1/chat/completions", body, {"Authorization": "Bearer s3cret"})[0] == 200
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert len(client.models.list().data) == 4
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
        assert get(url, "/")[0] == 200  # the page itself holds no model: it asks for the key


# --------------------------------------------------------------------------- disconnects, queue, load


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_the_generation(server, stream):
    """4000 tokens take the tiny model ~40 s on 2 cores; a client that leaves frees the worker in ~1 s."""
    url, app = server
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000,
                       "stream": stream, "temperature": 0}).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    if stream:
        seen = b""
        while b"chat.completion.chunk" not in seen:  # the answer has started
            data = sock.recv(4096)
            assert data, "the server closed the stream"
            seen += data
    else:
        deadline = time.monotonic() + 10
        while not app.state.engine.admitted and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
    assert app.state.engine.admitted == 1
    sock.close()
    assert wait_idle(app, 8) < 8
    ok = post(url, "/v1/chat/completions", {"model": "sft", "messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 2})
    assert ok[0] == 200


def test_full_queue_answers_503_with_retry_after(slots, tmp_path):
    from mini_qwen.serve.app import create_app

    app = create_app(slots, tmp_path / "votes", max_concurrent=1, max_queue=1)
    with running_server(app) as url:
        body = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60}
        results = []
        threads = [threading.Thread(target=lambda: results.append(post(url, "/v1/chat/completions", body)))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = sorted(r[0] for r in results)
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}, statuses
        busy = next(r for r in results if r[0] == 503)
        assert int(busy[1]["Retry-After"]) >= 1 and busy[2]["error"]["code"] == "overloaded"
        wait_idle(app, 10)
        assert post(url, "/v1/chat/completions", body)[0] == 200  # and the server is still up


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_load_many_clients_stream_and_not(server):
    """3 rounds x 20 requests from 8 concurrent clients: every one completes or gets a clean 503, and the
    process's memory does not grow from round to round."""
    url, app = server
    rss = []
    finishes = []

    def client(round_, jobs, lock, results):
        """Take request numbers from `jobs` until none is left; append each request's finish to `results`."""
        while True:
            with lock:
                if not jobs:
                    return
                i = jobs.pop()
            stream = i % 2 == 0
            body = {"model": ("sft", "dpo")[i % 3 == 0], "max_tokens": 8, "stream": stream, "temperature": 0.8,
                    "messages": [{"role": "user", "content": f"question {round_}-{i}"}]}
            status, _, data = post(url, "/v1/chat/completions", body, timeout=120)
            if status == 200 and stream:
                events = sse_events(data)
                assert events[-1] == "[DONE]"
                finish = json.loads(events[-2])["choices"][0]["finish_reason"]
            elif status == 200:
                finish = data["choices"][0]["finish_reason"]
            else:
                assert status == 503 and data["error"]["code"] == "overloaded", (status, data)
                finish = "503"
            with lock:
                results.append(finish)

    for round_ in range(3):
        jobs, lock, results = list(range(20)), threading.Lock(), []
        threads = [threading.Thread(target=client, args=(round_, jobs, lock, results)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert len(results) == 20 and set(results) <= {"length", "stop", "503"}, results
        finishes += results
        wait_idle(app, 10)
        rss.append(_rss_mb())
    print(f"RSS after each round (MB): {[round(r) for r in rss]}")
    assert finishes.count("503") == 0  # 8 clients never exceed 1 running + 16 waiting
    assert get(url, "/health")[0] == 200
    assert rss[2] - rss[1] < 40, f"memory grew {rss[2] - rss[1]:.0f} MB between rounds 2 and 3 ({rss})"


# --------------------------------------------------------------------------- arena -> DPO


def battle(url: str, winner: str, prompt: str) -> dict:
    status, _, made = post(url, "/arena/battles", {"prompt": prompt, "max_tokens": 8, "temperature": 1.0,
                                                   "models": ["sft", "dpo"]})
    assert status == 200, made
    for side in ("a", "b"):
        status, _, text = post(url, f"/arena/battles/{made['id']}/{side}", {})
        assert status == 200 and sse_events(text)[-1] == "[DONE]"
        assert json.loads(sse_events(text)[1])["model"] == f"model {side.upper()}"  # the name stays hidden
    status, _, voted = post(url, f"/arena/battles/{made['id']}/vote", {"winner": winner})
    assert status == 200, voted
    return voted


def test_arena_votes_train_dpo(server, tiny_checkpoint, tmp_path):
    url, app = server
    votes = app.state.votes
    # errors first: unknown battle, a vote before the answers, a bad winner
    assert post(url, "/arena/battles/battle-nope/vote", {"winner": "a"})[0] == 404
    _, _, made = post(url, "/arena/battles", {"prompt": "hi", "max_tokens": 4, "temperature": 1.0})
    status, _, data = post(url, f"/arena/battles/{made['id']}/vote", {"winner": "a"})
    assert status == 409 and "not finished" in data["error"]["message"]
    assert post(url, f"/arena/battles/{made['id']}/vote", {"winner": "left"})[0] == 400
    assert post(url, "/arena/battles", {"prompt": "  "})[0] == 400

    first = battle(url, "a", "李白是谁？")
    assert set(first["models"].values()) == {"sft", "dpo"}  # revealed after the vote
    battle(url, "b", "tell me a story")
    battle(url, "tie", "绿豆糕")
    assert votes.counts() == {"pairs": 2, "ties": 1}

    # the file has the column types of the Infinity-Preference data DPO already reads
    table = pq.read_table(votes.path)
    reference = pq.read_schema(next(MINI_DPO.glob("*.parquet")))
    for name in ("prompt", "chosen", "rejected"):
        assert table.schema.field(name).type == reference.field(name).type
    row = table.to_pylist()[0]
    assert row["prompt"] == "李白是谁？" and row["chosen"][0] == {"content": "李白是谁？", "role": "user"}
    assert row["chosen_model"] == first["models"]["a"] and row["chosen"][1]["role"] == "assistant"

    # concurrent votes (the store itself, 8 threads): none lost, the file stays readable
    threads = [threading.Thread(target=votes.add, args=(f"q{i}", None, {"a": f"yes {i}", "b": f"no {i}"},
                                                        {"a": "sft", "b": "dpo"}, "a")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert votes.counts()["pairs"] == 10
    assert sorted(r["prompt"] for r in pq.read_table(votes.path).to_pylist()[2:]) == [f"q{i}" for i in range(8)]

    from mini_qwen_dpo import main

    trainer = main(["--model_name_or_path", str(tiny_checkpoint), "--data_dir", str(votes.folder),
                    "--output_dir", str(tmp_path / "dpo"), "--max_length", "64", "--max_prompt_length", "32",
                    "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_steps", "2",
                    "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--learning_rate",
                    "1e-4", "--precompute_ref_log_probs", "true", "--seed", "0"])
    assert trainer.state.global_step == 2
    assert len(trainer.train_dataset) == 10  # every recorded pair is trainable, the tie is not among them
    assert (tmp_path / "dpo" / "model.safetensors").is_file()


def test_page_is_offline(server):
    url, _ = server
    status, html = get(url, "/")
    assert status == 200 and 'id="mode-arena"' in html
    for asset in ("/static/app.js", "/static/style.css"):
        code, text = get(url, asset)
        assert code == 200 and "http://" not in text and "https://" not in text  # no CDN, no external font
    assert "https://" not in html and "http://" not in html


# --------------------------------------------------------------------------- the script


def test_script_flags_and_paths_fail_with_one_message(tiny_checkpoint, tmp_path):
    from mini_qwen.cli import parse_args
    from mini_qwen.errors import MiniQwenError
    from mini_qwen_serve import ServeArguments, main

    (args,) = parse_args((ServeArguments,), ["a", "--port", "1", "b=c", "--checkpoints", "d"], positional="checkpoints")
    assert args.checkpoints == ["a", "b=c", "d"] and args.port == 1
    with pytest.raises(MiniQwenError, match="unknown checkpoint path 'nope/sft'"):
        main(["nope/sft"])
    with pytest.raises(MiniQwenError, match="used twice"):
        main(["--checkpoints", f"x={tiny_checkpoint}", f"x={tiny_checkpoint}"])
    with pytest.raises(MiniQwenError, match=r"--port 70000 is out of range: allowed at least 1 and at most 65535"):
        main([str(tiny_checkpoint), "--port", "70000"])
    with pytest.raises(MiniQwenError, match=r"--temperature 3 is out of range: allowed at least 0 and at most 2"):
        main([str(tiny_checkpoint), "--temperature", "3"])
    with pytest.raises(MiniQwenError, match=r"--max_concurrent 0 is out of range: allowed at least 1"):
        main([str(tiny_checkpoint), "--max_concurrent", "0"])
    with pytest.raises(MiniQwenError, match="unknown argument"):
        main([str(tiny_checkpoint), "--max_token", "5"])
    (tmp_path / "votes").mkdir()
    (tmp_path / "votes" / "votes.parquet").write_bytes(b"not parquet")
    from mini_qwen.serve.votes import VoteStore

    with pytest.raises(MiniQwenError, match="cannot read"):
        VoteStore(tmp_path / "votes")


def test_script_serves_and_prints_the_url(tiny_checkpoint, tmp_path):
    """`python mini_qwen_serve.py <checkpoint>` as a user runs it: prints the URL, answers, stops on SIGINT."""
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(root / "mini_qwen_serve.py"), f"sft={tiny_checkpoint}", "--port",
                             str(port), "--votes_dir", str(tmp_path / "votes"), "--max_tokens", "4"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the server exited:\n" + "".join(lines)
            lines.append(line)
            if line.startswith("serving"):
                break
        assert f"http://127.0.0.1:{port}/" in lines[-1], lines
        status, _, data = post(f"http://127.0.0.1:{port}", "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "hi"}]})  # one model: `model` optional
        assert status == 200 and data["usage"]["completion_tokens"] == 4  # --max_tokens is the default
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_models_load_on_the_gpu_and_answer(tiny_checkpoint, tmp_path):
    from mini_qwen.serve.app import create_app
    from mini_qwen.serve.engine import load_slots

    slots = load_slots([f"sft={tiny_checkpoint}"], log=lambda *a: None)  # no --device: the GPU when there is one
    assert next(slots["sft"].model.parameters()).device.type == "cuda"
    with running_server(create_app(slots, tmp_path / "votes")) as url:
        status, _, data = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                             "max_tokens": 8, "temperature": 0})
        assert status == 200 and data["usage"]["completion_tokens"] == 8, data
