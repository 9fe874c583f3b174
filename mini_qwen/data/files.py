"""The one reader of data files: every stage, the planner, the checker and eval's held-out text read rows here.

A file's format comes from its suffix (FORMATS):
    .parquet                      columns as written (read with pyarrow, batch by batch, only the columns asked for)
    .arrow                        a `datasets` save_to_disk folder's data files (Arrow streams, memory-mapped)
    .jsonl / .ndjson              one JSON record a line (read line by line: a 2 GB file is never held whole)
    .json                         an array of records (read whole: use .jsonl for large data), or JSON lines
    .csv / .tsv                   a header row, then one record a row; quoted fields may hold newlines and quotes
    .txt                          plain text: one document per file, or one per blank-line-separated block
                                  (`txt_split`), read as a column named `text`
    + .gz / .zst                  any of the text formats compressed (pyarrow's own codecs; nothing to install)

Text formats are decoded as UTF-8 line by line, so a bad line (broken JSON, non-UTF-8 bytes, a csv row with the
wrong number of fields) is named by file, line and byte offset; with on_bad_rows="skip" it is skipped and counted
in `stats["unreadable"]` instead. Their schema (column names and types) is inferred from the first rows.
"""

import csv
import io
import json
import sys
from collections import deque
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mini_qwen.errors import MiniQwenError

FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}
TEXT_FORMATS = ("jsonl", "json", "csv", "tsv", "txt")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
ACCEPTED = ("parquet, jsonl / json (JSON lines or an array of records), csv, tsv, txt (each text format also as "
            ".gz or .zst), and a `datasets` save_to_disk folder (.arrow)")
DEFAULT_GLOB = "**/*"  # every file of an accepted format under the folder
TXT_SPLITS = ("file", "blank_lines")  # --txt_split: a .txt file is one document, or one per blank-line block
# The files `datasets.save_to_disk` writes next to its .arrow data: descriptions, not rows.
ARROW_SIDECARS = ("state.json", "dataset_info.json", "dataset_dict.json")
SAMPLE_ROWS = 200  # rows a text file's schema is inferred from


def file_format(path: Path) -> tuple[str, str | None]:
    """(format, compression or None) of a data file, from its suffixes; MiniQwenError naming the accepted ones."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (compression and fmt not in TEXT_FORMATS):
        raise MiniQwenError(f"'{path}' is not a data format mini_qwen reads (suffix '{''.join(path.suffixes)}'): "
                            f"use {ACCEPTED}.")
    return fmt, compression


def _accepted(path: Path) -> bool:
    try:
        file_format(path)
    except MiniQwenError:
        return False
    return not (path.name == "dataset_dict.json"
                or (path.name in ARROW_SIDECARS and any(path.parent.glob("*.arrow"))))


def find_data_files(data_dir: str, pattern: str | None = DEFAULT_GLOB, what: str = "data") -> list[Path]:
    """The data files `pattern` matches under `data_dir` (or `data_dir` itself when it is a file), in name order.
    Files of other formats (a README, a .DS_Store) are left out; when nothing of an accepted format is left, the
    message says what the folder holds and which formats are read."""
    root, pattern = Path(data_dir), pattern or DEFAULT_GLOB
    if not root.exists():
        raise MiniQwenError(f"{what} folder '{data_dir}' does not exist: run `bash prepare.sh` to download the data, "
                            f"or point --data_dir at mini_data/... for the demo.")
    if root.is_file():
        file_format(root)
        return [root]
    matched = sorted(p for p in root.glob(pattern)  # hidden files and folders (.git, .cache) hold no data
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    files = [p for p in matched if _accepted(p)]
    if files:
        return files
    if matched:
        raise MiniQwenError(f"no readable data file matching '{pattern}' under {what} folder '{data_dir}': it holds "
                            f"{', '.join(p.name for p in matched[:3])}{' ...' if len(matched) > 3 else ''}; "
                            f"mini_qwen reads {ACCEPTED}.")
    if pattern != DEFAULT_GLOB:
        others = [p for p in sorted(root.glob(DEFAULT_GLOB)) if p.is_file() and _accepted(p)]
        if others:
            raise MiniQwenError(
                f"--data_glob '{pattern}' (a flag, or the data_glob key of a --config recipe) matches no file under "
                f"{what} folder '{data_dir}', which holds {len(others)} data file(s) (e.g. "
                f"{others[0].relative_to(root)}): pass --data_glob '{DEFAULT_GLOB}' to use them all, or a glob "
                f"that matches yours.")
    raise MiniQwenError(f"no data files matching '{pattern}' under {what} folder '{data_dir}': check --data_dir / "
                        f"--data_glob (did the download finish?); mini_qwen reads {ACCEPTED}.")


# --------------------------------------------------------------------------- text formats, line by line

def _open_binary(path: Path, compression: str | None):
    """(buffered byte stream, the raw file under it): the raw file's position tells how much of the file is read."""
    raw = open(path, "rb")  # noqa: SIM115 -- closed by the caller through the returned stream
    if compression is None:
        return raw, raw
    return io.BufferedReader(pa.CompressedInputStream(raw, compression), 1 << 20), raw


