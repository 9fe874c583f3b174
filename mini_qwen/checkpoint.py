"""The one "is this a complete model / checkpoint folder?" check, with one message for each problem.

Used by model loading for training (mini_qwen/model.py), inference and eval (mini_qwen/generate.py,
`load_for_inference`), and resume (mini_qwen/distributed.py, which adds the training-state files).
It looks at files only (sizes, headers), so a wrong path fails in milliseconds, before torch or
transformers load anything.
"""

import json
import re
import struct
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


def weights_problem(folder: Path, deepspeed_ok: bool = False) -> str | None:
    """Why the model weights in `folder` cannot be loaded (none, or cut short), or None when complete.
    `deepspeed_ok`: a DeepSpeed `global_step*` folder counts as weights (resume only: ZeRO-3 may keep
    them there alone)."""
    weights = sorted(folder.glob("*.safetensors"))
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


def check_checkpoint(path: str | Path, tokenizer_path: str | Path | None = None, need_tokenizer: bool = True) -> Path:
    """The folder as a Path if it holds config.json, complete weights and (when `need_tokenizer` and no
    `tokenizer_path` is given) a tokenizer; else a MiniQwenError that says what is there and what to do."""
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


# --------------------------------------------------------------------------- naming checkpoints on a command line
# mini_qwen_eval.py and mini_qwen_serve.py take checkpoints as `path` or `label=path` and pick each one's
# prompt format by name; both use these, so a checkpoint is labelled and templated the same way everywhere.


def is_pt_name(*names: str) -> bool:
    """pt, pt1, mini_qwen_pt, pt-small... but not sft, dpo, adapter or script."""
    return any(re.search(r"(?:^|[^a-z])pt\d*(?:$|[^a-z])", name.lower()) for name in names if name)


def _run_of(folder: Path) -> str:
    """The run folder's name for a checkpoint-N folder inside it (results/pt/checkpoint-100 -> "pt"), else ""."""
    return folder.resolve().parent.name if folder.name.startswith("checkpoint-") else ""


def parse_checkpoint_specs(specs: list[str]) -> list[tuple[str, str]]:
    """`path` or `label=path` -> [(label, path)], labels unique. An unlabelled `.../run/checkpoint-N` is
    labelled `run/checkpoint-N`, any other folder by its name."""
    out = []
    for spec in specs:
        label, path = None, spec
        if "=" in spec and not Path(spec).exists():
            label, path = spec.split("=", 1)
            if not label.strip() or not path.strip():
                raise MiniQwenError(f"bad checkpoint '{spec}': write label=path, e.g. sft=results/sft.")
        if label is None:
            folder = Path(path)
            run = _run_of(folder)
            label = f"{run}/{folder.name}" if run else folder.name or str(folder)
        out.append((label.strip(), path.strip()))
    labels = [label for label, _ in out]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise MiniQwenError(f"checkpoint label(s) {', '.join(duplicates)} used twice: name them, "
                            f"e.g. --checkpoints a=runs/a/sft b=runs/b/sft.")
    return out


def chat_or_pt(label: str, path: str, template: str = "auto") -> str:
    """The prompt format for a checkpoint: `template` when set, else "pt" (raw text) when its label or
    folder says pt (pt, mini_qwen_pt, results/pt/checkpoint-100), else "chat"."""
    if template != "auto":
        return template
    folder = Path(path)
    return "pt" if is_pt_name(label, folder.name, _run_of(folder)) else "chat"
