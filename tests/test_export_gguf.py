"""utils/export_gguf.py and mini_qwen/export.py: the GGUF written by llama.cpp's own converter, run by llama.cpp.

The tiny model is first trained to fit a few conversations and texts, so that its greedy continuations are
confident (a random model's near-uniform logits would make argmax a coin toss for any runtime). Then, for
f16: llama.cpp's greedy tokens equal transformers' for 16 tokens on every prompt, and the next-token
log-probabilities agree (NMSE < 1e-3, llama.cpp's own measure). The chat template in the file renders,
through llama.cpp's C API and through llama-cpp-python's chat handler, the ids mini_qwen/chat.py trains on,
and a chat completion stops at <|im_end|>.

These tests need requirements-export.txt (`bash setup.sh test` installs it). Without it they are skipped on a
developer's machine and fail under CI (CI=true), so a broken llama.cpp build can never pass unnoticed.
"""

import ctypes
import importlib.util
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mini_qwen.chat import CHATML_TEMPLATE, encode_conversations, encode_prompt, format_messages
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.export import (
    GOOD_NMSE,
    LLAMA_CPP_PYTHON_VERSION,
    compare_gguf,
    export_gguf,
    modelfile_text,
)
from mini_qwen.llama_child import load_llama, run_llama_cpp

REPO_ROOT = Path(__file__).resolve().parents[1]
_export_script = runpy.run_path(str(REPO_ROOT / "utils" / "export_gguf.py"), run_name="export_gguf")
_export_main, _verify = _export_script["main"], _export_script["verify"]
MISSING = [name for name in ("llama_cpp", "sentencepiece") if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="module")
def export_extra():
    if MISSING:
        why = f"{', '.join(MISSING)} not installed: pip install -r requirements-export.txt (bash setup.sh test does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the GGUF export tests, but {why}")
        pytest.skip(why)


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris, a city on the river Seine known for the "
                                      "Eiffel Tower and the Louvre museum."}],
    [{"role": "user", "content": "你好，请介绍一下你自己。"},
     {"role": "assistant", "content": "你好！我是一个从零开始训练的小型语言模型，"
                                      "可以回答简单的问题，也可以和你聊天。"}],
    [{"role": "system", "content": "You are a careful math tutor."},
     {"role": "user", "content": "1+1等于几？"},
     {"role": "assistant", "content": "1+1等于2。这是最基本的加法：把一个东西和另一个东西放在一起，就有两个东西。"}],
    [{"role": "user", "content": "Name three colors."},
     {"role": "assistant", "content": "Red, green and blue are three colors; mixed as light they make white, and "
                                      "they are the primaries of screens."},
     {"role": "user", "content": "And three fruits?"},
     {"role": "assistant", "content": "Apples, bananas and oranges are three fruits that people eat all over the "
                                      "world, fresh or in juice."}],
]
TEXTS = ["The quick brown fox jumps over the lazy dog, and then it runs into the forest to find its friends before "
         "the night comes.",
         "人工智能是计算机科学的一个分支，它研究如何让机器像人一样思考、学习和解决问题。"]


