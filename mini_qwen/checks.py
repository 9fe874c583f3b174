"""Data validation shared by `utils/check_data.py` and the stage loaders.

Every check here is the loaders' own: the per-file schema checks of mini_qwen/data.py (and
mini_qwen/preference.py for DPO), the row rules of `data.text_problem` (PT),
`chat.normalize_messages` (SFT) and `preference.parse_pair` (DPO), and the truncation of
`chat.encode_conversations` / `preference.encode_pairs`. So a file that passes
`check_data.py` loads in the stage, and a row it flags is a row the stage skips (or stops on
with `--on_bad_rows error`).

Files are read one at a time with pyarrow, batch by batch, and only the columns the stage
reads: the corpus is never held in memory whole.
"""

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mini_qwen.data import (check_column_types, check_conversations_column, check_string_column, column_types,
                            describe_clash,
                            read_schema, require_columns, text_problem)
from mini_qwen.errors import MiniQwenError

STAGES = ("pt", "sft", "dpo")


def stage_columns(stage: str, text_column: str = "text") -> list[str]:
    """The columns a stage reads; every other column is ignored."""
    if stage == "pt":
        return [text_column]
    if stage == "sft":
        return ["conversations"]
    if stage == "dpo":
        return ["prompt", "chosen", "rejected"]
    raise MiniQwenError(f"unknown stage '{stage}': use one of {', '.join(STAGES)}.")


def check_file_schema(stage: str, path: Path, schema: pa.Schema, text_column: str = "text") -> None:
    """The loader's own column checks for one file; raises MiniQwenError naming the file and column."""
    if stage == "pt":
        require_columns(path, schema, {text_column: "the document text"})
        check_string_column(path, schema, text_column)
    elif stage == "sft":
        check_conversations_column(path, schema)
    elif stage == "dpo":
        from mini_qwen.preference import check_preference_columns

        check_preference_columns(path, schema)
    else:
        stage_columns(stage)  # raises


def check_stage_files(stage: str, files: list[Path], text_column: str = "text") -> dict[Path, pa.Schema]:
    """Cheap checks a stage runs on every file before reading any row (only parquet footers are read):
    readable, the stage's columns present with the right types, and of one type in all files.
    Returns the schemas."""
    schemas = {}
    for path in files:
        schemas[path] = schema = read_schema(path)
        check_file_schema(stage, path, schema, text_column)
    if stage != "pt":  # PT reads file by file, so string vs large_string etc. never meet
        check_column_types(files, stage_columns(stage, text_column), schemas)
    return schemas


def _normalize(reason: str) -> str:
    return re.sub(r"\d+", "N", reason)


def row_problems(stage: str, columns: dict[str, list]) -> list[str | None]:
    """Why each row of a batch ({column: values}) cannot be trained on, or None for a good row."""
    if stage == "pt":
        (name, texts), = columns.items()
        words = {"a null": "null", "an empty": "empty or whitespace-only"}
        return [f"{words[problem]} '{name}'" if (problem := text_problem(t)) else None for t in texts]
    out = []
    if stage == "sft":
        from mini_qwen.chat import BadConversation, normalize_messages

        for conv in columns["conversations"]:
            if conv is None:
                out.append("null 'conversations'")
                continue
            try:
                normalize_messages(conv)
                out.append(None)
            except BadConversation as err:
                out.append(str(err))
        return out
    from mini_qwen.preference import BadPair, parse_pair

    for prompt, chosen, rejected in zip(columns["prompt"], columns["chosen"], columns["rejected"]):
        nulls = [n for n, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)) if v is None]
        if nulls:
            out.append("null " + " and ".join(f"'{n}'" for n in nulls))
            continue
        try:
            parse_pair(prompt, chosen, rejected)
            out.append(None)
        except BadPair as err:
            out.append(str(err))
    return out


