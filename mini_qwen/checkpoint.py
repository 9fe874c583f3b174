"""Checkpoints: is a folder a complete model, which checkpoint-N folders a run has, which one to resume.

- `check_checkpoint` / `weights_problem`: the one "is this a complete model folder?" check, used by
  model loading for training (model.py), inference, eval and serve (generate.py) and resume. It
  looks at files only (sizes, headers), so a wrong path fails in milliseconds, before torch or
  transformers load anything. A LoRA adapter folder (`is_adapter`, `adapter_base`) passes where
  inference asks for it, and is refused, with the merge command, where a full checkpoint is needed.
- `checkpoint_folders` / `checkpoint_step`: the checkpoint-N folders Trainer writes (N = global step).
- `checkpoint_problem` / `complete_checkpoints` / `resume_checkpoint` / `check_resume_path`: resume.
  `--resume_from_checkpoint auto` takes the newest *complete* checkpoint, so a folder that was being
  written when the process died is never resumed from; an explicit path is checked at launch
  (launch.check_launch), before any model or data is loaded. Trainer restores the weights,
  optimizer, scheduler, RNG states and the data position (it skips the batches already seen), so a
  resumed run ends with the same loss as an uninterrupted one (tests/test_checkpoint.py).
"""

import json
import re
import struct
import zipfile
from pathlib import Path

from mini_qwen.errors import MiniQwenError


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


def weights_problem(folder: Path, deepspeed_ok: bool = False, names: str = "*.safetensors") -> str | None:
    """Why the model weights in `folder` cannot be loaded (none, or cut short), or None when complete.
    `deepspeed_ok`: a DeepSpeed `global_step*` folder counts as weights (resume only: ZeRO-3 may keep
    them there alone). A LoRA checkpoint's weights are its adapter_model.safetensors."""
    weights = sorted(folder.glob(names))
    if not weights and not any(folder.glob("pytorch_model*.bin")):
        if deepspeed_ok and any(folder.glob("global_step*")):
            return None
        return "no weights (*.safetensors): the save did not finish"
    bad = [w.name for w in weights if not _safetensors_complete(w)]
    if bad:
        return f"truncated files {bad} (the save did not finish, or the copy was cut short)"
    return None


def _folder_listing(folder: Path, limit: int = 12) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return ""
    if not names:
        return f" ('{folder}' is empty)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f" '{folder}' holds: {', '.join(names[:limit])}{more}."


def check_checkpoint(path: str | Path, tokenizer_path: str | Path | None = None, need_tokenizer: bool = True,
                     adapter_ok: bool = False) -> Path:
    """The folder as a Path if it holds config.json, complete weights and (when `need_tokenizer` and no
    `tokenizer_path` is given) a tokenizer; else a MiniQwenError that says what is there and what to do.
    `adapter_ok` (inference: eval, serve, benchmarks): a LoRA adapter folder passes too, when its weights are
    complete and the base checkpoint it records is one; elsewhere (training, merging) it is refused."""
    from mini_qwen.tokenizer import has_tokenizer_files

    folder = Path(path)
    if not folder.exists():
        parent = folder.parent if str(folder.parent) else Path(".")
        where = _folder_listing(parent) if parent.is_dir() else f" Its parent '{parent}' does not exist either."
        raise MiniQwenError(f"unknown checkpoint path '{path}': no such folder.{where} "
                            f"Train the stage first or fix the path.")
    if not folder.is_dir():
        raise MiniQwenError(f"checkpoint path '{path}' is a file: point at the folder a stage saved "
                            f"(config.json + *.safetensors), e.g. results/sft.")
    if is_adapter(folder):
        if not adapter_ok:
            raise MiniQwenError(f"'{path}' is a LoRA adapter (adapter_config.json), not a full checkpoint: merge it "
                                f"into its base first (python utils/merge_lora.py {path} --out {path}_merged) and "
                                f"pass {path}_merged.")
        problem = weights_problem(folder, names="adapter_model*.safetensors")
        if problem:
            raise MiniQwenError(f"adapter '{path}' has {problem}; point at a complete adapter folder.")
        base = adapter_base(folder)
        if need_tokenizer and not tokenizer_path and not (has_tokenizer_files(folder) or has_tokenizer_files(base)):
            raise MiniQwenError(f"adapter '{path}' and its base '{base}' have no tokenizer files (tokenizer.json): "
                                f"pass --tokenizer_path models/tokenizer.")
        return folder
    if not (folder / "config.json").is_file():
        inner = sorted(p.name for p in folder.iterdir()
                       if p.is_dir() and (p / "config.json").is_file() and not weights_problem(p))
        hint = (f" It contains checkpoints: {', '.join(inner)} -- point at one of those." if inner
                else _folder_listing(folder) + " Point at a stage's output_dir (e.g. results/pt), after the stage "
                                               "has run.")
        raise MiniQwenError(f"'{path}' is not a model checkpoint: it has no config.json.{hint}")
    problem = weights_problem(folder)
    if problem:
        raise MiniQwenError(f"'{path}' has config.json but {problem}; point at a complete checkpoint.")
    if need_tokenizer and not tokenizer_path and not has_tokenizer_files(folder):
        raise MiniQwenError(f"checkpoint '{path}' has no tokenizer files (tokenizer.json): pass --tokenizer_path "
                            f"models/tokenizer (the same Qwen2.5 tokenizer the model was trained with).")
    return folder


