"""PT data preparation: bare tokenisation vs the original recipe's `datasets.map` shape vs our token cache.

Run as:
    python bench/prepare_pt.py                         # real samples repeated to >= 2M tokens, 3 rounds
    python bench/prepare_pt.py --min_tokens 500000 --rounds 1 --rss_factor 2   # quick check

What is timed, on the same texts, in one process, rounds interleaved (best of each is reported):
  bare      `tokenizer(texts, add_special_tokens=False)` on in-memory texts, in batches of 5000:
            the floor any pipeline pays.
  original  the original recipe's shape: `load_dataset("parquet")` then `Dataset.map(batched=True,
            batch_size=5000, remove_columns=...)` returning Python lists of input_ids and attention_mask,
            concatenated with `itertools.chain` and cut into 1024-token blocks (Arrow cache on disk).
  ours      `mini_qwen.data.pt.prepare_token_cache`: parquet -> tokens.u24 + doc_lens.npy on disk.
Then bytes per token on disk of both caches, and the peak RSS of `prepare_token_cache` at 1x and
Nx the input, each in a fresh subprocess (VmHWM, reset after the imports and the tokenizer load, which
peak higher than preparation itself): streaming means the two stay close.
"""

import argparse
import inspect
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

from rss import proc_status_mb, reset_peak_rss  # bench/rss.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]

SAMPLES = ROOT / "tests" / "data" / "baai" / "pt"  # real IndustryCorpus2 documents (tests/data/README.md)
ORIGINAL_BLOCK = 1024
ORIGINAL_BATCH = 5000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def source_files(data_dir: str | None):
    from mini_qwen.data.common import find_data_files

    if data_dir:
        return find_data_files(data_dir)
    return find_data_files(str(SAMPLES))


def write_copies(texts: list[str], folder: Path, copies: int) -> list[Path]:
    """One parquet file holding every text `copies` times (only the text column). One big file, like the real
    IndustryCorpus2 shards: parquet batches of 4096 rows then really hold 4096 documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0000.parquet"
    pq.write_table(pa.table({"text": texts * copies}), path, row_group_size=4096)
    return [path]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# ---------------------------------------------------------------- the three pipelines

def run_bare(tokenizer, texts: list[str]) -> tuple[float, float, int]:
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for i in range(0, len(texts), ORIGINAL_BATCH):
        out = tokenizer(texts[i:i + ORIGINAL_BATCH], add_special_tokens=False)
        n += sum(map(len, out["input_ids"]))
    return time.perf_counter() - t0, time.process_time() - c0, n


def run_original(tokenizer, files: list[Path], cache_dir: Path) -> dict:
    """The original recipe's PT preprocessing, written again here: Python lists in, Python lists out."""
    import datasets

    def preprocess(examples):
        texts = [text + "<|im_end|>" for text in examples["text"]]
        tokenized = tokenizer(texts, add_special_tokens=False)
        concatenated = {k: list(chain(*tokenized[k])) for k in tokenized.keys()}
        total = len(concatenated["input_ids"]) // ORIGINAL_BLOCK * ORIGINAL_BLOCK
        return {k: [t[i:i + ORIGINAL_BLOCK] for i in range(0, total, ORIGINAL_BLOCK)] for k, t in concatenated.items()}

    t0, c0 = time.perf_counter(), time.process_time()
    raw = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                                cache_dir=str(cache_dir))
    t1 = time.perf_counter()
    blocks = raw.map(preprocess, batched=True, batch_size=ORIGINAL_BATCH, remove_columns=raw.column_names)
    t2, c2 = time.perf_counter(), time.process_time()
    map_files = {c["filename"] for c in blocks.cache_files}
    map_bytes = sum(os.path.getsize(f) for f in map_files)
    return {"load_s": t1 - t0, "map_s": t2 - t1, "total_s": t2 - t0, "cpu_s": c2 - c0, "blocks": len(blocks),
            "tokens": len(blocks) * ORIGINAL_BLOCK, "bytes": map_bytes, "files": len(map_files),
            "features": str(blocks.features)}


def run_ours(tokenizer, files: list[Path], cache_root: Path, **kwargs) -> dict:
    from mini_qwen.data.pt import prepare_token_cache

    t0, c0 = time.perf_counter(), time.process_time()
    cache = prepare_token_cache(files, tokenizer, str(cache_root), log=lambda *a: None, progress=False, **kwargs)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    meta = json.loads((cache / "meta.json").read_text())
    return {"total_s": seconds, "cpu_s": cpu, "tokens": meta["tokens"], "bytes": folder_bytes(cache),
            "parts": {p.name: p.stat().st_size for p in cache.iterdir()}}


# ---------------------------------------------------------------- streaming: peak RSS in a child

