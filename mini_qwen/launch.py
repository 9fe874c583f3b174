"""Launch checks, shared by the stage scripts: the launcher and the script's flags must agree.

`check_launch` stops before any data is loaded when the accelerate / DeepSpeed config and the
script's arguments disagree (the original project's FAQ 17: DeepSpeed's bare assertion
`train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size`), when
more processes than GPUs were started on a node, or when an explicit --resume_from_checkpoint is
not a complete checkpoint. `uses_deepspeed` tells, before any trainer exists, whether the run
trains under DeepSpeed.
"""

import json
import os
from pathlib import Path

import torch

from mini_qwen.checkpoint import AUTO, check_resume_path, finished_run
from mini_qwen.errors import MiniQwenError


def _deepspeed_source(training_args):
    """The run's DeepSpeed config as given: --deepspeed (path or dict), or accelerate launch's config file."""
    return getattr(training_args, "deepspeed", None) or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")


def uses_deepspeed(training_args) -> bool:
    """Whether this run trains under DeepSpeed, known before any trainer exists (accelerate launch sets
    ACCELERATE_USE_DEEPSPEED also for a config written inline in its yaml)."""
    return bool(_deepspeed_source(training_args)) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def deepspeed_config(training_args) -> tuple[dict | None, str | None]:
    """(the DeepSpeed config as a dict, where it was read), or (None, None) without DeepSpeed."""
    source = _deepspeed_source(training_args)
    if isinstance(source, dict):
        return source, "the --deepspeed dict"
    if not source:
        return None, None
    try:
        return json.loads(Path(source).read_text()), str(source)
    except (OSError, json.JSONDecodeError) as err:
        raise MiniQwenError(f"cannot read DeepSpeed config '{source}': {err}.") from None


def check_launch(training_args) -> None:
    """Cross-check world size, gradient accumulation and micro batch between the launcher and the script; check an
    explicit resume path; exit 0 at once, with one line, when `--resume_from_checkpoint auto` finds a finished run."""
    world = training_args.world_size
    gas, micro = training_args.gradient_accumulation_steps, training_args.per_device_train_batch_size
    env_gas = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if env_gas and env_gas.isdigit() and int(env_gas) != gas:
        raise MiniQwenError(
            f"gradient accumulation disagrees: accelerate config says {env_gas} (gradient_accumulation_steps in "
            f"accelerate_config.yaml) but the script has --gradient_accumulation_steps {gas}. Make them equal: "
            f"edit accelerate_config.yaml or pass --gradient_accumulation_steps {env_gas}.")
    ds, ds_source = deepspeed_config(training_args)
    if ds:
        checks = [("gradient_accumulation_steps", gas, "--gradient_accumulation_steps"),
                  ("train_micro_batch_size_per_gpu", micro, "--per_device_train_batch_size"),
                  ("train_batch_size", micro * gas * world,
                   f"per-device batch x grad-accum x processes = {micro} x {gas} x {world}")]
        for key, ours, flag in checks:
            value = ds.get(key, "auto")
            if value != "auto" and int(value) != ours:
                raise MiniQwenError(
                    f"{key} disagrees: {ds_source} sets {value} but the script computes {ours} ({flag}). "
                    f"Set \"{key}\": \"auto\" in {ds_source} (recommended) or change the script's flag.")
    wanted = training_args.resume_from_checkpoint
    if wanted and wanted not in AUTO:
        check_resume_path(wanted, training_args.output_dir)  # before any model or data is loaded
    done = finished_run(training_args)
    if done:  # before anything is loaded or written: the finished run's files stay as they are
        if training_args.process_index == 0:
            print(done, flush=True)
        raise SystemExit(0)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available() and not training_args.use_cpu and local_world > torch.cuda.device_count():
        raise MiniQwenError(
            f"{local_world} processes were launched on this node but it has {torch.cuda.device_count()} GPUs: "
            f"set num_processes in accelerate_config.yaml to the number of GPUs.")
    print(f"launch: process {training_args.process_index}/{world} on {training_args.device}", flush=True)
    if training_args.process_index == 0:
        print(f"launch: {world} process(es) x per-device batch {micro} x grad-accum {gas} "
              f"= global batch {micro * gas * world} sequences per optimizer step")
