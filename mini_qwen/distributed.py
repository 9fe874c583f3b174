"""Launch checks and resuming, shared by the stage scripts.

`check_launch` stops before any data is loaded when the accelerate / DeepSpeed config and the
script's arguments disagree (the original project's FAQ 17: DeepSpeed's bare assertion
`train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size`).
`resume_checkpoint` finds the newest *complete* checkpoint, so a folder that was being written
when the process died is never resumed from.
"""

import json
import os
import re
import struct
from pathlib import Path

import torch

from mini_qwen.errors import MiniQwenError


def _deepspeed_config(training_args) -> tuple[dict | None, str | None]:
    source = training_args.deepspeed or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if isinstance(source, dict):
        return source, "the --deepspeed dict"
    if not source:
        return None, None
    try:
        return json.loads(Path(source).read_text()), str(source)
    except (OSError, json.JSONDecodeError) as err:
        raise MiniQwenError(f"cannot read DeepSpeed config '{source}': {err}.") from None


def check_launch(training_args) -> None:
    """Cross-check world size, gradient accumulation and micro batch between the launcher and the script."""
    world = training_args.world_size
    gas, micro = training_args.gradient_accumulation_steps, training_args.per_device_train_batch_size
    env_gas = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if env_gas and env_gas.isdigit() and int(env_gas) != gas:
        raise MiniQwenError(
            f"gradient accumulation disagrees: accelerate config says {env_gas} (gradient_accumulation_steps in "
            f"accelerate_config.yaml) but the script has --gradient_accumulation_steps {gas}. Make them equal: "
            f"edit accelerate_config.yaml or pass --gradient_accumulation_steps {env_gas}.")
    ds, ds_source = _deepspeed_config(training_args)
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
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available() and not training_args.use_cpu and local_world > torch.cuda.device_count():
        raise MiniQwenError(
            f"{local_world} processes were launched on this node but it has {torch.cuda.device_count()} GPUs: "
            f"set num_processes in accelerate_config.yaml to the number of GPUs.")
    print(f"launch: process {training_args.process_index}/{world} on {training_args.device}", flush=True)
    if training_args.process_index == 0:
        print(f"launch: {world} process(es) x per-device batch {micro} x grad-accum {gas} "
              f"= global batch {micro * gas * world} sequences per optimizer step")


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _safetensors_complete(path: Path) -> bool:
    """A safetensors file is complete when its size covers every tensor its header lists."""
    try:
        with open(path, "rb") as f:
            header_len = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + header_len + end
    except (OSError, ValueError, KeyError, struct.error):
        return False


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from, or None when it is complete."""
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return "trainer_state.json missing or unreadable (written last, so the save did not finish)"
    weights = list(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("pytorch_model*.bin")) and not any(folder.glob("global_step*")):
        return "no model weights"
    bad = [w.name for w in weights if not _safetensors_complete(w)]
    if bad:
        return f"truncated weights {bad}"
    return None


def complete_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints in `output_dir`, newest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    good = []
    for _, folder in sorted(found, reverse=True):
        problem = checkpoint_problem(folder)
        if problem:
            print(f"resume: skipping {folder}: {problem}")
        else:
            good.append(folder)
    return good


def resume_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint auto` -> newest complete checkpoint; a path -> that path, checked."""
    wanted = training_args.resume_from_checkpoint
    if not wanted:
        existing = complete_checkpoints(training_args.output_dir)
        if existing and training_args.process_index == 0:
            print(f"note: {training_args.output_dir} already has {existing[0].name}; this run starts from scratch. "
                  f"Pass --resume_from_checkpoint auto to continue it instead.")
        return None
    if wanted in ("auto", "true", "True", "latest"):
        found = complete_checkpoints(training_args.output_dir)
        if not found:
            print(f"resume: no complete checkpoint in {training_args.output_dir}; starting from scratch")
            return None
        print(f"resume: continuing from {found[0]}")
        return str(found[0])
    problem = checkpoint_problem(Path(wanted)) if Path(wanted).is_dir() else "folder does not exist"
    if problem:
        raise MiniQwenError(f"cannot resume from '{wanted}': {problem}. Use --resume_from_checkpoint auto to pick "
                            f"the newest complete checkpoint in {training_args.output_dir}.")
    return wanted
