"""Held-out text for the perplexity column of mini_qwen_eval.py's batch report.

From `--heldout`: a .txt file (documents separated by blank lines, else one per line), a parquet file or
folder with a `text` column, or `none`. Without it, mini_data/heldout.txt when it exists (text the demo
never trains on), else the last documents of each file of the PT data folder.
"""

import math
import re
from pathlib import Path

from mini_qwen.errors import MiniQwenError

HELDOUT_TXT = "mini_data/heldout.txt"


def _tail_of_parquet(files: list[Path], limit: int) -> list[str]:
    """The last documents of each file (so Chinese and English folders both count), `limit` in all."""
    import pyarrow.parquet as pq

    from mini_qwen.data.common import check_string_column, read_schema, require_columns

    per_file = max(1, math.ceil(limit / len(files)))
    texts = []
    for path in files:
        schema = read_schema(path)
        require_columns(path, schema, {"text": "the document text"})
        check_string_column(path, schema, "text")
        reader, tail = pq.ParquetFile(path), []
        for group in reversed(range(reader.num_row_groups)):  # read only the row groups needed
            rows = [t for t in reader.read_row_group(group, columns=["text"]).column(0).to_pylist() if t and t.strip()]
            tail = rows + tail
            if len(tail) >= per_file:
                break
        texts += tail[-per_file:]
    return texts[-limit:]


def load_heldout(heldout: str | None, heldout_data: str, heldout_docs: int) -> tuple[list[str] | None, str]:
    """(texts, where they come from) or (None, why perplexity is skipped), for --heldout, --heldout_data and
    --heldout_docs."""
    from mini_qwen.data.common import find_parquet_files

    note = ""
    if heldout and heldout.strip().lower() == "none":
        return None, "perplexity skipped (--heldout none)"
    if heldout:
        path = Path(heldout)
        if not path.exists():
            raise MiniQwenError(f"--heldout '{heldout}' does not exist: give a .txt file, a parquet file or "
                                f"folder, or `none` to skip perplexity.")
    elif Path(HELDOUT_TXT).is_file():
        path = Path(HELDOUT_TXT)
    elif Path(heldout_data).exists():
        path = Path(heldout_data)
        note = " (PT data: also in training unless the PT run held these documents out)"
    else:
        return None, (f"perplexity skipped: no held-out text ({HELDOUT_TXT} and {heldout_data} do not exist; "
                      f"pass --heldout FILE)")
    if path.is_dir() or path.suffix == ".parquet":
        texts = _tail_of_parquet(find_parquet_files(str(path), what="held-out data"), heldout_docs)
        source = f"last {len(texts)} documents of {path}{note}"
    else:
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise MiniQwenError(f"cannot read held-out text '{path}': {err}.") from None
        blocks = re.split(r"\n\s*\n", raw) if re.search(r"\n\s*\n", raw.strip()) else raw.splitlines()
        texts = [b.strip() for b in blocks if b.strip()][:heldout_docs]
        source = f"{len(texts)} texts of {path}"
    if not texts:
        raise MiniQwenError(f"held-out text '{path}' holds no text: fill it, or pass --heldout none.")
    return texts, source
