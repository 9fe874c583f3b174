"""The batch report of mini_qwen_eval.py: report.json, report.md and report.png in one folder.

- Checkpoints: perplexity, the answers' repetition, training losses (one row per checkpoint).
- Benchmarks: lm-evaluation-harness accuracy ± standard error per task, one column per checkpoint,
  next to the random-guess level of the same questions.
- Degeneration: per checkpoint, under greedy and sampled decoding, the share of answers that stopped
  with <|im_end|> (vs. hit max_new_tokens), 4-gram repetition, distinct-2 and mean length; stages side by
  side, a ▼ where a checkpoint is worse than the one before it (the earlier stage).
- The plot: benchmark scores and stop rate per checkpoint, next to each other.
"""

from __future__ import annotations

import json
from pathlib import Path

from mini_qwen.errors import MiniQwenError

DECODINGS = ("greedy", "sampled")
# metric key, label, better direction (+1 higher is better, -1 lower is better, 0 no direction), format
DEGENERATION_METRICS = (
    ("stop_rate", "ended with &lt;\\|im_end\\|&gt;", +1, "pct"),
    ("max_tokens_rate", "hit max_new_tokens", -1, "pct"),
    ("repetition_rate", "4-gram repetition rate", -1, "3f"),
    ("distinct_2", "distinct-2", +1, "3f"),
    ("mean_tokens", "mean answer length (tokens)", 0, "1f"),
)
WORSE = "▼"
# A change smaller than this is not flagged: with a handful of prompts, 0.027 -> 0.028 is one repeated 4-gram.
TOLERANCE = {"stop_rate": 0.0, "repetition_rate": 0.01, "distinct_2": 0.01}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _shown(value: float, kind: str) -> str:
    return {"pct": f"{round(100 * value)}%", "3f": f"{value:.3f}", "1f": f"{value:.1f}"}[kind]


# --------------------------------------------------------------------------- degeneration


def degeneration_stats(answers: list[dict]) -> dict:
    """Stop share, 4-gram repetition, distinct-2 and mean length of answers ({tokens, stopped, ...} each)."""
    n = len(answers)
    stopped = sum(bool(a["stopped"]) for a in answers)
    return {"answers": n, "stop_rate": round(stopped / n, 4), "max_tokens_rate": round((n - stopped) / n, 4),
            "repetition_rate": round(sum(a["repetition_rate"] for a in answers) / n, 4),
            "distinct_2": round(sum(a["distinct_2"] for a in answers) / n, 4),
            "mean_tokens": round(sum(a["tokens"] for a in answers) / n, 2)}


def regressions(checkpoints: list[dict]) -> list[dict]:
    """Where a checkpoint is worse than the one before it on a degeneration metric by more than TOLERANCE."""
    flags = []
    for before, after in zip(checkpoints, checkpoints[1:]):
        for decoding in DECODINGS:
            a, b = (before.get("degeneration") or {}).get(decoding), (after.get("degeneration") or {}).get(decoding)
            if not a or not b:
                continue
            for key, _, direction, _ in DEGENERATION_METRICS:
                if direction == 0 or key == "max_tokens_rate":  # the mirror of stop_rate: flagged once
                    continue
                if round((a[key] - b[key]) * direction, 6) > TOLERANCE[key]:
                    flags.append({"checkpoint": after["label"], "previous": before["label"], "decoding": decoding,
                                  "metric": key, "before": a[key], "after": b[key]})
    return flags


# --------------------------------------------------------------------------- markdown


