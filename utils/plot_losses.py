"""Overlay the loss (or any logged metric) of one or more training runs in one PNG.

Run as:
    python utils/plot_losses.py results/pt                       # a run folder (newest checkpoint's trainer_state.json)
    python utils/plot_losses.py logs/output_pt1.log logs/output_pt2.log logs/output_pt3.log \
        --labels pt1 pt2 pt3 --out results/pt_scaling.png        # compare runs, as the original project did
    python utils/plot_losses.py logs/output_dpo.log --metric rewards/accuracies

Each RUN is a trainer_state.json, a run or checkpoint folder, or a training log (the
stdout of HF Trainer). For each run it prints the number of points, the first and last
value and the minimum. The x axis is the global step (read from the log's progress bar;
``--logging-steps N`` makes it entry index x N instead).
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from pathlib import Path

from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.plotting import load_curves, plot_loss_curves, summarize


def _writable_dir(folder: Path) -> bool:
    # root passes os.access on any folder, so a folder nobody may write (r-x, like a
    # shared reference copy) also counts as read-only.
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK) and bool(stat.S_IMODE(mode) & 0o222)


def default_out(first_run: Path, metric: str) -> Path:
    """``<stem>_<metric>.png`` next to the first run, or in the current folder if that is read-only."""
    first_run = first_run.resolve()
    if first_run.is_dir():
        folder, stem = first_run, first_run.name
    else:
        folder, stem = first_run.parent, first_run.stem
        if first_run.name == "trainer_state.json":
            stem = first_run.parent.name
    name = f"{stem}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.png"
    return (folder if _writable_dir(folder) else Path.cwd()) / name


def default_label(run: Path) -> str:
    run = run.resolve()
    if run.is_dir():
        return run.name
    if run.name == "trainer_state.json":
        return run.parent.name
    return run.stem


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _step(value) -> str:
    return "n/a" if value is None else f"{value:g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Overlay the loss curves of training runs "
        "(trainer_state.json, run/checkpoint folders or training logs)."
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="trainer_state.json, run/checkpoint folder, or training log"
    )
    parser.add_argument("--out", help="PNG to write (default: <first run>_<metric>.png next to the first run)")
    parser.add_argument("--labels", nargs="+", help="one legend label per RUN (default: file or folder names)")
    parser.add_argument("--metric", default="loss", help="logged key to plot, e.g. loss, eval_loss, rewards/accuracies")
    parser.add_argument(
        "--logging-steps", type=int, help="x = entry index x N for logs (default: step from the progress bar)"
    )
    parser.add_argument("--title", help="plot title (default: '<metric> per step')")
    parser.add_argument("--no-smooth", action="store_true", help="draw raw curves only (no moving-average line)")
    args = parser.parse_args(argv)

    runs = [Path(r) for r in args.runs]
    if args.labels and len(args.labels) != len(runs):
        raise MiniQwenError(f"--labels has {len(args.labels)} names for {len(runs)} runs: give one label per RUN")
    if args.logging_steps is not None and args.logging_steps < 1:
        raise MiniQwenError(f"--logging-steps must be a positive integer, got {args.logging_steps}")
    labels = list(args.labels) if args.labels else [default_label(r) for r in runs]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # two runs named "checkpoint-500" must stay apart in the legend
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} ({seen[label]})"

    curves = {}
    for run, label in zip(runs, labels):
        series = load_curves(run, logging_steps=args.logging_steps)
        if args.metric not in series:
            available = ", ".join(sorted(series)) or "none"
            raise MiniQwenError(
                f"{run} has no '{args.metric}' values; logged metrics: {available} (pick one with --metric)"
            )
        steps, values = series[args.metric]
        curves[label] = (steps, values)
        s = summarize(steps, values)
        print(
            f"{label}: {s['points']} points, steps {_step(s.get('first_step'))}..{_step(s.get('last_step'))}, "
            f"first {_fmt(s['first'])}, last {_fmt(s['last'])}, min {_fmt(s['min'])} at step {_step(s['min_step'])}, "
            f"max {_fmt(s['max'])}"
        )

    out = Path(args.out) if args.out else default_out(runs[0], args.metric)
    title = args.title or (f"{args.metric} per step" if len(runs) > 1 else f"{labels[0]}: {args.metric} per step")
    plot_loss_curves(
        curves, out, title=title, xlabel="step", ylabel=args.metric, smooth=None if args.no_smooth else 0.6
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
