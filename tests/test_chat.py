"""SFT labels: exactly the assistant answers (+ their <|im_end|>) are trained; truncation keeps answers."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BAAI_SAMPLES

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
