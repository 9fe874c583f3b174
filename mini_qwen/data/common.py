"""What every stage's data module shares: the schemas a stage accepts and their detection (RowSchema, Layout,
detect_layout: one message naming the columns found, the schemas accepted and the flag that maps a column), row
bookkeeping, SFT / DPO parts. Files are read by files.py; each stage's own schemas and rules live in pt.py,
sft.py and dpo.py.

The real files disagree with each other (IndustryCorpus2 zh has 13 columns and en 9;
Infinity-Instruct 7M has an int64 `id` and Gen a string one; some 7M files have a
string `label`). We read only the columns training needs, with pyarrow, file by file,
so such clashes never reach `datasets`' schema merging, and every problem is reported
with the file (and row) it comes from.
"""

import difflib
import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import pyarrow as pa

from mini_qwen.data import files
from mini_qwen.errors import MiniQwenError

ON_BAD_ROWS = ("skip", "error")  # the --on_bad_rows choices of every stage and of utils/check_data.py
# The data flags that say how files are read and which columns mean what (a stage has those its dataclass defines).
DATA_OPTION_FLAGS = ("text_column", "messages_column", "columns", "txt_split")


def data_options(args) -> dict:
    """The data options of a stage's (or a tool's) arguments: only those set away from their defaults, so that the
    cache key of a run that sets none stays the same."""
    defaults = {"txt_split": "file"}
    return {name: value for name in DATA_OPTION_FLAGS
            if (value := getattr(args, name, None)) not in (None, "", defaults.get(name))}


def find_data_files(data_dir: str, pattern: str | None = files.DEFAULT_GLOB, what: str = "data") -> list[Path]:
    """The data files of a stage (data/files.py: every accepted format, in name order)."""
    return files.find_data_files(data_dir, pattern, what)


def read_schema(path: Path, options: dict | None = None) -> pa.Schema:
    """A data file's column names and types (data/files.py; read once per file in a process)."""
    return files.read_schema(path, options)


# --------------------------------------------------------------------------- schemas: which columns mean what

@dataclass(frozen=True)
class RowSchema:
    """One way a stage's rows can be written (a stage module lists its own in SCHEMAS, in detection order)."""

    name: str                   # how messages and the stage's log line call it
    needs: dict[str, str]       # column -> what it holds (all required)
    fits: Callable[[dict], str | None]  # {column: Arrow type} -> None, or why those types do not fit
    convert: Callable[[dict], dict]     # {column: values} of a batch -> the stage's own columns
    example: str                # one JSON line of this schema (docs, errors)
    optional: tuple[str, ...] = ()      # columns read when present (a `system` text, Alpaca's `history`)
    aliases: dict[str, tuple[str, ...]] = dc_field(default_factory=dict)  # column -> other names it goes by


@dataclass(frozen=True)
class Layout:
    """What one file holds for a stage: the schema detected, the file's columns read, and how a batch of them
    becomes the stage's own columns (`columns()` of the stage module)."""

    schema: str
    columns: tuple[str, ...]
    convert: Callable[[dict], dict]

    def batches(self, path: Path, batch_rows: int = 1000, options: dict | None = None, on_bad_rows: str = "error",
                stats: dict | None = None):
        """The stage's own columns, batch by batch (data/files.py reads; `convert` maps)."""
        for values in files.iter_batches(path, list(self.columns), batch_rows, options, on_bad_rows, stats):
            yield self.convert(values)


# The data flags that map columns, and the schema columns each one names.
COLUMN_FLAGS = {"text_column": ("text",), "messages_column": ("conversations", "messages")}


def column_map(options: dict | None) -> dict[str, str]:
    """{schema column: file column} from the flags: --text_column, --messages_column and --columns NAME=COLUMN,..."""
    options = options or {}
    mapping = {}
    spec = options.get("columns") or ""
    for item in (spec.split(",") if isinstance(spec, str) else [f"{k}={v}" for k, v in spec.items()]):
        if not item.strip():
            continue
        name, eq, column = item.partition("=")
        if not eq or not name.strip() or not column.strip():
            raise MiniQwenError(f"--columns '{spec}': write NAME=COLUMN pairs separated by commas, e.g. "
                                f"--columns prompt=question,chosen=good,rejected=bad.")
        mapping[name.strip()] = column.strip()
    for flag, names in COLUMN_FLAGS.items():
        if options.get(flag):
            mapping.update(dict.fromkeys(names, options[flag]))
    return mapping


