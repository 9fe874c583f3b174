"""GPU check of the three stages: throughput, MFU and peak GPU memory. Driven by bench/gpu_check.sh.

Run as:
    bash bench/gpu_check.sh                      # on a CUDA machine: every sub-run, results in $OUT (or bench/)
    bash bench/gpu_check.sh --dry-run            # print the sub-runs' commands only
    python bench/gpu_check.py all --out DIR      # what the .sh calls after installing the carried wheels
    python bench/gpu_check.py stage pt --name pt --out DIR -- <mini_qwen_pt.py flags>   # one sub-run

`stage` runs a stage's own `main()` in this process, wrapping `Trainer.train` to reset and read
`torch.cuda.max_memory_allocated()` around training and to keep the trainer, whose log history holds
ThroughputCallback's tokens/s and MFU per logged step. `all` runs every sub-run in its own process
under `timeout` (one failure never loses the others), within an overall time budget, then `report`
writes gpu_results.json and gpu_results.md. Without a CUDA GPU, `all` runs a tiny-model CPU smoke
of the same sub-runs instead, to catch script errors.
"""

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAGES = {"pt": "mini_qwen_pt", "sft": "mini_qwen_sft", "dpo": "mini_qwen_dpo"}
WARMUP_LOGS = 2  # logged steps left out of the throughput median (CUDA/cuBLAS init, optimizer state allocation)


# ---------------------------------------------------------------- one sub-run, in this process

def run_stage(stage: str, name: str, out: Path, argv: list[str]) -> int:
    import importlib
    import importlib.util

    import torch
    import transformers

    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    captured: dict = {}
    original_train = transformers.Trainer.train

    def train(self, *args, **kwargs):
        captured["trainer"] = self
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            captured["allocated_before_train"] = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        try:
            return original_train(self, *args, **kwargs)
        finally:
            if cuda:
                torch.cuda.synchronize()
                captured["max_memory_allocated"] = torch.cuda.max_memory_allocated()
                captured["max_memory_reserved"] = torch.cuda.max_memory_reserved()
            captured["train_seconds"] = time.perf_counter() - t0

    transformers.Trainer.train = train
    if importlib.util.find_spec("matplotlib") is None:  # not on the GPU image: the loss PNG would crash train()'s end
        from mini_qwen.callbacks import LossPlotCallback

        LossPlotCallback.on_train_end = lambda *a, **k: print("gpu_check: matplotlib missing: no loss plot")
    result = {"name": name, "stage": stage, "argv": argv, "status": "ok",
              "launcher": "accelerate" if "ACCELERATE_MIXED_PRECISION" in os.environ or "LOCAL_RANK" in os.environ
              else "python"}
    t0 = time.perf_counter()
    rc = 0
    try:
        module = importlib.import_module(STAGES[stage])
        module.main(argv)
    except BaseException as err:  # SystemExit from run_main-style exits too: record, then fail
        rc = 1
        result["status"] = "failed"
        result["error"] = f"{type(err).__name__}: {err}"[:2000]
        result["traceback"] = traceback.format_exc()[-6000:]
        traceback.print_exc()
    finally:
        transformers.Trainer.train = original_train
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    trainer = captured.get("trainer")
    if trainer is not None:
        result.update(summarize(trainer, captured))
    if cuda:
        result["device"] = torch.cuda.get_device_name()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"gpu_check: {name}: {json.dumps({k: v for k, v in result.items() if k not in ('argv', 'traceback')}, default=str)}",
              flush=True)
    return rc


def summarize(trainer, captured: dict) -> dict:
    history = trainer.state.log_history
    steps = [e for e in history if "loss" in e and "tokens_per_second" in e]
    timed = steps[WARMUP_LOGS:] or steps
    losses = [e["loss"] for e in history if "loss" in e]
    args = trainer.args
    res = {"deepspeed": bool(getattr(trainer, "is_deepspeed_enabled", False)),
           "gradient_checkpointing": bool(args.gradient_checkpointing),
           "chunked_loss": bool(getattr(args, "chunked_loss", False)),
           "sequences_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
           "steps": trainer.state.global_step, "logged_steps": len(steps), "warmup_logs_skipped": len(steps) - len(timed),
           "train_seconds": round(captured.get("train_seconds", float("nan")), 1)}
    if timed:
        res["tokens_per_second"] = round(statistics.median(e["tokens_per_second"] for e in timed), 1)
        mfus = [e["mfu"] for e in timed if "mfu" in e]
        if mfus:
            res["mfu"] = round(statistics.median(mfus), 4)
    if losses:
        res["loss_first"], res["loss_last"] = losses[0], losses[-1]
    for key in ("max_memory_allocated", "max_memory_reserved", "allocated_before_train"):
        if key in captured:
            res[key.replace("max_memory", "peak") + "_gb"] = round(captured[key] / 2**30, 2)
    return res


