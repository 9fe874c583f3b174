"""`<output_dir>/run_config.json`: what a run was (every argument, package versions, git commit, data files
with sizes, process count), so it can be reproduced and two runs compared; and the check that a resumed
run is the same run.

`--resume_from_checkpoint` with a changed per-device batch, gradient accumulation, process count or data
set (the files and their sizes, and what makes a sample and orders them: block_size, packing, max_length,
max_prompt_length, first_turn_only, max_pairs, seed) would not continue the same run: the data position
Trainer restores counts batches, so a different batch shape or data set resumes at a different place in
the data (and the learning-rate schedule was laid out for the old step count). Nor would one that trains
other weights (use_peft, lora_r, lora_target_modules, load_in_4bit: the checkpoint's adapters have another
shape). Such a resume prints what changed and stops, unless `--allow_changed_resume true` says it is meant.

Every process of a multi-process (multi-node) run must run the same configuration: `check_processes_agree`
compares them once, before the model loads.
"""

import dataclasses
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from mini_qwen.errors import MiniQwenError

FILE_NAME = "run_config.json"
PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "tokenizers", "safetensors",
            "pyarrow", "flash-attn", "liger-kernel", "torch-optimi")
# A change in these makes a resumed run a different run: the batch, the process count, the data files, and the
# arguments that decide what a sample is and in which order samples come (the data position is a batch count).
RESUME_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "processes", "data_files")
RESUME_ARGUMENTS = ("block_size", "packing", "text_column", "max_length", "max_prompt_length", "first_turn_only",
                    "max_pairs", "seed", "data_seed", "messages_column", "columns", "txt_split",
                    "max_prompts", "num_generations", "difficulty_filter",
                    # what is trained: a LoRA checkpoint holds adapters of this shape on these layers
                    "use_peft", "lora_r", "lora_target_modules", "load_in_4bit")
# Arguments that differ between a run and its resumption by design, or say nothing about the result.
NOT_COMPARED = {"resume_from_checkpoint", "allow_changed_resume", "local_rank", "logging_dir", "output_dir",
                "hub_token", "run_name"}
REPO_ROOT = Path(__file__).resolve().parents[1]


def _arguments(parsed) -> dict:
    out = {}
    for obj in parsed:
        if hasattr(obj, "to_dict"):  # TrainingArguments: enums -> strings, tokens hidden
            values = obj.to_dict()
        else:
            values = dataclasses.asdict(obj)
        out.update(values)
    return {k: v for k, v in out.items() if not k.startswith("_") and "token" not in k}


def package_versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def git_commit() -> dict | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        return None


def build_run_config(stage: str, parsed, data_files, training_args) -> dict:
    files = []
    for f in sorted(str(Path(p).resolve()) for p in data_files):  # the same files however data_dir was spelled
        try:
            size = Path(f).stat().st_size
        except OSError:
            size = None
        files.append({"path": f, "bytes": size})
    return {
        "stage": stage,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "processes": training_args.world_size,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "data_files": files,
        "arguments": _arguments(parsed),
        "versions": package_versions(),
        "git": git_commit(),
    }


def _describe(key, old, new) -> str:
    if key == "data_files":
        old_files, new_files = {f["path"]: f["bytes"] for f in old or []}, {f["path"]: f["bytes"] for f in new or []}
        parts = []
        gone, added = sorted(set(old_files) - set(new_files)), sorted(set(new_files) - set(old_files))
        resized = sorted(p for p in set(old_files) & set(new_files) if old_files[p] != new_files[p])
        if gone:
            parts.append(f"{len(gone)} file(s) gone (e.g. {gone[0]})")
        if added:
            parts.append(f"{len(added)} file(s) new (e.g. {added[0]})")
        if resized:
            parts.append(f"{len(resized)} file(s) changed size (e.g. {resized[0]}: {old_files[resized[0]]} -> "
                         f"{new_files[resized[0]]} bytes)")
        return "data files: " + ", ".join(parts)
    return f"{key}: {old!r} -> {new!r}"


