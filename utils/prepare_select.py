"""Which files prepare.sh downloads: the original recipe's data selection as plain, testable Python.

prepare.sh calls this twice:
    python utils/prepare_select.py plan --what model,pt,sft,dpo --dest data --tsv PLAN.tsv [--dry-run] ...
        prints the plan and writes the files still to fetch, one per line:
        what  repo_type  repo_id  path_in_repo  local_dir  size_or_empty
    python utils/prepare_select.py mark --local-dir data/pt --path news_media/chinese/high/rank_00000.parquet --size 123
        after a download: checks the file is there (and has the listed size) and writes its `.done` marker

The selection (defaults = the original project's prepare.sh):
* PT  BAAI/IndustryCorpus2, folders <industry>/<language>/high for ten industries in chinese
  and english; the five huge English folders only their first 3 files (name order).
* SFT BAAI/Infinity-Instruct, folders 7M and Gen, every file.
* DPO BAAI/Infinity-Preference, every file.
* model Qwen/Qwen2.5-0.5B-Instruct, config and tokenizer files only (no weights: we train from scratch).

A file counts as complete when it exists locally with the size the listing reports, or,
when the listing gives no size, when its marker `<local_dir>/.prepare_done/<path>.done`
exists (written by `mark`). So re-running prepare.sh only fetches what is missing.

The remote file list comes from ModelScope (`modelscope_hub.HubApi().legacy.list_repo_files`,
one call per folder). Setting MINI_QWEN_PREPARE_LISTING=<file.json> replaces it with a
local listing, for offline planning and tests:
    {"BAAI/IndustryCorpus2": [{"path": "news_media/chinese/high/rank_00000.parquet", "size": 123}, ...],
     "BAAI/Infinity-Instruct": ["7M/train-00000-of-00075.parquet", ...]}     (plain paths: size unknown)
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mini_qwen.errors import MiniQwenError, run_main

PT_REPO = "BAAI/IndustryCorpus2"
SFT_REPO = "BAAI/Infinity-Instruct"
DPO_REPO = "BAAI/Infinity-Preference"
MODEL_REPO = "Qwen/Qwen2.5-0.5B-Instruct"

DEFAULT_INDUSTRIES = (
    "mathematics_statistics",
    "artificial_intelligence_machine_learning",
    "computer_programming_code",
    "news_media",
    "accommodation_catering_hotel",
    "tourism_geography",
    "film_entertainment",
    "literature_emotion",
    "computer_communication",
    "current_affairs_government_administration",
)
# The English "high" folders of these are far larger than the rest; the original recipe took only
# their first 3 files (~16B tokens in all with the other folders).
LARGE_ENGLISH_INDUSTRIES = (
    "film_entertainment",
    "literature_emotion",
    "computer_communication",
    "current_affairs_government_administration",
    "mathematics_statistics",
)
LARGE_ENGLISH_MAX_FILES = 3
LANGUAGES = ("chinese", "english")
QUALITY = "high"
SFT_FOLDERS = ("7M", "Gen")
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
)
WHAT_CHOICES = ("model", "pt", "sft", "dpo")
LISTING_ENV = "MINI_QWEN_PREPARE_LISTING"
DONE_DIR = ".prepare_done"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None = None  # None: the listing did not say


@dataclass(frozen=True)
class Item:
    """One file to have locally: ``<local_dir>/<path>`` from ``repo_id``."""

    what: str
    repo_type: str
    repo_id: str
    path: str
    local_dir: str
    size: int | None = None

    @property
    def local_path(self) -> Path:
        return Path(self.local_dir) / self.path


# --------------------------------------------------------------------------- pure selection


def _as_remote(entry) -> RemoteFile:
    if isinstance(entry, RemoteFile):
        return entry
    if isinstance(entry, str):
        return RemoteFile(entry.lstrip("/"))
    if isinstance(entry, dict):
        path = entry.get("path") or entry.get("Path") or entry.get("name") or entry.get("Name") or ""
        size = entry.get("size", entry.get("Size"))
        try:
            size = int(size) if size not in (None, "") else None
        except (TypeError, ValueError):
            size = None
        return RemoteFile(str(path).lstrip("/"), size if size else None)
    raise MiniQwenError(f"listing entry {entry!r} is neither a path string nor a {{'path':..., 'size':...}} object")


def natural_key(path: str):
    """Order rank_2 before rank_10 even without zero padding."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def files_in_folder(listing, folder: str, suffix: str | None = None) -> list[RemoteFile]:
    """Files at any depth under ``folder/`` in name order (optionally only those ending in ``suffix``)."""
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    chosen = {}
    for entry in listing:
        f = _as_remote(entry)
        if not f.path or not f.path.startswith(prefix) or f.path.endswith("/"):
            continue
        if suffix and not f.path.endswith(suffix):
            continue
        chosen[f.path] = f
    return sorted(chosen.values(), key=lambda f: natural_key(f.path))


