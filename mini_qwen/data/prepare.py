"""Data preparation as its own step: a stage's data files -> the token cache it trains from, in parallel
over files, resumable after a kill, and splittable across machines that share the cache folder.

Run as (utils/prepare_data.py is a thin front to the stage's own `--prepare_only true`):
    python utils/prepare_data.py pt --data_dir data/pt --num_proc 16            # one machine, 16 processes
    python utils/prepare_data.py pt --data_dir data/pt --num_proc 16 --shard 0/4   # machine 0 of 4 (shared disk)
    python mini_qwen_pt.py --data_dir data/pt --prepare_only true --dataset_num_proc 16   # the same

Layout under --cache_dir, one cache per stage + files + tokenizer + the settings that change the tokens
(the 16-hex key; change any of them and the stage gets a new cache):
    <stage>-<key>.parts/  one part per input file: its outputs are written under a temporary name and
                          renamed, and its <index>.json is renamed into place last. A part is done when its
                          json exists, so a rerun after a kill redoes only the files that had no json.
    <stage>-<key>/        the finished cache the stage reads; it appears in one rename once every part is done.
                          PT: the parts concatenated in file order into packing.py's tokens.u24 + doc_lens.npy
                          (the parts are then removed; the merge needs their size again in free disk).
                          SFT / DPO: the parts themselves (Arrow files, memory-mapped by `datasets`) + meta.json.

Each stage module (pt.py, sft.py, dpo.py) supplies `cache_settings` (what goes into the key),
`encode_file` (one input file -> one part) and `finish_cache` (the parts -> the finished folder).

A stage launched on several processes must not leave its other ranks waiting on a barrier while rank 0
tokenizes for hours: `prepared_first` refuses to start when the data is too large to prepare within
--ddp_timeout (printing the prepare command) and otherwise bounds the other ranks' wait with its own,
clearer message instead of a NCCL / gloo timeout.
"""

import contextlib
import hashlib
import importlib
import json
import multiprocessing
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mini_qwen import stages
from mini_qwen.data import files as data_files
from mini_qwen.data.common import part_tmp, read_schema, remove_stale_tmp
from mini_qwen.errors import MiniQwenError

# Preparation speed of one process: the table of stages' prepare_bytes_per_second (mini_qwen/stages.py).
WAIT_POLL_SECONDS = 2.0