def compare(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changes that make it another run, other changed arguments) between two run configs."""
    blocking = [_describe(k, old.get(k), new.get(k)) for k in RESUME_KEYS if old.get(k) != new.get(k)]
    old_args, new_args = old.get("arguments", {}), new.get("arguments", {})
    changed = [k for k in sorted(set(old_args) | set(new_args))
               if k not in NOT_COMPARED and k not in RESUME_KEYS and old_args.get(k) != new_args.get(k)]
    blocking += [f"{k}: {old_args.get(k)!r} -> {new_args.get(k)!r}" for k in RESUME_ARGUMENTS if k in changed]
    other = [f"{k}: {old_args.get(k)!r} -> {new_args.get(k)!r}" for k in changed if k not in RESUME_ARGUMENTS]
    return blocking, other


def _resuming(training_args) -> bool:
    wanted = training_args.resume_from_checkpoint
    if not wanted:
        return False
    from mini_qwen.checkpoint import checkpoint_folders

    return bool(checkpoint_folders(training_args.output_dir)) or Path(wanted).is_dir()


def record_run(stage: str, parsed, data_files, training_args) -> dict:
    """Check a resume against the run that wrote the checkpoints, then write run_config.json (rank 0).

    Call before the model loads: a refused resume then costs nothing."""
    config = build_run_config(stage, parsed, data_files, training_args)
    check_processes_agree(config, training_args)
    path = Path(training_args.output_dir) / FILE_NAME
    if _resuming(training_args) and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
            print(f"run config: {path} is unreadable; cannot check this resume against the earlier run")
        if old is not None:
            blocking, other = compare(old, config)
            if other and training_args.process_index == 0:
                print("run config: resuming with changed arguments: " + "; ".join(other))
            if blocking:
                changes = "; ".join(blocking)
                if not getattr(training_args, "allow_changed_resume", False):
                    raise MiniQwenError(
                        f"--resume_from_checkpoint: this run differs from the one that wrote the checkpoints in "
                        f"{training_args.output_dir} ({path}): {changes}. Resuming would not continue the same run "
                        f"(another place in the data, another batch, or other trained weights). Restore the old "
                        f"values, use a new --output_dir, or pass --allow_changed_resume true if the change is meant.")
                print(f"run config: resuming despite changes (--allow_changed_resume): {changes}")
                config["changed_on_resume"] = blocking
                config["previous"] = {k: old.get(k) for k in ("time", "git", *RESUME_KEYS[:3])}
    if training_args.process_index == 0:
        try:  # written whole, then renamed: the other processes never read half a file
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".json.partial")
            partial.write_text(json.dumps(config, indent=1, default=str, ensure_ascii=False))
            partial.replace(path)
        except OSError as err:
            from mini_qwen.long_run import free_space

            raise MiniQwenError(f"cannot write {path}: {err.strerror} ({free_space(path.parent)}). Fix the output "
                                f"folder (--output_dir) or free space.") from None
    return config


# ------------------------------------------------------------------ several processes, several nodes: one run

PER_PROCESS = NOT_COMPARED | {"process_index", "local_process_index", "device"}


def _what_decides(config: dict) -> dict:
    """The parts of a run config every process of one run must share: arguments, code, packages, and the data
    files as seen from --data_dir (so nodes that mount the data at different paths still agree)."""
    args = config.get("arguments", {})
    root = Path(str(args.get("data_dir", "."))).resolve()
    files = {}
    for f in config.get("data_files", []):
        path = Path(f["path"])
        files[str(path.relative_to(root)) if path.is_relative_to(root) else str(path)] = f["bytes"]
    return {"arguments": {k: v for k, v in args.items() if k not in PER_PROCESS}, "data_files": files,
            "git": (config.get("git") or {}).get("commit"), "versions": config.get("versions")}


def disagreements(first: dict, other: dict) -> list[str]:
    """What `other` (a `_what_decides` view) has that `first` has not, in words."""
    out = []
    a, b = first["arguments"], other["arguments"]
    out += [f"--{k} {b.get(k)!r} (process 0: {a.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    fa, fb = first["data_files"], other["data_files"]
    for name in sorted(set(fa) | set(fb)):
        if fa.get(name) != fb.get(name):
            here = "missing" if name not in fb else f"{fb[name]} bytes"
            there = "missing" if name not in fa else f"{fa[name]} bytes"
            out.append(f"data file {name}: {here} (process 0: {there})")
    if first["git"] != other["git"]:
        out.append(f"code at git commit {other['git']} (process 0: {first['git']})")
    va, vb = first["versions"] or {}, other["versions"] or {}
    out += [f"{k} {vb.get(k)} (process 0: {va.get(k)})" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    return out


def check_processes_agree(config: dict, training_args) -> None:
    """Several processes (several nodes): each must train the same run. One all-gather of `_what_decides`,
    before the model loads; a difference stops every process with one message naming the process, its node
    and host, and what differs (a node with other flags, another copy of the data, other code or packages)."""
    if training_args.world_size <= 1:
        return
    import os
    import socket

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    mine = {"host": socket.gethostname(), "node": os.environ.get("GROUP_RANK", "?"), "view": _what_decides(config)}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    first = everyone[0]
    for rank, other in enumerate(everyone[1:], start=1):
        differs = disagreements(first["view"], other["view"])
        if differs:
            more = f" (and {len(differs) - 6} more)" if len(differs) > 6 else ""
            raise MiniQwenError(
                f"process {rank} (node {other['node']}, host {other['host']}) does not run what process 0 (node "
                f"{first['node']}, host {first['host']}) runs: " + "; ".join(differs[:6]) + more + ". Every node "
                "needs the same code, packages, flags and data: start each with the same command (only the node "
                "rank differs) from the same checkout, and copy the same data files to each (or share one folder).")
