"""PT data, all in one place: text files (IndustryCorpus2 parquet, or any format data/files.py reads) -> a token
cache on disk -> training blocks.

Every stage's data module has the same face (see mini_qwen/data/checks.py, which loops over them):
  SCHEMAS          the row schemas the stage accepts, in detection order (common.RowSchema: columns, types,
                   how a batch becomes the stage's own columns, an example line)
  columns()        the stage's own columns, which row_problems / overlong_rows read (a file's own columns are
                   mapped onto them by its layout)
  check_schema()   the per-file check, before any row is read: returns the file's Layout (the schema detected,
                   the file columns read, the conversion), or one error naming the columns found, the schemas
                   accepted and the flag that maps a column
  row_problems()   why each row of a batch cannot be trained on (None for a good row)
  overlong_rows()  what the stage's length rule does to a good row that is too long
  build_dataset()  the training set, from files the stage script has already found and checked

PT's rules: one text column (--text_column, else the one of `text`, `content`, `raw_content` the file has;
a .txt file is its `text`); a null, empty or whitespace-only text is a bad row;
a long document is not cut but split across blocks (packing.py). Preparation streams batches of
texts from the files to disk, so peak memory stays flat however large the corpus (the cache format
is in mini_qwen/data/packing.py); it runs file by file, in parallel and resumable (mini_qwen/data/prepare.py:
`encode_file` makes one file's part, `finish_cache` joins the parts).
"""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from mini_qwen.data.common import RowSchema, column_map, detect_layout, is_text, part_tmp, read_schema, replace_folder
from mini_qwen.data.packing import PackedBlocks, chunks_by_chars, encode_u24, tokenize_batch
from mini_qwen.data.prepare import DataCache
from mini_qwen.errors import MiniQwenError

NAME = "pt"
FILES_MERGED = False  # read file by file, so string vs large_string never meet
WHAT = "PT data"  # how messages name the data


TEXT_COLUMNS = ("text", "content", "raw_content")  # the names a document's text goes by, in this order

SCHEMAS = (
    RowSchema("text", {"text": "the document text"},
              fits=lambda types: None if is_text(types["text"]) else
              f"column 'text' must hold text but has type {types['text']}",
              convert=lambda values: values, example='{"text": "Hangzhou is a city in China ..."}',
              aliases={"text": TEXT_COLUMNS[1:]}),
)


def columns(options: dict | None = None) -> list[str]:
    """PT's own column: the document text."""
    return ["text"]


def check_schema(path: Path, schema: pa.Schema, options: dict | None = None):
    """The file's Layout: its text column (the flag's, or the one candidate it has), holding strings; else
    MiniQwenError naming the file and columns."""
    if "text" not in column_map(options):
        present = [name for name in TEXT_COLUMNS if name in schema.names]
        if len(present) > 1:
            raise MiniQwenError(f"{path}: several columns could hold the text: {present}. Say which with "
                                f"--text_column (e.g. --text_column {present[0]}).")
    return detect_layout(path, schema, options, SCHEMAS, WHAT)


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


def iter_text_batches(files: list[Path], options: dict | None = None, batch_rows: int = 4096,
                      on_bad_rows: str = "skip", stats: dict | None = None):
    """Yield lists of non-empty texts, file by file, batch by batch: the corpus is never held in memory whole.

    `files` are checked already (`checks.check_stage_files`). Null, empty or whitespace-only texts
    are skipped and counted in `stats`, or raise with the file and row when `on_bad_rows="error"`; so are
    lines of a text file that cannot be read (`stats["unreadable"]`; data/files.py).
    """
    stats = stats if stats is not None else {}
    for path in files:
        row = 0
        layout = check_schema(path, read_schema(path, options), options)
        for batch in layout.batches(path, batch_rows, options, on_bad_rows, stats):
            texts = batch["text"]
            good = []
            for i, text in enumerate(texts):
                problem = text_problem(text)
                if problem:
                    if on_bad_rows == "error":
                        raise MiniQwenError(f"{path}: row {row + i} has {problem} '{layout.columns[0]}'. Remove the "
                                            f"row, or rerun with --on_bad_rows skip to skip and count such rows.")
                    stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
                else:
                    good.append(text)
            row += len(texts)
            stats["rows"] = stats.get("rows", 0) + len(texts)
            if good:
                yield good
        stats["files"] = stats.get("files", 0) + 1


def cache_settings(options: dict | None = None) -> dict:
    """What, besides the files and the tokenizer, changes PT's tokens (the cache key; mini_qwen/data/prepare.py):
    the data options (--text_column, --columns, --txt_split) that choose the text."""
    return {"options": dict(sorted((options or {}).items())), "format": "u24"}


