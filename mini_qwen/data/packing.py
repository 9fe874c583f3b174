"""The PT token cache format and document-aware blocks (the cache is written by mini_qwen/data/pt.py).

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
             each document is not predicted from the previous one, so documents never
             attend to each other (see "Packed rows and attention" below).
  concat     the original project's plain concatenation: one causal mask over the block.

Packed rows and attention (PT blocks and SFT's packed rows alike): batches carry no
attention mask. SDPA, eager and flex_attention build per-document causal masks from the
restarting position ids at any batch size (KV cache off, as in training). flash_attention_2
does not: transformers 5.24 infers documents from position ids only for a batch of one row
(`_is_packed_sequence`) and otherwise runs one causal kernel over each whole row, across
documents. So every batch also carries flash-attention's variable-length kwargs
(`varlen_kwargs`: `cu_seq_lens_q/k`, `max_length_q/k` over the flattened batch), which make
transformers call the varlen kernel at any batch size; the other attentions ignore them, so
they go in every batch whatever the attention: ~0.1 ms of collation for 12 rows, the same SDPA
losses, no extra torch.compile graph. tests/test_flash_varlen.py runs the flash path on CPU.
"""

import itertools
from pathlib import Path

import numpy as np
import torch

BYTES_PER_TOKEN = 3
PACKING = ("documents", "concat")  # the modes above; the --packing choices


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


class PackedBlocks(torch.utils.data.Dataset):
    """Fixed-size training blocks read from a token cache (memory-mapped, never loaded whole)."""

    def __init__(self, cache_dir: Path, block_size: int, packing: str = "documents"):
        if packing not in PACKING:
            raise ValueError(f"packing must be one of {PACKING}, got {packing!r}")
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


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """flash-attention's variable-length kwargs for a [rows, length] batch of packed sequences.

    A sequence starts where its position id is 0 and at every row start. The offsets index the flattened
    batch (rows x length tokens): transformers' `_flash_attention_forward` reshapes q/k/v to that before its
    varlen kernel, whatever the batch size. int32, as flash-attn wants; computed here on the CPU, so the model
    does not sync with the device in every layer to derive them.
    """
    starts = position_ids == 0
    starts[:, 0] = True
    offsets = torch.cat([starts.flatten().nonzero().flatten(), torch.tensor([position_ids.numel()])]).to(torch.int32)
    longest = int(offsets.diff().max())
    return {"cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets, "max_length_q": longest, "max_length_k": longest}


def collate_blocks(rows):
    """Stack blocks; no attention_mask on purpose, the varlen kwargs for flash attention (see the module docstring)."""
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    return {**batch, **varlen_kwargs(batch["position_ids"])}


# ---------------------------------------------------------------- SFT: whole conversations packed into rows

def pack_conversations(dataset, max_length: int):
    """Conversations (input_ids + labels) packed best-fit-decreasing into rows of at most `max_length` tokens.

    TRL's `pack_dataset(strategy="bfd")` does the binning: a conversation is never split (ours are already cut
    to max_length), and each row records its conversations' lengths in `seq_lengths`.
    """
    from trl import pack_dataset

    return pack_dataset(dataset.select_columns(["input_ids", "labels"]), max_length, strategy="bfd")


class PackedRowsCollator:
    """Packed SFT rows -> a [batch, max_length] batch of one fixed shape: no step waits on a new sequence length.

    Position ids restart at 0 at each conversation and the trailing pad is a sequence of its own; with no
    attention_mask, SDPA builds a per-row block-diagonal causal mask from them and flash attention gets the
    varlen kwargs (as PT's `documents` blocks, see the module docstring), so a conversation never attends to
    another and attention costs rows x max_length^2, not the (batch x max_length)^2 of one flattened row under
    SDPA. A conversation's first token is never a target.
    """

    def __init__(self, pad_token_id: int, max_length: int):
        self.pad_token_id, self.max_length = pad_token_id, max_length

    def __call__(self, rows):
        shape = (len(rows), self.max_length)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, -100, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row["labels"])
            start = 0
            for length in [*row["seq_lengths"], self.max_length - n]:  # the pad tail last
                position_ids[i, start:start + length] = torch.arange(length)
                start += length
        labels[position_ids == 0] = -100
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                **varlen_kwargs(position_ids)}