def _prompts(tokenizer) -> list[list[int]]:
    """Every conversation up to its last answer (the chat prompt) and the head of each text."""
    chats = [encode_prompt(tokenizer, conv[:-1]) for conv in CONVERSATIONS]
    texts = [tokenizer(t, add_special_tokens=False)["input_ids"][:6] for t in TEXTS]
    return chats + texts


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, tokenizer, tiny_checkpoint):
    """The tiny model fitted to CONVERSATIONS and TEXTS (a plain AdamW loop, 150 steps: loss ~0.15), saved with
    the tokenizer: a stand-in for an SFT output whose greedy answers are real text, not ties or loops."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    seqs = encode_conversations(tokenizer, CONVERSATIONS, 512)["input_ids"]
    seqs += [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in TEXTS]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], labels[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), torch.tensor(s), 1
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), fused=True)
    targets = labels[:, 1:][mask[:, 1:] == 1]
    for _ in range(150):
        # the 152K-token output layer is most of the cost: project the real positions only, not the padding
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][mask[:, 1:] == 1]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5, f"the tiny model did not fit its training texts (loss {loss.item():.2f})"
    out = tmp_path_factory.mktemp("trained_ckpt")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def exported(export_extra, trained_checkpoint, tmp_path_factory):
    """{type: (gguf, Modelfile)} for f16 and q8_0."""
    out = tmp_path_factory.mktemp("gguf")
    return {t: export_gguf(trained_checkpoint, out / t / f"model-{t}.gguf", t) for t in ("f16", "q8_0")}


@pytest.fixture(scope="module")
def hf_model(trained_checkpoint):
    from mini_qwen.generate import load_for_inference

    return load_for_inference(trained_checkpoint, device="cpu")[0]


def _chat_probe(gguf: str, conversations: list[list[dict]]) -> dict:
    """Run in the llama.cpp child (run_llama_cpp): the chat template in the file and, for each conversation, the
    prompt as llama.cpp's C API renders it (text and ids) and the ids llama-cpp-python's chat handler renders;
    then a greedy chat completion of the first conversation."""
    llm = load_llama(gguf)
    try:
        template = llm.metadata["tokenizer.chat_template"]
        handler = llm._chat_handlers[llm.chat_format]  # what create_chat_completion formats with
        rendered = []
        for messages in conversations:
            by_c_api = _chat_apply_template_c_api(template, messages)
            ids = llm.tokenize(by_c_api.encode(), add_bos=True, special=True)
            rendered.append({"c_api": by_c_api, "c_api_ids": ids,
                             "handler_ids": _render_with_handler(handler, llm, messages)})
        reply = llm.create_chat_completion(messages=conversations[0], temperature=0.0, repeat_penalty=1.0,
                                           max_tokens=64)
        return {"template": template, "chat_format": llm.chat_format, "rendered": rendered,
                "reply": reply["choices"][0]}
    finally:
        llm.close()


@pytest.fixture(scope="module")
def llama_chat(exported):
    """_chat_probe on the f16 file, run in a child process as every llama.cpp call here is."""
    return run_llama_cpp(f"{__file__}:_chat_probe", exported["f16"][0],
                         conversations=[conv[:-1] for conv in CONVERSATIONS])


def test_the_pin_is_the_converter_and_the_runtime(export_extra):
    import llama_cpp

    pins = dict(re.findall(r"^([\w-]+)==(\S+)", (REPO_ROOT / "requirements-export.txt").read_text(), re.M))
    assert pins["llama-cpp-python"] == LLAMA_CPP_PYTHON_VERSION == llama_cpp.__version__


def test_f16_gives_the_same_greedy_tokens_and_log_probabilities(hf_model, exported, tokenizer):
    results = compare_gguf(hf_model, exported["f16"][0], _prompts(tokenizer), new_tokens=16)
    for r in results:
        print(f"f16: same {r.same_prefix}/16, log-prob NMSE {r.logprob_nmse:.2e}: {tokenizer.decode(r.prompt_ids)!r}")
        assert r.llama_cpp_ids == r.transformers_ids, tokenizer.decode(r.prompt_ids)
        assert r.logprob_nmse < 1e-3
    # real text, not a loop of one token: the first answer is the fitted one, and every continuation varies
    answer = tokenizer(CONVERSATIONS[0][-1]["content"], add_special_tokens=False)["input_ids"]
    assert results[0].llama_cpp_ids == answer[:16]
    assert all(len(set(r.llama_cpp_ids)) >= 8 for r in results)


def test_q8_0_log_probabilities_stay_close(exported, hf_model, tokenizer):
    results = compare_gguf(hf_model, exported["q8_0"][0], _prompts(tokenizer), new_tokens=16)
    worst = max(r.logprob_nmse for r in results)
    same = sum(r.same_prefix for r in results)
    print(f"q8_0: log-prob NMSE worst {worst:.2e}; same greedy tokens {same}/{16 * len(results)}")
    assert worst < GOOD_NMSE


def test_a_crash_in_llama_cpp_is_one_error_and_the_caller_lives_on(exported, trained_checkpoint, tmp_path,
                                                                    monkeypatch, capsys):
    """llama.cpp's decode made to die of SIGSEGV (as its AMX kernels do on some CPUs, upstream issue 20824): the
    verify step ends in one `error:` line naming the signal, the file and the README section, exit 2, and this
    pytest process goes on. The fault is planted with a sitecustomize, so it hits only interpreters started from
    here on: the llama.cpp child, never this process."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\n"
        "import llama_cpp._internals\n"
        "llama_cpp._internals.LlamaContext.decode = lambda *_: os.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    gguf = exported["q8_0"][0]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda _: _verify(str(trained_checkpoint), gguf, None, 4))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert re.fullmatch(rf"error: llama.cpp crashed with SIGSEGV \(signal 11\) while running greedy and logits on "
                        rf"{re.escape(str(gguf))}; it ran in a child process, .* What to do: README.md, 'Run it "
                        rf"elsewhere' \(a crash in llama.cpp on CPUs with AMX\)\. Its last output:", lines[0]), err
    assert "Fatal Python error: Segmentation fault" in err  # the child's own report, passed on
    assert gguf.is_file()


