"""Data preparation at scale (mini_qwen/data/prepare.py): speed with 1 and 2 processes, peak memory as the input
grows, and the time of a rerun after a kill half way.

Run as:
    python bench/prepare_parallel.py                          # all three parts, figures for bench/RESULTS.md
    python bench/prepare_parallel.py --rounds 1 --sizes 1 4   # quicker
    python bench/prepare_parallel.py --samples /path/to/baai_samples   # other samples (pt/, sft/)

Input: the PT texts (the real IndustryCorpus2 samples of tests/data/baai, or --samples, when
present, else mini_data/pt) written as --files parquet files, each the texts --pt_copies times in another order,
as a real corpus is many similar shards; 4x and 16x the input are 4 and 16 times as many such files. SFT: the
Infinity-Instruct samples (else mini_data/sft), --sft_copies times a file.
  speed    prepare_token_cache with 1 and 2 processes on the 1x input, a fresh cache each time, the order of the
           two alternating between rounds; tokens/s of the best and the median round. The same for SFT (rows/s),
           whose encoding is Python (chat parsing, label masks) rather than the Rust tokenizer.
  memory   peak RSS of the preparing processes at 1x, 4x and 16x, in a fresh subprocess each (VmHWM reset after the
           imports and the tokenizer load); with 2 processes also the largest worker (RSS sampled every 0.1 s).
  rerun    a first run on the 1x input; then a run killed (SIGKILL) once half of the files are done, and its rerun:
           the rerun redoes only the unfinished files, so it takes about half the first run's time.
  formats  (--formats) the same PT texts as parquet and as jsonl files (mini_qwen/data/files.py reads both):
           tokens/s of each with 1 process, alternating, and the token caches compared byte for byte; then peak RSS
           while preparing ONE jsonl file of 1x, 4x and 16x --jsonl_copies times the samples (a file is streamed
           line by line, so the peak should not grow with it).
"""

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rss import proc_status_mb, reset_peak_rss  # bench/rss.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = [ROOT / "tests" / "data" / "baai"]  # --samples puts another folder first
COPIES = {"pt": 1, "sft": 20}  # rows of the samples per file: --pt_copies, --sft_copies


def source(stage: str) -> Path:
    return next((s / stage for s in SAMPLES if (s / stage).is_dir()), ROOT / "mini_data" / stage)