def encode_file(path: Path, part: Path, tokenizer, settings: dict, on_bad_rows: str, report,
                batch_rows: int = 4096, max_chars: int = 1 << 21) -> dict:
    """One data file -> `<part>.u24` + `<part>.lens.npy` (the cache format of packing.py), each written
    under a temporary name and renamed; returns the counts for the part's json. `report(rows, tokens)`
    is called after each batch (the progress bar)."""
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stats: dict = {}
    all_lengths, n_tokens, rows_seen = [], 0, 0
    tokens_path = part.with_suffix(".u24")
    tmp_tokens = part_tmp(tokens_path)
    try:
        with open(tmp_tokens, "wb") as out:
            for texts in iter_text_batches([path], settings["options"], batch_rows, on_bad_rows, stats):
                batch_tokens = 0
                # ~2M characters a call: enough documents for the tokenizer's threads, a bounded transient peak
                for chunk in chunks_by_chars(texts, max_chars):
                    ids, lengths = tokenize_batch(tokenizer, chunk, eos_id)
                    out.write(encode_u24(ids))
                    all_lengths.append(lengths)
                    batch_tokens += len(ids)
                n_tokens += batch_tokens
                report(stats["rows"] - rows_seen, batch_tokens)
                rows_seen = stats["rows"]
    except BaseException:
        tmp_tokens.unlink(missing_ok=True)
        raise
    report(stats.get("rows", 0) - rows_seen, 0)  # rows of trailing batches with no usable text
    lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, dtype=np.int32)
    tmp_lengths = part_tmp(part.with_suffix(".lens.npy"))
    with open(tmp_lengths, "wb") as f:
        np.save(f, lengths)
    os.replace(tmp_tokens, tokens_path)
    os.replace(tmp_lengths, part.with_suffix(".lens.npy"))
    return {"tokens": n_tokens, "documents": int(len(lengths)), "rows": stats.get("rows", 0),
            "skipped_empty": stats.get("skipped_empty", 0), "unreadable": stats.get("unreadable", 0)}


def finish_cache(cache, parts: list[tuple[Path, dict]], tmp: Path) -> dict | None:
    """The parts concatenated in file order into `tmp` (tokens.u24, doc_lens.npy, meta.json), renamed to the
    cache folder; the parts are then removed. Returns the meta (with a `_line` to log), None if another
    process finished first."""
    n_tokens = sum(meta["tokens"] for _, meta in parts)
    rows = sum(meta["rows"] for _, meta in parts)
    if n_tokens == 0:
        column = cache.settings["options"].get("text_column") or "text"
        raise MiniQwenError(f"no text to train on: all {rows} rows of the {len(parts)} files have a null or empty "
                            f"'{column}' (check the files with `python utils/check_data.py pt DATA_DIR`).")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with open(tmp / "tokens.u24", "wb") as out:
            for part, _ in parts:
                with open(part.with_suffix(".u24"), "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        np.save(tmp / "doc_lens.npy", np.concatenate([np.load(part.with_suffix(".lens.npy")) for part, _ in parts]))
        seconds = sum(meta["seconds"] for _, meta in parts)
        meta = {"tokens": n_tokens, "documents": sum(m["documents"] for _, m in parts), "rows": rows,
                "skipped_empty": sum(m["skipped_empty"] for _, m in parts),
                "unreadable": sum(m.get("unreadable", 0) for _, m in parts), "files": [str(f) for f in cache.files],
                "seconds": round(seconds, 2), "tokenizer": cache.tokenizer.name_or_path}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not replace_folder(tmp, cache.folder):
        return None
    shutil.rmtree(cache.parts_dir, ignore_errors=True)
    meta["_line"] = (f"data: {meta['documents']} documents, {n_tokens:,} tokens from {len(parts)} files "
                     f"({meta['skipped_empty']} empty rows"
                     + (f", {meta['unreadable']} unreadable lines" if meta["unreadable"] else "")
                     + f" skipped), {seconds:.1f}s of tokenizing "
                     f"= {n_tokens / max(seconds, 1e-9):,.0f} tokens/s per process -> {cache.folder}")
    return meta


def data_cache(files: list[Path], tokenizer, cache_dir: str = ".cache/mini_qwen", options: dict | None = None):
    """The PT token cache of these (checked) files: `.ready()`, `.prepare(num_proc, shard)` (prepare.py)."""
    return DataCache(sys.modules[__name__], files, tokenizer, cache_dir, cache_settings(options))


def prepare_token_cache(files: list[Path], tokenizer, cache_root: str, options: dict | None = None,
                        on_bad_rows: str = "skip", log=print, num_proc: int | None = 1, progress: bool = True,
                        **encode_options) -> Path:
    """Tokenize every document of the (checked) `files` into `cache_root/pt-<key>/`, or reuse that folder.
    `options`: the data options (common.data_options); `encode_options`: encode_file's batch_rows / max_chars
    (memory and speed only; the tokens are the same)."""
    return data_cache(files, tokenizer, cache_root, options).prepare(num_proc, None, on_bad_rows, log, progress,
                                                                      **encode_options)


def build_dataset(files: list[Path], tokenizer, block_size: int, packing: str = "documents",
                  cache_dir: str = ".cache/mini_qwen", options: dict | None = None, on_bad_rows: str = "skip",
                  source: str | None = None, log=print, num_proc: int | None = 1) -> tuple[PackedBlocks, dict]:
    """The PT training set, (blocks of `block_size` tokens, cache meta), from files already checked."""
    cache = prepare_token_cache(files, tokenizer, cache_dir, options, on_bad_rows, log, num_proc)
    meta = json.loads((cache / "meta.json").read_text())
    # A cache prepared with skip: stop at its first bad row.
    if on_bad_rows == "error" and (meta["skipped_empty"] or meta.get("unreadable")):
        for _ in iter_text_batches(files, options, on_bad_rows="error"):
            pass
    dataset = PackedBlocks(cache, block_size, packing)
    if len(dataset) == 0:
        raise MiniQwenError(f"the corpus in '{source or files[0].parent}' has {dataset.n_tokens} tokens, fewer than "
                            f"one block of {block_size}: add data or lower --block_size.")
    return dataset, meta
