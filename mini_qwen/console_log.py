"""Loss curves from the console log of a training run (`nohup ... > output_pt.log`), such as the
original project's published logs.

HF's progress callback prints each logged dict as a Python repr,
``{'loss': 2.831, 'grad_norm': 0.26, 'learning_rate': 1.5e-11, 'epoch': 1.0}``
(newer transformers may print numbers as strings, or JSON). The step is not in the
dict; it is read from the tqdm bar that the callback redraws right after each dict
(``20/13523 [02:17<24:34:05, ...]``). When the log has no such bar the step is the
entry's index times ``logging_steps``. The result has the shape of
`mini_qwen.trainlog.curves_from_trainer_state`, so runs from either source overlay on one step axis.
"""

import ast
import json
import re
import statistics
from collections import Counter
from pathlib import Path

from mini_qwen.errors import MiniQwenError
from mini_qwen.trainlog import Series, add_entry, entry_kind

# A flat dict: HF prints metrics without nesting, and DeepSpeed's nested config dumps
# that share the log are then skipped by the key check below.
_DICT_RE = re.compile(r"\{[^{}\n]*\}")
# tqdm's "  20/13523 [02:17<24:34:05,  6.55s/it]".
_BAR_RE = re.compile(r"(\d+)/(\d+) \[")
# Python prints non-finite floats as bare names, which literal_eval rejects.
_NONFINITE_RE = re.compile(r"(?<![\w'\"])(nan|inf|-inf|NaN|Infinity|-Infinity)(?![\w'\"])")



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
    Returns ``{name: (steps, values)}`` like :func:`mini_qwen.trainlog.curves_from_trainer_state`.
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
        kind = entry_kind(entry)
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
        add_entry(series, step, entry)
    return series
