"""The run planner's memory against every GPU peak this project measured (bench/RESULTS.md 4.1, one H200).

Run as:
    python bench/plan_check.py            # prints the markdown table of bench/RESULTS.md "Planned vs measured"
    python bench/plan_check.py --real_data /path/to/baai_samples         # other real samples (sft/, dpo/)

Each stage row is planned by mini_qwen_plan.py itself, with the flags of the measured run; the two bare
PyTorch loops (no Trainer, so no stage flags) go through the same memory model (mini_qwen/plan_memory.py).
Measured: torch.cuda.max_memory_allocated / 2**30, so the planned figure compared is the peak of allocated
tensors, without the framework overhead the plan adds before it says "fits". The SFT and DPO rows need the
real samples (tests/data/baai: their lengths decide the padded batch).
"""

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = "{real}"  # the real samples' folder, from --real_data
OLD_RECIPE = ["--gpu", "H200", "--pure_bf16", "true", "--gradient_accumulation_steps", "1",
              "--attn_implementation", "sdpa"]  # bf16 weights + bf16 AdamW, 1 micro-batch a step, as measured
PT = ["pt", *OLD_RECIPE, "--per_device_train_batch_size", "8", "--block_size", "1024",
      "--data_dir", str(ROOT / "mini_data" / "pt")]
ROWS = [  # (what ran, planner flags, measured GiB)
    ("PT, old recipe (`--packing documents`)", PT, 43.7),
    ("PT, old recipe, `--packing concat`", [*PT, "--packing", "concat"], 41.9),
    ("PT, old recipe, `--chunked_loss true`", [*PT, "--chunked_loss", "true"], 31.9),
    ("PT, accelerate + DeepSpeed ZeRO-2, 1 GPU", ["pt", "--gpu", "H200", "--gradient_accumulation_steps", "1",
                                                  "--attn_implementation", "sdpa", "--per_device_train_batch_size", "8",
                                                  "--data_dir", str(ROOT / "mini_data" / "pt"),
                                                  "--deepspeed", str(ROOT / "ds_zero2.json")], 51.1),
    ("SFT, real rows, batch 8, padded", ["sft", *OLD_RECIPE, "--per_device_train_batch_size", "8", "--packing", "false",
                                         "--padding_free", "false", "--data_dir", f"{REAL}/sft"], 31.0),
    ("DPO, real rows, batch 4", ["dpo", *OLD_RECIPE, "--per_device_train_batch_size", "4",
                                 "--data_dir", f"{REAL}/dpo"], 32.9),
]
BARE = [("bare loop, bf16 weights, fused AdamW", "bf16", None, 41.9),
        ("bare loop, fp32 master + bf16 autocast, fused AdamW", "fp32", "bf16", 53.2)]


def planned_stage(flags: list[str]) -> float:
    import mini_qwen_plan

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        plan = mini_qwen_plan.main([*flags, "--out", str(Path(tmp) / "plan.json")])
    return plan["memory"]["tensors"]["value"] / 2**30


def planned_bare(weights: str, autocast: str | None) -> float:
    """The bare loop of bench/gpu_check.py: model(input_ids, labels) on 8 x 1024, no position ids (no mask)."""
    from mini_qwen.model import PresetArguments, build_config
    from mini_qwen.plan_memory import Params, Setup, memory_parts, meta_model

    config = build_config(PresetArguments(model_preset="1b"))
    setup = Setup(config, Params.of(meta_model(config)), weights=weights, autocast=autocast, batch=8, seq_len=1024)
    return memory_parts(setup)["tensors"] / 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real_data", default=str(ROOT / "tests" / "data" / "baai"),
                        help="the real samples: a folder with sft/ and dpo/ (default: tests/data/baai)")
    real = parser.parse_args().real_data
    lines = ["| run (1b, 8 × 1024 unless said) | measured peak alloc GiB | planned GiB | planned / measured |",
             "|---|---|---|---|"]
    for name, flags, measured in ROWS:
        flags = [f.replace(REAL, real) for f in flags]
        if "--data_dir" in flags and not Path(flags[flags.index("--data_dir") + 1]).exists():
            lines.append(f"| {name} | {measured} | skipped: no {flags[flags.index('--data_dir') + 1]} | |")
            continue
        planned = planned_stage(flags)
        lines.append(f"| {name} | {measured} | {planned:.1f} | {planned / measured - 1:+.1%} |")
    for name, weights, autocast, measured in BARE:
        planned = planned_bare(weights, autocast)
        lines.append(f"| {name} | {measured} | {planned:.1f} | {planned / measured - 1:+.1%} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
