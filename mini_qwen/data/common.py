"""What every stage's data module shares: finding parquet files, reading schemas and columns, row
bookkeeping. Each stage's own columns and rules live in pt.py, sft.py and dpo.py.

The real files disagree with each other (IndustryCorpus2 zh has 13 columns and en 9;
Infinity-Instruct 7M has an int64 `id` and Gen a string one; some 7M files have a
string `label`). We read only the columns training needs, with pyarrow, file by file,
so such clashes never reach `datasets`' schema merging, and every problem is reported
with the file (and row) it comes from.
"""

import difflib
import json
import os
import re
import shutil
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mini_qwen.errors import MiniQwenError

ON_BAD_ROWS = ("skip", "error")  # the --on_bad_rows choices of every stage and of utils/check_data.py


def find_parquet_files(data_dir: str, pattern: str = "**/*.parquet", what: str = "data") -> list[Path]:
    root = Path(data_dir)
    if not root.exists():
        raise MiniQwenError(f"{what} folder '{data_dir}' does not exist: run `bash prepare.sh` to download the data, "
                            f"or point --data_dir at mini_data/... for the demo.")
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise MiniQwenError(f"no parquet files matching '{pattern}' under {what} folder '{data_dir}': "
                            f"check --data_dir / --data_glob (did the download finish?).")
    return files


def read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise MiniQwenError(f"cannot read parquet file '{path}': {str(err).rstrip('.')}. "
                            f"Re-download it or remove it.") from None


def footer_bytes(path: Path, columns) -> int:
    """Uncompressed bytes of `columns` in a parquet file, from its footer alone (no data read); a nested
    column's leaves (`conversations.list.element.value`) count towards their top-level column."""
    meta = pq.ParquetFile(path).metadata
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        total += sum(group.column(c).total_uncompressed_size for c in range(group.num_columns)
                     if group.column(c).path_in_schema.split(".")[0] in columns)
    return total


def require_columns(path: Path, schema: pa.Schema, columns: dict[str, str]) -> None:
    """`columns` maps a required column name to a short description of what it should hold."""
    names = schema.names
    for name, description in columns.items():
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'? rename it to '{name}')" if close else ""
            raise MiniQwenError(f"{path}: missing column '{name}' ({description}); it has {names}{hint}.")


def check_string_column(path: Path, schema: pa.Schema, name: str) -> None:
    kind = schema.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise MiniQwenError(f"{path}: column '{name}' must hold text but has type {kind}.")


