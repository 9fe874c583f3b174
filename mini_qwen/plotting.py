"""Loss curves drawn: utils/plot_losses.py and the loss PNG every stage writes.

Curves come from a run's ``trainer_state.json`` (`mini_qwen.trainlog.curves_from_trainer_state`) or
from its console log (`mini_qwen.console_log.parse_training_log`), both as
``{series_name: (steps, values)}``, so runs from either source overlay on one step axis.
"""

from __future__ import annotations

import math
from pathlib import Path

from mini_qwen.console_log import parse_training_log
from mini_qwen.errors import MiniQwenError
from mini_qwen.trainlog import Series, curves_from_trainer_state


def load_curves(path, logging_steps: int | None = None) -> dict[str, Series]:
    """Curves from any supported source: a folder or ``*.json`` is read as trainer state,
    anything else as a training log."""
    path = Path(path)
    if not path.exists():
        raise MiniQwenError(
            f"{path} does not exist: pass a trainer_state.json, a run/checkpoint folder or a training log"
        )
    if path.is_dir() or path.suffix == ".json":
        return curves_from_trainer_state(path)
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
