"""Held-out text for the perplexity column of mini_qwen_eval.py's batch report.

From `--heldout`: a .txt file (documents separated by blank lines, else one per line), a data file or folder of
PT text in any format the stages read (data/files.py: parquet, jsonl, csv, ...), or `none`. Without it,
mini_data/heldout.txt when it exists (text the demo never trains on), else the last documents of each file of the
PT data folder.
"""

import math
import re
from pathlib import Path

from mini_qwen.errors import MiniQwenError

HELDOUT_TXT = "mini_data/heldout.txt"


def _tail_of_files(data_files: list[Path], limit: int) -> list[str]:
    """The last documents of each file (so Chinese and English folders both count), `limit` in all; the text
    column is PT's own (data/pt.py's check_schema)."""
    from mini_qwen.data import pt
    from mini_qwen.data.common import read_schema
    from mini_qwen.data.files import last_rows

    per_file = max(1, math.ceil(limit / len(data_files)))
    texts = []
    for path in data_files:
        layout = pt.check_schema(path, read_schema(path), None)
        tail, want = [], per_file
        while True:  # more than the documents wanted, when some are empty
            rows = last_rows(path, layout.columns[0], want)
            tail = [t for t in rows if t and t.strip()]
            if len(tail) >= per_file or len(rows) < want:
                break
            want *= 2
        texts += tail[-per_file:]
    return texts[-limit:]


def load_heldout(heldout: str | None, heldout_data: str, heldout_docs: int) -> tuple[list[str] | None, str]:
    """(texts, where they come from) or (None, why perplexity is skipped), for --heldout, --heldout_data and
    --heldout_docs."""
    from mini_qwen.data.files import find_data_files, read_text

    note = ""
    if heldout and heldout.strip().lower() == "none":
        return None, "perplexity skipped (--heldout none)"
    if heldout:
        path = Path(heldout)
        if not path.exists():
            raise MiniQwenError(f"--heldout '{heldout}' does not exist: give a .txt file, a data file or folder "
                                f"(parquet, jsonl, csv, ...), or `none` to skip perplexity.")
    elif Path(HELDOUT_TXT).is_file():
        path = Path(HELDOUT_TXT)
    elif Path(heldout_data).exists():
        path = Path(heldout_data)
        note = " (PT data: also in training unless the PT run held these documents out)"
    else:
        return None, (f"perplexity skipped: no held-out text ({HELDOUT_TXT} and {heldout_data} do not exist; "
                      f"pass --heldout FILE)")
    if path.is_dir() or path.suffix.lower() != ".txt":
        texts = _tail_of_files(find_data_files(str(path), what="held-out data"), heldout_docs)
        source = f"last {len(texts)} documents of {path}{note}"
    else:
        raw = read_text(path)
        blocks = re.split(r"\n\s*\n", raw) if re.search(r"\n\s*\n", raw.strip()) else raw.splitlines()
        texts = [b.strip() for b in blocks if b.strip()][:heldout_docs]
        source = f"{len(texts)} texts of {path}"
    if not texts:
        raise MiniQwenError(f"held-out text '{path}' holds no text: fill it, or pass --heldout none.")
    return texts, source
