"""Show the schema and the first rows of parquet data (PT, SFT or DPO) as readable JSON.

Run as:
    python utils/view_data.py data/pt/news_media/chinese/high/rank_00000.parquet
    python utils/view_data.py data/sft --rows 2 --columns id,conversations
    python utils/view_data.py data/dpo --rows 1 --max-chars 0      # 0 = do not truncate

PATH is a parquet file or a folder (all ``*.parquet`` below it, in name order). Only the
first rows are read (``iter_batches``), so this is instant even on multi-GB files. Long
strings are cut to ``--max-chars`` characters with a note of how much was left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mini_qwen.errors import MiniQwenError, run_main

# Which of the BAAI datasets a schema looks like, judged by its columns.
_KINDS = (
    ({"chosen", "rejected"}, "DPO preference data (Infinity-Preference style: prompt / chosen / rejected)"),
    ({"conversations"}, "SFT chat data (Infinity-Instruct style: conversations of from / value turns)"),
    ({"text"}, "PT text corpus (IndustryCorpus2 style: one document per row in 'text')"),
)


def find_parquet_files(path: Path) -> list[Path]:
    if not path.exists():
        raise MiniQwenError(f"{path} does not exist: pass a .parquet file or a folder containing .parquet files")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise MiniQwenError(
            f"no .parquet files under {path}: point at the folder that prepare.sh filled "
            f"(e.g. data/pt, data/sft, data/dpo)"
        )
    return files


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


def _open(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError for non-parquet input
        raise MiniQwenError(
            f"cannot read {path} as parquet ({err}); is the file complete? Re-run prepare.sh to fetch it again"
        ) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print the schema and the first rows of parquet files as JSON.")
    parser.add_argument("path", metavar="PATH", help="a .parquet file or a folder searched recursively for them")
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
    files = find_parquet_files(path)
    if path.is_dir():
        total = sum(_open(f).metadata.num_rows for f in files[:1000])
        more = " (row count of the first 1000 files)" if len(files) > 1000 else ""
        print(f"{path}: {len(files)} parquet file(s), {total} rows{more}")

    shown = 0
    last_schema = None
    for file in files:
        if shown >= args.rows:
            break
        pf = _open(file)
        schema = pf.schema_arrow
        if columns:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise MiniQwenError(
                    f"{file} has no column {', '.join(repr(c) for c in missing)}; "
                    f"its columns are: {', '.join(schema.names)} (fix --columns)"
                )
        print(f"\n== {file}  ({pf.metadata.num_rows} rows, {pf.metadata.num_row_groups} row group(s))")
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
        if pf.metadata.num_rows == 0:
            continue
        batch = next(pf.iter_batches(batch_size=args.rows - shown, columns=columns), None)
        if batch is None:
            continue
        for i, row in enumerate(batch.to_pylist()):
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
