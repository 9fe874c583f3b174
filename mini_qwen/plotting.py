"""Read loss curves from HF Trainer output and draw them.

Two sources are understood:

* ``trainer_state.json`` (written into every checkpoint): ``log_history`` holds one
  dict per logging step with ``step``, ``loss``, ``grad_norm`` ... (DPO adds
  ``rewards/accuracies`` and friends; evaluation adds ``eval_*``).
* the stdout of a training run (``nohup ... > output_pt.log``): HF's progress
  callback prints each of those dicts as a Python repr,
  ``{'loss': 2.831, 'grad_norm': 0.26, 'learning_rate': 1.5e-11, 'epoch': 1.0}``
  (newer transformers may print numbers as strings, or JSON). The step is not in the
  dict; it is read from the tqdm bar that the callback redraws right after each dict
  (``20/13523 [02:17<24:34:05, ...]``). When the log has no such bar the step is the
  entry's index times ``logging_steps``.

Every reader returns ``{series_name: (steps, values)}`` so runs from either source can
be overlaid on one step axis by :func:`plot_loss_curves`.
"""

from __future__ import annotations

import ast
import json
import math
import re
import statistics
from collections import Counter
from pathlib import Path

from mini_qwen import trainlog
from mini_qwen.errors import MiniQwenError

Series = tuple[list[float], list[float]]

# Keys that are bookkeeping, not curves.
_NOT_SERIES = {"step", "epoch", "total_flos"}
# Keys of the end-of-training summary dict (``{'train_runtime': ..., 'train_loss': ...}``).
_SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}

# A flat dict: HF prints metrics without nesting, and DeepSpeed's nested config dumps
# that share the log are then skipped by the key check below.
_DICT_RE = re.compile(r"\{[^{}\n]*\}")
# tqdm's "  20/13523 [02:17<24:34:05,  6.55s/it]".
_BAR_RE = re.compile(r"(\d+)/(\d+) \[")
# Python prints non-finite floats as bare names, which literal_eval rejects.
_NONFINITE_RE = re.compile(r"(?<![\w'\"])(nan|inf|-inf|NaN|Infinity|-Infinity)(?![\w'\"])")


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


def _add_entry(series: dict, step: float, entry: dict) -> None:
    """Every numeric value of one logged entry, as a point of its series (names in _NOT_SERIES skipped)."""
    for key, raw in entry.items():
        value = _to_float(raw)
        if key not in _NOT_SERIES and value is not None:
            _add_point(series, key, step, value)


def _entry_kind(entry: dict) -> str | None:
    """'train' for a training log dict, 'eval' for an evaluation dict, None for anything else."""
    if _SUMMARY_KEYS & entry.keys():
        return None
    if "loss" in entry:
        return "train"
    if any(str(k).startswith("eval_") for k in entry):
        return "eval"
    return None


# --------------------------------------------------------------------------- trainer_state


def read_trainer_state(path) -> dict[str, Series]:
    """Curves from ``log_history`` of a trainer_state.json (or the folder holding one; the newest
    state wins, see :func:`mini_qwen.trainlog.find_trainer_state`).

    Returns ``{name: (steps, values)}`` for every numeric key of the training and
    evaluation entries (``loss``, ``grad_norm``, ``learning_rate``, ``eval_loss``,
    ``rewards/accuracies`` ...), in logging order.
    """
    _, state = trainlog.read_trainer_state(path)
    return series_from_log_history(state["log_history"])


def series_from_log_history(history: list[dict]) -> dict[str, Series]:
    """Curves from a ``log_history`` list, e.g. ``trainer.state.log_history`` right after training."""
    series: dict[str, Series] = {}
    for index, entry in enumerate(history, start=1):
        if not isinstance(entry, dict) or _entry_kind(entry) is None:
            continue
        step = _to_float(entry.get("step"))
        if step is None:
            step = float(index)
        _add_entry(series, step, entry)
    return series


# --------------------------------------------------------------------------- stdout logs


def _parse_dict(text: str):
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(_NONFINITE_RE.sub(r"'\1'", text))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _steps_from_bars(text: str, spans: list[tuple[int, int]]) -> list[float] | None:
    """The global step of each logged dict, read from the tqdm bar printed right after it.

    HF's progress callback prints the dict with ``tqdm.write``, which redraws the
    training bar (showing the current step) straight after it. Eval bars in between
    have other totals, so only bars with the most common total are used. Entries
    without a bar get their step from the median interval of their neighbours.
    Returns None when the bars do not give a usable, non-decreasing step sequence.
    """
    found: list[tuple[int, int] | None] = []
    for i, (_, end) in enumerate(spans):
        stop = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        bars = [(int(m.group(1)), int(m.group(2))) for m in _BAR_RE.finditer(text, end, stop)]
        found.append(bars)
    totals = Counter(total for bars in found for _, total in bars)
    if not totals:
        return None
    main_total = totals.most_common(1)[0][0]
    known = []
    for bars in found:
        steps = [step for step, total in bars if total == main_total]
        known.append(steps[0] if steps else None)
    known_idx = [i for i, s in enumerate(known) if s is not None]
    if not known_idx:
        return None
    if len(known_idx) < len(known):
        diffs = [known[b] - known[a] for a, b in zip(known_idx, known_idx[1:]) if b == a + 1]
        diffs = [d for d in diffs if d > 0]
        if not diffs:
            return None
        interval = statistics.median(diffs)
        for i, step in enumerate(known):
            if step is not None:
                continue
            prev = max((j for j in known_idx if j < i), default=None)
            if prev is not None:
                known[i] = known[prev] + interval * (i - prev)
            else:
                nxt = min(j for j in known_idx if j > i)
                known[i] = known[nxt] - interval * (nxt - i)
    if any(b < a for a, b in zip(known, known[1:])) or known[0] < 0:
        return None
    return [float(s) for s in known]


