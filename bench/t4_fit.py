"""Do the GPU demos fit a 16 GB T4? The demo PT, SFT and DPO stages on this GPU, capped at 15 GiB with
`torch.cuda.set_per_process_memory_fraction`, in fp16 with bf16 off, at the model size a 16 GB fp16 GPU
gets (`mini_qwen.demo.demo_layers`: 23 of the 1b preset's 48 layers, ~0.56B parameters); peak memory
per stage. A stage that needs more than the cap fails with CUDA out-of-memory, so "ok" means it fits.

Run as (repository root, on a CUDA machine):
    python bench/t4_fit.py --out bench/t4_fit               # ~2-4 minutes on an H100; t4_fit.json / .md
    python bench/t4_fit.py --dry-run                        # print the three sub-runs
    bash bench/gpu_check.sh                                 # runs it last, after the throughput sub-runs
Without a CUDA GPU it says so and exits 0 (nothing to measure).

Each stage runs in its own process (the cap applies to one process's CUDA allocator, and a fresh process
starts from zero) through `run_stage` of bench/gpu_check_lib/runners.py, which records the peak memory around
`Trainer.train`. The cap limits PyTorch's allocator; the CUDA context (~0.5 GB) comes on top, as on a T4.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CAP_GIB = 15.0  # what a 16 GB T4 leaves for tensors
STEPS = {"pt": 10, "sft": 10, "dpo": 8}  # past the first optimizer step, where AdamW allocates its moments


def t4_layers() -> int:
    from mini_qwen.demo import demo_layers
    from mini_qwen.model import PresetArguments, build_config

    return demo_layers(int(CAP_GIB * 2**30), bf16=False, config=build_config(PresetArguments(model_preset="1b")))


def stage_argv(stage: str, work: Path, layers: int) -> list[str]:
    """The demo recipe of `stage`, in fp16, with the T4-sized model, writing under `work`."""
    from mini_qwen.demo import demo_argv

    extra = ["--output_dir", str(work / stage), "--max_steps", str(STEPS[stage]), "--bf16", "false",
             "--fp16", "true", "--save_strategy", "no", "--report_to", "none"]
    if stage == "pt":
        extra += ["--model_preset", "1b", "--num_hidden_layers", str(layers)]
    else:
        extra += ["--model_name_or_path", str(work / {"sft": "pt", "dpo": "sft"}[stage])]
    return demo_argv(stage, extra)


def run_one(stage: str, out: Path, argv: list[str]) -> int:
    import torch
    from gpu_check_lib.runners import run_stage  # bench/ is on sys.path: this script runs in place

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB * 2**30 / total), 0)
        print(f"t4_fit: {stage}: allocator capped at {CAP_GIB} GiB of {total / 2**30:.1f} GiB", flush=True)
    else:  # only to smoke-test this script's plumbing
        print(f"t4_fit: {stage}: no CUDA GPU: no cap, nothing measured", flush=True)
    return run_stage(stage, f"t4_{stage}", out, argv)


def report(out: Path, layers: int) -> dict:
    rows = {}
    for stage in STEPS:
        path = out / f"t4_{stage}.json"
        rows[stage] = json.loads(path.read_text()) if path.is_file() else {"status": "not run"}
    summary = {"cap_gib": CAP_GIB, "layers": layers, "stages": rows,
               "fits": all(r.get("status") == "ok" for r in rows.values())}
    (out / "t4_fit.json").write_text(json.dumps(summary, indent=1, default=str))
    lines = [f"# Demo stages under a {CAP_GIB:g} GiB cap, fp16, 1b preset with {layers} layers", "",
             "| stage | status | peak allocated GiB | peak reserved GiB | tokens/s | loss first -> last |",
             "| --- | --- | --- | --- | --- | --- |"]
    for stage, r in rows.items():
        loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else ""
        lines.append(f"| {stage} | {r.get('status')} | {r.get('peak_allocated_gb', '')} | "
                     f"{r.get('peak_reserved_gb', '')} | {r.get('tokens_per_second', '')} | {loss} |")
    (out / "t4_fit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "t4_fit")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mini_qwen_t4_fit"))
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--stage", choices=list(STEPS), help="(internal) run one stage in this process")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per stage")
    args, rest = parser.parse_known_args()
    if args.stage:
        return run_one(args.stage, args.out, rest[1:] if rest[:1] == ["--"] else rest)

    import torch

    layers = t4_layers()
    plan = [(stage, stage_argv(stage, args.work, layers)) for stage in STEPS]
    if args.dry_run or not torch.cuda.is_available():
        if not args.dry_run:
            print("t4_fit: skipped: no CUDA GPU here (the cap and fp16 need one); the plan was:")
        for stage, argv in plan:
            print(" ".join([sys.executable, __file__, "--stage", stage, "--out", str(args.out), "--", *argv]))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for stage, argv in plan:
        cmd = [sys.executable, __file__, "--stage", stage, "--out", str(args.out), "--", *argv]
        try:
            subprocess.run(cmd, cwd=ROOT, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            (args.out / f"t4_{stage}.json").write_text(json.dumps({"status": f"timed out after {args.timeout} s"}))
    return 0 if report(args.out, layers)["fits"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
