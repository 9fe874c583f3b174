"""Launch checks and resuming, shared by the stage scripts.

`check_launch` stops before any data is loaded when the accelerate / DeepSpeed config and the
script's arguments disagree (the original project's FAQ 17: DeepSpeed's bare assertion
`train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size`).
`resume_checkpoint` finds the newest *complete* checkpoint, so a folder that was being written
when the process died is never resumed from (`--resume_from_checkpoint auto`); an explicit path
is checked in `check_launch`, before any model or data is loaded. Trainer restores the weights,
optimizer, scheduler, RNG states and the data position (it skips the batches already seen), so a
resumed run ends with the same loss as an uninterrupted one (tests/test_resume.py).
"""

import json
import os
import zipfile
from pathlib import Path

import torch

from mini_qwen.checkpoint import weights_problem
from mini_qwen.errors import MiniQwenError
from mini_qwen.trainlog import checkpoint_folders, checkpoint_step


def _deepspeed_source(training_args):
    """The run's DeepSpeed config as given: --deepspeed (path or dict), or accelerate launch's config file."""
    return getattr(training_args, "deepspeed", None) or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")


def uses_deepspeed(training_args) -> bool:
    """Whether this run trains under DeepSpeed, known before any trainer exists (accelerate launch sets
    ACCELERATE_USE_DEEPSPEED also for a config written inline in its yaml)."""
    return bool(_deepspeed_source(training_args)) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def _deepspeed_config(training_args) -> tuple[dict | None, str | None]:
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
    wanted = training_args.resume_from_checkpoint
    if wanted and wanted not in AUTO:
        check_resume_path(wanted, training_args.output_dir)  # before any model or data is loaded
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available() and not training_args.use_cpu and local_world > torch.cuda.device_count():
        raise MiniQwenError(
            f"{local_world} processes were launched on this node but it has {torch.cuda.device_count()} GPUs: "
            f"set num_processes in accelerate_config.yaml to the number of GPUs.")
    print(f"launch: process {training_args.process_index}/{world} on {training_args.device}", flush=True)
    if training_args.process_index == 0:
        print(f"launch: {world} process(es) x per-device batch {micro} x grad-accum {gas} "
              f"= global batch {micro * gas * world} sequences per optimizer step")



def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from, or None when it is complete.

    Trainer writes a checkpoint in this order: weights, optimizer.pt, scheduler.pt, rng_state.pth,
    trainer_state.json. A readable trainer_state.json therefore means the save finished; the other
    checks catch files damaged afterwards (a copy cut short, a full disk)."""
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "trainer_state.json missing or unreadable (written last, so the save did not finish)"
    problem = weights_problem(folder, deepspeed_ok=True)  # the same check as loading a model
    if problem:
        return problem
    # torch.save files are zip archives: a cut-off one has no end-of-archive record.
    bad = [f.name for name in _TORCH_STATE for f in folder.glob(name) if not zipfile.is_zipfile(f)]
    if bad:
        return f"truncated files {bad} (the save did not finish, or the copy was cut short)"
    return None


_TORCH_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "scaler.pt")


def has_optimizer_state(folder: Path) -> bool:
    """False for checkpoints saved with --save_only_model (weights and trainer_state.json only)."""
    return ((folder / "optimizer.pt").is_file() or (folder / "optimizer.bin").is_file()
            or any(p.is_dir() for p in folder.glob("global_step*")))  # DeepSpeed keeps it there


def complete_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints in `output_dir`, newest first."""
    good = []
    for folder in checkpoint_folders(output_dir):
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
    if wanted in AUTO:
        found = complete_checkpoints(training_args.output_dir)
        if not found:
            print(f"resume: no complete checkpoint in {training_args.output_dir}; starting from scratch")
            return None
        print(f"resume: continuing from {found[0]}")
        _note_model_only(found[0])
        return str(found[0])
    check_resume_path(wanted, training_args.output_dir)
    _note_model_only(Path(wanted))
    return wanted


AUTO = ("auto", "true", "True", "latest")


def check_resume_path(wanted: str, output_dir: str) -> None:
    """An explicit --resume_from_checkpoint must be a complete checkpoint-N folder."""
    folder = Path(wanted)
    if not folder.is_dir():
        problem = "folder does not exist"
    elif checkpoint_step(folder) is None and not has_optimizer_state(folder):
        problem = ("it is not a checkpoint-N folder written during training (a stage's final output has the weights "
                   "but no optimizer or scheduler state); to start a new run from its weights use "
                   "--model_name_or_path instead")
    else:
        problem = checkpoint_problem(folder)
    if problem:
        raise MiniQwenError(f"cannot resume from '{wanted}': {problem}. Use --resume_from_checkpoint auto to pick "
                            f"the newest complete checkpoint in {output_dir}.")


def _note_model_only(folder: Path) -> None:
    if not has_optimizer_state(folder):
        print(f"resume: note: {folder} holds no optimizer state (saved with --save_only_model): the weights, step "
              f"count and data position resume, but the AdamW moments restart from zero and the learning-rate "
              f"schedule restarts from its first step (warmup again).")