# ---------------------------------------------------------------- the plan: which sub-runs, with which flags

def plan(gpu: bool, work: Path) -> list[dict]:
    """Sub-runs in order of importance (later ones are skipped when the time budget runs out)."""
    py = [sys.executable, str(Path(__file__).resolve())]
    if gpu:
        preset = ["--model_preset", "1b", "--bf16", "true", "--attn_implementation", "sdpa"]
        pt_shape = ["--block_size", "1024", "--per_device_train_batch_size", "8", "--max_steps", "12"]
        sft_shape = ["--max_length", "1024", "--per_device_train_batch_size", "8", "--max_steps", "10"]
        dpo_shape = ["--max_length", "1024", "--per_device_train_batch_size", "4", "--max_steps", "8"]
        precision = ["--bf16", "true", "--attn_implementation", "sdpa"]
        limits = {"pt": 150, "sft": 150, "dpo": 180, "ds": 240}
    else:  # CPU smoke: the same sub-runs on the tiny preset
        preset = ["--model_preset", "tiny", "--use_cpu", "true"]
        pt_shape = ["--block_size", "128", "--per_device_train_batch_size", "2", "--max_steps", "3"]
        sft_shape = ["--max_length", "128", "--per_device_train_batch_size", "2", "--max_steps", "3"]
        dpo_shape = ["--max_length", "128", "--max_prompt_length", "64", "--per_device_train_batch_size", "2",
                     "--max_steps", "3"]
        precision = ["--use_cpu", "true"]
        limits = {"pt": 240, "sft": 300, "dpo": 300, "ds": 300}
    common = ["--gradient_accumulation_steps", "1", "--logging_steps", "1", "--save_strategy", "no",
              "--report_to", "none", "--warmup_steps", "0", "--disable_tqdm", "true"]
    pt = [*preset, *pt_shape, *common, "--data_dir", str(ROOT / "mini_data" / "pt"),
          "--cache_dir", str(work / "cache"), "--learning_rate", "1e-4"]
    base_model = str(work / "pt")  # the first PT run's output is the starting point of SFT and DPO

    def sub(name, stage, argv, limit, launcher=None):
        cmd = (launcher or py) + ["stage", stage, "--name", name, "--out", "{out}", "--", *argv]
        return {"name": name, "stage": stage, "cmd": cmd, "timeout": limit}

    runs = [
        sub("pt", "pt", [*pt, "--output_dir", base_model], limits["pt"]),
        sub("pt_chunked_loss", "pt", [*pt, "--chunked_loss", "true", "--output_dir", str(work / "pt_c")],
            limits["pt"]),
        sub("sft", "sft", [*precision, *sft_shape, *common, "--model_name_or_path", base_model,
                           "--data_dir", str(ROOT / "mini_data" / "sft"), "--output_dir", str(work / "sft"),
                           "--learning_rate", "1e-5"], limits["sft"]),
        sub("dpo", "dpo", [*precision, *dpo_shape, *common, "--model_name_or_path", base_model,
                           "--data_dir", str(ROOT / "mini_data" / "dpo"), "--output_dir", str(work / "dpo"),
                           "--learning_rate", "5e-7"], limits["dpo"]),
    ]
    if gpu:  # DeepSpeed ZeRO-2 through accelerate, 1 process (on CPU it would JIT-compile an op for ~50 s)
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(work / "accelerate_ds1.yaml"),
                    str(Path(__file__).resolve())]
        runs.append(sub("pt_zero2", "pt", [*pt, "--output_dir", str(work / "pt_ds")], limits["ds"], launcher))
    runs += [
        sub("pt_gradient_checkpointing", "pt", [*pt, "--gradient_checkpointing", "true",
                                                "--output_dir", str(work / "pt_g")], limits["pt"]),
        sub("pt_gc_chunked_loss", "pt", [*pt, "--gradient_checkpointing", "true", "--chunked_loss", "true",
                                         "--output_dir", str(work / "pt_gc")], limits["pt"]),
    ]
    return runs