def overlong_rows(stage: str, columns: dict[str, list], problems: list, tokenizer, max_length: int,
                  max_prompt_length: int | None = None) -> list[str | None]:
    """For the good rows: what the stage's truncation does to a row longer than `max_length` tokens."""
    good = [i for i, p in enumerate(problems) if p is None]
    out: list[str | None] = [None] * len(problems)
    if not good:
        return out
    if stage == "pt":
        from mini_qwen.packing import tokenize_batch

        (name, texts), = columns.items()
        _, lengths = tokenize_batch(tokenizer, [texts[i] for i in good], tokenizer.convert_tokens_to_ids("<|im_end|>"))
        for i, n in zip(good, lengths):
            if n > max_length:
                out[i] = f"longer than {max_length} tokens (split across blocks)"
    elif stage == "sft":
        from mini_qwen.chat import encode_conversations, normalize_messages

        convs = [normalize_messages(columns["conversations"][i]) for i in good]
        encoded = encode_conversations(tokenizer, convs, max_length)
        for i, truncated, labels in zip(good, encoded["truncated"], encoded["labels"]):
            if truncated:
                out[i] = (f"longer than {max_length} tokens (truncated)" if any(t != -100 for t in labels)
                          else f"longer than {max_length} tokens with no answer token left (dropped)")
    else:
        from mini_qwen.preference import encode_pairs, parse_pair

        pairs = [parse_pair(columns["prompt"][i], columns["chosen"][i], columns["rejected"][i]) for i in good]
        prompt_budget = max_prompt_length or max(max_length // 2, 1)
        for i, pair in zip(good, encode_pairs(tokenizer, pairs, max_length, prompt_budget)):
            if pair["dropped"]:
                out[i] = f"dropped after truncation to {max_length} tokens: {pair['dropped']}"
            elif pair["prompt_cut"] or pair["answer_cut"]:
                out[i] = f"longer than {max_length} tokens (truncated)"
    return out


@dataclass
class FileReport:
    path: Path
    rows: int = 0
    error: str | None = None          # the file cannot be used at all (unreadable, missing/wrong column)
    extra: list[str] = field(default_factory=list)   # columns the stage never reads
    bad: Counter = field(default_factory=Counter)    # reason -> rows
    first_bad: dict = field(default_factory=dict)    # reason -> (first row, its exact message)
    long: Counter = field(default_factory=Counter)   # what truncation does -> rows

    def line(self) -> str:
        if self.error:
            return f"{self.path}: ERROR {self.error}"
        parts = [f"{self.rows} rows"]
        if self.extra:
            parts.append(f"extra columns (not read): {', '.join(self.extra)}")
        if self.bad:
            parts.append("bad rows: " + "; ".join(f"{n} {reason} (first at row {self.first_bad[reason][0]})"
                                                  for reason, n in self.bad.most_common()))
        if self.long:
            parts.append("; ".join(f"{n} {what}" for what, n in self.long.most_common()))
        return f"{self.path}: " + "; ".join(parts)


def scan_file(stage: str, path: Path, schema: pa.Schema, text_column: str = "text", batch_rows: int = 2048,
              tokenizer=None, max_length: int | None = None, max_prompt_length: int | None = None) -> FileReport:
    """Read one file batch by batch and count its bad (and, with a tokenizer, over-long) rows."""
    report = FileReport(path)
    columns = stage_columns(stage, text_column)
    report.extra = [n for n in schema.names if n not in columns]
    try:
        check_file_schema(stage, path, schema, text_column)
    except MiniQwenError as err:
        report.error = str(err).removeprefix(f"{path}: ")
        return report
    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            values = {name: batch.column(name).to_pylist() for name in columns}
            problems = row_problems(stage, values)
            for i, problem in enumerate(problems):
                if problem:
                    reason = _normalize(problem)  # "turn 3 has ..." and "turn 5 has ..." count together
                    report.bad[reason] += 1
                    report.first_bad.setdefault(reason, (row + i, problem))
            if tokenizer is not None and max_length:
                for what in overlong_rows(stage, values, problems, tokenizer, max_length, max_prompt_length):
                    if what:
                        report.long[what] += 1
            row += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        report.error = f"unreadable at row ~{row}: {str(err).rstrip('.')}. Re-download the file or remove it."
    report.rows = row
    return report


@dataclass
class DataReport:
    stage: str
    files: list[FileReport]
    clashes: dict[str, dict[str, list]]  # column -> {type: files}, columns with more than one type
    read_columns: list[str]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bad(self) -> Counter:
        return sum((f.bad for f in self.files), Counter())

    @property
    def long(self) -> Counter:
        return sum((f.long for f in self.files), Counter())

    def fatal(self) -> list[str]:
        """Problems no stage can run with, whatever --on_bad_rows says."""
        out = [f"{f.path}: {f.error}" for f in self.files if f.error]
        out += [f"type clash in a column {self.stage} reads: {describe_clash(c, t)}"
                for c, t in self.clashes.items() if c in self.read_columns]
        return out

    def lines(self) -> list[str]:
        out = [f.line() for f in self.files]
        for column, types in self.clashes.items():
            if column in self.read_columns:
                out.append(f"ERROR type clash: {describe_clash(column, types)}; {self.stage} reads '{column}', so "
                           f"the files cannot be loaded together")
            else:
                out.append(f"info: type clash: {describe_clash(column, types)}; harmless, {self.stage} never "
                           f"reads '{column}'")
        bad, long = self.bad, self.long
        summary = (f"{self.stage}: {len(self.files)} files, {self.rows} rows, {sum(bad.values())} bad rows"
                   + (f" ({', '.join(f'{n} {r}' for r, n in bad.most_common())})" if bad else ""))
        if long:
            summary += f", {sum(long.values())} over-long ({', '.join(f'{n} {w}' for w, n in long.most_common())})"
        out.append(summary)
        return out


def check_data(stage: str, files: list[Path], text_column: str = "text", tokenizer=None,
               max_length: int | None = None, max_prompt_length: int | None = None,
               batch_rows: int = 2048, log=print) -> DataReport:
    """Scan every file (one at a time) and return the report; prints one line per file as it goes."""
    columns = stage_columns(stage, text_column)
    schemas, reports = {}, []
    for path in files:
        try:
            schemas[path] = schema = read_schema(path)
        except MiniQwenError as err:
            report = FileReport(path, error=str(err))
        else:
            report = scan_file(stage, path, schema, text_column, batch_rows, tokenizer, max_length,
                               max_prompt_length)
        reports.append(report)
        log(report.line())
    clashes = {c: t for c, t in column_types(schemas).items() if len(t) > 1}
    return DataReport(stage, reports, clashes, columns)


def verdict(report: DataReport, on_bad_rows: str = "error") -> str | None:
    """The one-line error for `report` (None: the data can be trained on under `on_bad_rows`)."""
    fatal = report.fatal()
    bad = report.bad
    if fatal:
        more = f" (and {len(fatal) - 3} more, listed above)" if len(fatal) > 3 else ""
        return (f"{len(fatal)} problem(s) no {report.stage} run can get past: "
                + "; ".join(f.rstrip(".") for f in fatal[:3]) + more
                + (f". Also {sum(bad.values())} bad rows." if bad else "."))
    if bad and on_bad_rows == "error":
        first = next(f for f in report.files if f.bad)
        row, message = min(first.first_bad.values())
        return (f"{sum(bad.values())} bad rows in {sum(1 for f in report.files if f.bad)} of {len(report.files)} "
                f"files ({', '.join(f'{n} {r}' for r, n in bad.most_common())}); first: {first.path}: row "
                f"{row}: {message}. Fix or remove them, or rerun with --on_bad_rows skip "
                f"(the stages skip and count such rows by default).")
    if report.rows - sum(bad.values()) <= 0:
        return f"no usable row in the {len(report.files)} files: every row is bad ({dict(bad)})."
    return None