def write_corpus(stage: str, folder: Path, files: int, fmt: str = "parquet", copies: int | None = None) -> list[Path]:
    """`files` parquet (or jsonl) files of the stage's sample rows (COPIES times), each rotated by its index (same
    size, other order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mini_qwen.data.checks import find_stage_files

    columns = {"pt": ["text"], "sft": ["conversations"]}[stage]
    tables = [pq.read_table(f, columns=columns) for f in find_stage_files(stage, str(source(stage)), log=quiet)]
    rows = pa.concat_tables(tables * (copies or COPIES[stage])).combine_chunks()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(files):
        k = (i * 7) % rows.num_rows
        table = pa.concat_tables([rows.slice(k), rows.slice(0, k)])
        path = folder / f"part-{i:05d}.{fmt}"
        if fmt == "parquet":
            pq.write_table(table, path, row_group_size=256)
        else:
            with open(path, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.append(path)
    return out


def quiet(*_, **__):
    pass


def load():
    from mini_qwen.tokenizer import load_tokenizer

    return load_tokenizer()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------- speed

def time_prepare(stage: str, files, tokenizer, cache_root: Path, num_proc: int) -> tuple[float, int]:
    from mini_qwen.data import pt, sft

    shutil.rmtree(cache_root, ignore_errors=True)
    t0 = time.perf_counter()
    if stage == "pt":
        folder = pt.prepare_token_cache(files, tokenizer, cache_root, log=quiet, num_proc=num_proc, progress=False)
        amount = json.loads((folder / "meta.json").read_text())["tokens"]
    else:
        folder = sft.data_cache(files, tokenizer, cache_root, 1024).prepare(num_proc, log=quiet, progress=False)
        amount = json.loads((folder / "meta.json").read_text())["rows"]
    return time.perf_counter() - t0, amount


def speed(stage: str, files, tokenizer, work: Path, rounds: int) -> dict:
    unit = "tokens" if stage == "pt" else "rows"
    times: dict[int, list[float]] = {1: [], 2: []}
    amount = 0
    for r in range(rounds):
        for n in ((1, 2) if r % 2 == 0 else (2, 1)):
            seconds, amount = time_prepare(stage, files, tokenizer, work / f"speed_{stage}", n)
            times[n].append(seconds)
        print(f"  {stage} round {r + 1}: 1 process {times[1][-1]:.2f}s, 2 processes {times[2][-1]:.2f}s "
              f"(load average {load_average()})", flush=True)
    out = {"unit": unit, "amount": amount, "times": times}
    for n in (1, 2):
        best, median = min(times[n]), statistics.median(times[n])
        out[n] = {"best_per_s": amount / best, "median_per_s": amount / median}
        print(f"  {stage}: {n} process(es): {amount / best:,.0f} {unit}/s best, {amount / median:,.0f} median")
    print(f"  {stage}: 2 / 1 processes = {min(times[1]) / min(times[2]):.2f}x best, "
          f"{statistics.median(times[1]) / statistics.median(times[2]):.2f}x median")
    return out


# ---------------------------------------------------------------- memory, in a fresh process

def rss_child(files_dir: str, cache_root: str, num_proc: str) -> None:
    from mini_qwen.data.files import find_data_files
    from mini_qwen.data.pt import prepare_token_cache

    tokenizer = load()
    files = find_data_files(files_dir)
    reset = reset_peak_rss()
    start = proc_status_mb("VmRSS")
    workers: dict[int, float] = {}
    done = threading.Event()

    def sample():  # the pool's workers: their RSS, sampled (their VmHWM dies with them)
        me = os.getpid()
        while not done.wait(0.1):
            for proc in Path("/proc").iterdir():
                try:
                    if not proc.name.isdigit() or int((proc / "stat").read_text().split()[3]) != me:
                        continue
                    rss = next(int(line.split()[1]) / 1024 for line in (proc / "status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
                except (OSError, ValueError, StopIteration):
                    continue
                workers[int(proc.name)] = max(workers.get(int(proc.name), 0.0), rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    folder = prepare_token_cache(files, tokenizer, cache_root, log=quiet, num_proc=int(num_proc), progress=False)
    seconds = time.perf_counter() - t0
    done.set()
    meta = json.loads((folder / "meta.json").read_text())
    print(json.dumps({"start_mb": start, "peak_mb": proc_status_mb("VmHWM"), "hwm_reset": reset,
                      "worker_peak_mb": max(workers.values(), default=0.0), "tokens": meta["tokens"],
                      "files": len(files), "seconds": seconds}))


def peak_rss(folder: Path, work: Path, num_proc: int) -> dict:
    """prepare_token_cache of `folder` in a fresh subprocess: its peak RSS, tokens, seconds."""
    shutil.rmtree(work / "rss_cache", ignore_errors=True)
    run = subprocess.run([sys.executable, __file__, "--_rss_child", str(folder), str(work / "rss_cache"),
                          str(num_proc)], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def memory(work: Path, sizes: list[int], files_1x: int, num_procs: list[int]) -> dict:
    out = {}
    for size in sizes:
        folder = work / f"in_{size}x"
        write_corpus("pt", folder, files_1x * size)
        for n in num_procs:
            res = peak_rss(folder, work, n)
            out[f"{size}x/{n}"] = res
            extra = f", largest worker {res['worker_peak_mb']:.0f} MB" if n > 1 else ""
            print(f"  {size:>2}x ({res['files']} files, {res['tokens']:,} tokens), {n} process(es): peak RSS "
                  f"{res['peak_mb']:.0f} MB (start {res['start_mb']:.0f} MB, +{res['peak_mb'] - res['start_mb']:.0f})"
                  f"{extra}, {res['seconds']:.1f}s", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return out


# ---------------------------------------------------------------- kill at half, rerun

def _prepare_in_child(files, cache_root):
    from mini_qwen.data.pt import prepare_token_cache

    prepare_token_cache(files, load(), cache_root, log=quiet, progress=False)


def rerun(files, tokenizer, work: Path) -> dict:
    from mini_qwen.data import pt

    first, _ = time_prepare("pt", files, tokenizer, work / "first", 1)
    cache = pt.data_cache(files, tokenizer, work / "killed")
    child = multiprocessing.get_context("fork").Process(target=_prepare_in_child, args=(files, work / "killed"))
    child.start()
    while len(cache.done()) < len(files) // 2 and child.is_alive():
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    done = len(cache.done())
    t0 = time.perf_counter()
    cache.prepare(1, log=quiet, progress=False)
    again = time.perf_counter() - t0
    print(f"  first run {first:.2f}s; killed with {done} of {len(files)} files done; rerun {again:.2f}s = "
          f"{again / first:.2f} of the first (load average {load_average()})")
    return {"first_s": first, "done_at_kill": done, "files": len(files), "rerun_s": again, "ratio": again / first}


# ---------------------------------------------------------------- formats: jsonl vs parquet, one large jsonl

def formats(work: Path, files_1x: int, rounds: int, sizes: list[int], jsonl_copies: int, tokenizer) -> dict:
    parquet = write_corpus("pt", work / "fmt_parquet", files_1x)
    jsonl = write_corpus("pt", work / "fmt_jsonl", files_1x, "jsonl")
    times: dict[str, list[float]] = {"parquet": [], "jsonl": []}
    tokens = 0
    for r in range(rounds):
        for fmt in (("parquet", "jsonl") if r % 2 == 0 else ("jsonl", "parquet")):
            seconds, tokens = time_prepare("pt", parquet if fmt == "parquet" else jsonl, tokenizer,
                                           work / f"fmt_cache_{fmt}", 1)
            times[fmt].append(seconds)
        print(f"  round {r + 1}: parquet {times['parquet'][-1]:.2f}s, jsonl {times['jsonl'][-1]:.2f}s "
              f"(load average {load_average()})", flush=True)
    same = all((work / f"fmt_cache_{fmt}").is_dir() for fmt in times) and len({
        next((work / f"fmt_cache_{fmt}").glob("pt-*/tokens.u24")).read_bytes() for fmt in times}) == 1
    out = {"tokens": tokens, "times": times, "identical_tokens": same,
           "files_bytes": {fmt: sum(p.stat().st_size for p in files) for fmt, files in
                           (("parquet", parquet), ("jsonl", jsonl))}}
    for fmt in times:
        print(f"  {fmt}: {tokens / min(times[fmt]):,.0f} tokens/s best, "
              f"{tokens / statistics.median(times[fmt]):,.0f} median")
    print(f"  jsonl / parquet time: {min(times['jsonl']) / min(times['parquet']):.2f}x best, "
          f"{statistics.median(times['jsonl']) / statistics.median(times['parquet']):.2f}x median; "
          f"token caches identical: {same}")
    out["rss"] = {}
    for size in sizes:
        folder = work / f"jsonl_{size}x"
        path, = write_corpus("pt", folder, 1, "jsonl", jsonl_copies * size)
        res = peak_rss(folder, work, 1)
        res["jsonl_mb"] = path.stat().st_size / 1e6
        out["rss"][f"{size}x"] = res
        print(f"  one jsonl of {res['jsonl_mb']:.0f} MB ({size}x, {res['tokens']:,} tokens): peak RSS "
              f"{res['peak_mb']:.0f} MB (start {res['start_mb']:.0f} MB, +{res['peak_mb'] - res['start_mb']:.0f}), "
              f"{res['seconds']:.1f}s (load average {load_average()})", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8, help="parquet files of the 1x input")
    parser.add_argument("--samples", default=None, help="folder with pt/ and sft/ sample parquet files")
    parser.add_argument("--pt_copies", type=int, default=COPIES["pt"], help="the PT samples this many times a file")
    parser.add_argument("--sft_copies", type=int, default=COPIES["sft"], help="the SFT samples this many times")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16], help="input sizes for the memory part")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--skip_rss", action="store_true")
    parser.add_argument("--skip_rerun", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--formats", action="store_true", help="only the formats part: jsonl vs parquet, one jsonl")
    parser.add_argument("--jsonl_copies", type=int, default=8, help="the PT samples this many times in the 1x jsonl")
    parser.add_argument("--_rss_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._rss_child:
        return rss_child(*args._rss_child)
    if args.samples:
        SAMPLES.insert(0, Path(args.samples))
    COPIES.update(pt=args.pt_copies, sft=args.sft_copies)

    tokenizer = load()
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_parallel_"))
    res = {"cores": os.cpu_count(), "source": str(source("pt"))}
    print(f"source: {source('pt')} and {source('sft')}; {os.cpu_count()} cores; load average {load_average()}")
    try:
        if args.formats:
            print("\n== formats: the same PT texts as parquet and as jsonl; one growing jsonl file ==")
            res["formats"] = formats(work, args.files, args.rounds, args.sizes, args.jsonl_copies, tokenizer)
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=1, default=str))
            return
        files = write_corpus("pt", work / "pt_1x", args.files)
        if not args.skip_speed:
            print("\n== speed: 1 vs 2 processes ==")
            res["speed_pt"] = speed("pt", files, tokenizer, work, args.rounds)
            sft_files = write_corpus("sft", work / "sft_1x", args.files)
            res["speed_sft"] = speed("sft", sft_files, tokenizer, work, args.rounds)
        if not args.skip_rerun:
            print("\n== rerun after a kill at half ==")
            res["rerun"] = rerun(files, tokenizer, work)
        if not args.skip_rss:
            print("\n== memory: peak RSS as the input grows (fresh process each) ==")
            res["rss"] = memory(work, args.sizes, args.files, [1, 2])
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