def _bad(path: Path, where: str, what: str, fix: str, on_bad_rows: str, stats: dict | None) -> None:
    """A line that cannot be read: stop with file and place, or count it (on_bad_rows="skip")."""
    if on_bad_rows == "error":
        raise MiniQwenError(f"{path}: {where}: {what}. {fix}, or rerun with --on_bad_rows skip to skip and count "
                            f"such lines.")
    if stats is not None:
        stats["unreadable"] = stats.get("unreadable", 0) + 1


def _decoded_lines(path: Path, stream, on_bad_rows: str, stats: dict | None):
    """(line number from 1, text) of each line of a byte stream; a line that is not UTF-8 is named with its byte
    offset (or skipped)."""
    offset = 0
    for number, raw in enumerate(stream, 1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            _bad(path, f"line {number}, byte offset {offset + err.start}", f"not UTF-8 text ({err.reason})",
                 "Convert the file to UTF-8 (e.g. `iconv -f GBK -t UTF-8`)", on_bad_rows, stats)
        offset += len(raw)


def _json_records(path: Path, stream, on_bad_rows: str, stats: dict | None):
    for number, line in _decoded_lines(path, stream, on_bad_rows, stats):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            _bad(path, f"line {number}", f"not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno})",
                 "Fix or remove the line", on_bad_rows, stats)
            continue
        if not isinstance(record, dict):
            _bad(path, f"line {number}", f"a JSON {type(record).__name__}, not a {{column: value}} record",
                 "Write one JSON object a line", on_bad_rows, stats)
            continue
        yield record


def _json_array(path: Path, stream, on_bad_rows: str, stats: dict | None):
    """A .json file: an array of records (read whole), or JSON lines."""
    head = stream.peek(64)[:64].lstrip()
    if not head.startswith(b"["):
        yield from _json_records(path, stream, on_bad_rows, stats)
        return
    try:
        records = json.loads(stream.read().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise MiniQwenError(f"{path}: byte offset {err.start}: not UTF-8 text ({err.reason}). Convert the file to "
                            f"UTF-8 (e.g. `iconv -f GBK -t UTF-8`).") from None
    except json.JSONDecodeError as err:
        raise MiniQwenError(f"{path}: line {err.lineno}: not valid JSON ({err.msg.removesuffix(' at')} at column "
                            f"{err.colno}). Fix it, "
                            f"or write the records one a line as .jsonl (a bad line can then be skipped).") from None
    for i, record in enumerate(records):
        if isinstance(record, dict):
            yield record
        else:
            _bad(path, f"element {i}", f"a JSON {type(record).__name__}, not a {{column: value}} record",
                 "Write an array of objects", on_bad_rows, stats)


def _csv_records(path: Path, stream, delimiter: str, on_bad_rows: str, stats: dict | None):
    """csv / tsv rows as {header: text}; quoted fields may span lines. Undecodable bytes are kept as surrogates by
    the decoder and reported per row (csv rows have no fixed byte offset)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a document in one field easily passes csv's 128 KB default
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        yield from _csv_rows(path, reader, on_bad_rows, stats)
    finally:
        text.detach()  # the byte stream stays open: its owner closes it (and may still ask its position)


def _csv_rows(path: Path, reader, on_bad_rows: str, stats: dict | None):
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    for row in reader:
        if not row:
            continue
        where = f"row {reader.line_num - 1} (line {reader.line_num})"
        if len(row) != len(header):
            _bad(path, where, f"{len(row)} fields where the header has {len(header)}",
                 "Quote fields that hold the delimiter", on_bad_rows, stats)
            continue
        try:
            for value in row:
                value.encode("utf-8")
        except UnicodeEncodeError:
            _bad(path, where, "not UTF-8 text", "Convert the file to UTF-8 (e.g. `iconv -f GBK -t UTF-8`)",
                 on_bad_rows, stats)
            continue
        yield dict(zip(header, row))


def _txt_records(path: Path, stream, split: str, on_bad_rows: str, stats: dict | None):
    """A .txt file as `text` records: the whole file, or each blank-line-separated block."""
    block: list[str] = []
    for _, line in _decoded_lines(path, stream, on_bad_rows, stats):
        if split == "blank_lines" and not line.strip():
            if block:
                yield {"text": "".join(block).strip("\n")}
            block = []
        else:
            block.append(line)
    text = "".join(block)
    if split == "blank_lines":
        if block:
            yield {"text": text.strip("\n")}
    else:
        yield {"text": text}


def _stream_records(path: Path, fmt: str, stream, options: dict | None, on_bad_rows: str, stats: dict | None):
    if fmt == "jsonl":
        return _json_records(path, stream, on_bad_rows, stats)
    if fmt == "json":
        return _json_array(path, stream, on_bad_rows, stats)
    if fmt in ("csv", "tsv"):
        return _csv_records(path, stream, "\t" if fmt == "tsv" else ",", on_bad_rows, stats)
    return _txt_records(path, stream, (options or {}).get("txt_split") or "file", on_bad_rows, stats)


def iter_records(path: Path, options: dict | None = None, on_bad_rows: str = "error", stats: dict | None = None):
    """Each record of a text-format file as a {column: value} dict, streamed."""
    fmt, compression = file_format(path)
    stream, _ = _open_binary(path, compression)
    with stream:
        yield from _stream_records(path, fmt, stream, options, on_bad_rows, stats)


# --------------------------------------------------------------------------- every format

def _arrow_reader(path: Path):
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source)  # what `datasets` writes
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source)


def _arrow_batches(path: Path):
    reader = _arrow_reader(path)
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        return (reader.get_batch(i) for i in range(reader.num_record_batches))
    return iter(reader)


def _unreadable_parquet(path: Path, err) -> MiniQwenError:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PAR1":
        return MiniQwenError(f"'{path}' is named .parquet but is not a parquet file (it does not start with the "
                             f"PAR1 magic bytes): if it holds JSON lines or csv, name it .jsonl / .csv (mini_qwen "
                             f"reads {ACCEPTED}); if it is a download, fetch it again.")
    return MiniQwenError(f"cannot read parquet file '{path}': {str(err).rstrip('.')}. The file is damaged "
                         f"(a download cut short?): re-download it or remove it.")


_SCHEMAS: dict = {}


def read_schema(path: Path, options: dict | None = None) -> pa.Schema:
    """Column names and types: a parquet / Arrow file's own, a text file's inferred from its first rows (a .txt
    file: one `text` column). Read once per file (and its size and time) in a process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, (options or {}).get("txt_split"))
    if key not in _SCHEMAS:
        _SCHEMAS[key] = _read_schema(path, options)
    return _SCHEMAS[key]


def _read_schema(path: Path, options: dict | None) -> pa.Schema:
    fmt, _ = file_format(path)
    if fmt == "parquet":
        try:
            return pq.read_schema(path)
        except (pa.ArrowException, OSError) as err:
            raise _unreadable_parquet(path, err) from None
    if fmt == "arrow":
        try:
            return _arrow_reader(path).schema
        except (pa.ArrowException, OSError) as err:
            raise MiniQwenError(f"cannot read Arrow file '{path}': {str(err).rstrip('.')}. Save the dataset again "
                                f"with `datasets`' save_to_disk, or remove it.") from None
    if fmt == "txt":
        return pa.schema([("text", pa.string())])
    sample = []
    for record in iter_records(path, options, on_bad_rows="skip"):
        sample.append(record)
        if len(sample) >= SAMPLE_ROWS:
            break
    if not sample:
        raise MiniQwenError(f"'{path}' holds no records (an empty or unreadable {fmt} file): fill it or remove it.")
    return infer_schema(sample)


def infer_schema(records: list[dict]) -> pa.Schema:
    """The Arrow schema of some records, column by column (a column whose values mix types is `null`)."""
    names = list(dict.fromkeys(name for record in records for name in record))
    fields = []
    for name in names:
        try:
            kind = pa.array([record.get(name) for record in records]).type
        except (pa.ArrowException, TypeError, ValueError):
            kind = pa.null()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def iter_batches(path: Path, columns: list[str], batch_rows: int = 1000, options: dict | None = None,
                 on_bad_rows: str = "error", stats: dict | None = None):
    """{column: values} batches of at most `batch_rows` rows of `columns` (a column a record lacks reads as None).
    Parquet / Arrow damage stops with the file and row; a bad line of a text file is named or skipped
    (`on_bad_rows`), and counted in `stats["unreadable"]`."""
    path = Path(path)
    fmt, _ = file_format(path)
    row = 0
    if fmt in ("parquet", "arrow"):
        try:
            if fmt == "parquet":
                batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
            else:
                batches = (b.select(columns).slice(i, batch_rows) for b in _arrow_batches(path)
                           for i in range(0, b.num_rows, batch_rows))
            for batch in batches:
                yield {name: batch.column(name).to_pylist() for name in columns}
                row += batch.num_rows
        except (pa.ArrowException, OSError) as err:
            raise MiniQwenError(f"{path}: unreadable at row ~{row}: {str(err).rstrip('.')}. The file is damaged: "
                                f"re-download it or remove it.") from None
        return
    values: dict[str, list] = {name: [] for name in columns}
    n = 0
    for record in iter_records(path, options, on_bad_rows, stats):
        for name in columns:
            values[name].append(record.get(name))
        n += 1
        if n == batch_rows:
            yield values
            values, n = {name: [] for name in columns}, 0
    if n:
        yield values


def known_rows(path: Path) -> int | None:
    """Rows a file holds when that is known without reading it (parquet footer, Arrow batches), else None."""
    fmt, _ = file_format(path)
    if fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "arrow":
        return sum(b.num_rows for b in _arrow_batches(path))
    return None


def count_rows(path: Path, options: dict | None = None) -> int:
    """Rows of a file: the footer's count, or the readable records of a text file (streamed)."""
    rows = known_rows(path)
    if rows is None:
        rows = sum(1 for _ in iter_records(path, options, on_bad_rows="skip"))
    return rows


def _text_bytes(values) -> int:
    total = 0
    for value in values:
        if isinstance(value, str):
            total += len(value.encode("utf-8"))
        elif value is not None:
            total += len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    return total


def column_bytes(path: Path, columns, options: dict | None = None, sample_bytes: int = 4 << 20) -> int:
    """Uncompressed bytes of `columns` in a file. Parquet: from its footer alone (no data read; a nested column's
    leaves, `conversations.list.element.value`, count towards their top-level column). Arrow: the buffers. Text
    formats: measured on the first `sample_bytes` of the file and scaled to its size (exact for a smaller file)."""
    path, columns = Path(path), set(columns)
    fmt, compression = file_format(path)
    if fmt == "parquet":
        meta = pq.ParquetFile(path).metadata
        total = 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            total += sum(group.column(c).total_uncompressed_size for c in range(group.num_columns)
                         if group.column(c).path_in_schema.split(".")[0] in columns)
        return total
    if fmt == "arrow":
        return sum(b.select([c for c in b.schema.names if c in columns]).nbytes for b in _arrow_batches(path))
    stream, raw = _open_binary(path, compression)
    measured, done = 0, True
    with stream:
        records = _stream_records(path, fmt, stream, options, "skip", None)
        for record in records:
            measured += _text_bytes(record.get(c) for c in columns)
            if raw.tell() > sample_bytes:
                done = False
                break
        read = raw.tell()
        records.close()
    size = path.stat().st_size
    return measured if done or not read else round(measured * size / read)


def last_rows(path: Path, column: str, limit: int, options: dict | None = None) -> list:
    """The last `limit` values of `column` (parquet: only the row groups needed; other formats: streamed)."""
    fmt, _ = file_format(path)
    if fmt == "parquet":
        reader, tail = pq.ParquetFile(path), []
        for group in reversed(range(reader.num_row_groups)):
            tail = reader.read_row_group(group, columns=[column]).column(0).to_pylist() + tail
            if len(tail) >= limit:
                break
        return tail[-limit:]
    kept: deque = deque(maxlen=limit)
    for batch in iter_batches(path, [column], options=options, on_bad_rows="skip"):
        kept.extend(batch[column])
    return list(kept)


def read_text(path: Path) -> str:
    """A whole (small) text file, e.g. eval's held-out .txt, decoded as UTF-8 with the file and offset on failure."""
    fmt, compression = file_format(path) if Path(path).suffix.lower() in (*FORMATS, *COMPRESSIONS) else ("txt", None)
    stream, _ = _open_binary(Path(path), compression)
    with stream:
        data = stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MiniQwenError(f"{path}: byte offset {err.start}: not UTF-8 text ({err.reason}). Convert the file to "
                            f"UTF-8 (e.g. `iconv -f GBK -t UTF-8`).") from None

