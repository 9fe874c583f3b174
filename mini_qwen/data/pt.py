"""PT data, all in one place: IndustryCorpus2 parquet files -> a token cache on disk -> training blocks.

Every stage's data module has the same face (see mini_qwen/data/checks.py, which loops over them):
  columns()        the columns the stage reads (every other column is ignored)
  check_schema()   the per-file column checks, before any row is read
  row_problems()   why each row of a batch cannot be trained on (None for a good row)
  overlong_rows()  what the stage's length rule does to a good row that is too long
  build_dataset()  the training set, from files the stage script has already found and checked

PT's rules: one text column (default `text`); a null, empty or whitespace-only text is a bad row;
a long document is not cut but split across blocks (packing.py). Preparation streams batches of
texts from parquet to disk, so peak memory stays flat however large the corpus (the cache format
is in mini_qwen/data/packing.py).
"""

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mini_qwen.data.common import check_string_column, require_columns
from mini_qwen.data.packing import PackedBlocks, chunks_by_chars, encode_u24, tokenize_batch
from mini_qwen.errors import MiniQwenError

NAME = "pt"
FILES_MERGED = False  # read file by file, so string vs large_string never meet
WHAT = "PT data"  # how messages name the data


def columns(text_column: str = "text") -> list[str]:
    return [text_column]


def check_schema(path: Path, schema: pa.Schema, text_column: str = "text") -> None:
    """The text column exists and holds strings; raises MiniQwenError naming the file and column."""
    require_columns(path, schema, {text_column: "the document text"})
    check_string_column(path, schema, text_column)


def text_problem(text) -> str | None:
    """Why a PT text cannot be trained on ("a null" / "an empty"), or None when it is fine."""
    if text is None:
        return "a null"
    if not text.strip():
        return "an empty"
    return None


def row_problems(values: dict[str, list]) -> list[str | None]:
    """Why each row of a batch ({column: values}) cannot be trained on, or None for a good row."""
    (name, texts), = values.items()
    words = {"a null": "null", "an empty": "empty or whitespace-only"}
    return [f"{words[problem]} '{name}'" if (problem := text_problem(t)) else None for t in texts]


def overlong_rows(values: dict[str, list], tokenizer, max_length: int,
                  max_prompt_length: int | None = None) -> list[str | None]:
    """For good rows: a document longer than `max_length` tokens is split across blocks, never cut."""
    (_, texts), = values.items()
    _, lengths = tokenize_batch(tokenizer, texts, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return [f"longer than {max_length} tokens (split across blocks)" if n > max_length else None for n in lengths]


def iter_text_batches(files: list[Path], column: str = "text", batch_rows: int = 4096, on_bad_rows: str = "skip",
                      stats: dict | None = None):
    """Yield lists of non-empty texts, file by file, batch by batch: the corpus is never held in memory whole.

    `files` are checked already (`checks.check_stage_files`). Null, empty or whitespace-only texts
    are skipped and counted in `stats`, or raise with the file and row when `on_bad_rows="error"`.
    """
    stats = stats if stats is not None else {}
    for path in files:
        row = 0
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=[column])
            for batch in batches:
                texts = batch.column(0).to_pylist()
                good = []
                for i, text in enumerate(texts):
                    problem = text_problem(text)
                    if problem:
                        if on_bad_rows == "error":
                            raise MiniQwenError(f"{path}: row {row + i} has {problem} '{column}'. Remove the row, "
                                                f"or rerun with --on_bad_rows skip to skip and count such rows.")
                        stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
                    else:
                        good.append(text)
                row += len(texts)
                stats["rows"] = stats.get("rows", 0) + len(texts)
                if good:
                    yield good
        except (pa.ArrowException, OSError) as err:
            raise MiniQwenError(
                f"{path}: unreadable at row ~{row}: {err}. Re-download the file or remove it."
            ) from None
        stats["files"] = stats.get("files", 0) + 1


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
    """Tokenize every document of the (checked) `files` into `cache_root/<key>/`, or reuse that folder if complete."""
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


def build_dataset(files: list[Path], tokenizer, block_size: int, packing: str = "documents",
                  cache_dir: str = ".cache/mini_qwen", text_column: str = "text", on_bad_rows: str = "skip",
                  source: str | None = None, log=print) -> tuple[PackedBlocks, dict]:
    """The PT training set, (blocks of `block_size` tokens, cache meta), from files already checked."""
    cache = prepare_token_cache(files, tokenizer, cache_dir, text_column, on_bad_rows=on_bad_rows, log=log)
    dataset = PackedBlocks(cache, block_size, packing)
    if len(dataset) == 0:
        raise MiniQwenError(f"the corpus in '{source or files[0].parent}' has {dataset.n_tokens} tokens, fewer than "
                            f"one block of {block_size}: add data or lower --block_size.")
    return dataset, json.loads((cache / "meta.json").read_text())
