"""The offline-built Qwen2.5 tokenizer must be the official one, token for token.

Oracle: the official Qwen2.5-0.5B-Instruct vocab.json / merges.txt / tokenizer_config.json in
tests/data/qwen2.5_tokenizer (Apache-2.0, its LICENSE beside them); the corpus is every text of the real
samples in tests/data/baai.
"""

import json
import unicodedata

import pytest
from conftest import BAAI_SAMPLES, OFFICIAL_TOKENIZER

from mini_qwen.errors import MiniQwenError
from mini_qwen.tokenizer import (
    DEFAULT_CACHE,
    SPECIAL_TOKENS,
    bytes_to_unicode,
    derive_merges,
    fetch_qwen_tiktoken,
    load_tokenizer,
    read_tiktoken_ranks,
)

TRICKY_TEXTS = [
    "",
    " ",
    "12345",
    "pi = 3.14159, 1,000,000 and 2024-06-01",
    "Hello world! How are you?",
    "don't I'LL we've THEY'RE she'd",
    "中文测试，你好世界！今天天气很好。",
    "日本語のテキストです。한국어 텍스트입니다.",
    "مرحبا بالعالم हिन्दी पाठ Ελληνικά Привет",
    "emoji 👍🏽 🎉 👨‍👩‍👧‍👦 🇨🇳",
    "cafe\u0301 A\u030a n\u0303 \u1100\u1161\u11a8",  # decomposed: NFC composes them
    "ﬁ ligature, full-width ＡＢＣ１２３, nbsp\u00a0here, zero\u200bwidth",
    "windows\r\nline\r\n\r\nend\r",
    "a\n\n\nb\n \n  c",
    "multiple   spaces    here     ",
    "\t\ttabs\tand  \t mixed",
    "    def f(x):\n        return x ** 2  # comment\n",
    "=" * 80 + "-" * 37 + "." * 5,
    "a" * 1000,
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|endoftext|>",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
    "<|fim_prefix|>def<|fim_suffix|>pass<|fim_middle|><|fim_pad|><|repo_name|>r<|file_sep|>",
    "<|im_start |> <|im_end| > <im_end>",  # near misses stay plain text
    "".join(content for content, _ in SPECIAL_TOKENS),
    " ".join(content for content, _ in SPECIAL_TOKENS),
]


def _corpus_texts():
    """Every text of every parquet in tests/data/baai."""
    import pyarrow.parquet as pq

    texts = []
    for path in sorted(BAAI_SAMPLES.rglob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            if "text" in row:  # pt
                texts.append(row["text"])
            if "conversations" in row:  # sft
                texts.extend(turn["value"] for turn in row["conversations"] or [])
            if "prompt" in row:  # dpo
                texts.append(row["prompt"])
                for key in ("chosen", "rejected"):
                    texts.extend(message["content"] for message in row[key] or [])
    return [text for text in texts if text is not None]


@pytest.fixture(scope="module")
def official():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(OFFICIAL_TOKENIZER), local_files_only=True)


@pytest.fixture(scope="module")
def built(built_tokenizer_dir):
    return load_tokenizer(built_tokenizer_dir)


