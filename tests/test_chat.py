"""SFT labels: exactly the assistant answers (+ their <|im_end|>) are trained; truncation keeps answers; the chat
template saved with every SFT / DPO checkpoint renders the ids they train on."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BAAI_SAMPLES, FAST_TRAIN_FLAGS, MINI_DATA, OFFICIAL_TOKENIZER

from mini_qwen.chat import IGNORE, BadConversation, ChatTokens, build_example, encode_conversations, normalize_messages
from mini_qwen.data.checks import find_stage_files
from mini_qwen.data.sft import build_dataset
from mini_qwen.errors import MiniQwenError


def expected_trainable(tokenizer, messages):
    """The ids that must be trainable: each assistant content's own tokens, then <|im_end|>."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for m in messages:
        if m["role"] == "assistant":
            out += tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [im_end]
    return out


def check_labels(tokenizer, messages, ids, labels):
    assert len(ids) == len(labels)
    trainable = [t for t, lab in zip(ids, labels) if lab != IGNORE]
    assert all(lab in (IGNORE, t) for t, lab in zip(ids, labels))
    assert trainable == expected_trainable(tokenizer, messages)
    # and the text is the Qwen chat format
    text = tokenizer.decode(ids)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert text == expected


MULTI = [{"from": "system", "value": "You are mini_qwen."},
         {"from": "human", "value": "李白是谁？"}, {"from": "gpt", "value": "李白是唐代诗人，被称为诗仙。"},
         {"from": "human", "value": "who are you?\n"}, {"from": "gpt", "value": "\nI am mini_qwen.\n\nNice."},
         {"from": "human", "value": "tell me a story"}, {"from": "gpt", "value": "Once upon a time..."}]


def test_crafted_multi_turn_labels(tokenizer):
    messages = normalize_messages(MULTI)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"] * 1 + ["user", "assistant"] * 2
    out = encode_conversations(tokenizer, [messages], max_length=1024)
    check_labels(tokenizer, messages, out["input_ids"][0], out["labels"][0])
    # the answer-opening "\n" inside an answer is trained, the header's "\n" is not
    first = normalize_messages(MULTI, first_turn_only=True)
    assert len(first) == 3
    out = encode_conversations(tokenizer, [first], max_length=1024)
    check_labels(tokenizer, first, out["input_ids"][0], out["labels"][0])


def test_real_7m_and_gen_rows_label_exactly(tokenizer):
    dataset, stats = build_dataset(find_stage_files("sft", str(BAAI_SAMPLES / "sft")), tokenizer,
                                   max_length=100_000, log=lambda *_: None)
    assert stats["rows"] == 200 and stats["trained"] == 200 and stats["truncated"] == 0
    raw = []
    for sub in ("7M", "Gen"):  # the loader reads files in sorted path order
        for f in sorted((BAAI_SAMPLES / "sft" / sub).glob("*.parquet")):
            raw += pq.read_table(f, columns=["conversations"]).column(0).to_pylist()
    multi = 0
    for conv, row in zip(raw, dataset):
        messages = normalize_messages(conv)
        multi += len(messages) > 2
        check_labels(tokenizer, messages, row["input_ids"], row["labels"])
    assert multi >= 5  # the samples include multi-turn rows


def test_truncation_keeps_answer_tokens(tokenizer):
    ct = ChatTokens.of(tokenizer)
    long_question = {"role": "user", "content": "很长的问题。" * 200}
    answer = {"role": "assistant", "content": "短回答。"}
    msgs = [long_question, answer]
    content = [tokenizer(m["content"], add_special_tokens=False)["input_ids"] for m in msgs]
    ids, labels, truncated = build_example(ct, msgs, content, max_length=64)
    assert truncated and len(ids) == 64
    assert [t for t, lab in zip(ids, labels) if lab != IGNORE] == expected_trainable(tokenizer, [answer])
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n短回答。<|im_end|>\n")
    assert tokenizer.decode(ids).startswith("<|im_start|>user\n")
    # older exchanges go first; the last answer survives whole
    history = [{"role": "user", "content": "q" * 300}, {"role": "assistant", "content": "a" * 300}] * 3 + msgs[:1][:0]
    history += [{"role": "user", "content": "最后的问题"}, answer]
    content = [tokenizer(m["content"], add_special_tokens=False)["input_ids"] for m in history]
    ids, labels, truncated = build_example(ct, history, content, max_length=128)
    assert truncated and len(ids) <= 128
    assert [t for t, lab in zip(ids, labels) if lab != IGNORE] == expected_trainable(tokenizer, [answer])


def test_conversation_that_cannot_fit_is_dropped_and_counted(tmp_path, tokenizer):
    rows = [[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}],
            [{"from": "human", "value": "x " * 400}, {"from": "gpt", "value": "y " * 400}]]
    path = tmp_path / "sft" / "a.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"conversations": rows}), path)
    logs = []
    dataset, stats = build_dataset(find_stage_files("sft", str(path.parent), "*.parquet"), tokenizer, max_length=12,
                                   log=logs.append)
    # 12 tokens leave no room for any answer token next to the two headers and the minimum prompt
    assert stats["dropped_no_answer"] >= 1 and len(dataset) == 2 - stats["dropped_no_answer"]
    assert any("dropped (no answer token left)" in line for line in logs)