def test_the_command_line_exports_and_verifies(trained_checkpoint, export_extra, tmp_path, capsys):
    out = tmp_path / "model.gguf"
    assert _export_main([str(trained_checkpoint), "--out", str(out), "--verify", "true"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"verify: passed \(worst NMSE \S+ < 0.01; same greedy tokens 64/64\)", printed), printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "model.gguf"]


def test_the_q8_0_file_is_smaller(exported):
    assert exported["q8_0"][0].stat().st_size < 0.75 * exported["f16"][0].stat().st_size


def _chat_apply_template_c_api(template: str, messages: list[dict]) -> str:
    """llama.cpp's own C function (what llama-cli and llama-server without --jinja use)."""
    import llama_cpp

    kept = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(kept))(*[llama_cpp.llama_chat_message(r, c) for r, c in kept])
    size = 4096
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(kept), True, buf, size)
    assert 0 < n <= size, f"llama_chat_apply_template returned {n}"
    return buf.raw[:n].decode()


def test_the_chat_template_in_the_file_renders_the_training_ids(llama_chat, tokenizer):
    assert llama_chat["template"] == CHATML_TEMPLATE
    formatter = llama_chat["chat_format"]  # the Jinja formatter llama-cpp-python built from the file
    assert formatter == "chat_template.default", f"llama-cpp-python guessed {formatter} instead"
    for conv, rendered in zip(CONVERSATIONS, llama_chat["rendered"], strict=True):
        messages = conv[:-1]
        want = encode_prompt(tokenizer, messages)
        assert rendered["c_api"] == format_messages(messages)
        assert rendered["c_api_ids"] == want
        assert rendered["handler_ids"] == want


def _render_with_handler(handler, llm, messages) -> list[int]:
    """The prompt ids llama-cpp-python's chat handler hands to its completion call (captured there)."""
    seen = {}

    def capture(**kwargs):
        seen.update(kwargs)
        raise StopIteration  # nothing to generate: only the prompt is wanted

    original, llm.create_completion = llm.create_completion, capture
    try:
        handler(llama=llm, messages=messages, max_tokens=1)
    except StopIteration:
        pass
    finally:
        llm.create_completion = original
    return list(seen["prompt"])


def test_a_chat_completion_answers_as_transformers_and_stops_at_im_end(llama_chat, hf_model, tokenizer):
    import torch

    messages = CONVERSATIONS[0][:-1]
    reply = llama_chat["reply"]
    prompt = encode_prompt(tokenizer, messages)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False,
                                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    expected = tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
    assert reply["finish_reason"] == "stop"
    assert reply["message"]["content"] == expected


def test_the_modelfile_points_at_the_gguf_with_the_chatml_template(exported):
    gguf, modelfile = exported["f16"]
    assert modelfile == gguf.parent / "Modelfile"
    text = modelfile.read_text()
    source = re.search(r"^FROM (.+)$", text, re.M).group(1)
    assert (modelfile.parent / source).resolve() == gguf.resolve()
    assert 'PARAMETER stop "<|im_end|>"' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    # Go template of Ollama: each message as <|im_start|>role\ncontent<|im_end|>\n, then the assistant header
    assert template == ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                        "<|im_start|>assistant\n")


def test_a_modelfile_elsewhere_points_back_at_the_gguf(tmp_path):
    gguf = tmp_path / "out" / "model.gguf"
    modelfile = tmp_path / "ollama" / "Modelfile"
    source = re.search(r"^FROM (.+)$", modelfile_text(gguf, modelfile), re.M).group(1)
    assert source == str(Path(os.pardir) / "out" / "model.gguf")  # relative to the Modelfile's folder


# --------------------------------------------------------------------------- bad input: one message, nothing left


def _copy_without(src: Path, dst: Path, *names: str) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return dst


