"""Finding and checking the BAAI parquet files of each stage.

The real files disagree with each other (IndustryCorpus2 zh has 13 columns and en 9;
Infinity-Instruct 7M has an int64 `id` and Gen a string one; some 7M files have a
string `label`). We read only the columns training needs, with pyarrow, file by file,
so such clashes never reach `datasets`' schema merging, and every problem is reported
with the file (and row) it comes from.
"""

import difflib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mini_qwen.errors import MiniQwenError


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
        raise MiniQwenError(f"cannot read parquet file '{path}': {err}. Re-download it or remove it.") from None


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


def iter_text_batches(files: list[Path], column: str = "text", batch_rows: int = 4096, on_bad_rows: str = "skip",
                      stats: dict | None = None):
    """Yield lists of non-empty texts, file by file, batch by batch: the corpus is never held in memory whole.

    Null, empty or whitespace-only texts are skipped and counted in `stats`, or raise with the
    file and row when `on_bad_rows="error"`.
    """
    stats = stats if stats is not None else {}
    for path in files:
        schema = read_schema(path)
        require_columns(path, schema, {column: "the document text"})
        check_string_column(path, schema, column)
        row = 0
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=[column])
            for batch in batches:
                texts = batch.column(0).to_pylist()
                good = []
                for i, text in enumerate(texts):
                    if text is None or not text.strip():
                        if on_bad_rows == "error":
                            kind = "a null" if text is None else "an empty"
                            raise MiniQwenError(f"{path}: row {row + i} has {kind} '{column}'. Remove the row, "
                                                f"or rerun with --on_bad_rows skip to skip and count such rows.")
                        stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
                    else:
                        good.append(text)
                row += len(texts)
                stats["rows"] = stats.get("rows", 0) + len(texts)
                if good:
                    yield good
        except (pa.ArrowException, OSError) as err:
            raise MiniQwenError(f"{path}: unreadable at row ~{row}: {err}. Re-download the file or remove it.") from None
        stats["files"] = stats.get("files", 0) + 1


def check_conversations_column(path: Path, schema: pa.Schema, column: str = "conversations") -> None:
    require_columns(path, schema, {column: "a list of {from, value} turns"})
    kind = schema.field(column).type
    ok = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if ok:
        item = kind.value_type
        ok = pa.types.is_struct(item) and {"from", "value"} <= {item.field(i).name for i in range(item.num_fields)}
    if not ok:
        raise MiniQwenError(f"{path}: column '{column}' must be a list of {{from, value}} records "
                            f"(Infinity-Instruct format) but has type {kind}.")


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

    try:
        return datasets.load_dataset("parquet", data_files=[str(f) for f in files], columns=columns,
                                     split="train", cache_dir=cache_dir)
    except (ValueError, TypeError, pa.ArrowException) as err:
        raise MiniQwenError(f"the files under {files[0].parent} disagree on the type of {columns}: {err}. "
                            f"Run `python utils/check_data.py` to find the file.") from None


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
