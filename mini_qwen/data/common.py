"""What every stage's data module shares: finding parquet files, reading schemas and columns, row
bookkeeping. Each stage's own columns and rules live in pt.py, sft.py and dpo.py.

The real files disagree with each other (IndustryCorpus2 zh has 13 columns and en 9;
Infinity-Instruct 7M has an int64 `id` and Gen a string one; some 7M files have a
string `label`). We read only the columns training needs, with pyarrow, file by file,
so such clashes never reach `datasets`' schema merging, and every problem is reported
with the file (and row) it comes from.
"""

import difflib
import re
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


def row_locator(files: list[Path]):
    """Map a row index of the concatenated files back to (file, row in file), for error messages."""
    import numpy as np

    counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
    ends = np.cumsum(counts)

    def locate(index: int) -> tuple[Path, int]:
        i = int(np.searchsorted(ends, index, side="right"))
        return files[i], index - (int(ends[i - 1]) if i else 0)

    return locate, int(ends[-1]) if counts else 0


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


def map_fingerprint(raw, tokenizer, code_file: str, *settings) -> str:
    """Cache key for a `datasets.map` that tokenizes `raw`. Passed as `new_fingerprint` so that
    `datasets` does not pickle the tokenizer to hash it (151K-entry vocab: 5-10 s per run on a
    small CPU, longer than tokenizing the demo data). `code_file` is the module doing the map:
    editing it invalidates the cache."""
    import hashlib

    h = hashlib.sha256()
    for part in (raw._fingerprint, tokenizer.backend_tokenizer.to_str(), repr(settings), Path(code_file).read_text()):
        h.update(part.encode())
    return h.hexdigest()[:32]


def map_rows(files: list[Path], columns: list[str], encode_batch, tokenizer, num_proc: int | None, desc: str,
             code_file: str, **settings):
    """Run `encode_batch(batch, indices, tokenizer=..., locate=..., **settings)` over `columns` of `files`
    with `datasets.map` (batched, cached under a cheap fingerprint). Returns (encoded dataset, rows read);
    `locate(index)` gives an encoder the (file, row) of a bad row for its message."""
    locate, n_rows = row_locator(files)
    raw = load_column_dataset(files, columns)
    encoded = raw.map(
        encode_batch, batched=True, with_indices=True, remove_columns=raw.column_names,
        num_proc=num_proc if num_proc and num_proc > 1 and len(raw) > 10_000 else None,
        fn_kwargs=dict(tokenizer=tokenizer, locate=locate, **settings), desc=desc,
        new_fingerprint=map_fingerprint(raw, tokenizer, code_file, *settings.values()),
    )
    return encoded, n_rows


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
                path, line = locate(index)
                raise MiniQwenError(f"{path}: row {line}: {err}. Fix or remove the row, or rerun with "
                                    f"--on_bad_rows skip to skip and count such rows.") from None
            problems.append(fold_digits(str(err)))
    return good, problems