def parse_training_log(path, logging_steps: int | None = None) -> dict[str, Series]:
    """Curves from a training log (the stdout of HF Trainer / TRL).

    Each printed metrics dict (Python repr or JSON, numbers or numeric strings) that
    has a ``loss`` (training) or ``eval_*`` keys (evaluation) is one point. Its step
    is the global step shown by the tqdm bar printed after it; if ``logging_steps``
    is given, or the log has no usable bar, the step is the entry's 1-based index
    among the training entries times ``logging_steps`` (default 1). Evaluation
    entries take the step of the training entry before them.
    Returns ``{name: (steps, values)}`` like :func:`read_trainer_state`.
    """
    path = Path(path)
    if not path.is_file():
        raise MiniQwenError(f"{path} is not a file: pass a training log (stdout of the training run)")
    if logging_steps is not None and logging_steps < 1:
        raise MiniQwenError(f"logging_steps must be a positive integer, got {logging_steps}")
    # newline="" keeps tqdm's carriage returns, so offsets match what was printed.
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        text = fh.read()

    entries, spans = [], []
    for match in _DICT_RE.finditer(text):
        # Cheap filter before parsing: DeepSpeed/NCCL also print dicts.
        snippet = match.group(0)
        if "loss" not in snippet and "eval_" not in snippet:
            continue
        entry = _parse_dict(snippet)
        if not isinstance(entry, dict):
            continue
        kind = _entry_kind(entry)
        if kind is None:
            continue
        entries.append((kind, entry))
        spans.append(match.span())
    if not entries:
        raise MiniQwenError(
            f"no logged metrics in {path}: expected lines like {{'loss': 2.83, 'grad_norm': ..., 'epoch': 0.5}} "
            f"as printed by HF Trainer (is this the stdout of a training run, with logging_steps > 0?)"
        )

    steps = None if logging_steps is not None else _steps_from_bars(text, spans)
    if steps is None:
        scale = logging_steps or 1
        steps, train_index = [], 0
        for kind, _ in entries:
            if kind == "train":
                train_index += 1
            steps.append(float(max(train_index, 1) * scale))

    series: dict[str, Series] = {}
    for step, (_, entry) in zip(steps, entries):
        _add_entry(series, step, entry)
    return series


def load_curves(path, logging_steps: int | None = None) -> dict[str, Series]:
    """Curves from any supported source: a folder or ``*.json`` is read as trainer state,
    anything else as a training log."""
    path = Path(path)
    if not path.exists():
        raise MiniQwenError(f"{path} does not exist: pass a trainer_state.json, a run/checkpoint folder or a training log")
    if path.is_dir() or path.suffix == ".json":
        return read_trainer_state(path)
    return parse_training_log(path, logging_steps=logging_steps)


def summarize(steps: list[float], values: list[float]) -> dict:
    """points / first / last / min (and its step) / max of one curve, ignoring non-finite values."""
    finite = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    if not finite:
        return {"points": len(values), "first": None, "last": None, "min": None, "min_step": None, "max": None}
    min_step, min_value = min(finite, key=lambda sv: sv[1])
    return {
        "points": len(values),
        "first": finite[0][1],
        "last": finite[-1][1],
        "min": min_value,
        "min_step": min_step,
        "max": max(v for _, v in finite),
        "first_step": finite[0][0],
        "last_step": finite[-1][0],
    }


# --------------------------------------------------------------------------- drawing


def _ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style exponential moving average (bias corrected), skipping non-finite points."""
    out, avg, n = [], 0.0, 0
    for v in values:
        if math.isfinite(v):
            avg = weight * avg + (1 - weight) * v
            n += 1
        out.append(avg / (1 - weight**n) if n else float("nan"))
    return out


def plot_loss_curves(
    curves: dict[str, Series],
    out_png,
    title: str = "Training loss",
    xlabel: str = "step",
    ylabel: str = "loss",
    smooth: float | None = 0.6,
) -> Path:
    """Overlay ``{label: (xs, ys)}`` in one PNG and return its path.

    With ``smooth`` (an EMA weight in [0, 1)), curves with more than 20 points are
    drawn faintly with their smoothed line on top; ``None`` or 0 draws raw lines only.
    Uses the Agg canvas directly, so it never touches pyplot's global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = {label: xy for label, xy in curves.items() if len(xy[0])}
    if not curves:
        raise MiniQwenError(f"nothing to plot into {out_png}: every curve is empty")
    if smooth is not None and not 0 <= smooth < 1:
        raise MiniQwenError(f"smooth must be an EMA weight in [0, 1), got {smooth}")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(10, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in curves.items():
        xs, ys = list(xs), [float(y) for y in ys]
        if smooth and len(ys) > 20:
            (raw,) = ax.plot(xs, ys, linewidth=0.8, alpha=0.3)
            ax.plot(xs, _ema(ys, smooth), linewidth=1.6, color=raw.get_color(), label=label)
        else:
            ax.plot(xs, ys, linewidth=1.4, marker="o" if len(ys) <= 30 else None, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(out_png)
    except OSError as err:
        raise MiniQwenError(f"cannot write {out_png}: {err.strerror or err}; pass a writable --out path") from None
    return out_png