def test_a_checkpoint_without_tokenizer_is_refused(tiny_checkpoint, tmp_path):
    bare = _copy_without(tiny_checkpoint, tmp_path / "bare", "tokenizer*", "vocab.json", "merges.txt",
                         "chat_template.jinja")
    with pytest.raises(MiniQwenError, match=r"no tokenizer files.*--tokenizer_path models/tokenizer"):
        export_gguf(bare, tmp_path / "out" / "model.gguf")
    assert not (tmp_path / "out").exists()


def test_an_adapter_folder_is_refused_with_the_merge_command(tmp_path):
    adapter = tmp_path / "sft_lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(MiniQwenError, match=r"LoRA adapter.*python utils/merge_lora.py"):
        export_gguf(adapter, tmp_path / "model.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft_lora"]


@pytest.mark.parametrize("where", ["out_under_a_file", "out_a_folder", "modelfile_a_folder"])
def test_an_unwritable_output_is_refused_before_converting(tiny_checkpoint, tmp_path, where):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    out, modelfile = tmp_path / "model.gguf", None
    if where == "out_under_a_file":
        out = tmp_path / "notes.txt" / "model.gguf"
    elif where == "out_a_folder":
        out = tmp_path / "folder"
    else:
        modelfile = tmp_path / "folder"
    with pytest.raises(MiniQwenError, match=r"^(cannot write --out '.*': '.*notes.txt' is a file, not a folder"
                                            r"|--(out|modelfile) '.*folder' is a folder: give the file to write)"):
        export_gguf(tiny_checkpoint, out, modelfile=modelfile)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "notes.txt"]
    assert not any((tmp_path / "folder").iterdir())


def test_the_command_line_prints_one_error_line(tmp_path):
    adapter = tmp_path / "dpo_lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "utils" / "export_gguf.py"), str(adapter), "--out",
                           str(tmp_path / "model.gguf")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: '{adapter}' is a LoRA adapter (adapter_config.json), not a full model: merge it first with "
        f"`python utils/merge_lora.py {adapter} --out <merged dir>` and export the merged folder."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo_lora"]


def test_a_bad_type_is_one_message(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _export_main([str(tiny_checkpoint), "--out", str(tmp_path / "m.gguf"), "--type", "q4_k"])
    assert exit_info.value.code == 2
    assert re.search(r"argument --type: invalid choice: 'q4_k' \(choose from '?f16'?, '?q8_0'?\)",
                     capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


def test_a_failed_conversion_leaves_nothing(export_extra, tiny_checkpoint, tmp_path):
    broken = _copy_without(tiny_checkpoint, tmp_path / "broken", "tokenizer.json")
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    out_dir = tmp_path / "out"
    with pytest.raises(MiniQwenError, match=r"convert_hf_to_gguf.py failed on"):
        export_gguf(broken, out_dir / "model.gguf")
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- the llama.cpp child


def _hang(gguf: str) -> None:
    time.sleep(600)


def _die_of(gguf: str, signal_number: int) -> None:
    os.kill(os.getpid(), signal_number)


def _arrays(gguf: str) -> dict:
    import numpy as np

    return {"rows": [np.arange(6, dtype=np.float32).reshape(2, 3)], "n": np.int64(3), "file": gguf}


def test_the_child_passes_back_json_and_arrays(tmp_path):
    import numpy as np

    got = run_llama_cpp(f"{__file__}:_arrays", tmp_path / "m.gguf")
    assert got["n"] == 3 and got["file"] == str(tmp_path / "m.gguf")
    np.testing.assert_array_equal(got["rows"][0], np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("signal_number", [signal.SIGSEGV, signal.SIGABRT], ids=["SIGSEGV", "SIGABRT"])
def test_a_child_killed_by_a_signal_is_named(tmp_path, signal_number):
    with pytest.raises(MiniQwenError, match=rf"^llama.cpp crashed with {signal_number.name} \(signal "
                                            rf"{int(signal_number)}\) while running die of on .*m.gguf; .*README.md"):
        run_llama_cpp(f"{__file__}:_die_of", tmp_path / "m.gguf", signal_number=int(signal_number))


def test_a_hung_child_is_stopped_at_the_timeout(tmp_path):
    start = time.monotonic()
    with pytest.raises(MiniQwenError, match=r"^llama.cpp did not finish hang on .*m.gguf within 3 s; it was stopped"):
        run_llama_cpp(f"{__file__}:_hang", tmp_path / "m.gguf", timeout=3)
    assert time.monotonic() - start < 30