def test_vocab_merges_and_added_tokens_identical(built_tokenizer_dir, built, official):
    with open(OFFICIAL_TOKENIZER / "vocab.json", encoding="utf-8") as handle:
        official_vocab = json.load(handle)
    with open(built_tokenizer_dir / "vocab.json", encoding="utf-8") as handle:
        assert json.load(handle) == official_vocab
    official_merges = (OFFICIAL_TOKENIZER / "merges.txt").read_text(encoding="utf-8").splitlines()
    built_merges = (built_tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(built_merges) == len(official_merges) == 151_387
    assert built_merges == official_merges

    # tokenizer.json (what AutoTokenizer actually loads) holds the same model
    with open(built_tokenizer_dir / "tokenizer.json", encoding="utf-8") as handle:
        model = json.load(handle)["model"]
    assert model["vocab"] == official_vocab
    assert [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]] == official_merges

    # the 22 added tokens: same ids, contents and `special` flags as tokenizer_config.json
    config = json.loads((OFFICIAL_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    expected = {int(i): (t["content"], t["special"]) for i, t in config["added_tokens_decoder"].items()}
    assert {i: (t.content, t.special) for i, t in built.added_tokens_decoder.items()} == expected
    assert built.added_tokens_decoder == official.added_tokens_decoder
    assert len(built) == len(official) == 151_665
    assert built.eos_token == "<|im_end|>" and built.pad_token == "<|endoftext|>" and built.bos_token is None
    assert built.model_max_length == 131072
    assert list(built.extra_special_tokens) == config["additional_special_tokens"]


def test_derived_merges_from_fresh_ranks_file():
    """Exercise derive_merges itself (the fixture may reuse an existing models/tokenizer)."""
    try:
        tiktoken_path = fetch_qwen_tiktoken(DEFAULT_CACHE)
    except MiniQwenError as err:
        pytest.skip(f"cannot fetch qwen.tiktoken: {err}")
    byte_chars = bytes_to_unicode()

    def to_str(token):
        return "".join(byte_chars[b] for b in token)

    merges = [f"{to_str(a)} {to_str(b)}" for a, b in derive_merges(read_tiktoken_ranks(tiktoken_path))]
    assert merges == (OFFICIAL_TOKENIZER / "merges.txt").read_text(encoding="utf-8").splitlines()


def test_same_ids_as_official_on_corpus_and_tricky_texts(built_tokenizer_dir, built, official):
    from tokenizers import Tokenizer

    texts = _corpus_texts()
    assert len(texts) > 500, f"expected the reference corpus to have texts, found {len(texts)}"
    texts += TRICKY_TEXTS

    official_ids = official(texts, add_special_tokens=False)["input_ids"]
    built_ids = built(texts, add_special_tokens=False)["input_ids"]
    # and the raw tokenizers pipeline we saved (tokenizer.json), without transformers' rebuild
    raw = Tokenizer.from_file(str(built_tokenizer_dir / "tokenizer.json"))
    raw_ids = [enc.ids for enc in raw.encode_batch(texts, add_special_tokens=False)]

    mismatches = [i for i, (a, b) in enumerate(zip(built_ids, official_ids)) if a != b]
    raw_mismatches = [i for i, (a, b) in enumerate(zip(raw_ids, official_ids)) if a != b]
    decode_mismatches = [
        i for i in range(len(texts)) if built.decode(built_ids[i]) != official.decode(official_ids[i])
    ]
    n_tokens = sum(map(len, official_ids))
    print(
        f"\n{len(texts)} texts, {n_tokens} tokens: {len(mismatches)} id mismatches (transformers), "
        f"{len(raw_mismatches)} (raw tokenizer.json), {len(decode_mismatches)} decode mismatches"
    )
    assert not mismatches, f"texts with different ids: {[texts[i][:60] for i in mismatches[:5]]}"
    assert not raw_mismatches, f"texts with different ids: {[texts[i][:60] for i in raw_mismatches[:5]]}"
    assert not decode_mismatches
    # decoding gives back the NFC-normalized text
    assert all(built.decode(ids) == unicodedata.normalize("NFC", text) for ids, text in zip(built_ids, texts))

    # spot checks against known Qwen2.5 ids
    assert built.encode("12345", add_special_tokens=False) == [16, 17, 18, 19, 20]
    for offset, (content, _) in enumerate(SPECIAL_TOKENS):
        assert built.encode(content, add_special_tokens=False) == [151643 + offset]


CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "和 3 + 3 呢？"},
]


@pytest.mark.parametrize("system", [None, "You are a terse assistant."])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_loaded_tokenizers_carry_the_training_template(built, official, system, add_generation_prompt):
    """The official files' template adds Qwen's default system prompt; load_tokenizer replaces it, on the official
    files and on ours alike, with the format SFT trains on (the saved checkpoints' template: test_chat.py)."""
    from mini_qwen.chat import CHATML_TEMPLATE, format_messages

    messages = ([{"role": "system", "content": system}] if system else []) + CONVERSATION
    kwargs = dict(tokenize=False, add_generation_prompt=add_generation_prompt)
    if system is None:
        assert official.apply_chat_template(messages, **kwargs).startswith(
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n")
    for tokenizer in (built, load_tokenizer(OFFICIAL_TOKENIZER)):
        assert tokenizer.chat_template == CHATML_TEMPLATE
        rendered = tokenizer.apply_chat_template(messages, **kwargs)
        closed = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        assert rendered == (format_messages(messages) if add_generation_prompt else closed)


def test_load_tokenizer_empty_dir_names_path(tmp_path):
    empty = tmp_path / "no_tokenizer_here"
    empty.mkdir()
    with pytest.raises(MiniQwenError, match="no_tokenizer_here"):
        load_tokenizer(empty)
    with pytest.raises(MiniQwenError, match="does_not_exist"):
        load_tokenizer(tmp_path / "does_not_exist")
