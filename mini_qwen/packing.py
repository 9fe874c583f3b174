"""Pretraining data: tokenize once into a compact on-disk cache, then cut fixed-size blocks.

Cache layout (one folder per corpus + tokenizer):
  tokens.u24  every token id of every document, `<|im_end|>` appended to each,
              3 bytes a token (Qwen ids < 2**18, so 24 bits suffice)
  doc_lens.npy  int32 length of each document: the boundaries, instead of a mask
  meta.json     counts and the source files
Preparation streams batches of texts from parquet to disk, so peak memory stays flat
however large the corpus: each tokenizer call gets at most `max_chars` characters, because
the Rust tokenizer's Encoding objects cost ~100 bytes a token until flattened (a 4096-row
batch of 1.4K-token documents would otherwise hold ~600 MB).

Blocks are cut from the token stream at read time (block i = tokens[i*B:(i+1)*B],
remainder dropped, as the original project did). Two packing modes:
  documents  position ids restart at 0 at each document start and the first token of
             each document is not predicted from the previous one. With no attention
             mask, transformers then builds per-document causal masks (flash-attention-2,
             SDPA and eager alike, as long as the KV cache is off), so documents never
             attend to each other.
  concat     the original project's plain concatenation: one causal mask over the block.
"""

import hashlib
import itertools
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mini_qwen.checks import check_stage_files
from mini_qwen.data import iter_text_batches
from mini_qwen.errors import MiniQwenError

BYTES_PER_TOKEN = 3


def encode_u24(ids: np.ndarray) -> bytes:
    return ids.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :BYTES_PER_TOKEN].tobytes()


def decode_u24(raw) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, BYTES_PER_TOKEN).astype(np.int64)
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)


def tokenize_batch(tokenizer, texts: list[str], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `text + <|im_end|>` for each text, flattened, and the per-text lengths.

    Appending the eos id equals tokenizing `text + "<|im_end|>"` (special tokens are split
    off before BPE) and avoids copying every text. The Rust tokenizer does the batch in
    parallel; flattening uses C iterators, never a Python loop over tokens.
    """
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int32, count=len(encodings))
    eos = (eos_id,)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(e.ids, eos) for e in encodings),
                       dtype=np.uint32, count=int(lengths.sum()))
    return flat, lengths


def tokenize_simple(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward path (one call per document, eos as text): the reference the fast path must equal."""
    docs = [tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]
    return np.array([t for d in docs for t in d], dtype=np.uint32), np.array([len(d) for d in docs], dtype=np.int32)


def chunks_by_chars(texts: list[str], max_chars: int):
    """Consecutive slices of `texts` of at most `max_chars` characters (a longer text goes alone)."""
    start, size = 0, 0
    for i, text in enumerate(texts):
        if size and size + len(text) > max_chars:
            yield texts[start:i]
            start, size = i, 0
        size += len(text)
    if start < len(texts):
        yield texts[start:]


def cache_key(files: list[Path], tokenizer, text_column: str) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    h.update(f"{tokenizer.name_or_path}|{len(tokenizer)}|{text_column}|u24".encode())
    return h.hexdigest()[:16]


def prepare_token_cache(files: list[Path], tokenizer, cache_root: str, text_column: str = "text",
                        batch_rows: int = 4096, on_bad_rows: str = "skip", log=print,
                        max_chars: int = 1 << 21) -> Path:
    """Tokenize every document of `files` into `cache_root/<key>/`, or reuse that folder if complete."""
    # Fail on a bad file (unreadable, no text column, wrong type) before spending time on the good ones.
    check_stage_files("pt", files, text_column)
    final = Path(cache_root) / f"pt-{cache_key(files, tokenizer, text_column)}"
    if (final / "meta.json").is_file():
        log(f"data: reusing token cache {final}")
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stats: dict = {}
    all_lengths = []
    n_tokens = 0
    t0 = time.time()
    try:
        with open(tmp / "tokens.u24", "wb") as out:
            for texts in iter_text_batches(files, text_column, batch_rows, on_bad_rows, stats):
                # ~2M characters a call: enough documents for the tokenizer's threads, a bounded transient peak
                for chunk in chunks_by_chars(texts, max_chars):
                    ids, lengths = tokenize_batch(tokenizer, chunk, eos_id)
                    out.write(encode_u24(ids))
                    all_lengths.append(lengths)
                    n_tokens += len(ids)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if n_tokens == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MiniQwenError(f"no text to train on: all {stats.get('rows', 0)} rows of the {len(files)} files have a "
                            f"null or empty '{text_column}' (check the files with `python utils/check_data.py pt "
                            f"DATA_DIR`).")
    lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, dtype=np.int32)
    np.save(tmp / "doc_lens.npy", lengths)
    seconds = time.time() - t0
    meta = {"tokens": n_tokens, "documents": int(len(lengths)), "rows": stats.get("rows", 0),
            "skipped_empty": stats.get("skipped_empty", 0), "files": [str(f) for f in files],
            "seconds": round(seconds, 2), "tokenizer": tokenizer.name_or_path}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    try:
        os.replace(tmp, final)  # atomic: a half-written cache is never picked up
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another run on the same corpus finished first: same contents
    log(f"data: {meta['documents']} documents, {n_tokens:,} tokens from {len(files)} files "
        f"({meta['skipped_empty']} empty rows skipped) in {seconds:.1f}s "
        f"= {n_tokens / max(seconds, 1e-9):,.0f} tokens/s -> {final}")
    return final


class PackedBlocks(torch.utils.data.Dataset):
    """Fixed-size training blocks read from a token cache (memory-mapped, never loaded whole)."""

    def __init__(self, cache_dir: Path, block_size: int, packing: str = "documents"):
        if packing not in ("documents", "concat"):
            raise ValueError(f"packing must be 'documents' or 'concat', got {packing!r}")
        self.block_size, self.packing = block_size, packing
        self.tokens = np.memmap(Path(cache_dir) / "tokens.u24", dtype=np.uint8, mode="r")
        lengths = np.load(Path(cache_dir) / "doc_lens.npy")
        self.doc_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])[:-1]
        self.n_tokens = len(self.tokens) // BYTES_PER_TOKEN

    def __len__(self):
        return self.n_tokens // self.block_size

    def block(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of block i and the in-block offsets where a document starts."""
        B = self.block_size
        start = i * B
        ids = decode_u24(self.tokens[start * BYTES_PER_TOKEN:(start + B) * BYTES_PER_TOKEN])
        lo, hi = np.searchsorted(self.doc_starts, [start, start + B])
        return ids, self.doc_starts[lo:hi] - start

    def __getitem__(self, i):
        ids, starts = self.block(i)
        labels = ids.copy()
        if self.packing == "concat":
            positions = np.arange(self.block_size)
        else:
            mark = np.zeros(self.block_size, dtype=np.int64)
            mark[starts] = starts
            positions = np.arange(self.block_size) - np.maximum.accumulate(mark)
            labels[starts[starts > 0]] = -100  # never predict a document's first token from the previous one
        return {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(positions),
                "labels": torch.from_numpy(labels)}


def collate_blocks(rows):
    """Stack blocks; no attention_mask on purpose (see the module docstring)."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