def _benchmark_section(report: dict) -> list[str]:
    bench = report.get("benchmarks")
    if not bench:
        return []
    ckpts = [c for c in report["checkpoints"] if c.get("benchmarks") is not None]
    scoring = "; ".join(f"{_cell(c['label'])}: " + ("with the chat template" if c["template"] == "chat"
                                                     else "raw text, no chat template") for c in ckpts)
    shots = "task default" if bench["num_fewshot"] is None else str(bench["num_fewshot"])
    limit = f", first {bench['limit']} questions per task" if bench["limit"] else ""
    lines = ["", "## Benchmarks (lm-evaluation-harness)", "",
             f"lm-eval {bench.get('lm_eval_version', '?')}, few-shot: {shots}{limit}, batch size "
             f"{bench['batch_size']}. Scoring: {scoring}.", ""]
    names = [row["task"] for row in ckpts[0]["benchmarks"]] if ckpts else []
    for metric, title in (("acc", "accuracy ± standard error"), ("acc_norm", "length-normalised accuracy (acc_norm)")):
        if not any(row.get(metric) is not None for c in ckpts for row in c["benchmarks"]):
            continue
        lines += [f"**{title}**", "",
                  "| task | questions | random guess | " + " | ".join(_cell(c["label"]) for c in ckpts) + " |",
                  "|---|---:|---:|" + "---:|" * len(ckpts)]
        for i, name in enumerate(names):
            first = ckpts[0]["benchmarks"][i]
            cells = []
            for c in ckpts:
                row = c["benchmarks"][i]
                value, err = row.get(metric), row.get(f"{metric}_stderr")
                cells.append("-" if value is None else f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else ""))
            lines.append(f"| {_cell(name)} | {first['n']} | {_fmt(first['chance'])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Accuracy: share of questions where the model gives the correct choice the highest log-likelihood "
              "(acc_norm divides each choice's log-likelihood by its length in characters). ± is the standard error "
              "of that share (sqrt(p(1-p)/n)): two scores closer than about two standard errors are not "
              "distinguishable. Random guess: the mean of 1 / number of choices over the same questions."]
    return lines


def _degeneration_section(report: dict) -> list[str]:
    ckpts = [c for c in report["checkpoints"] if c.get("degeneration")]
    if not ckpts:
        return []
    flagged = {(f["checkpoint"], f["decoding"], f["metric"]) for f in report.get("regressions", [])}
    lines = ["", "## Degeneration", "",
             f"Each prompt answered once per decoding ({report['generation']['max_new_tokens']} new tokens at most); "
             f"{WORSE} = worse than the checkpoint to its left (the earlier stage): a lower stop rate, or repetition "
             f"/ distinct-2 worse by more than 0.01.", "",
             "| decoding | measure | " + " | ".join(_cell(c["label"]) for c in ckpts) + " |",
             "|---|---|" + "---:|" * len(ckpts)]
    for decoding in DECODINGS:
        if not any(decoding in c["degeneration"] for c in ckpts):
            continue
        for key, label, _, kind in DEGENERATION_METRICS:
            cells = []
            for c in ckpts:
                stats = c["degeneration"].get(decoding)
                mark = f" {WORSE}" if (c["label"], decoding, key) in flagged else ""
                cells.append(_shown(stats[key], kind) + mark if stats else "-")
            lines.append(f"| {decoding} | {label} | " + " | ".join(cells) + " |")
    lines += ["", "Ended with &lt;\\|im_end\\|&gt;: the answer stopped by itself; the rest ran into max_new_tokens "
              "(a model that never learned to stop, or a loop). 4-gram repetition: share of an answer's 4-grams "
              "that repeat an earlier one (0 = none, near 1 = a 复读机 loop). Distinct-2: unique / all token "
              "bigrams. All are means over the answers."]
    decodings = report.get("decodings") or {}
    if "sampled" in decodings:
        s = decodings["sampled"]
        lines.append(f"Sampled: temperature {s['temperature']}, top_p {s['top_p']}, seed {s['seed']} "
                     f"(reseeded before each answer).")
    return lines