def flag_for(name: str, column: str) -> str:
    """The flag that reads `column` as the schema's `name`."""
    flag = next((f for f, names in COLUMN_FLAGS.items() if name in names), None)
    return f"--{flag} {column}" if flag else f"--columns {name}={column}"


def schemas_line(what: str, schemas) -> str:
    return f"{what} reads " + "; ".join(f"{s.name} ({', '.join(s.needs)})" for s in schemas)


def detect_layout(path: Path, schema: pa.Schema, options: dict | None, schemas, what: str) -> Layout:
    """The first of `schemas` whose columns the file has with fitting types; otherwise one message naming the
    columns found, the schemas accepted and the flag that maps a column."""
    types = {f.name: f.type for f in schema}
    mapping = column_map(options)
    view, source = dict(types), {name: name for name in types}
    for name, column in mapping.items():
        if column not in types:
            if any(name in s.needs or name in s.optional for s in schemas):
                raise MiniQwenError(f"{path}: {flag_for(name, column)} names column '{column}', which the file "
                                    f"lacks; it has {list(types)}.")
            continue
        view[name], source[name] = types[column], column
    wrong, closest = None, None
    for s in schemas:
        chosen, missing = {}, []
        for need in s.needs:
            found = next((a for a in (need, *s.aliases.get(need, ())) if a in view), None)
            if found is None:
                missing.append(need)
            else:
                chosen[need] = found
        if missing:
            if closest is None or len(chosen) > len(closest[1]):
                closest = (s, chosen, missing)
            continue
        chosen.update({name: name for name in s.optional if name in view})
        why = s.fits({name: view[column] for name, column in chosen.items()})
        if why is None:
            columns = tuple(dict.fromkeys(source[c] for c in chosen.values()))

            def convert(values, chosen=chosen, s=s):
                return s.convert({name: values[source[column]] for name, column in chosen.items()})

            return Layout(s.name, columns, convert)
        wrong = wrong or why
    if wrong:
        raise MiniQwenError(f"{path}: {wrong}. {schemas_line(what, schemas)}.")
    s, _, missing = closest
    name = missing[0]
    also = s.aliases.get(name, ())
    close = difflib.get_close_matches(name, list(types), n=1) or [
        c for a in also for c in difflib.get_close_matches(a, list(types), n=1)][:1]
    hint = f" (did you mean '{close[0]}'? map it with {flag_for(name, close[0])})" if close else ""
    found_as = f"; also found as {' / '.join(repr(a) for a in also)}" if also else ""
    raise MiniQwenError(f"{path}: missing column '{name}' ({s.needs[name]}{found_as}); it has {list(types)}{hint}. "
                        f"{schemas_line(what, schemas)}; map a column with --columns NAME=COLUMN.")


def is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def record_keys(kind: pa.DataType, nested: int = 1) -> set[str]:
    """The field names of a list of records (nested=1), or of a record (nested=0); empty when it is neither."""
    for _ in range(nested):
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
            return set()
        kind = kind.value_type
    return {kind.field(i).name for i in range(kind.num_fields)} if pa.types.is_struct(kind) else set()


def is_turns(kind: pa.DataType) -> bool:
    """A list of {from, value} (ShareGPT) or {role, content} (OpenAI) records."""
    keys = record_keys(kind)
    return {"from", "value"} <= keys or {"role", "content"} <= keys


def type_name(kind: pa.DataType) -> str:
    """A column type as text, with large_string / large_list spelled as string / list (they load alike)."""
    return str(kind).replace("large_string", "string").replace("large_list", "list")


def column_types(schemas: dict, columns=None) -> dict[str, dict[str, list]]:
    """{column: {type: [files]}} over `schemas` ({file: pyarrow schema}), for `columns` or all of them."""
    found: dict[str, dict[str, list]] = {}
    for path, schema in schemas.items():
        for field in schema:
            if columns is None or field.name in columns:
                found.setdefault(field.name, {}).setdefault(type_name(field.type), []).append(path)
    return found