def save_base_model(folder: Path, preset: str, gpu: bool) -> None:
    """A randomly initialised model + tokenizer, for SFT / DPO when the PT sub-run left none."""
    import torch
    from transformers import AutoModelForCausalLM

    from mini_qwen.model import PresetArguments, build_config
    from mini_qwen.tokenizer import load_tokenizer

    dtype = torch.bfloat16 if gpu else torch.float32
    AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset=preset)), dtype=dtype).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    print(f"gpu_check: saved a random {preset} model to {folder} for the SFT / DPO sub-runs", flush=True)


def write_accelerate_config(path: Path) -> None:
    """accelerate_config.yaml with one process and an absolute DeepSpeed config path."""
    import yaml

    config = yaml.safe_load((ROOT / "accelerate_config.yaml").read_text())
    config["num_processes"] = 1
    config["num_machines"] = 1
    config["machine_rank"] = 0
    config["main_process_port"] = 29517
    config.setdefault("deepspeed_config", {})["deepspeed_config_file"] = str(ROOT / "ds_zero2.json")
    path.write_text(yaml.safe_dump(config))


def run_all(out: Path, budget: float, dry_run: bool, work: Path, force_plan: str | None = None) -> int:
    import torch

    gpu = torch.cuda.is_available() if force_plan is None else force_plan == "gpu"
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = out / "gpu_runs"
    runs_dir.mkdir(exist_ok=True)
    if not dry_run:
        for stale in runs_dir.glob("*.json"):
            stale.unlink()
    work.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU: running a tiny-model CPU smoke of the same sub-runs instead", flush=True)
    runs = plan(gpu, work)
    if gpu and not dry_run:
        write_accelerate_config(work / "accelerate_ds1.yaml")
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
            subprocess.call(["timeout", "-k", "10", "180", sys.executable, str(Path(__file__).resolve()), "base",
                             "--dir", str(work / "pt"), "--preset", "1b" if gpu else "tiny"], cwd=ROOT)
        print(f"\n===== {run['name']} ({limit} s max): {line}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(["timeout", "-k", "15", str(limit), *cmd], cwd=ROOT)
        status[run["name"]] = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else f"exit {rc}")
        print(f"===== {run['name']}: {status[run['name']]} in {time.monotonic() - t0:.0f} s", flush=True)
    if dry_run:
        return 0
    report(out, status, gpu)
    return 0


def report(out: Path, status: dict | None = None, gpu: bool | None = None) -> None:
    runs_dir = out / "gpu_runs"
    results = []
    for path in sorted(runs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        results.append(json.loads(path.read_text()))
    names = {r["name"] for r in results}
    for name, st in (status or {}).items():
        if name not in names:
            results.append({"name": name, "status": st})
        else:
            for r in results:
                if r["name"] == name and r.get("status") == "ok" and st != "ok":
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
    lines = [f"# GPU check ({env['gpu'] or 'no GPU: CPU smoke, tiny preset'})", "",
             " ".join(f"{k} {v};" for k, v in env.items()), "",
             f"tokens/s and MFU: median over the logged steps after the first {WARMUP_LOGS} (ThroughputCallback); "
             "peak = torch.cuda.max_memory_allocated during train().", "",
             "| run | status | steps | tokens/s | MFU | peak alloc GB | peak reserved GB | loss first → last | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def f(key, fmt="{}"):
            v = r.get(key)
            return fmt.format(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "–"
        loss = (f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if "loss_first" in r else "–")
        lines.append(f"| {r['name']} | {r.get('status')} | {f('steps')} | {f('tokens_per_second', '{:,.0f}')} | "
                     f"{f('mfu', '{:.1%}')} | {f('peak_allocated_gb')} | {f('peak_reserved_gb')} | {loss} | "
                     f"{f('train_seconds')} |")
    failed = [r for r in results if r.get("status") != "ok"]
    for r in failed:
        lines += ["", f"**{r['name']}**: {r.get('status')}: {r.get('error', 'see gpu_check.log')}"]
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all")
    a.add_argument("--out", required=True)
    a.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", 400)),
                   help="seconds for all sub-runs together")
    a.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "/tmp/mini_qwen_gpu_check"))
    a.add_argument("--dry-run", action="store_true")
    a.add_argument("--plan", choices=["gpu", "cpu"], default=None, help="with --dry-run: show that plan")
    s = sub.add_parser("stage")
    s.add_argument("stage", choices=sorted(STAGES))
    s.add_argument("--name", required=True)
    s.add_argument("--out", required=True)
    b = sub.add_parser("base")
    b.add_argument("--dir", required=True)
    b.add_argument("--preset", default="1b")
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
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
    if args.cmd == "base":
        import torch

        return save_base_model(Path(args.dir), args.preset, torch.cuda.is_available())
    report(Path(args.out))


if __name__ == "__main__":
    main()