def is_adapter(folder: str | Path) -> bool:
    """A LoRA adapter folder (peft's format: adapter_config.json + adapter_model.safetensors)."""
    return (Path(folder) / "adapter_config.json").is_file()


def adapter_config(folder: str | Path) -> dict:
    path = Path(folder) / "adapter_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MiniQwenError(f"cannot read {path}: {err}. The adapter folder is damaged: train it again.") from None


def adapter_base(folder: str | Path) -> Path:
    """The full checkpoint an adapter was trained on (base_model_name_or_path in its adapter_config.json),
    checked to be one."""
    base = adapter_config(folder).get("base_model_name_or_path")
    where = Path(folder) / "adapter_config.json"
    if not base or not Path(base).is_dir():
        raise MiniQwenError(f"adapter '{folder}' was trained on the base checkpoint '{base}' (base_model_name_or_path "
                            f"in {where}), which is not a folder here: put that checkpoint back, or set "
                            f"base_model_name_or_path in {where} to where it is now.")
    if is_adapter(base):
        raise MiniQwenError(f"adapter '{folder}' names another adapter, '{base}', as its base ({where}): a base "
                            f"must be a full checkpoint.")
    return check_checkpoint(base, need_tokenizer=False)


# --------------------------------------------------------------------------- checkpoint-N folders of a run

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(folder) -> int | None:
    """N of a folder named checkpoint-N (Trainer's name: N is the global step), else None."""
    m = _CHECKPOINT.match(Path(folder).name)
    return int(m.group(1)) if m else None


def checkpoint_folders(root) -> list[Path]:
    """The checkpoint-N folders directly under `root`, newest (largest N = global_step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(n, p) for p in root.iterdir() if p.is_dir() and (n := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found, reverse=True)]


# --------------------------------------------------------------------------- resume


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
    bad = [str(f.relative_to(folder)) for name in _TORCH_STATE for f in folder.glob(name) if not zipfile.is_zipfile(f)]
    if bad:
        return f"truncated files {bad} (the save did not finish, or the copy was cut short)"
    return _missing_process_files(folder)


_TORCH_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "scaler.pt", "global_step*/*_states.pt")
_RANK = re.compile(r"(?:rng_state_|zero_pp_rank_)(\d+)")


def _missing_process_files(folder: Path) -> str | None:
    """A checkpoint of several processes holds one RNG state per process (rng_state_<rank>.pth) and, under
    DeepSpeed ZeRO, one optimizer shard per process (global_step*/*zero_pp_rank_<rank>_*): ranks 0 .. N-1
    with none missing, the same N for both. (The stages write trainer_state.json only after every process has
    written; this catches a copy of the folder that lost files.)"""
    def ranks(pattern: str) -> set[int]:
        return {int(m.group(1)) for f in folder.glob(pattern) if (m := _RANK.search(f.name))}

    rng, shards = ranks("rng_state_*.pth"), ranks("global_step*/*zero_pp_rank_*_optim_states.pt")
    world = max(rng | shards, default=-1) + 1
    for what, found in (("RNG states (rng_state_<rank>.pth)", rng), ("DeepSpeed optimizer shards", shards)):
        if found and found != set(range(world)):
            return (f"{what} of process(es) {sorted(set(range(world)) - found)} missing (of {world}): that "
                    f"process did not finish saving, or the copy lost them")
    return None


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


def finished_run(training_args) -> str | None:
    """With `--resume_from_checkpoint auto`: one line saying that `output_dir` holds a finished run (its final model
    saved at the run's last step, no newer checkpoint), else None. Resuming it would train past the end: Trainer
    restores the last checkpoint and trains a step before it first checks max_steps (transformers 5.24)."""
    if training_args.resume_from_checkpoint not in AUTO:
        return None
    root = Path(training_args.output_dir)
    try:
        state = json.loads((root / "trainer_state.json").read_text())  # written by the stage after its final save
        step = int(state["global_step"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    weights = weights_problem(root, names="adapter_model*.safetensors") if is_adapter(root) else (
        weights_problem(root) if (root / "config.json").is_file() else "no config.json")
    if weights:
        return None
    if training_args.max_steps > 0:
        target, more = training_args.max_steps, "--max_steps"
    else:  # an epoch-based run: done when the saved state's steps are done and no more epochs are asked for
        target, more = int(state.get("max_steps") or 0), "--num_train_epochs"
        if training_args.num_train_epochs > (state.get("num_train_epochs") or 0):
            return None
    newer = [f for f in checkpoint_folders(root) if checkpoint_step(f) > step and checkpoint_problem(f) is None]
    if target <= 0 or step < target or newer:
        return None
    return (f"resume: {root} holds a finished run (step {step} of {target}, final model saved): nothing to train. "
            f"Raise {more} to train further, or pass a new --output_dir.")


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