def rss_child(files_dir: str, cache_root: str, max_chars: str) -> None:
    from mini_qwen.data.common import find_data_files
    from mini_qwen.data.pt import prepare_token_cache
    from mini_qwen.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    files = find_data_files(files_dir)
    import_peak = proc_status_mb("VmHWM")  # transformers + the tokenizer load peak above preparation itself
    reset = reset_peak_rss()
    start = proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    cache = prepare_token_cache(files, tokenizer, cache_root, log=lambda *a: None, progress=False,
                                max_chars=int(max_chars))
    seconds = time.perf_counter() - t0
    meta = json.loads((cache / "meta.json").read_text())
    print(json.dumps({"import_peak_mb": import_peak, "start_rss_mb": start, "peak_rss_mb": proc_status_mb("VmHWM"),
                      "ru_maxrss_mb": peak_rss_mb(), "hwm_reset": reset, "tokens": meta["tokens"],
                      "seconds": seconds}))


def measure_rss(files_dir: Path, cache_root: Path, max_chars: int) -> dict:
    shutil.rmtree(cache_root, ignore_errors=True)
    out = subprocess.run([sys.executable, __file__, "--_rss_child", str(files_dir), str(cache_root), str(max_chars)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="PT parquet folder (default: the BAAI samples, "
                                                         "else mini_data/pt)")
    parser.add_argument("--min_tokens", type=int, default=2_000_000, help="repeat the texts to at least this many")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best time of each is kept")
    parser.add_argument("--rss_factor", type=int, default=4, help="the larger input for the RSS check, x 1x")
    parser.add_argument("--rss_repeats", type=int, default=2, help="fresh subprocesses per input size")
    parser.add_argument("--skip_original", action="store_true", help="do not time the original recipe's "
                        "datasets.map pipeline")
    parser.add_argument("--skip_rss", action="store_true", help="do not measure the streaming peak RSS")
    parser.add_argument("--time_unchunked", action="store_true", help="also time prepare_token_cache with one "
                        "tokenizer call per 4096-row parquet batch")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--rss_unchunked", action="store_true", help="also measure the RSS with one tokenizer call "
                        "per 4096-row parquet batch (max_chars unbounded)")
    parser.add_argument("--_rss_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._rss_child:
        return rss_child(*args._rss_child)

    import datasets

    from mini_qwen.data.pt import iter_text_batches
    from mini_qwen.tokenizer import load_tokenizer

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    tokenizer = load_tokenizer()
    files = source_files(args.data_dir)
    base = [t for batch in iter_text_batches(files) for t in batch]
    base_tokens = sum(map(len, tokenizer(base, add_special_tokens=False)["input_ids"]))
    copies = max(1, math.ceil(args.min_tokens / base_tokens))
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_pt_"))
    print(f"source: {len(files)} files, {len(base)} texts, {base_tokens:,} tokens; x{copies} copies -> {work}")
    try:
        files_1x = write_copies(base, work / "in_1x", copies)
        texts = base * copies
        chars = sum(map(len, texts))
        print(f"input: {len(texts):,} texts, {chars:,} characters, ~{base_tokens * copies:,} tokens, "
              f"{folder_bytes(work / 'in_1x'):,} parquet bytes; cores: {os.cpu_count()}")

        times = {"bare": [], "original": [], "original_map": [], "ours": []}
        cpu = {"bare": [], "original": [], "ours": []}
        if args.time_unchunked:
            times["ours_unchunked"], cpu["ours_unchunked"] = [], []
        original = ours = None
        def bare_step(r):
            nonlocal n_bare
            seconds, cpu_s, n_bare = run_bare(tokenizer, texts)
            times["bare"].append(seconds)
            cpu["bare"].append(cpu_s)

        def original_step(r):
            nonlocal original
            original = run_original(tokenizer, files_1x, work / f"hf_cache_{r}")
            times["original"].append(original["total_s"])
            times["original_map"].append(original["map_s"])
            cpu["original"].append(original["cpu_s"])
            shutil.rmtree(work / f"hf_cache_{r}", ignore_errors=True)

        def ours_step(r):
            nonlocal ours
            ours = run_ours(tokenizer, files_1x, work / f"ours_{r}")
            times["ours"].append(ours["total_s"])
            cpu["ours"].append(ours["cpu_s"])
            if r < args.rounds - 1:
                shutil.rmtree(work / f"ours_{r}", ignore_errors=True)

        def unchunked_step(r):  # one tokenizer call per parquet batch (max_chars unbounded)
            other = run_ours(tokenizer, files_1x, work / f"ours_u_{r}", max_chars=10**15)
            times["ours_unchunked"].append(other["total_s"])
            cpu["ours_unchunked"].append(other["cpu_s"])
            shutil.rmtree(work / f"ours_u_{r}", ignore_errors=True)

        steps = [bare_step] + ([] if args.skip_original else [original_step]) + [ours_step] + \
            ([unchunked_step] if args.time_unchunked else [])
        n_bare = 0
        for r in range(args.rounds):
            for step in (steps if r % 2 == 0 else steps[::-1]):  # alternate the order: drift hits all alike
                step(r)
            line = ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v)
            line += "; CPU " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in cpu.items() if v)
            print(f"round {r + 1}: {line}", flush=True)

        best = {k: min(v) for k, v in times.items() if v}
        res = {"texts": len(texts), "chars": chars, "tokens_bare": n_bare, "tokens_ours": ours["tokens"],
               "rounds": args.rounds, "times": times, "best_s": best}
        print(f"\n== time (best of {args.rounds}; bare tokens {n_bare:,}) ==")
        for k, v in best.items():
            print(f"  {k:14s} {v:7.2f} s   {n_bare / v / 1e3:8.0f}K tokens/s   x{v / best['bare']:.2f} bare"
                  f"   (median {statistics.median(times[k]):.2f} s)")
        best_cpu = {k: min(v) for k, v in cpu.items() if v}
        res["cpu_s"], res["best_cpu_s"] = cpu, best_cpu
        print("  CPU time (all threads, best): " + ", ".join(f"{k} {v:.2f} s (x{v / best_cpu['bare']:.2f})"
                                                            for k, v in best_cpu.items()))
        res["ratio_ours_bare"] = best["ours"] / best["bare"]
        res["cpu_ratio_ours_bare"] = best_cpu["ours"] / best_cpu["bare"]
        med = {k: statistics.median(v) for k, v in times.items() if v}
        res["median_s"] = med
        res["median_ratio_ours_bare"] = med["ours"] / med["bare"]
        print(f"  ours/bare = {res['ratio_ours_bare']:.2f} best, {res['median_ratio_ours_bare']:.2f} median "
              f"(target <= 1.2)")
        if original:
            res["ratio_original_bare"] = best["original"] / best["bare"]
            res["ratio_original_map_bare"] = best["original_map"] / best["bare"]
            res["ratio_original_ours"] = best["original"] / best["ours"]
            res["cpu_ratio_original_bare"] = best_cpu["original"] / best_cpu["bare"]
            res["median_ratio_original_bare"] = med["original"] / med["bare"]
            print(f"  original/bare = {res['ratio_original_bare']:.2f} best, "
                  f"{res['median_ratio_original_bare']:.2f} median (map only {res['ratio_original_map_bare']:.2f}); "
                  f"original/ours = {res['ratio_original_ours']:.2f}")

        print("\n== bytes per token on disk ==")
        res["ours_bytes_per_token"] = ours["bytes"] / ours["tokens"]
        print(f"  ours: {ours['bytes']:,} bytes / {ours['tokens']:,} tokens = {res['ours_bytes_per_token']:.3f} "
              f"(target <= 4) {ours['parts']}")
        if original:
            res["original_bytes_per_token"] = original["bytes"] / original["tokens"]
            res["original_features"] = original["features"]
            print(f"  original: {original['bytes']:,} bytes / {original['tokens']:,} tokens in blocks = "
                  f"{res['original_bytes_per_token']:.2f} ({original['files']} map cache file(s); "
                  f"{original['features']})")

        if args.skip_rss:
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=1))
            return
        print("\n== streaming: peak RSS of prepare_token_cache, fresh subprocess each ==")
        write_copies(base, work / "in_nx", copies * args.rss_factor)
        from mini_qwen.data.pt import encode_file

        default_chars = inspect.signature(encode_file).parameters["max_chars"].default
        variants = [("", default_chars)] + ([("unchunked ", 10**15)] if args.rss_unchunked else [])
        res["rss"] = {}
        for label, max_chars in variants:
            print(f"  {label or 'default '}(max_chars {max_chars:,}):")
            rss = {"1x": [], f"{args.rss_factor}x": []}
            for _ in range(args.rss_repeats):
                rss["1x"].append(measure_rss(work / "in_1x", work / "rss_cache", max_chars))
                rss[f"{args.rss_factor}x"].append(measure_rss(work / "in_nx", work / "rss_cache", max_chars))
            for k, runs in rss.items():
                peaks = [r["peak_rss_mb"] for r in runs]
                print(f"    {k}: {runs[0]['tokens']:,} tokens, peak RSS while preparing {min(peaks):.0f} MB "
                      f"(runs {[round(p) for p in peaks]}; RSS at start {runs[0]['start_rss_mb']:.0f} MB, so "
                      f"+{min(peaks) - runs[0]['start_rss_mb']:.0f} MB; peak while importing + loading the tokenizer "
                      f"{runs[0]['import_peak_mb']:.0f} MB; ru_maxrss {runs[0]['ru_maxrss_mb']:.0f} MB; "
                      f"VmHWM reset: {runs[0]['hwm_reset']}), {min(r['seconds'] for r in runs):.1f} s")
            p1 = min(r["peak_rss_mb"] for r in rss["1x"])
            pn = min(r["peak_rss_mb"] for r in rss[f"{args.rss_factor}x"])
            res["rss"][label.strip() or "default"] = {"runs": rss, "ratio": pn / p1, "max_chars": max_chars}
            print(f"    peak RSS {args.rss_factor}x / 1x = {pn / p1:.2f} (target <= 1.3)")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
