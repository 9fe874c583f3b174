"""GPU check of the three stages: throughput, MFU and peak GPU memory. Driven by bench/gpu_check.sh.

Run as:
    bash bench/gpu_check.sh                      # on a CUDA machine: every sub-run, results in $OUT (or bench/)
    bash bench/gpu_check.sh --dry-run            # print the sub-runs' commands only
    python bench/gpu_check.py all --out DIR      # what the .sh calls after installing the carried wheels
    python bench/gpu_check.py stage pt --name pt --out DIR -- <mini_qwen_pt.py flags>   # one sub-run

`all` runs every sub-run of the plan in its own process under `timeout` (one failure never loses the others),
within an overall time budget, then writes gpu_results.json and gpu_results.md; it exits 1 when a sub-run
failed or timed out (the report says which), 0 when every one that ran is ok (rows past the budget are listed
as skipped). Without a CUDA GPU, `all` runs a tiny-model CPU smoke of the same sub-runs instead, to catch
script errors. Where each part lives (bench/gpu_check_lib/):
    plan.py     which sub-runs, in which order, with which flags     runners.py  `stage`, `bare`, `base` below
    profile.py  torch.profiler summary by kind of kernel             report.py   gpu_results.{json,md}
"""

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from gpu_check_lib.plan import ENTRY, ROOT, plan, write_accelerate_configs
from gpu_check_lib.report import report
from gpu_check_lib.runners import STAGES, run_bare, run_stage, save_base_model

DEFAULT_WORK = "/tmp/mini_qwen_gpu_check"


def run_all(out: Path, budget: float, dry_run: bool, work: Path, force_plan: str | None = None) -> int:
    import torch

    gpu = torch.cuda.is_available() if force_plan is None else force_plan == "gpu"
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = work / "gpu_runs"  # one JSON a sub-run; $OUT gets only the merged results (few files come back)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not dry_run:
        for stale in runs_dir.glob("*.json"):
            stale.unlink()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU: running a tiny-model CPU smoke of the same sub-runs instead", flush=True)
    runs = plan(gpu, work)
    only = [n for n in os.environ.get("GPU_CHECK_ONLY", "").split(",") if n]  # e.g. a second call for the levers
    if only:
        unknown = sorted(set(only) - {r["name"] for r in runs})
        if unknown:
            print(f"gpu_check: GPU_CHECK_ONLY names no sub-run {unknown}; known: {[r['name'] for r in runs]}")
            return 2
        runs = [r for r in runs if r["name"] in only]
    if gpu and not dry_run:
        write_accelerate_configs(work)
    start = time.monotonic()
    status = {}
    for run in runs:
        cmd = [c.replace("{out}", str(runs_dir)) for c in run["cmd"]]
        left = budget - (time.monotonic() - start)
        limit = int(min(run["timeout"], left - 5))
        line = f"timeout -k 15 {limit} " + " ".join(shlex.quote(c) for c in cmd)
        if dry_run:
            print(f"[{run['name']}] {line}")
            continue
        if limit < 45:
            print(f"gpu_check: {run['name']}: skipped, {left:.0f} s of the {budget:.0f} s budget left", flush=True)
            status[run["name"]] = "skipped (time budget)"
            continue
        if run["stage"] in ("sft", "dpo") and not (work / "pt" / "config.json").is_file():
            subprocess.call(["timeout", "-k", "10", "180", sys.executable, str(ENTRY), "base",
                             "--dir", str(work / "pt"), "--preset", "1b" if gpu else "tiny"], cwd=ROOT)
        print(f"\n===== {run['name']} ({limit} s max): {line}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(["timeout", "-k", "15", str(limit), *cmd], cwd=ROOT)
        status[run["name"]] = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else f"exit {rc}")
        print(f"===== {run['name']}: {status[run['name']]} in {time.monotonic() - t0:.0f} s", flush=True)
    if dry_run:
        return 0
    rows = report(out, status, runs_dir=runs_dir)
    failed = [r["name"] for r in rows if r.get("status") != "ok" and not str(r.get("status")).startswith("skipped")]
    if failed:
        print(f"gpu_check: {len(failed)} sub-run(s) failed or timed out: {', '.join(failed)} "
              f"(see {out / 'gpu_results.md'})", flush=True)
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all", help="every sub-run of the plan, then the report")
    a.add_argument("--out", required=True)
    a.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", 420)),
                   help="seconds for all sub-runs together")
    a.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", DEFAULT_WORK))
    a.add_argument("--dry-run", action="store_true")
    a.add_argument("--plan", choices=["gpu", "cpu"], default=None, help="with --dry-run: show that plan")
    s = sub.add_parser("stage", help="one stage run in this process (flags after `--` go to the stage script)")
    s.add_argument("stage", choices=sorted(STAGES))
    s.add_argument("--name", required=True)
    s.add_argument("--out", required=True)
    b = sub.add_parser("base", help="save a random model + tokenizer for SFT / DPO")
    b.add_argument("--dir", required=True)
    b.add_argument("--preset", default="1b")
    e = sub.add_parser("bare", help="the bare PyTorch reference loop")
    e.add_argument("--out", required=True)
    e.add_argument("--preset", default="1b")
    e.add_argument("--batch", type=int, default=8)
    e.add_argument("--seq", type=int, default=1024)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--modes", default="fp32_master,bf16", help="comma-separated: fp32_master, bf16")
    r = sub.add_parser("report", help="write the report again from the per-row JSONs of a run")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", DEFAULT_WORK))
    own = sys.argv[1:]
    stage_argv = []
    if "--" in own:  # everything after `--` goes to the stage script untouched
        i = own.index("--")
        own, stage_argv = own[:i], own[i + 1:]
    args = parser.parse_args(own)
    if args.cmd == "all":
        sys.exit(run_all(Path(args.out), args.budget, args.dry_run, Path(args.work), args.plan))
    if args.cmd == "stage":
        sys.exit(run_stage(args.stage, args.name, Path(args.out), stage_argv))
    if args.cmd == "bare":
        sys.exit(run_bare(Path(args.out), args.preset, args.batch, args.seq, args.steps, args.modes.split(",")))
    if args.cmd == "base":
        import torch

        return save_base_model(Path(args.dir), args.preset, torch.cuda.is_available())
    report(Path(args.out), runs_dir=Path(args.work) / "gpu_runs")


if __name__ == "__main__":
    main()
