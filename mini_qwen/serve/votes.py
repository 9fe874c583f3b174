"""Arena votes -> preference pairs that `mini_qwen_dpo.py --data_dir <votes folder>` trains on directly.

A vote for one answer becomes one row of `<folder>/votes.parquet` in the Infinity-Preference
schema that mini_qwen/data/dpo.py reads (the same column types as mini_data/dpo):
    prompt   string                                   the user's question
    chosen   list<struct<content: string, role: string>>   [system], user, winning answer
    rejected list<struct<content: string, role: string>>   [system], user, losing answer
plus the context DPO ignores: chosen_model, rejected_model, created (UTC, ISO 8601), id.
A tie says neither answer is better: no training signal, so it goes to `<folder>/ties.log`, JSON lines
(kept for counting, invisible to DPO: `.log` is no data format mini_qwen/data/files.py reads, so a DPO run on the
folder with its default --data_glob reads votes.parquet only).

Parquet cannot be appended to in place, so each vote rewrites the file: read, add the row,
write a temporary file, rename it over the old one (atomic: a reader, or a DPO run started
meanwhile, sees the old or the new file, never half of one). A thread lock serialises the
server's own requests and an exclusive `flock` on `<folder>/.votes.lock` serialises several
server processes sharing a folder. Rewriting is O(votes) per vote: fine for the thousands of
votes people click by hand.
"""

import fcntl
import json
import os
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mini_qwen.errors import MiniQwenError

MESSAGE = pa.struct([("content", pa.string()), ("role", pa.string())])
SCHEMA = pa.schema([("prompt", pa.string()), ("chosen", pa.list_(MESSAGE)), ("rejected", pa.list_(MESSAGE)),
                    ("chosen_model", pa.string()), ("rejected_model", pa.string()), ("created", pa.string()),
                    ("id", pa.string())])
VOTES_FILE = "votes.parquet"
TIES_FILE = "ties.log"  # JSON lines, but not .jsonl: DPO on the folder must not read the ties


class VoteStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise MiniQwenError(f"cannot create the votes folder '{folder}' ({err.strerror}): pass a writable "
                                f"--votes_dir.") from None
        self.path = self.folder / VOTES_FILE
        self._lock = threading.Lock()
        if self.path.exists():  # a file we cannot extend must fail at start, not at the first click
            try:
                schema = pq.read_schema(self.path)
            except (OSError, pa.ArrowException) as err:
                raise MiniQwenError(f"cannot read the votes file {self.path} ({err}): move it away or pass another "
                                    f"--votes_dir.") from None
            missing = [n for n in ("prompt", "chosen", "rejected") if n not in schema.names]
            if missing:
                raise MiniQwenError(f"{self.path} exists but is not a votes file (no column {missing[0]}): move it "
                                    f"away or pass another --votes_dir.")

    @contextmanager
    def _locked(self):
        """This server's threads one at a time (the lock), and other processes sharing the folder (flock)."""
        with self._lock:
            fd = os.open(self.folder / ".votes.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def add(self, prompt: str, system: str | None, answers: dict[str, str], models: dict[str, str],
            winner: str) -> dict:
        """Record one vote (`winner` a, b or tie) on the answers of sides a and b; returns the record."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        head = ([{"content": system, "role": "system"}] if system else []) + [{"content": prompt, "role": "user"}]
        if winner == "tie":
            record = {"prompt": prompt, "system": system, "answers": answers, "models": models, "created": now}
            with self._locked(), open(self.folder / TIES_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            return {"kind": "tie", **record}
        loser = "b" if winner == "a" else "a"
        row = {"prompt": prompt,
               "chosen": head + [{"content": answers[winner], "role": "assistant"}],
               "rejected": head + [{"content": answers[loser], "role": "assistant"}],
               "chosen_model": models[winner], "rejected_model": models[loser], "created": now,
               "id": uuid.uuid4().hex}
        new = pa.Table.from_pylist([row], schema=SCHEMA)
        with self._locked():
            table = pa.concat_tables([pq.read_table(self.path, schema=SCHEMA), new]) if self.path.exists() else new
            tmp = self.folder / f".{VOTES_FILE}.{os.getpid()}.tmp"  # not *.parquet: DPO's glob never sees it
            pq.write_table(table, tmp)
            os.replace(tmp, self.path)
        return {"kind": "pair", **row}

    def counts(self) -> dict:
        pairs = pq.read_metadata(self.path).num_rows if self.path.exists() else 0
        ties_path = self.folder / TIES_FILE
        ties = sum(1 for _ in open(ties_path, encoding="utf-8")) if ties_path.exists() else 0
        return {"pairs": pairs, "ties": ties}
