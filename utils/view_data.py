"""Show the schema and the first rows of data files (PT, SFT or DPO; any format the stages read) as readable JSON.

Run as:
    python utils/view_data.py data/pt/news_media/chinese/high/rank_00000.parquet
    python utils/view_data.py data/sft --rows 2 --columns id,conversations
    python utils/view_data.py data/dpo --rows 1 --max-chars 0      # 0 = do not truncate

PATH is a data file or a folder (every file of a format mini_qwen reads below it, in name order: parquet,
jsonl/json, csv/tsv, txt, their .gz/.zst, a datasets save_to_disk folder; mini_qwen/data/files.py). Only the
first rows are read, so this is instant even on multi-GB files. Long
strings are cut to ``--max-chars`` characters with a note of how much was left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mini_qwen.data import files as data_files
from mini_qwen.errors import MiniQwenError, run_main

# Which of the BAAI datasets a schema looks like, judged by its columns.
_KINDS = (
    ({"chosen", "rejected"}, "DPO preference data (Infinity-Preference style: prompt / chosen / rejected)"),
    ({"conversations"}, "SFT chat data (Infinity-Instruct style: conversations of from / value turns)"),
    ({"text"}, "PT text corpus (IndustryCorpus2 style: one document per row in 'text')"),
)


def truncate(value, max_chars: int):
    """``value`` with every string longer than ``max_chars`` cut, recursively (0 = keep everything)."""
    if isinstance(value, str):
        if max_chars and len(value) > max_chars:
            return f"{value[:max_chars]}… [+{len(value) - max_chars} chars]"
        return value
    if isinstance(value, dict):
        return {k: truncate(v, max_chars) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [truncate(v, max_chars) for v in value]
    if isinstance(value, bytes):
        return truncate(f"<{len(value)} bytes> {value[:64]!r}", max_chars)
    return value


def describe_kind(columns) -> str | None:
    names = set(columns)
    for needed, description in _KINDS:
        if needed <= names:
            return description
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print the schema and the first rows of data files as JSON.")
    parser.add_argument("path", metavar="PATH", help="a data file or a folder searched recursively for them")
    parser.add_argument("--rows", type=int, default=3, help="number of rows to show in total (default 3)")
    parser.add_argument("--columns", help="comma-separated columns to show (default: all)")
    parser.add_argument(
        "--max-chars", type=int, default=300, help="cut strings longer than this (0 = no limit; default 300)"
    )
    args = parser.parse_args(argv)

    if args.rows < 1:
        raise MiniQwenError(f"--rows must be at least 1, got {args.rows}")
    if args.max_chars < 0:
        raise MiniQwenError(f"--max-chars must be 0 (no limit) or positive, got {args.max_chars}")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if args.columns is not None and not columns:
        raise MiniQwenError("--columns is empty: give comma-separated column names, e.g. --columns text,industry_type")

    path = Path(args.path)
    files = data_files.find_data_files(str(path))
    if path.is_dir():
        counts = [data_files.known_rows(f) for f in files[:1000]]  # footers only: text files are not read whole
        kinds = sorted({data_files.file_format(f)[0] for f in files})
        more = " (row count of the first 1000 files)" if len(files) > 1000 else ""
        rows = f"{sum(counts)} rows" if None not in counts else "rows of text files not counted"
        print(f"{path}: {len(files)} {'/'.join(kinds)} file(s), {rows}{more}")

    shown = 0
    last_schema = None
    for file in files:
        if shown >= args.rows:
            break
        schema = data_files.read_schema(file)
        if columns:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise MiniQwenError(
                    f"{file} has no column {', '.join(repr(c) for c in missing)}; "
                    f"its columns are: {', '.join(schema.names)} (fix --columns)"
                )
        rows = data_files.known_rows(file)
        print(f"\n== {file}" + (f"  ({rows} rows)" if rows is not None else ""))
        if schema != last_schema:
            kind = describe_kind(schema.names)
            if kind:
                print(f"looks like: {kind}")
            print("schema:")
            for field in schema:
                print(f"  {field.name}: {field.type}")
            last_schema = schema
        else:
            print("schema: same as above")
        names = columns or schema.names
        batch = next(data_files.iter_batches(file, names, args.rows - shown, on_bad_rows="skip"), None)
        if not batch:
            continue
        for i, row in enumerate(dict(zip(names, values)) for values in zip(*batch.values())):
            shown += 1
            print(f"\n-- row {shown} ({file.name} #{i})")
            print(json.dumps(truncate(row, args.max_chars), ensure_ascii=False, indent=2, default=str))
    if shown == 0:
        print("\n(no rows: every file is empty)")
    return 0


if __name__ == "__main__":
    try:
        run_main(main)
    except BrokenPipeError:  # `view_data.py ... | head` closed the pipe: not an error
        sys.stderr.close()
