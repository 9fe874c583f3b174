"""The report of a GPU check: gpu_results.json (every row as its runner wrote it) and gpu_results.md (a table of
rows with × bare, the project's throughput targets as measured, and where a step's time goes)."""

import json
import math
import sys
import time
from pathlib import Path

from .profile import PROFILE_STEPS
from .runners import WARMUP_LOGS

TARGET_ROWS = ("pt", "pt_zero2", "sft", "dpo")  # the rows the throughput targets are about; the others are levers


def report(out: Path, status: dict | None = None, gpu: bool | None = None, runs_dir: Path | None = None) -> list[dict]:
    """Merge the per-row JSONs of `runs_dir` (default out/gpu_runs) with the status of each sub-run (a row that
    left no JSON: skipped, timed out, crashed) and write out/gpu_results.{json,md}. Returns the rows."""
    runs_dir = runs_dir or out / "gpu_runs"
    results = []
    for path in sorted(runs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        results.append(json.loads(path.read_text()))
    names = {r["name"] for r in results}
    for name, st in (status or {}).items():
        if name not in names and not any(n.startswith(name + "_") for n in names):  # bare -> bare_<mode>
            results.append({"name": name, "status": st})
        else:
            for r in results:  # a row killed by `timeout` may have recorded the stop as its own failure
                if r["name"] == name and st != "ok" and (r.get("status") == "ok" or st == "timeout"):
                    r["status"] = st
    import torch

    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": sys.version.split()[0], "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    for pkg in ("transformers", "trl", "accelerate", "datasets", "deepspeed", "tokenizers"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception as err:  # a missing package is a finding, not a crash
            env[pkg] = f"unavailable ({type(err).__name__})"
    (out / "gpu_results.json").write_text(json.dumps({"env": env, "runs": results}, indent=1, default=str))
    by_name = {r["name"]: r for r in results}
    ref = by_name.get("bare_fp32_master", {}).get("tokens_per_second")
    lines = [f"# GPU check ({env['gpu'] or 'no GPU: CPU smoke, tiny preset'})", "",
             " ".join(f"{k} {v};" for k, v in env.items()), "",
             f"tokens/s and MFU: median over the logged steps after the first {WARMUP_LOGS} (ThroughputCallback; "
             "the bare loop times its own steps); × bare = tokens/s over the bare fp32-master loop's; "
             "peak = torch.cuda.max_memory_allocated during train().", "",
             "| run | status | weights | steps | tokens/s | × bare | MFU | peak alloc GB | peak reserved GB | "
             "loss first → last | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(table_row(r, ref))
    lines += ["", *comparisons(by_name), *profiles(results)]
    failed = [r for r in results if r.get("status") != "ok"]
    for r in failed:
        lines += ["", f"**{r['name']}**: {r.get('status')}: {r.get('error', 'see gpu_check.log')}"]
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return results


def table_row(r: dict, ref: float | None) -> str:
    """One row of the main table; `ref` is the bare fp32-master loop's tokens/s (the × bare column)."""
    def cell(key, fmt="{}"):
        v = r.get(key)
        return fmt.format(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "–"
    loss = (f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if "loss_first" in r else "–")
    ratio = f"{r['tokens_per_second'] / ref:.2f}" if ref and r.get("tokens_per_second") else "–"
    return (f"| {r['name']} | {r.get('status')} | {cell('weights_dtype')} | {cell('steps')} | "
            f"{cell('tokens_per_second', '{:,.0f}')} | {ratio} | {cell('mfu', '{:.1%}')} | "
            f"{cell('peak_allocated_gb')} | {cell('peak_reserved_gb')} | {loss} | {cell('train_seconds')} |")


def loss_gap(a: dict, b: dict, steps: int = 20) -> float | None:
    """Largest relative difference of two runs' logged losses over their first `steps` common steps."""
    pairs = list(zip(a.get("losses") or [], b.get("losses") or []))[:steps]
    return max(abs(x - y) / abs(y) for x, y in pairs) if pairs else None


def comparisons(by_name: dict) -> list[str]:
    """The throughput targets, as measured in this run (a row that did not run says so), then each lever's
    ratio to its base row."""
    def tps(name):
        return by_name.get(name, {}).get("tokens_per_second")

    def ratio(name, over, target):
        if not (tps(name) and tps(over)):
            return f"- {name} / {over}: not measured (target {target})"
        return f"- {name} / {over} tokens/s: {tps(name) / tps(over):.2f} (target {target})"

    lines = ["Targets (bench/RESULTS.md, 4.3):"]
    mfu = by_name.get("pt", {}).get("mfu")
    lines.append(f"- pt (default recipe) MFU: {mfu:.1%} (target ≥ 45%)" if mfu
                 else "- pt MFU: not measured (target ≥ 45%)")
    lines.append(ratio("pt_zero2", "pt", "≥ 0.9"))
    gap = loss_gap(by_name.get("pt_zero2", {}), by_name.get("pt", {}))
    lines.append(f"- pt_zero2 vs pt, first 20 logged losses: largest relative gap {gap:.2%} (target ≤ 1%)"
                 if gap is not None else "- pt_zero2 vs pt losses: not measured (target within 1%)")
    lines.append(ratio("sft", "pt", "≥ 0.8"))
    lines.append(ratio("dpo", "pt", "≥ 0.5"))
    levers = [name for name in by_name if name not in TARGET_ROWS and not name.startswith("bare")]
    for lever in levers:  # every other row of the run: a lever, named <its base row>_<what changes>
        base = lever.split("_")[0]
        line = ratio(lever, base, "< 1 keeps packed rows" if base == "sft" else "> 1 to keep a lever")
        if base == "pt":
            gap = loss_gap(by_name[lever], by_name.get(base, {}), 5)
            line += f"; first-5 loss gap {gap:.2%}" if gap is not None else ""
        elif lever == "dpo_precompute_ref":  # tokens/s counts the steps; the reference pass over every pair is before
            line += f" (steps only; train() with the reference pass: {by_name[lever].get('train_seconds')} s)"
        # SFT / DPO levers put other conversations / pairs in each step: their losses are not comparable
        lines.append(line)
    return lines


def profiles(results: list[dict]) -> list[str]:
    """Where each profiled row's step goes: device-busy share of the wall time, time by kind, top kernels."""
    rows = [r for r in results if r.get("profile")]
    if not rows:
        return []
    clock = rows[0]["profile"]["clock"]
    lines = ["", f"Where a step goes ({PROFILE_STEPS} profiled steps a row, torch.profiler, {clock} time; busy = "
                 "time in kernels / wall time, the rest is the host launching, syncing or loading):", "",
             "| run | wall ms/step | busy | by kind (ms/step) | top kernels (ms/step) |", "|---|---|---|---|---|"]
    for r in rows:
        prof = r["profile"]
        busy = prof["busy_ms_per_step"] / prof["wall_ms_per_step"] if prof["wall_ms_per_step"] else 0
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in prof["kinds_ms_per_step"].items())
        top = "; ".join(f"`{name[:48]}` {t:.1f}" for name, t, _ in prof["top"][:3])
        lines.append(f"| {r['name']} | {prof['wall_ms_per_step']:.1f} | {busy:.0%} | {kinds} | {top} |")
    return lines