def load_column_dataset(files: list[Path], columns: list[str], cache_dir: str | None = None):
    """A `datasets.Dataset` of only `columns` from all files: the columns whose types clash
    between files (7M's int64 `id` vs Gen's string one, `label`) are never read."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    # The stage script has run checks.check_stage_files (one type per column in all files) already.
    try:
        return datasets.load_dataset("parquet", data_files=[str(f) for f in files], columns=columns,
                                     split="train", cache_dir=cache_dir)
    except (ValueError, TypeError, pa.ArrowException, DatasetGenerationError) as err:
        cause = err.__cause__ if isinstance(err, DatasetGenerationError) and err.__cause__ else err
        detail = " ".join(str(cause).split())
        raise MiniQwenError(f"cannot load {columns} from the {len(files)} files under {files[0].parent}: {detail}. "
                            f"Run `python utils/check_data.py` on the folder to find the file.") from None


def type_name(kind: pa.DataType) -> str:
    """A column type as text, with large_string / large_list spelled as string / list (they load alike)."""
    return str(kind).replace("large_string", "string").replace("large_list", "list")


def column_types(schemas: dict, columns=None) -> dict[str, dict[str, list]]:
    """{column: {type: [files]}} over `schemas` ({file: pyarrow schema}), for `columns` or all of them."""
    found: dict[str, dict[str, list]] = {}
    for path, schema in schemas.items():
        for field in schema:
            if columns is None or field.name in columns:
                found.setdefault(field.name, {}).setdefault(type_name(field.type), []).append(path)
    return found


def describe_clash(column: str, types: dict[str, list]) -> str:
    """'id' is int64 in 2 files (e.g. a.parquet) and string in 1 file (e.g. b.parquet)."""
    parts = [f"{kind} in {len(paths)} file{'s' * (len(paths) > 1)} (e.g. {paths[0]})" for kind, paths in types.items()]
    return f"'{column}' is " + " but ".join(parts)


def fold_digits(reason: str) -> str:
    """A row problem with its numbers folded to N, so that "turn 3 has ..." and "turn 5 has ..." count together."""
    return re.sub(r"\d+", "N", reason)


def replace_folder(tmp: Path, final: Path) -> bool:
    """Rename `tmp` to `final` (atomic: a half-written cache is never picked up). False when another process
    finished the same cache first (then `tmp` is removed: same contents)."""

    try:
        os.replace(tmp, final)
        return True
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def part_tmp(path: Path) -> Path:
    """A temporary name next to `path` that no other process uses (host + pid). Two processes that make the
    same part (two nodes' first processes on a shared disk) each write their own and rename it into place:
    the contents are the same, whichever rename comes last."""
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(part: Path) -> None:
    """Temporary files of this part that a killed run on this machine left (its pid is gone); those of a live
    process, or of another machine, are left alone."""

    host = socket.gethostname()
    for stale in part.parent.glob(f"{part.name}.*tmp-{host}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def encode_rows_file(path: Path, part: Path, columns: list[str], encode_batch, features, tokenizer, settings: dict,
                     on_bad_rows: str, report, token_column: str, batch_rows: int = 1000) -> dict:
    """SFT / DPO: one parquet file -> `<part>.arrow`, one encoded row per input row (bad rows keep their reason
    in `problem`), via `encode_batch(batch, indices, tokenizer=..., locate=..., on_bad_rows=..., **settings)`.

    Written with `datasets`' own Arrow writer and `features`, so `Dataset.from_file` memory-maps it as the
    stage's `datasets.map` output would be; under a temporary name, then renamed. `locate(index)` gives an
    encoder the (file, row) of a bad row for its message."""
    from datasets.arrow_writer import ArrowWriter

    def locate(index: int) -> tuple[Path, int]:
        return path, index

    arrow = part.with_suffix(".arrow")
    tmp = part_tmp(arrow)
    rows = tokens = 0
    writer = ArrowWriter(features=features, path=str(tmp))
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            values = batch.to_pydict()
            out = encode_batch(values, range(rows, rows + batch.num_rows), tokenizer=tokenizer, locate=locate,
                               on_bad_rows=on_bad_rows, **settings)
            writer.write_batch(out)
            batch_tokens = sum(map(len, out[token_column]))
            rows, tokens = rows + batch.num_rows, tokens + batch_tokens
            report(batch.num_rows, batch_tokens)
        writer.finalize()
    except BaseException as err:
        writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(err, (pa.ArrowException, OSError)):
            raise MiniQwenError(f"{path}: unreadable at row ~{rows}: {err}. "
                                f"Re-download the file or remove it.") from None
        raise
    writer.close()
    os.replace(tmp, arrow)
    return {"rows": rows, "tokens": tokens}


def finish_rows_cache(cache, parts: list[tuple[Path, dict]], tmp: Path) -> dict | None:
    """SFT / DPO: the parts folder becomes the cache folder (meta.json listing the Arrow parts in file order,
    then one rename). Returns the meta (with a `_line` to log), None if another process finished first."""
    meta = {"rows": sum(m["rows"] for _, m in parts), "tokens": sum(m["tokens"] for _, m in parts),
            "parts": [part.with_suffix(".arrow").name for part, _ in parts], "files": [str(f) for f in cache.files],
            "seconds": round(sum(m["seconds"] for _, m in parts), 2), "tokenizer": cache.tokenizer.name_or_path}
    partial = part_tmp(cache.parts_dir / "meta.json")
    partial.write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    os.replace(partial, cache.parts_dir / "meta.json")
    try:
        if not replace_folder(cache.parts_dir, cache.folder):
            return None
    except FileNotFoundError:  # another machine renamed the parts folder first
        return None
    meta["_line"] = (f"data: {meta['rows']:,} rows, {meta['tokens']:,} tokens from {len(parts)} files, "
                     f"{meta['seconds']:.1f}s of tokenizing -> {cache.folder}")
    return meta


def load_rows_cache(folder: Path):
    """The encoded rows of a finished SFT / DPO cache, in file order (memory-mapped, never loaded whole)."""
    import datasets

    meta = json.loads((Path(folder) / "meta.json").read_text())
    parts = [datasets.Dataset.from_file(str(Path(folder) / name)) for name in meta["parts"]]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0], meta


def encoded_rows(cache, num_proc: int | None, on_bad_rows: str, log=print):
    """SFT / DPO: the encoded rows of `cache` (a prepare.DataCache; what is missing is prepared first). With
    on_bad_rows="error", a cache prepared with skip stops at its first bad row here, as tokenizing would have."""
    encoded, _ = load_rows_cache(cache.prepare(num_proc, None, on_bad_rows, log))
    if on_bad_rows == "error":
        stop_at_first_bad_row(cache.files, encoded["problem"], cache.module)
    return encoded


def log_skipped_or_stop(dataset, skipped: dict, log, nothing_left: str) -> None:
    """Log each bad-row reason with its count; stop with `nothing_left` when no row is left to train on."""
    for problem, count in sorted(skipped.items(), key=lambda item: -item[1]):
        log(f"  skipped {count}: {problem}")
    if len(dataset) == 0:
        raise MiniQwenError(nothing_left)


def row_problems(values: dict[str, list], parse, bad_row_error) -> list[str | None]:
    """Why each row of a batch ({column: values}) cannot be trained on, or None for a good row: a null in a
    column the stage reads, or the message of the `bad_row_error` that `parse(*row)` raises."""
    names, out = list(values), []
    for row in zip(*values.values()):
        nulls = [name for name, value in zip(names, row) if value is None]
        if nulls:
            out.append("null " + " and ".join(f"'{name}'" for name in nulls))
            continue
        try:
            parse(*row)
            out.append(None)
        except bad_row_error as err:
            out.append(str(err))
    return out


def parse_rows(rows, indices, parse, bad_row_error, on_bad_rows: str, locate) -> tuple[list, list[str]]:
    """`parse(*row)` for each row of a batch. A row raising `bad_row_error` is skipped with its reason in
    `problems` (digits folded to N so reasons can be counted), or, with on_bad_rows="error", stops the
    run with its file and row. Returns (parsed good rows, one problem string per row, "" when fine)."""
    good, problems = [], []
    for row, index in zip(rows, indices):
        try:
            good.append(parse(*row))
            problems.append("")
        except bad_row_error as err:
            if on_bad_rows == "error":
                raise MiniQwenError(bad_row_message(*locate(index), err)) from None
            problems.append(fold_digits(str(err)))
    return good, problems


def bad_row_message(path, row: int, reason) -> str:
    """--on_bad_rows error's one message: the file, the row and why."""
    return (f"{path}: row {row}: {reason}. Fix or remove the row, or rerun with --on_bad_rows skip to skip and "
            f"count such rows.")


def stop_at_first_bad_row(files: list[Path], problems, module) -> None:
    """--on_bad_rows error with a cache that holds bad rows (it was prepared with skip, which keeps them as
    reasons): stop at the first one, named by file and row as tokenizing would have. The cache has one row per
    input row, in file order, so the row is found from the files' row counts; its reason is the stage's own
    `row_problems` on that row (the cache keeps only the reason with digits folded)."""
    index = next((i for i, problem in enumerate(problems) if problem), None)
    if index is None:
        return
    for path in files:
        rows = pq.ParquetFile(path).metadata.num_rows
        if index < rows:
            values = pq.read_table(path, columns=module.columns()).slice(index, 1).to_pydict()
            reason = module.row_problems(values)[0] or problems[index]
            raise MiniQwenError(bad_row_message(path, index, reason))
        index -= rows
