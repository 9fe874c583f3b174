"""PT data: tokenization fast path, token cache, document-aware blocks, loader errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BAAI_SAMPLES

from mini_qwen.data.checks import check_stage_files
from mini_qwen.data.common import find_data_files
from mini_qwen.data.packing import (
    BYTES_PER_TOKEN,
    PackedBlocks,
    collate_blocks,
    decode_u24,
    encode_u24,
    tokenize_batch,
    varlen_kwargs,
)
from mini_qwen.data.pt import iter_text_batches, prepare_token_cache
from mini_qwen.errors import MiniQwenError


def write_texts(path, texts, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, **extra}), path)
    return path


def test_u24_roundtrip():
    ids = np.array([0, 1, 255, 256, 65535, 151643, 151645, 151935, 2**24 - 1], dtype=np.uint32)
    assert decode_u24(encode_u24(ids)).tolist() == ids.tolist()


def test_real_pt_samples_load_through_the_loader():
    files = find_data_files(BAAI_SAMPLES / "pt")
    widths = sorted(pq.read_schema(f).names.__len__() for f in files)
    assert widths == [9, 13]  # en and zh IndustryCorpus2 files differ; only `text` is read
    stats = {}
    texts = [t for batch in iter_text_batches(files, stats=stats) for t in batch]
    assert stats["rows"] == 200 and len(texts) == 200 - stats.get("skipped_empty", 0)


def _sample_texts():
    files = find_data_files(BAAI_SAMPLES / "pt")
    texts = [t for batch in iter_text_batches(files) for t in batch]
    return texts + ["", "12345 digits", "混合 English 和中文。\r\n  spaces", "<|im_end|> inside text"]


def tokenize_simple(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward path (one call per document, eos as text): the reference the fast path must equal."""
    docs = [tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]
    return np.array([t for d in docs for t in d], dtype=np.uint32), np.array([len(d) for d in docs], dtype=np.int32)


def test_fast_tokenization_equals_straightforward_path(tokenizer):
    texts = _sample_texts()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    fast_ids, fast_lens = tokenize_batch(tokenizer, texts, eos)
    slow_ids, slow_lens = tokenize_simple(tokenizer, texts)
    assert fast_lens.tolist() == slow_lens.tolist()  # same document boundaries
    assert np.array_equal(fast_ids, slow_ids)  # same token ids
    ends = np.cumsum(fast_lens) - 1
    assert (fast_ids[ends] == eos).all()


def test_cache_blocks_positions_and_labels(tmp_path, tokenizer):
    docs = ["first document " * 30, "second one " * 5, "third " * 70, "   ", "last words here"]
    f = write_texts(tmp_path / "data" / "a.parquet", docs)
    logs = []
    cache = prepare_token_cache([f], tokenizer, tmp_path / "cache", log=logs.append)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["documents"] == 4 and meta["skipped_empty"] == 1
    # bytes per token on disk: 3 for ids + the per-document boundaries
    size = (cache / "tokens.u24").stat().st_size
    assert size == BYTES_PER_TOKEN * meta["tokens"]
    assert (size + (cache / "doc_lens.npy").stat().st_size) / meta["tokens"] < 4.0 or meta["tokens"] < 500

    ids, lens = tokenize_batch(tokenizer, [d for d in docs if d.strip()], tokenizer.convert_tokens_to_ids("<|im_end|>"))
    blocks = PackedBlocks(cache, 32, "documents")
    assert len(blocks) == len(ids) // 32
    stream = torch.cat([blocks[i]["input_ids"] for i in range(len(blocks))])
    assert stream.tolist() == ids[: len(blocks) * 32].tolist()

    starts = set(np.concatenate([[0], np.cumsum(lens)[:-1]]).tolist())
    for i in range(len(blocks)):
        row = blocks[i]
        for j in range(32):
            g = i * 32 + j
            if g in starts:
                assert row["position_ids"][j] == 0
                if j > 0:
                    assert row["labels"][j] == -100
            elif j > 0:
                assert row["position_ids"][j] == row["position_ids"][j - 1] + 1
        assert row["position_ids"][0] == 0
    concat = PackedBlocks(cache, 32, "concat")[1]
    assert concat["position_ids"].tolist() == list(range(32)) and (concat["labels"] != -100).all()
    # reused, not rebuilt, on the second call
    prepare_token_cache([f], tokenizer, tmp_path / "cache", log=logs.append)
    assert "reusing" in logs[-1]


def test_packed_documents_do_not_attend_to_each_other(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from mini_qwen.model import PresetArguments, build_config

    docs = ["李白是唐代著名的诗人。" * 3, "Once upon a time there was a tiny model.", "绿豆糕是一种传统糕点。" * 6]
    f = write_texts(tmp_path / "d.parquet", docs)
    cache = prepare_token_cache([f], tokenizer, tmp_path / "cache", log=lambda *_: None)
    blocks = PackedBlocks(cache, 64, "documents")
    assert len(blocks) == 1
    batch = collate_blocks([blocks[0]])
    assert "attention_mask" not in batch
    _, starts = blocks.block(0)
    assert len(starts) >= 2, "the block must hold several documents"
    # flash-attention's document boundaries (tests/test_flash_varlen.py runs them through the flash path)
    assert batch["cu_seq_lens_q"].tolist() == [*starts.tolist(), 64]
    assert batch["max_length_q"] == max(np.diff([*starts.tolist(), 64]))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset="tiny")),
                                             attn_implementation="sdpa").eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        bounds = list(starts) + [64]
        for a, b in zip(bounds[:-1], bounds[1:]):
            alone = model(input_ids=batch["input_ids"][:, a:b], use_cache=False).logits[0]
            assert torch.allclose(packed[a:b], alone, atol=1e-5), (a, b)
        # and the plain concatenation does mix documents (the test can fail)
        mixed = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        a, b = bounds[1], bounds[2]
        alone = model(input_ids=batch["input_ids"][:, a:b], use_cache=False).logits[0]
        assert not torch.allclose(mixed[a:b], alone, atol=1e-3)


def test_varlen_kwargs_cut_the_flattened_batch_at_every_sequence_start():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2],
                                 [3, 4, 0, 1, 2, 3, 0, 1]])  # the second row starts inside a sequence
    kwargs = varlen_kwargs(position_ids)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 8, 10, 14, 16]  # offsets into rows x length tokens
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32 and kwargs["cu_seq_lens_k"] is kwargs["cu_seq_lens_q"]
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 4
    assert position_ids[1, 0] == 3  # the batch's own position ids untouched


def test_loader_errors_name_the_problem(tmp_path, tokenizer):
    with pytest.raises(MiniQwenError, match="does not exist"):
        find_data_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MiniQwenError, match="no data files"):
        find_data_files(tmp_path / "empty")
    bad = tmp_path / "bad" / "x.parquet"
    bad.parent.mkdir()
    pq.write_table(pa.table({"txt": ["hello"]}), bad)
    # The stage checks its files once (checks.check_stage_files), before the cache is built.
    with pytest.raises(MiniQwenError, match=r"x\.parquet: missing column 'text'.*did you mean 'txt'"):
        check_stage_files("pt", [bad])
    numbers = tmp_path / "num.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(MiniQwenError, match="column 'text' must hold text"):
        check_stage_files("pt", [numbers])
    holes = write_texts(tmp_path / "holes.parquet", ["ok", None, "  ", "fine"])
    with pytest.raises(MiniQwenError, match=r"holes\.parquet: row 1 has a"):
        list(iter_text_batches([holes], on_bad_rows="error"))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(MiniQwenError, match="cannot read parquet file"):
        check_stage_files("pt", [broken])