def describe_clash(column: str, types: dict[str, list]) -> str:
    """'id' is int64 in 2 files (e.g. a.parquet) and string in 1 file (e.g. b.parquet)."""
    parts = [f"{kind} in {len(paths)} file{'s' * (len(paths) > 1)} (e.g. {paths[0]})" for kind, paths in types.items()]
    return f"'{column}' is " + " but ".join(parts)


def fold_digits(reason: str) -> str:
    """A row problem with its numbers folded to N, so that "turn 3 has ..." and "turn 5 has ..." count together."""
    return re.sub(r"\d+", "N", reason)


def replace_folder(tmp: Path, final: Path) -> bool:
    """Rename `tmp` to `final` (atomic: a half-written cache is never picked up). False when another process
    finished the same cache first (then `tmp` is removed: same contents)."""

    try:
        os.replace(tmp, final)
        return True
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def part_tmp(path: Path) -> Path:
    """A temporary name next to `path` that no other process uses (host + pid). Two processes that make the
    same part (two nodes' first processes on a shared disk) each write their own and rename it into place:
    the contents are the same, whichever rename comes last."""
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(part: Path) -> None:
    """Temporary files of this part that a killed run on this machine left (its pid is gone); those of a live
    process, or of another machine, are left alone."""

    host = socket.gethostname()
    for stale in part.parent.glob(f"{part.name}.*tmp-{host}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def encode_rows_file(path: Path, part: Path, module, encode_batch, features, tokenizer, settings: dict,
                     on_bad_rows: str, report, token_column: str, batch_rows: int = 1000) -> dict:
    """SFT / DPO: one data file -> `<part>.arrow`, one encoded row per input row (bad rows keep their reason
    in `problem`), via `encode_batch(batch, indices, tokenizer=..., locate=..., on_bad_rows=..., **settings)`
    on the stage's own columns (`module.check_schema`'s layout of the file, under `settings["options"]`).
    A line of a text file that cannot be read at all is skipped and counted in `unreadable` (or stops the run).

    Written with `datasets`' own Arrow writer and `features`, so `Dataset.from_file` memory-maps it as the
    stage's `datasets.map` output would be; under a temporary name, then renamed. `locate(index)` gives an
    encoder the (file, row) of a bad row for its message."""
    from datasets.arrow_writer import ArrowWriter

    def locate(index: int) -> tuple[Path, int]:
        return path, index

    options = settings.get("options")
    layout = module.check_schema(path, read_schema(path, options), options)
    encode_settings = {k: v for k, v in settings.items() if k != "options"}
    arrow = part.with_suffix(".arrow")
    tmp = part_tmp(arrow)
    rows = tokens = 0
    stats: dict = {}
    writer = ArrowWriter(features=features, path=str(tmp))
    try:
        for values in layout.batches(path, batch_rows, options, on_bad_rows, stats):
            n = len(next(iter(values.values())))
            out = encode_batch(values, range(rows, rows + n), tokenizer=tokenizer, locate=locate,
                               on_bad_rows=on_bad_rows, **encode_settings)
            writer.write_batch(out)
            batch_tokens = sum(map(len, out[token_column]))
            rows, tokens = rows + n, tokens + batch_tokens
            report(n, batch_tokens)
        writer.finalize()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, arrow)
    return {"rows": rows, "tokens": tokens, "unreadable": stats.get("unreadable", 0)}


def finish_rows_cache(cache, parts: list[tuple[Path, dict]], tmp: Path) -> dict | None:
    """SFT / DPO: the parts folder becomes the cache folder (meta.json listing the Arrow parts in file order,
    then one rename). Returns the meta (with a `_line` to log), None if another process finished first."""
    meta = {"rows": sum(m["rows"] for _, m in parts), "tokens": sum(m["tokens"] for _, m in parts),
            "unreadable": sum(m.get("unreadable", 0) for _, m in parts),
            "parts": [part.with_suffix(".arrow").name for part, _ in parts], "files": [str(f) for f in cache.files],
            "seconds": round(sum(m["seconds"] for _, m in parts), 2), "tokenizer": cache.tokenizer.name_or_path}
    partial = part_tmp(cache.parts_dir / "meta.json")
    partial.write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    os.replace(partial, cache.parts_dir / "meta.json")
    try:
        if not replace_folder(cache.parts_dir, cache.folder):
            return None
    except FileNotFoundError:  # another machine renamed the parts folder first
        return None
    unreadable = f" ({meta['unreadable']} unreadable lines skipped)" if meta["unreadable"] else ""
    meta["_line"] = (f"data: {meta['rows']:,} rows{unreadable}, {meta['tokens']:,} tokens from {len(parts)} files, "
                     f"{meta['seconds']:.1f}s of tokenizing -> {cache.folder}")
    return meta