def pt_folder(industry: str, language: str) -> str:
    return f"{industry}/{language}/{QUALITY}"


def pt_file_limit(industry: str, language: str, files_per_folder: int | None) -> int | None:
    """How many files of one PT folder to take (None = all)."""
    limits = [n for n in (files_per_folder,) if n is not None]
    if language == "english" and industry in LARGE_ENGLISH_INDUSTRIES:
        limits.append(LARGE_ENGLISH_MAX_FILES)
    return min(limits) if limits else None


def select_pt(
    listing,
    industries=DEFAULT_INDUSTRIES,
    languages=LANGUAGES,
    files_per_folder: int | None = None,
) -> dict[str, tuple[list[RemoteFile], int]]:
    """``{folder: (selected files, files in that folder)}`` for the PT dataset.

    ``listing`` is the repo's files (paths, dicts or RemoteFile); each folder
    ``<industry>/<language>/high`` contributes its first N parquet files, where N is
    the smaller of ``files_per_folder`` and 3 for the five large English folders.
    """
    result = {}
    for industry in industries:
        for language in languages:
            folder = pt_folder(industry, language)
            files = files_in_folder(listing, folder, suffix=".parquet")
            if not files:
                raise MiniQwenError(
                    f"{PT_REPO} has no .parquet files under {folder}/: check the spelling in --industries "
                    f"(the original recipe's are: {', '.join(DEFAULT_INDUSTRIES)}) "
                    f"or drop '{language}' from --languages"
                )
            limit = pt_file_limit(industry, language, files_per_folder)
            result[folder] = (files[:limit] if limit is not None else files, len(files))
    return result


def select_sft(
    listing, files_per_folder: int | None = None, folders=SFT_FOLDERS
) -> dict[str, tuple[list[RemoteFile], int]]:
    """``{folder: (selected, total)}``: the parquet files of 7M and Gen (first ``files_per_folder`` of each)."""
    result = {}
    for folder in folders:
        files = files_in_folder(listing, folder, suffix=".parquet")
        if not files:
            raise MiniQwenError(
                f"{SFT_REPO} has no .parquet files under {folder}/: the dataset layout changed; "
                f"check its file list on modelscope.cn"
            )
        result[folder] = (files[:files_per_folder] if files_per_folder else files, len(files))
    return result


def select_dpo(listing) -> dict[str, tuple[list[RemoteFile], int]]:
    """Every file of the preference dataset (it is small: train and test, ~60K pairs)."""
    files = files_in_folder(listing, "")
    if not files:
        raise MiniQwenError(f"{DPO_REPO} lists no files: check the repository name or your access on modelscope.cn")
    return {"": (files, len(files))}


def select_model(listing=None) -> dict[str, tuple[list[RemoteFile], int]]:
    """The config and tokenizer files, with sizes when ``listing`` (the model repo's files) is given."""
    if listing is None:
        return {"": ([RemoteFile(name) for name in MODEL_FILES], len(MODEL_FILES))}
    by_path = {f.path: f for f in (_as_remote(e) for e in listing)}
    missing = [name for name in MODEL_FILES if name not in by_path]
    if missing:
        raise MiniQwenError(
            f"{MODEL_REPO} does not list {', '.join(missing)}: the repository layout changed; check it on modelscope.cn"
        )
    return {"": ([by_path[name] for name in MODEL_FILES], len(by_path))}


# --------------------------------------------------------------------------- local state


def marker_path(local_dir, path: str) -> Path:
    return Path(local_dir) / DONE_DIR / f"{path}.done"


def is_complete(item: Item) -> bool:
    """The file exists with the listed size, or (size unknown) its .done marker says it finished."""
    local = item.local_path
    if not local.is_file():
        return False
    if item.size is not None:
        return local.stat().st_size == item.size
    return marker_path(item.local_dir, item.path).is_file()


def pending(items: list[Item]) -> list[Item]:
    return [item for item in items if not is_complete(item)]


def mark_done(local_dir, path: str, size: int | None = None) -> Path:
    """Check a freshly downloaded file and write its marker; raise if it is missing or truncated."""
    local = Path(local_dir) / path
    if not local.is_file():
        raise MiniQwenError(
            f"download of {path} reported success but {local} does not exist; re-run prepare.sh to retry it"
        )
    actual = local.stat().st_size
    if size is not None and actual != size:
        raise MiniQwenError(
            f"{local} has {actual} bytes but the listing says {size}: the download is incomplete; "
            f"delete it and re-run prepare.sh"
        )
    marker = marker_path(local_dir, path)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{actual}\n", encoding="utf-8")
    return marker