def _verifiable_section(report: dict) -> list[str]:
    ckpts = [c for c in report["checkpoints"] if c.get("verifiable")]
    if not ckpts:
        return []
    names = list(ckpts[0]["verifiable"]["rewards"])
    lines = ["", "## Verifiable prompts", "",
             f"{ckpts[0]['verifiable']['n']} held-out prompts with reference answers ({_cell(report['verifiable'])}), "
             f"answered greedily (max_new_tokens {ckpts[0]['verifiable']['max_new_tokens']}): accuracy is exact "
             f"match of the final number; mean reward is the sum of the GRPO rewards {', '.join(names)}.", "",
             "| checkpoint | accuracy | mean reward | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for c in ckpts:
        v = c["verifiable"]
        lines.append(f"| {_cell(c['label'])} | {_fmt(v['accuracy'])} | {_fmt(v['mean_reward'])} | "
                     + " | ".join(_fmt(v["rewards"][n]) for n in names) + " |")
    return lines


def render_markdown(report: dict) -> str:
    g = report["generation"]
    decoding = (f"sampling (temperature {g['temperature']}, top_p {g['top_p']}, seed {g['seed']})"
                if g["do_sample"] else "greedy decoding")
    lines = ["# mini_qwen evaluation", "",
             f"{report['created']}: {decoding}, max_new_tokens {g['max_new_tokens']}, repetition_penalty "
             f"{g['repetition_penalty']}. Held-out text: {report['heldout']}.", ""]
    if report.get("plot"):
        lines += [f"![benchmark scores and stop rate per checkpoint]({report['plot']})", ""]
    lines += ["## Checkpoints", "",
              "| checkpoint | path | template | perplexity | repetition rate (4-gram) | distinct-2 | ended with "
              "&lt;\\|im_end\\|&gt; | training loss first → last (step) | DPO rewards/accuracies | "
              "DPO rewards/margins |",
              "|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for c in report["checkpoints"]:
        t = c["training"] or {}
        loss = (f"{t['first_loss']:.3f} → {t['last_loss']:.3f} ({t['last_step']})" if "first_loss" in t else "-")
        lines.append(f"| {_cell(c['label'])} | {_cell(c['path'])} | {c['template']} | {_fmt(c['perplexity'])} | "
                     f"{_fmt(c['mean_repetition_rate'])} | {_fmt(c['mean_distinct_2'])} | "
                     f"{round(100 * c['stop_rate'])}% | {loss} | {_fmt(t.get('rewards/accuracies'))} | "
                     f"{_fmt(t.get('rewards/margins'))} |")
    lines += ["", f"Columns from perplexity to ended: the answers below ({decoding}). Repetition rate: share of an "
              "answer's 4-grams (tokens) that repeat an earlier one (0 = none, near 1 = a 复读机 loop); distinct-2: "
              "unique / all token bigrams; both averaged over the answers. Perplexity: exp(mean next-token loss) "
              "on the held-out text."]
    lines += _benchmark_section(report)
    lines += _verifiable_section(report)
    lines += _degeneration_section(report)
    lines += ["", "## Answers"]
    for i, prompt in enumerate(report["prompts"]):
        lines += ["", f"### {i + 1}. {_cell(prompt)}".replace("\n", " ")]
        for c in report["checkpoints"]:
            a = c["answers"][i]
            end = "ended" if a["stopped"] else "hit max_new_tokens"
            lines += ["", f"**{_cell(c['label'])}** ({c['template']}, {a['tokens']} tokens, {end}, "
                          f"repetition {a['repetition_rate']:.2f}):", ""]
            body = a["text"].strip("\n") or ("*(empty answer)*" if not a["text"] else "*(only line breaks)*")
            lines += ["> " + _cell(line) if line else ">" for line in body.split("\n")]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot


def plot_report(report: dict, path: Path) -> bool:
    """Benchmark accuracy per task (bars per checkpoint, random guess dashed) beside the stop rate per
    checkpoint under each decoding. False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ckpts = report["checkpoints"]
    labels = [c["label"] for c in ckpts]
    bench = [c for c in ckpts if c.get("benchmarks")]
    panels = 2 if bench else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    axes = axes[0]
    width = 0.8 / max(1, len(ckpts))
    if bench:
        ax = axes[0]
        names = [row["task"] for row in bench[0]["benchmarks"]]
        for j, c in enumerate(bench):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(names))]
            acc = [row["acc"] if row["acc"] is not None else 0.0 for row in c["benchmarks"]]
            err = [row["acc_stderr"] or 0.0 for row in c["benchmarks"]]
            ax.bar(xs, acc, width, yerr=err, capsize=3, label=c["label"])
        for i, row in enumerate(bench[0]["benchmarks"]):
            if row["chance"] is not None:
                ax.hlines(row["chance"], i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1,
                          label="random guess" if i == 0 else None)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy (± standard error)")
        ax.set_title("benchmarks (lm-evaluation-harness)")
        ax.legend(fontsize=8)
    ax = axes[-1]
    decodings = [d for d in DECODINGS if any(d in (c.get("degeneration") or {}) for c in ckpts)]
    bar = 0.8 / max(1, len(decodings))
    for j, decoding in enumerate(decodings):
        xs = [i - 0.4 + bar * (j + 0.5) for i in range(len(ckpts))]
        rates = [((c.get("degeneration") or {}).get(decoding) or {}).get("stop_rate", 0.0) for c in ckpts]
        ax.bar(xs, rates, bar, label=decoding)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of answers ending with <|im_end|>")
    ax.set_title(f"stop rate (max_new_tokens {report['generation']['max_new_tokens']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(report: dict, out: Path) -> dict:
    """report.json, report.md and report.png (when matplotlib is there) into `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        report["regressions"] = regressions(report["checkpoints"])
        report["plot"] = "report.png" if plot_report(report, out / "report.png") else None
        (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    except OSError as err:
        raise MiniQwenError(f"cannot write the report to '{out}': {err.strerror}. Pass another --report_dir.") from None
    return report
