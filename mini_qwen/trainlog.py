"""The one reader of what Trainer logged: `trainer_state.json` and its `log_history`.

Trainer appends one dict per logging step to `state.log_history` ({"step", "loss", "grad_norm",
"learning_rate", ...}; DPO adds "rewards/accuracies", "rewards/margins" ...; the end of training
adds a summary dict with "train_loss") and writes it into every checkpoint-N folder, and, through
`trainer.save_state()`, into the stage's output folder. The callbacks, the DPO script, the eval
report, demo/demo_all.py, resume and the loss plots all read it through the functions here.

Every function that takes a history accepts the list itself or anything holding it as
`.log_history` (a live `TrainerState`).
"""

import json
import math
from pathlib import Path

from mini_qwen.checkpoint import checkpoint_folders
from mini_qwen.errors import MiniQwenError


def _global_step(state_file: Path) -> int:
    try:
        return int(json.loads(state_file.read_text(encoding="utf-8")).get("global_step") or 0)
    except (OSError, ValueError, AttributeError, TypeError):
        return -1


def find_trainer_state(path) -> Path:
    """The `trainer_state.json` for a file, a run folder or a checkpoint folder.

    In a run folder the newest state (largest `global_step`) of the top-level one and those of its
    checkpoint-N folders wins; MiniQwenError when there is none.
    """
    path = Path(path)
    if not path.exists():
        raise MiniQwenError(
            f"{path} does not exist: pass a trainer_state.json, a run/checkpoint folder or a training log"
        )
    if path.is_file():
        return path
    candidates = [path / "trainer_state.json"] + [c / "trainer_state.json" for c in checkpoint_folders(path)]
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise MiniQwenError(
            f"no trainer_state.json in {path} or its checkpoint-*/ folders: pass the output_dir of a "
            f"Trainer run (or one of its checkpoints), a trainer_state.json, or a training log file"
        )
    return max(candidates, key=lambda c: (_global_step(c), c.stat().st_mtime))


def read_trainer_state(path) -> tuple[Path, dict]:
    """(the trainer_state.json found for `path`, its contents); MiniQwenError when it is not one."""
    state_path = find_trainer_state(path)
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MiniQwenError(f"cannot read {state_path} as JSON ({err}); is it a Trainer trainer_state.json?") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise MiniQwenError(
            f"{state_path} has no 'log_history' list: it is not a Trainer trainer_state.json "
            f"(pass a training log as a .log/.txt file instead)"
        )
    return state_path, state


def _history(source) -> list[dict]:
    history = getattr(source, "log_history", source)
    return [e for e in history if isinstance(e, dict)]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_points(source, name: str) -> list[tuple[float, float]]:
    """(step, value) of every logged entry that has a numeric `name` and a step."""
    return [(e["step"], e[name]) for e in _history(source) if _number(e.get(name)) and "step" in e]


def first_and_last_loss(source) -> tuple[float, float] | None:
    """The first and the last logged training loss, or None when none was logged."""
    losses = [e["loss"] for e in _history(source) if _number(e.get("loss"))]
    return (losses[0], losses[-1]) if losses else None


def last_metric(source, name: str):
    """The last logged value of `name` (e.g. "rewards/accuracies"), or None."""
    values = [e[name] for e in _history(source) if _number(e.get(name))]
    return values[-1] if values else None


REWARD_KEYS = ("rewards/accuracies", "rewards/margins")


def run_summary(path) -> dict | None:
    """What a run's newest trainer_state.json says, for reports: {trainer_state, global_step, first_loss,
    last_loss, last_step, rewards/accuracies, rewards/margins}, with the keys that were logged; None when
    `path` holds no readable state, or one with neither a loss nor a reward logged."""
    try:
        state_path, state = read_trainer_state(path)
    except MiniQwenError:
        return None
    history = state["log_history"]
    summary = {}
    losses = metric_points(history, "loss")
    if losses:
        summary.update(first_loss=losses[0][1], last_loss=losses[-1][1], last_step=losses[-1][0])
    for key in REWARD_KEYS:
        value = last_metric(history, key)
        if value is not None:
            summary[key] = value
    if not summary:
        return None
    return {"trainer_state": str(state_path), "global_step": state.get("global_step"), **summary}


# --------------------------------------------------------------------------- curves: {name: (steps, values)}
# What utils/plot_losses.py and the loss PNGs draw; mini_qwen/console_log.py reads the same from a printed log.

Series = tuple[list[float], list[float]]

# Keys that are bookkeeping, not curves.
_NOT_SERIES = {"step", "epoch", "total_flos"}
# Keys of the end-of-training summary dict (``{'train_runtime': ..., 'train_loss': ...}``).
_SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}

def _to_float(value):
    """A metric value as float, or None when it is not a number (strings like '2.83' count)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _add_point(series: dict, name: str, step: float, value: float) -> None:
    steps, values = series.setdefault(name, ([], []))
    steps.append(step)
    values.append(value)


def add_entry(series: dict, step: float, entry: dict) -> None:
    """Every numeric value of one logged entry, as a point of its series (names in _NOT_SERIES skipped)."""
    for key, raw in entry.items():
        value = _to_float(raw)
        if key not in _NOT_SERIES and value is not None:
            _add_point(series, key, step, value)


def entry_kind(entry: dict) -> str | None:
    """'train' for a training log dict, 'eval' for an evaluation dict, None for anything else."""
    if _SUMMARY_KEYS & entry.keys():
        return None
    if "loss" in entry:
        return "train"
    if any(str(k).startswith("eval_") for k in entry):
        return "eval"
    return None


def curves_from_trainer_state(path) -> dict[str, Series]:
    """Curves from ``log_history`` of a trainer_state.json (or the folder holding one; the newest
    state wins, see :func:`find_trainer_state`).

    Returns ``{name: (steps, values)}`` for every numeric key of the training and
    evaluation entries (``loss``, ``grad_norm``, ``learning_rate``, ``eval_loss``,
    ``rewards/accuracies`` ...), in logging order.
    """
    _, state = read_trainer_state(path)
    return metric_series(state["log_history"])


def metric_series(history: list[dict]) -> dict[str, Series]:
    """Curves from a ``log_history`` list, e.g. ``trainer.state.log_history`` right after training."""
    series: dict[str, Series] = {}
    for index, entry in enumerate(history, start=1):
        if not isinstance(entry, dict) or entry_kind(entry) is None:
            continue
        step = _to_float(entry.get("step"))
        if step is None:
            step = float(index)
        add_entry(series, step, entry)
    return series
