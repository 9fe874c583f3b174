"""Plan a run before paying for it: memory per GPU, tokens and steps, time and cost, disk, for any stage on any GPUs.

Run as:
    python mini_qwen_plan.py pt --gpu H800 --num_gpus 6                      # the original PT recipe, data in data/pt
    python mini_qwen_plan.py pt --gpu T4 --dataset_tokens 16000000000 --price_per_gpu_hour 0.35   # before downloading
    python mini_qwen_plan.py sft --config demo/sft.yaml --gpu T4             # any flag or recipe of the stage
    python mini_qwen_plan.py dpo --gpu A100-80 --num_gpus 8 --num_nodes 2 --mfu 0.3
    python mini_qwen_plan.py sft --gpu T4 --use_peft true --gradient_checkpointing true   # a LoRA adapter
    bash run.sh pt plan --config demo/pt.yaml --gpu L4                       # the same through run.sh

The first word is the stage; every flag of that stage works as it does there (`--config recipe.yaml`,
`--per_device_train_batch_size`, `--gradient_checkpointing`, `--deepspeed ds.json`, ...), plus the planner's
own below. Nothing is trained and no weights are loaded (the model is built on the meta device), so it runs
on a laptop: it reads the data's files (footers and a sample of rows) and the token cache if there is one.
Several GPUs plan the launch `run.sh <stage> multi` makes: accelerate_config.yaml's DeepSpeed config
(ds_zero2.json: ZeRO-2), unless --deepspeed names another. The plan is printed and written to --out (default:
plan.json in the stage's --output_dir, beside the run it plans).
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mini_qwen import stages
from mini_qwen.cli import parse_args
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.hardware import GPUS, find_gpu
from mini_qwen.model import PresetArguments
from mini_qwen.plan import plan_run, render


@dataclass
class PlanArguments:
    gpu: str | None = field(default=None, metadata={
        "help": "The GPU kind to plan for: " + ", ".join(g.name for g in GPUS) + " (mini_qwen/hardware.py GPUS)."})
    num_gpus: int = field(default=1, metadata={"help": "GPUs per node."})
    num_nodes: int = field(default=1, metadata={"help": "Nodes (machines) with --num_gpus GPUs each."})
    price_per_gpu_hour: float | None = field(default=None, metadata={
        "help": "Price of one GPU for one hour, in any currency: the plan adds the run's cost."})
    mfu: float | None = field(default=None, metadata={
        "help": "Model FLOPs utilisation to plan the time with (0-1]. Default: this project's measured H200 figure "
                "for the stage and recipe (bench/RESULTS.md), applied to any GPU."})
    accelerate_config: str = field(default="accelerate_config.yaml", metadata={
        "help": "With several GPUs and no --deepspeed: the accelerate config `run.sh ... multi` launches with; its "
                "DeepSpeed config decides the ZeRO stage and offload."})
    dataset_tokens: int | None = field(default=None, metadata={
        "help": "PT: plan for this many tokens instead of reading --data_dir (e.g. before downloading the data)."})
    sample_rows: int = field(default=256, metadata={
        "help": "SFT / DPO: rows read (the first of each file) to measure lengths and the share kept."})
    out: str | None = field(default=None, metadata={
        "help": "Where to write the plan as JSON: a .json file, or a folder to hold plan.json. Default: plan.json in "
                "the stage's --output_dir, beside the run it plans (results/pt/plan.json for PT's default)."})


def stage_arguments(stage: str) -> dict:
    """The stage's own argument dataclasses by role (the same classes its script parses)."""
    # A stage that starts from another's model is planned from the preset before that model exists.
    return {"preset": PresetArguments, **stages.stage(stage).arguments()}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in stages.BY_NAME:
        raise MiniQwenError(f"name the stage to plan first: python mini_qwen_plan.py {'|'.join(stages.names())} "
                            f"--gpu NAME "
                            f"[flags of that stage] (got {argv[0] if argv else 'nothing'!r}).")
    stage, argv = argv[0], argv[1:]
    roles = stage_arguments(stage)
    # The stage's flags are checked as the stage checks them, with precision following the planned GPU.
    parsed = parse_args((*roles.values(), PlanArguments), argv, gpu_flag="gpu")
    args = dict(zip(roles, parsed))
    plan_args = parsed[-1]
    plan = plan_run(stage, args, find_gpu(plan_args.gpu), plan_args)
    print(render(plan))
    out = write_plan(plan, plan_args.out or Path(args["training"].output_dir))
    print(f"\nplan written to {out}")
    return plan


def write_plan(plan: dict, where: str | Path) -> Path:
    """`where` when it names a .json file, else plan.json in the folder `where` (made if missing)."""
    out = Path(where)
    if out.is_dir() or out.suffix != ".json":
        out = out / "plan.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plan, indent=1, ensure_ascii=False), encoding="utf-8")
    except OSError as err:
        raise MiniQwenError(f"cannot write the plan to {out}: {err.strerror or err}. Pass --out with a writable "
                            f"file or folder.") from None
    return out


if __name__ == "__main__":
    run_main(main)