# --------------------------------------------------------------------------- listing sources


class JsonLister:
    """Listing from a JSON file ``{repo_id: [path | {"path", "size"}, ...]}`` (MINI_QWEN_PREPARE_LISTING)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise MiniQwenError(f"{LISTING_ENV}={self.path}: cannot read it as JSON ({err})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise MiniQwenError(
                f"{LISTING_ENV}={self.path} must hold a JSON object {{repo_id: [file paths or {{path, size}}]}}"
            )
        self.data = {repo: [_as_remote(e) for e in entries] for repo, entries in data.items()}

    def __call__(self, repo_id: str, repo_type: str, root: str = "") -> list[RemoteFile]:
        return files_in_folder(self.data.get(repo_id, []), root)


class ModelScopeLister:
    """Listing from the ModelScope hub, one request (paginated by the SDK) per folder."""

    def __init__(self):
        try:
            from modelscope_hub import HubApi
        except ImportError:
            raise MiniQwenError(
                "the modelscope package is missing: pip install modelscope==1.40.2 (see requirements.txt)"
            ) from None
        self.api = HubApi()

    def __call__(self, repo_id: str, repo_type: str, root: str = "") -> list[RemoteFile]:
        root = root.strip("/")
        try:
            raw = self.api.legacy.list_repo_files(
                repo_id, repo_type, revision="master", recursive=True, root=root or None
            )
        except Exception as err:  # network, auth and "not found" errors all end here
            where = f" under {root}/" if root else ""
            raise MiniQwenError(
                f"could not list the files of {repo_type} {repo_id}{where} on ModelScope "
                f"({type(err).__name__}: {err}). Check that modelscope.cn is reachable (proxy, firewall) "
                f"and the name is right; for offline planning set {LISTING_ENV}=<listing.json>"
            ) from None
        files = []
        for entry in raw:
            if isinstance(entry, dict) and str(entry.get("Type") or entry.get("type") or "blob") == "tree":
                continue
            f = _as_remote(entry)
            # The tree API answers with repo-relative paths; accept root-relative ones too.
            if root and f.path and not f.path.startswith(root + "/"):
                f = RemoteFile(f"{root}/{f.path}", f.size)
            files.append(f)
        return files


def default_lister():
    listing = os.environ.get(LISTING_ENV)
    return JsonLister(listing) if listing else ModelScopeLister()


# --------------------------------------------------------------------------- the plan


def parse_csv(value: str | None) -> list[str]:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return list(dict.fromkeys(items))


def validate(what, industries, languages, files_per_folder):
    bad = [w for w in what if w not in WHAT_CHOICES]
    if bad or not what:
        raise MiniQwenError(
            f"--what: unknown item(s) {', '.join(bad) or '(empty)'}; choose from {','.join(WHAT_CHOICES)}"
        )
    bad = [lang for lang in languages if lang not in LANGUAGES]
    if bad or not languages:
        raise MiniQwenError(
            f"--languages: unknown language(s) {', '.join(bad) or '(empty)'}; choose from {','.join(LANGUAGES)}"
        )
    bad = [i for i in industries if not re.fullmatch(r"[a-z0-9_]+", i)]
    if bad or not industries:
        raise MiniQwenError(
            f"--industries: {', '.join(repr(b) for b in bad) or '(empty)'} is not an IndustryCorpus2 folder name "
            f"(lower-case with underscores, e.g. news_media)"
        )
    if files_per_folder is not None and files_per_folder < 1:
        raise MiniQwenError(f"--files-per-folder must be a positive integer, got {files_per_folder}")


@dataclass
class Group:
    """One folder of one repo in the plan, for the printed summary."""

    what: str
    repo_id: str
    folder: str
    local_dir: str
    items: list[Item]
    total_in_folder: int


def build_plan(
    what=WHAT_CHOICES,
    industries=DEFAULT_INDUSTRIES,
    languages=LANGUAGES,
    files_per_folder: int | None = None,
    dest="data",
    model_dest="models/qwen2.5-0.5b-instruct",
    lister=None,
) -> list[Group]:
    what, industries, languages = list(what), list(industries), list(languages)
    validate(what, industries, languages, files_per_folder)
    lister = lister or default_lister()
    dest = str(dest)
    groups: list[Group] = []

    def add(kind, repo_type, repo_id, local_dir, selection):
        for folder, (files, total) in selection.items():
            items = [Item(kind, repo_type, repo_id, f.path, str(local_dir), f.size) for f in files]
            groups.append(Group(kind, repo_id, folder, str(local_dir), items, total))

    for kind in WHAT_CHOICES:  # fixed order: the small model files first
        if kind not in what:
            continue
        if kind == "model":
            # An empty listing (e.g. an offline listing without the model repo) keeps the
            # fixed file list; completeness then rests on the .done markers.
            add(kind, "model", MODEL_REPO, model_dest, select_model(lister(MODEL_REPO, "model", "") or None))
        elif kind == "pt":
            listing = []
            for industry in industries:
                for language in languages:
                    listing += lister(PT_REPO, "dataset", pt_folder(industry, language))
            add(
                kind, "dataset", PT_REPO, Path(dest) / "pt", select_pt(listing, industries, languages, files_per_folder)
            )
        elif kind == "sft":
            listing = []
            for folder in SFT_FOLDERS:
                listing += lister(SFT_REPO, "dataset", folder)
            add(kind, "dataset", SFT_REPO, Path(dest) / "sft", select_sft(listing, files_per_folder))
        else:
            add(kind, "dataset", DPO_REPO, Path(dest) / "dpo", select_dpo(lister(DPO_REPO, "dataset", "")))
    for group in groups:
        for item in group.items:
            if any(ch in item.path for ch in "\t\n\r"):
                raise MiniQwenError(
                    f"{item.repo_id} lists a file name with a tab or newline ({item.path!r}); it cannot be planned"
                )
    return groups


def human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _sum_sizes(items) -> int | None:
    sizes = [i.size for i in items]
    return None if any(s is None for s in sizes) else sum(sizes)


def describe(groups: list[Group]) -> tuple[str, list[Item]]:
    """The printed plan and the items still to fetch."""
    lines, todo_all, total_items = [], [], 0
    for g in groups:
        todo = pending(g.items)
        todo_all += todo
        total_items += len(g.items)
        where = f"{g.repo_id}/{g.folder}" if g.folder else g.repo_id
        count = (
            f"{len(g.items)} of {g.total_in_folder} files"
            if len(g.items) != g.total_in_folder
            else f"{len(g.items)} files"
        )
        names = [Path(i.path).name for i in g.items]
        span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        status = "complete" if not todo else f"{len(todo)} to fetch ({human_size(_sum_sizes(todo))})"
        lines.append(f"  {g.what:<5} {where} -> {g.local_dir}: {count} [{span}], {status}")
    size = _sum_sizes(todo_all)
    lines.append(
        f"total: {total_items} files, {len(todo_all)} to fetch"
        + (f" ({human_size(size)})" if todo_all else "")
        + f", {total_items - len(todo_all)} already complete"
    )
    return "\n".join(lines), todo_all


def write_tsv(items: list[Item], out) -> None:
    with open(out, "w", encoding="utf-8") as fh:
        for i in items:
            fh.write(
                "\t".join([i.what, i.repo_type, i.repo_id, i.path, i.local_dir, "" if i.size is None else str(i.size)])
                + "\n"
            )


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Plan prepare.sh downloads, or mark one download as complete.")
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="print the plan; write the files still to fetch as TSV")
    plan.add_argument("--what", default=",".join(WHAT_CHOICES))
    plan.add_argument("--industries", default=",".join(DEFAULT_INDUSTRIES))
    plan.add_argument("--languages", default=",".join(LANGUAGES))
    plan.add_argument("--files-per-folder", default=None)
    plan.add_argument("--dest", default="data")
    plan.add_argument("--model-dest", default="models/qwen2.5-0.5b-instruct")
    plan.add_argument("--tsv", help="write the pending files here (what, repo_type, repo_id, path, local_dir, size)")
    plan.add_argument("--dry-run", action="store_true")
    mark = sub.add_parser("mark", help="verify a downloaded file and write its .done marker")
    mark.add_argument("--local-dir", required=True)
    mark.add_argument("--path", required=True)
    mark.add_argument("--size", default="")
    args = parser.parse_args(argv)

    if args.command == "mark":
        size = int(args.size) if args.size.strip() else None
        mark_done(args.local_dir, args.path, size)
        return 0

    files_per_folder = None
    if args.files_per_folder not in (None, ""):
        try:
            files_per_folder = int(args.files_per_folder)
        except ValueError:
            raise MiniQwenError(
                f"--files-per-folder must be a positive integer, got {args.files_per_folder!r}"
            ) from None
    groups = build_plan(
        what=parse_csv(args.what),
        industries=parse_csv(args.industries),
        languages=parse_csv(args.languages),
        files_per_folder=files_per_folder,
        dest=args.dest,
        model_dest=args.model_dest,
    )
    text, todo = describe(groups)
    print(("plan (dry run, nothing is downloaded):" if args.dry_run else "plan:") + "\n" + text, flush=True)
    if args.tsv:
        write_tsv(todo, args.tsv)
    return 0


if __name__ == "__main__":
    run_main(main)