@dataclass
class CacheArguments:
    """The data-cache flags every stage's data arguments inherit (and --columns, which maps any stage's columns)."""

    columns: str | None = field(default=None, metadata={
        "help": "Map your files' column names onto the stage's schema: NAME=COLUMN pairs, comma-separated, e.g. "
                "'prompt=question,chosen=good,rejected=bad' (the stage names the schemas it reads when none fits)."})
    cache_dir: str = field(default=".cache/mini_qwen", metadata={
        "help": "Where the tokenized data is cached (one folder per data, tokenizer and length settings)."})
    prepare_only: bool = field(default=False, metadata={
        "help": "Tokenize the data into --cache_dir and exit before any model is loaded (what "
                "utils/prepare_data.py runs; processes: --dataset_num_proc)."})
    prepare_shard: str | None = field(default=None, metadata={
        "help": "With --prepare_only: I/K, tokenize only the files i with i %% K == I, so that K machines sharing "
                "--cache_dir split the work."})


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'I/K' -> (I, K): this machine prepares the files whose index i has i % K == I. None -> (0, 1)."""
    if spec in (None, ""):
        return 0, 1
    parts = str(spec).split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        index = count = None
    if len(parts) != 2 or index is None or count < 1 or not 0 <= index < count:
        raise MiniQwenError(f"shard '{spec}' (--shard / --prepare_shard) is not a shard spec: write I/K with "
                            f"0 <= I < K, e.g. 0/4 ... 3/4 for four machines (K machines, each with its own I, "
                            f"sharing --cache_dir).")
    return index, count


def check_prepare_flags(prepare_only: bool, shard: str | None) -> None:
    """--prepare_shard is only for --prepare_only (a training run reads every file), and well formed."""
    if shard is not None and not prepare_only:
        raise MiniQwenError(f"--prepare_shard {shard} only applies with --prepare_only true (a training run "
                            f"needs every file): add --prepare_only true, or drop --prepare_shard.")
    parse_shard(shard)


def _file_stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer's content (vocabulary, merges, special tokens), so that two tokenizer folders that
    tokenize alike share a cache and any change to one makes a new one."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def _stage_module(module_name: str):
    """A stage data module by name, in a worker process (a module cannot be sent to one)."""
    return importlib.import_module(module_name)


class DataCache:
    """The token cache of one stage's files, tokenizer and settings: where it lives, whether it is ready,
    and how to prepare it. `module` is the stage's data module (pt, sft or dpo: its `data_cache` makes
    this), `settings` its `cache_settings(...)` (they change the tokens)."""

    def __init__(self, module, files: list[Path], tokenizer, cache_dir: str | os.PathLike, settings: dict):
        self.module, self.stage = module, module.NAME
        self.files, self.tokenizer, self.settings = [Path(f) for f in files], tokenizer, settings
        h = hashlib.sha256()
        for f in self.files:
            h.update((_file_stamp(f) + "\n").encode())
        h.update(f"{self.stage}|{tokenizer_digest(tokenizer)}|{sorted(settings.items())}".encode())
        for code in getattr(self.module, "CACHE_CODE", ()):  # editing how rows are encoded invalidates the cache
            h.update(Path(code).read_bytes())
        self.key = h.hexdigest()[:16]
        self.folder = Path(cache_dir) / f"{self.stage}-{self.key}"
        self.parts_dir = Path(cache_dir) / f"{self.stage}-{self.key}.parts"

    # -- state on disk ---------------------------------------------------------------------------------------
    def ready(self) -> bool:
        return (self.folder / "meta.json").is_file()

    def part(self, index: int) -> Path:
        """The path prefix of file `index`'s part: <prefix>.json marks it done."""
        return self.parts_dir / f"{index:05d}"

    def part_meta(self, index: int) -> dict | None:
        try:
            meta = json.loads(self.part(index).with_suffix(".json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return meta if meta.get("stamp") == _file_stamp(self.files[index]) else None

    def done(self) -> list[int]:
        return [i for i in range(len(self.files)) if self.part_meta(i) is not None]

    def estimate_seconds(self, num_proc: int = 1) -> float:
        """Rough preparation time from the bytes of the columns read (parquet footers; text files' heads)."""
        options = self.settings.get("options")
        total = sum(data_files.column_bytes(path, self.module.check_schema(path, read_schema(path, options),
                                                                           options).columns, options)
                    for path in self.files)
        return total / (stages.stage(self.stage).prepare_bytes_per_second * max(1, num_proc))

    # -- preparing -------------------------------------------------------------------------------------------
    def prepare(self, num_proc: int | None = 1, shard: str | None = None, on_bad_rows: str = "skip",
                log=print, progress: bool = True, **options) -> Path | None:
        """Tokenize the files of this machine's shard that have no part yet, then, once every part exists,
        build the finished folder. Returns it, or None when other shards still have files to do.
        `options` go to the stage's `encode_file` (batch sizes: they do not change the tokens)."""
        index, count = parse_shard(shard)
        if self.ready():
            log(f"data: reusing token cache {self.folder}")
            return self.folder
        done = set(self.done())
        mine = [i for i in range(len(self.files)) if i % count == index]
        todo = [i for i in mine if i not in done]
        who = f"shard {index}/{count}: " if count > 1 else ""
        if todo:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            reused = len(mine) - len(todo)
            log(f"data: {who}tokenizing {len(todo)} of {len(self.files)} files with {num_proc or 1} process(es)"
                + (f" ({reused} already done by an earlier run)" if reused else "") + f" -> {self.parts_dir}")
            t0 = time.time()
            try:
                _encode_parts(self, todo, num_proc or 1, on_bad_rows, progress, options)
            except OSError:
                if self.ready():  # another machine finished the cache (and moved the parts) meanwhile
                    log(f"data: {who}another process finished {self.folder} meanwhile; reusing it")
                    return self.folder
                raise
            log(f"data: {who}{len(todo)} files tokenized in {time.time() - t0:.1f}s")
        if self.ready():  # another process (another node's, on a shared disk) finished it meanwhile
            return self.folder
        missing = [i for i in range(len(self.files)) if self.part_meta(i) is None]
        if missing and count == 1:
            raise MiniQwenError(f"the parts of {len(missing)} files (e.g. {self.files[missing[0]]}) disappeared "
                                f"from {self.parts_dir} while preparing, with no finished cache: is another "
                                f"process removing that folder? Run the preparation again.")
        if missing:
            log(f"data: {who}done; {len(missing)} of {len(self.files)} files still belong to other shards "
                f"(e.g. {self.files[missing[0]]}). Once every shard has finished, run the command once more "
                f"without --shard (or start the stage) to assemble the cache.")
            return None
        return self._finish(log)

    def _finish(self, log) -> Path:
        """The parts -> the finished folder, in one rename; safe when two machines finish at once."""
        remove_stale_tmp(self.folder)  # a merge this machine began before it was killed
        tmp = part_tmp(self.folder)
        parts = [(self.part(i), self.part_meta(i)) for i in range(len(self.files))]
        try:
            meta = self.module.finish_cache(self, parts, tmp)
        except OSError:
            if self.ready():  # another machine assembled it (and removed the parts) meanwhile
                return self.folder
            raise
        if meta is not None:
            log(meta.pop("_line"))
        return self.folder

    def command(self, stage_argv: list[str], num_proc: int | None = None) -> str:
        """The command that prepares this cache, from a stage's own arguments."""
        argv = [a for a in stage_argv if not a.startswith(("--local_rank", "--local-rank"))]  # launcher-added
        cpus = num_proc or max(1, os.cpu_count() or 1)
        return shlex.join(["python", "utils/prepare_data.py", self.stage, *argv, "--num_proc", str(cpus)])


def write_part_meta(part: Path, meta: dict) -> None:
    """The part's json, written last and renamed into place: its presence is what marks the part done."""
    tmp = part_tmp(part.with_suffix(".json"))
    tmp.write_text(json.dumps(meta, ensure_ascii=False))
    os.replace(tmp, part.with_suffix(".json"))


# --------------------------------------------------------------------------- the worker side

_WORKER: dict = {}


def _init_worker(tokenizer, queue):
    # One tokenizer thread per process: the processes are the parallelism (set before the first encode).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=tokenizer, queue=queue)


def _encode_in_worker(module_name: str, path: Path, part: Path, stamp: str, settings: dict, on_bad_rows: str,
                      options: dict) -> None:
    queue = _WORKER["queue"]
    _encode_one(module_name, path, part, stamp, settings, on_bad_rows, options, _WORKER["tokenizer"],
                lambda rows, tokens: queue.put((rows, tokens)))


def _encode_one(module_name, path, part, stamp, settings, on_bad_rows, options, tokenizer, report) -> None:
    remove_stale_tmp(part)
    t0 = time.time()
    meta = _stage_module(module_name).encode_file(path, part, tokenizer, settings, on_bad_rows, report, **options)
    write_part_meta(part, {**meta, "file": str(path), "stamp": stamp, "seconds": round(time.time() - t0, 3)})


def _encode_parts(cache: DataCache, todo: list[int], num_proc: int, on_bad_rows: str, progress: bool,
                  options: dict) -> None:
    from tqdm.auto import tqdm

    rows = {i: data_files.known_rows(cache.files[i]) for i in todo}  # None: a text file, not counted beforehand
    total = None if None in rows.values() else sum(rows.values())
    size = rows if total is not None else {i: cache.files[i].stat().st_size for i in todo}
    order = sorted(todo, key=lambda i: -size[i])  # largest first: the processes finish close together
    bar = tqdm(total=total, unit="rows", desc=f"preparing {cache.stage} data", disable=not progress,
               mininterval=1.0, smoothing=0.1)
    tokens = [0]

    def report(n_rows, n_tokens):
        tokens[0] += n_tokens
        bar.update(n_rows)
        bar.set_postfix_str(f"{tokens[0]:,} tokens", refresh=False)

    args = [(cache.module.__name__, cache.files[i], cache.part(i), _file_stamp(cache.files[i]), cache.settings,
             on_bad_rows, options) for i in order]
    try:
        if num_proc <= 1 or len(todo) == 1:
            for task in args:
                _encode_one(*task, cache.tokenizer, report)
        else:
            _run_pool(cache.tokenizer, args, min(num_proc, len(todo)), report)
    finally:
        bar.close()


def _run_pool(tokenizer, args: list[tuple], processes: int, report) -> None:
    """One file per task over `processes` workers; their progress comes back through a queue."""
    import queue as queue_module

    # fork where there is one (Linux): the workers inherit the loaded tokenizer instead of unpickling it.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    progress = ctx.Queue()
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by the forked children at once
    try:
        pool = ctx.Pool(processes, initializer=_init_worker, initargs=(tokenizer, progress))
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    try:
        pending = [pool.apply_async(_encode_in_worker, a) for a in args]
        while pending:
            with contextlib.suppress(queue_module.Empty):
                report(*progress.get(timeout=0.05))
            for result in [r for r in pending if r.ready()]:
                result.get()  # re-raises a worker's error (a bad row under --on_bad_rows error) here
                pending.remove(result)
        pool.close()
        pool.join()  # the workers have flushed their progress into the queue when they exit
        with contextlib.suppress(queue_module.Empty):
            while True:
                report(*progress.get(timeout=0.05))
    finally:
        pool.terminate()


# --------------------------------------------------------------------------- the stage's side

def is_local_main(training_args) -> bool:
    return getattr(training_args, "local_process_index", 0) == 0


@contextlib.contextmanager
def prepared_first(training_args, cache: DataCache, desc: str, num_proc: int | None = None):
    """`training_args.main_process_first` for a stage's data, with the wait bounded.

    One process: nothing to wait for. Several: when the cache is not ready yet and preparing it would take
    more than half of --ddp_timeout (the most a barrier waits), every process stops at once with the command
    that prepares it beforehand; otherwise the other processes of the node poll for the cache (giving up with
    one message after --ddp_timeout) while the node's first process prepares it, and the barrier after it
    only covers the short work that follows (filtering, packing)."""
    world = training_args.world_size
    if world > 1 and not cache.ready():
        timeout = training_args.ddp_timeout
        estimate = cache.estimate_seconds(num_proc or 1)
        if estimate > timeout / 2:
            raise MiniQwenError(
                f"the {cache.stage} data is not prepared ({cache.folder} does not exist) and preparing it here "
                f"would take about {estimate / 60:.0f} minutes while {world} processes wait (--ddp_timeout "
                f"{timeout} s). Prepare it first, on this machine or split over several (--shard I/K), with the "
                f"same data flags, then launch again:\n    {cache.command(sys.argv[1:])}")
        if not is_local_main(training_args):
            wait_for(cache, timeout)
    with training_args.main_process_first(desc=desc):
        yield


def wait_for(cache: DataCache, timeout: float, poll: float = WAIT_POLL_SECONDS) -> None:
    """Poll until the node's first process has finished `cache`; one message after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cache.ready():
        if time.monotonic() > deadline:
            raise MiniQwenError(
                f"waited {timeout:.0f} s (--ddp_timeout) for this node's first process to prepare {cache.folder} "
                f"and it is not there: that process is slow, stuck or dead (see its output). Prepare the data "
                f"before launching:\n    {cache.command(sys.argv[1:])}")
        time.sleep(poll)


def prepare_only(cache: DataCache, num_proc: int | None, shard: str | None, on_bad_rows: str, log=print) -> None:
    """A stage's --prepare_only: prepare (this machine's share of) the cache, say what is left, and return."""
    t0 = time.time()
    folder = cache.prepare(num_proc, shard, on_bad_rows, log=log)
    if folder is not None:
        log(f"data: {cache.stage} cache ready in {folder} ({time.time() - t0:.1f}s this run); the stage will "
            f"read it when launched with the same data flags and --cache_dir.")