def test_bad_rows_skipped_and_counted_or_named(tmp_path, tokenizer):
    good = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    rows = [good, [], [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}],
            [{"from": "human", "value": "no answer"}], good]
    folder = tmp_path / "sft"
    folder.mkdir()
    pq.write_table(pa.table({"conversations": rows}), folder / "a.parquet")
    logs = []
    dataset, stats = build_dataset(find_stage_files("sft", str(folder), "*.parquet"), tokenizer, 128,
                                   log=logs.append)
    assert len(dataset) == 2 and sum(stats["skipped"].values()) == 3
    assert any("unknown role" in line for line in logs)
    with pytest.raises(MiniQwenError, match=r"a\.parquet: row 1: empty conversation"):
        build_dataset(find_stage_files("sft", str(folder), "*.parquet"), tokenizer, 128, on_bad_rows="error",
                      log=lambda *_: None)
    pq.write_table(pa.table({"dialog": [good]}), folder / "b.parquet")
    with pytest.raises(MiniQwenError, match=r"b\.parquet: missing column 'conversations'.*map a column with"):
        find_stage_files("sft", str(folder), "*.parquet")  # the stage's one check, before any row is read


def test_normalize_rejects_what_cannot_train():
    for conv, message in [([], "empty"), ([{"from": "gpt", "value": "hi"}], "alternate"),
                          ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}], "empty"),
                          ([{"from": "human", "value": "q"}, {"from": "gpt", "value": None}], "no text")]:
        with pytest.raises(BadConversation, match=message):
            normalize_messages(conv)


# ---------------------------------------------------------------- the chat template every saved tokenizer carries

TEMPLATE_CHATS = {
    "no_system": [{"role": "user", "content": "李白是谁？"}],
    "system": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Who was Li Bai?"}],
    "multi_turn": [{"role": "system", "content": "You are mini_qwen."}, {"role": "user", "content": "李白是谁？"},
                   {"role": "assistant", "content": "李白是唐代诗人。"}, {"role": "user", "content": "And Du Fu?"}],
    "multi_turn_no_system": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."},
                             {"role": "user", "content": "和 3 + 3 呢？"}],
}


@pytest.fixture(scope="module")
def official_template_start(tiny_checkpoint, tmp_path_factory):
    """A starting checkpoint whose tokenizer files are Qwen2.5's own, with the official chat template (default
    system prompt "You are Qwen, ..."), as a checkpoint saved before the template was fixed carries it."""
    import shutil

    start = tmp_path_factory.mktemp("official_template_start")
    for path in tiny_checkpoint.iterdir():
        if path.name in ("config.json", "generation_config.json") or path.suffix == ".safetensors":
            shutil.copy(path, start / path.name)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(OFFICIAL_TOKENIZER / name, start / name)
    assert "You are Qwen" in json.loads((start / "tokenizer_config.json").read_text())["chat_template"]
    return start


@pytest.fixture(scope="module")
def saved_stages(official_template_start, tmp_path_factory):
    """{stage: AutoTokenizer.from_pretrained(its output)} of one-step SFT and DPO runs from that checkpoint (the
    tokenizer taken from it)."""
    from transformers import AutoTokenizer

    import mini_qwen_dpo
    import mini_qwen_sft

    root = tmp_path_factory.mktemp("template_stages")
    start = str(official_template_start)
    mini_qwen_sft.main(["--model_name_or_path", start, "--data_dir", str(MINI_DATA / "sft"), "--max_length", "64",
                        "--max_steps", "1", "--output_dir", str(root / "sft"), *FAST_TRAIN_FLAGS])
    mini_qwen_dpo.main(["--model_name_or_path", start, "--data_dir", str(MINI_DATA / "dpo"), "--max_length", "64",
                        "--max_prompt_length", "32", "--max_steps", "1", "--max_pairs", "2",
                        "--output_dir", str(root / "dpo"), *FAST_TRAIN_FLAGS])
    return {stage: AutoTokenizer.from_pretrained(root / stage) for stage in ("sft", "dpo")}


def sft_prompt_ids(tokenizer, messages):
    """The ids SFT trains on before the answer to the last question of `messages` (encode_conversations)."""
    answer = {"role": "assistant", "content": "An answer."}
    out = encode_conversations(tokenizer, [normalize_messages(messages + [answer])], max_length=4096)
    ids, labels = out["input_ids"][0], out["labels"][0]
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    n_answer = len(tokenizer(answer["content"], add_special_tokens=False)["input_ids"]) + 1  # + <|im_end|>
    return ids[:trained[-n_answer]]


@pytest.mark.parametrize("chat", list(TEMPLATE_CHATS))
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_saved_chat_template_gives_the_training_prompt_ids(saved_stages, tokenizer, stage, chat):
    """AutoTokenizer.from_pretrained(a saved stage).apply_chat_template == the ids SFT / DPO / serve train and
    answer on; lm-eval's chat mode and eval render the same text."""
    from mini_qwen.chat import encode_prompt, format_messages
    from mini_qwen.data.dpo import encode_pairs

    messages = TEMPLATE_CHATS[chat]
    saved = saved_stages[stage]
    ids = saved.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert ids == sft_prompt_ids(tokenizer, messages)
    assert ids == encode_prompt(tokenizer, messages)  # serve (mini_qwen/serve) and utils/export_gguf.py
    if len(messages) <= 2:  # DPO pairs are one question, with or without a system text
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        pair = encode_pairs(tokenizer, [(system, messages[-1]["content"], "Yes.", "No.")], 4096, 2048)[0]
        assert ids == pair["prompt_ids"]
    text = saved.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == format_messages(messages) and "You are Qwen" not in text  # eval and mini_qwen/benchmarks.py
    # lm-eval scores a choice inside an open assistant turn: HFLM passes continue_final_message
    open_answer = messages + [{"role": "assistant", "content": "The answer is"}]
    assert saved.apply_chat_template(open_answer, add_generation_prompt=False, continue_final_message=True,
                                     tokenize=False) == format_messages(open_answer, add_generation_prompt=False)
