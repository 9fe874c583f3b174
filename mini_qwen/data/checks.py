"""Checking a stage's files: the stage scripts' check before training and `utils/check_data.py`'s report.

Every rule is the stage data module's own (mini_qwen/data/pt.py, sft.py, dpo.py, one
table entry each in STAGES): its columns and schema check, its row problems and its over-length
rule. So a file that passes `check_data.py` loads in the stage, and a row it flags is a row the
stage skips (or stops on with `--on_bad_rows error`).

The stage script runs `check_stage_files` once, on the files it found, and hands the same list to
the stage's `build_dataset`, which reads them without checking again.

Files are read one at a time through data/files.py (any accepted format), batch by batch, and only the
columns the stage reads: the corpus is never held in memory whole. Each file's schema is detected by the
stage's `check_schema` (its Layout); the files of one run must follow one schema.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from mini_qwen import stages
from mini_qwen.data import files
from mini_qwen.data.common import column_types, describe_clash, find_data_files, fold_digits, read_schema
from mini_qwen.errors import MiniQwenError

STAGES = {s.name: s.data_module() for s in stages.STAGES}  # the table of stages, in its order


def stage_data(stage: str):
    """The data module of `stage` (data.pt, data.sft or data.dpo)."""
    try:
        return STAGES[stage]
    except KeyError:
        raise MiniQwenError(f"unknown stage '{stage}': use one of {', '.join(STAGES)}.") from None


def check_stage_files(stage: str, data_files: list[Path], options: dict | None = None) -> dict:
    """Cheap checks a stage runs on every file before reading any row (a parquet footer, a text file's first
    rows): readable, a schema of the stage detected, one schema in all files (and, for a module that merges its
    files, one type per column). Returns {file: Layout}."""
    module = stage_data(stage)
    layouts, schemas = {}, {}
    for path in data_files:
        schemas[path] = read_schema(path, options)
        layouts[path] = module.check_schema(path, schemas[path], options)
    by_schema = defaultdict(list)
    for path, layout in layouts.items():
        by_schema[layout.schema].append(path)
    if len(by_schema) > 1:
        (one, first), (other, second) = list(by_schema.items())[:2]
        raise MiniQwenError(f"the {module.WHAT} files follow different schemas: {first[0]} is {one} but {second[0]} "
                            f"is {other}: train on one schema at a time (--data_glob), or convert one group to the "
                            f"other's columns.")
    if module.FILES_MERGED:
        read = {c for layout in layouts.values() for c in layout.columns}
        clashes = {c: t for c, t in column_types(schemas, read).items() if len(t) > 1}
        if clashes:
            raise MiniQwenError("the files disagree on the type of a column training reads: "
                                + "; ".join(describe_clash(c, t) for c, t in clashes.items())
                                + ". Convert them to one type, or train on one group of files at a time "
                                  "(--data_glob).")
    return layouts


def describe_layouts(stage: str, layouts: dict) -> str:
    """The stage's one line about its files: the schema detected and the formats, e.g.
    'SFT data: 3 files, schema alpaca (instruction, output, input) [jsonl 2, csv 1]'."""
    module = stage_data(stage)
    formats = Counter(files.file_format(path)[0] + ("." + files.file_format(path)[1] if files.file_format(path)[1]
                                                   else "") for path in layouts)
    schema = next(iter(layouts.values()))
    columns = sorted({c for layout in layouts.values() for c in layout.columns})
    return (f"data: {len(layouts)} {module.WHAT} file(s), schema '{schema.schema}' (columns read: "
            f"{', '.join(columns)}; formats: {', '.join(f'{k} {n}' for k, n in formats.most_common())})")


def find_stage_files(stage: str, data_dir: str, data_glob: str | None = files.DEFAULT_GLOB,
                     options: dict | None = None, log=print) -> list[Path]:
    """A stage script's first data step: find its data files and check them, once, before any model is
    loaded, and say which schema they follow. The stage then passes this list to its `build_dataset`, which
    trusts it."""
    data_files = find_data_files(data_dir, data_glob, what=stage_data(stage).WHAT)
    log(describe_layouts(stage, check_stage_files(stage, data_files, options)))
    return data_files


@dataclass
class FileReport:
    path: Path
    rows: int = 0
    error: str | None = None          # the file cannot be used at all (unreadable, missing/wrong column)
    schema: str | None = None         # the stage schema detected
    unreadable: int = 0               # lines of a text file that could not be read (skipped)
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
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable lines skipped")
        if self.schema:
            parts.append(f"schema {self.schema}")
        return f"{self.path}: " + "; ".join(parts)


def scan_file(stage: str, path: Path, schema: pa.Schema, options: dict | None = None, batch_rows: int = 2048,
              tokenizer=None, max_length: int | None = None, max_prompt_length: int | None = None,
              on_bad_rows: str = "skip") -> FileReport:
    """Read one file batch by batch and count its bad (and, with a tokenizer, over-long) rows."""
    report = FileReport(path)
    module = stage_data(stage)
    try:
        layout = module.check_schema(path, schema, options)
    except MiniQwenError as err:
        report.error = str(err).removeprefix(f"{path}: ")
        report.extra = []
        return report
    report.schema, report.extra = layout.schema, [n for n in schema.names if n not in layout.columns]
    row, stats = 0, {}
    try:
        for values in layout.batches(path, batch_rows, options, on_bad_rows, stats):
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
            row += len(problems)
    except MiniQwenError as err:
        report.error = str(err).removeprefix(f"{path}: ")
    report.rows, report.unreadable = row, stats.get("unreadable", 0)
    return report


@dataclass
class DataReport:
    stage: str
    files: list[FileReport]
    clashes: dict[str, dict[str, list]]  # column -> {type: files}, columns with more than one type
    read_columns: list[str]
    merged: bool = False  # the stage loads its files as one table (a clash in a column it reads is fatal)

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
        schemas = defaultdict(list)
        for f in self.files:
            if f.schema:
                schemas[f.schema].append(f.path)
        if len(schemas) > 1:
            (one, first), (other, second) = list(schemas.items())[:2]
            out.append(f"the files follow different schemas: {first[0]} is {one} but {second[0]} is {other} "
                       f"(train on one schema at a time: --data_glob)")
        out += [f"type clash in a column {self.stage} reads: {describe_clash(c, t)}"
                for c, t in self.clashes.items() if self.merged and c in self.read_columns]
        return out

    def lines(self) -> list[str]:
        out = [f.line() for f in self.files]
        for column, types in self.clashes.items():
            if column in self.read_columns and not self.merged:
                out.append(f"info: type clash: {describe_clash(column, types)}; harmless, {self.stage} reads each "
                           f"file on its own")
            elif column in self.read_columns:
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


def check_data(stage: str, data_files: list[Path], options: dict | None = None, tokenizer=None,
               max_length: int | None = None, max_prompt_length: int | None = None,
               batch_rows: int = 2048, log=print, on_bad_rows: str = "skip") -> DataReport:
    """Scan every file (one at a time) and return the report; prints one line per file as it goes."""
    schemas, reports = {}, []
    for path in data_files:
        try:
            schemas[path] = schema = read_schema(path, options)
        except MiniQwenError as err:
            report = FileReport(path, error=str(err))
        else:
            report = scan_file(stage, path, schema, options, batch_rows, tokenizer, max_length,
                               max_prompt_length, on_bad_rows)
        reports.append(report)
        log(report.line())
    read = sorted({c for r in reports if not r.error for c in schemas[r.path].names if c not in r.extra})
    clashes = {c: t for c, t in column_types(schemas).items() if len(t) > 1}
    return DataReport(stage, reports, clashes, read, stage_data(stage).FILES_MERGED)


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
