"""Checking a stage's files: the stage scripts' check before training and `utils/check_data.py`'s report.

Every rule is the stage data module's own (mini_qwen/data/pt.py, sft.py, dpo.py, one
table entry each in STAGES): its columns and schema check, its row problems and its over-length
rule. So a file that passes `check_data.py` loads in the stage, and a row it flags is a row the
stage skips (or stops on with `--on_bad_rows error`).

The stage script runs `check_stage_files` once, on the files it found, and hands the same list to
the stage's `build_dataset`, which reads them without checking again.

Files are read one at a time with pyarrow, batch by batch, and only the columns the stage
reads: the corpus is never held in memory whole.
"""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mini_qwen import stages
from mini_qwen.data.common import column_types, describe_clash, find_parquet_files, fold_digits, read_schema
from mini_qwen.errors import MiniQwenError

STAGES = {s.name: s.data_module() for s in stages.STAGES}  # the table of stages, in its order


def stage_data(stage: str):
    """The data module of `stage` (data.pt, data.sft or data.dpo)."""
    try:
        return STAGES[stage]
    except KeyError:
        raise MiniQwenError(f"unknown stage '{stage}': use one of {', '.join(STAGES)}.") from None


def check_stage_files(stage: str, files: list[Path], text_column: str = "text") -> dict[Path, pa.Schema]:
    """Cheap checks a stage runs on every file before reading any row (only parquet footers are read):
    readable, the stage's columns present with the right types, and of one type in all files.
    Returns the schemas."""
    module = stage_data(stage)
    schemas = {}
    for path in files:
        schemas[path] = schema = read_schema(path)
        module.check_schema(path, schema, text_column)
    # `datasets` cannot merge, e.g., conversations whose records have an extra field in some files; columns
    # no stage reads (7M's int64 `id` vs Gen's string one) may differ freely.
    if module.FILES_MERGED:
        clashes = {c: t for c, t in column_types(schemas, module.columns(text_column)).items() if len(t) > 1}
        if clashes:
            raise MiniQwenError("the files disagree on the type of a column training reads: "
                                + "; ".join(describe_clash(c, t) for c, t in clashes.items())
                                + ". Convert them to one type, or train on one group of files at a time "
                                  "(--data_glob).")
    return schemas


def find_stage_files(
    stage: str, data_dir: str, data_glob: str = "**/*.parquet", text_column: str = "text"
) -> list[Path]:
    """A stage script's first data step: find its parquet files and check them, once, before any model is
    loaded. The stage then passes this list to its `build_dataset`, which trusts it."""
    files = find_parquet_files(data_dir, data_glob, what=stage_data(stage).WHAT)
    check_stage_files(stage, files, text_column)
    return files


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
    module = stage_data(stage)
    columns = module.columns(text_column)
    report.extra = [n for n in schema.names if n not in columns]
    try:
        module.check_schema(path, schema, text_column)
    except MiniQwenError as err:
        report.error = str(err).removeprefix(f"{path}: ")
        return report
    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            values = {name: batch.column(name).to_pylist() for name in columns}
            problems = module.row_problems(values)
            for i, problem in enumerate(problems):
                if problem:
                    reason = fold_digits(problem)
                    report.bad[reason] += 1
                    report.first_bad.setdefault(reason, (row + i, problem))
            good = [i for i, problem in enumerate(problems) if problem is None]
            if tokenizer is not None and max_length and good:
                good_values = {name: [column[i] for i in good] for name, column in values.items()}
                for what in module.overlong_rows(good_values, tokenizer, max_length, max_prompt_length):
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
    columns = stage_data(stage).columns(text_column)
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


def verdict(report: DataReport, on_bad_rows: str = "skip") -> str | None:
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