def load_rows_cache(folder: Path):
    """The encoded rows of a finished SFT / DPO cache, in file order (memory-mapped, never loaded whole)."""
    import datasets

    meta = json.loads((Path(folder) / "meta.json").read_text())
    parts = [datasets.Dataset.from_file(str(Path(folder) / name)) for name in meta["parts"]]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0], meta


def encoded_rows(cache, num_proc: int | None, on_bad_rows: str, log=print):
    """SFT / DPO: the encoded rows of `cache` (a prepare.DataCache; what is missing is prepared first). With
    on_bad_rows="error", a cache prepared with skip stops at its first bad row here, as tokenizing would have."""
    encoded, _ = load_rows_cache(cache.prepare(num_proc, None, on_bad_rows, log))
    if on_bad_rows == "error":
        stop_at_first_bad_row(cache.files, encoded["problem"], cache.module, cache.settings.get("options"))
    return encoded


def log_skipped_or_stop(dataset, skipped: dict, log, nothing_left: str) -> None:
    """Log each bad-row reason with its count; stop with `nothing_left` when no row is left to train on."""
    for problem, count in sorted(skipped.items(), key=lambda item: -item[1]):
        log(f"  skipped {count}: {problem}")
    if len(dataset) == 0:
        raise MiniQwenError(nothing_left)


def row_problems(values: dict[str, list], parse, bad_row_error) -> list[str | None]:
    """Why each row of a batch ({column: values}) cannot be trained on, or None for a good row: a null in a
    column the stage reads, or the message of the `bad_row_error` that `parse(*row)` raises."""
    names, out = list(values), []
    for row in zip(*values.values()):
        nulls = [name for name, value in zip(names, row) if value is None]
        if nulls:
            out.append("null " + " and ".join(f"'{name}'" for name in nulls))
            continue
        try:
            parse(*row)
            out.append(None)
        except bad_row_error as err:
            out.append(str(err))
    return out


def parse_rows(rows, indices, parse, bad_row_error, on_bad_rows: str, locate) -> tuple[list, list[str]]:
    """`parse(*row)` for each row of a batch. A row raising `bad_row_error` is skipped with its reason in
    `problems` (digits folded to N so reasons can be counted), or, with on_bad_rows="error", stops the
    run with its file and row. Returns (parsed good rows, one problem string per row, "" when fine)."""
    good, problems = [], []
    for row, index in zip(rows, indices):
        try:
            good.append(parse(*row))
            problems.append("")
        except bad_row_error as err:
            if on_bad_rows == "error":
                raise MiniQwenError(bad_row_message(*locate(index), err)) from None
            problems.append(fold_digits(str(err)))
    return good, problems


def bad_row_message(path, row: int, reason) -> str:
    """--on_bad_rows error's one message: the file, the row and why."""
    return (f"{path}: row {row}: {reason}. Fix or remove the row, or rerun with --on_bad_rows skip to skip and "
            f"count such rows.")


def stop_at_first_bad_row(data_files: list[Path], problems, module, options: dict | None = None) -> None:
    """--on_bad_rows error with a cache that holds bad rows (it was prepared with skip, which keeps them as
    reasons): stop at the first one, named by file and row as tokenizing would have. The cache has one row per
    readable input row, in file order; the files are read again (a line that cannot be read stops here first)
    and the row's reason is the stage's own `row_problems` on it (the cache keeps only the reason, digits folded)."""
    first = index = next((i for i, problem in enumerate(problems) if problem), None)
    if index is None:
        return
    for path in data_files:
        layout = module.check_schema(path, read_schema(path, options), options)
        start = 0  # the file's row at the head of the batch
        for values in layout.batches(path, 1000, options, "error"):
            n = len(next(iter(values.values())))
            if index < n:
                row = {name: column[index:index + 1] for name, column in values.items()}
                reason = module.row_problems(row)[0] or problems[first]
                raise MiniQwenError(bad_row_message(path, start + index, reason))
            index -= n
            start += n
