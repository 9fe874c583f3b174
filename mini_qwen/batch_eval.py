"""mini_qwen_eval.py's batch mode: every prompt on every checkpoint, then the report.

For each checkpoint: its answers (and, with --degeneration both, the other decoding's too, for the
degeneration table), the held-out perplexity, the training summary from trainer_state.json and, with
--benchmarks, lm-evaluation-harness scores. `run_batch` prints the side-by-side answers and writes
report.json / report.md / report.png (mini_qwen/report.py). `args` is mini_qwen_eval.py's EvalArguments.
"""

import gc
import math
import time
from pathlib import Path

from mini_qwen.errors import MiniQwenError
from mini_qwen.generate import Checkpoint

# The four prompts of the original project's evaluation (its README, 模型评估), verbatim.
ORIGINAL_PROMPTS = ["李白是谁？", "绿豆糕", "who are you?", "tell me a story"]


def unescape_newlines(text: str) -> str:
    """A typed backslash + n becomes a real newline (input() returns the two characters)."""
    return text.replace("\\n", "\n")


def load_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """--prompts_file (one prompt per line), else --prompts, else the original project's four."""
    if prompts_file:
        try:
            lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise MiniQwenError(f"cannot read --prompts_file '{prompts_file}': {err}.") from None
        found = [unescape_newlines(line) for line in lines if line.strip()]
        if not found:
            raise MiniQwenError(f"--prompts_file '{prompts_file}' has no prompts (one per line).")
        return found
    if prompts is not None:
        found = [unescape_newlines(p) for p in prompts if p.strip()]
        if not found:
            raise MiniQwenError("--prompts has no non-empty prompt: give at least one, e.g. --prompts '李白是谁？'.")
        return found
    return list(ORIGINAL_PROMPTS)


def _answer_all(model, tokenizer, ckpt: Checkpoint, prompts: list[str], args, do_sample: bool,
                seed: int) -> list[dict]:
    from mini_qwen.generate import build_input, distinct_n, generate_tokens, repetition_rate

    answers = []
    for prompt in prompts:
        ids, stopped = generate_tokens(model, tokenizer, build_input(prompt, ckpt.template, args.system),
                                       args.max_new_tokens, args.temperature, args.top_p,
                                       args.repetition_penalty, do_sample, seed=seed)
        answers.append({"text": tokenizer.decode(ids, skip_special_tokens=True), "tokens": len(ids),
                        "stopped": stopped, "repetition_rate": round(repetition_rate(ids, 4), 4),
                        "distinct_2": round(distinct_n(ids, 2), 4)})
    return answers


def _run_benchmarks(model, tokenizer, ckpt: Checkpoint, suite, args) -> list[dict]:
    import torch

    from mini_qwen.benchmarks import make_lm, run_suite

    batch_size = args.bench_batch_size
    if batch_size == "auto" and next(model.parameters()).device.type != "cuda":
        batch_size = 8
    chat = ckpt.template == "chat"
    print(f"[{ckpt.label}] benchmarks {', '.join(suite.names)} ({'chat template' if chat else 'raw text'})",
          flush=True)
    try:
        return run_suite(make_lm(model, tokenizer, batch_size=batch_size), suite, args.num_fewshot, args.limit,
                         apply_chat_template=chat)
    except torch.cuda.OutOfMemoryError:
        raise MiniQwenError(f"[{ckpt.label}] out of GPU memory in the benchmarks at batch size {batch_size}: pass a "
                            f"smaller --bench_batch_size (e.g. 4).") from None


def evaluate_checkpoint(ckpt: Checkpoint, prompts: list[str], heldout: list[str] | None,
                         args, do_sample: bool, seed: int, suite=None, verifiable: list[dict] | None = None) -> dict:
    import torch

    from mini_qwen.generate import heldout_nll, load_for_inference
    from mini_qwen.report import degeneration_stats
    from mini_qwen.trainlog import run_summary

    print(f"[{ckpt.label}] loading {ckpt.path} ({ckpt.template} template)", flush=True)
    model, tokenizer = load_for_inference(ckpt.path, args.tokenizer_path, args.device)
    start = time.perf_counter()
    answers = _answer_all(model, tokenizer, ckpt, prompts, args, do_sample, seed)
    seconds = time.perf_counter() - start
    primary = "sampled" if do_sample else "greedy"
    degeneration = {primary: degeneration_stats(answers)}
    if args.degeneration == "both":
        other = _answer_all(model, tokenizer, ckpt, prompts, args, not do_sample, seed)
        degeneration["greedy" if do_sample else "sampled"] = degeneration_stats(other)
    result = {"label": ckpt.label, "path": ckpt.path, "template": ckpt.template,
              "generation_seconds": round(seconds, 2),
              "mean_repetition_rate": degeneration[primary]["repetition_rate"],
              "mean_distinct_2": degeneration[primary]["distinct_2"],
              "stop_rate": degeneration[primary]["stop_rate"],
              "perplexity": None, "heldout_tokens": None, "training": run_summary(ckpt.path),
              "degeneration": degeneration, "benchmarks": None, "answers": answers}
    if heldout:
        total, count = heldout_nll(model, tokenizer, heldout, args.ppl_max_length, args.ppl_batch_size)
        if count:
            result.update(perplexity=round(math.exp(total / count), 3), heldout_tokens=count)
    if verifiable and ckpt.template == "chat":
        from mini_qwen.rewards.evaluate import score_verifiable

        result["verifiable"] = score_verifiable(model, tokenizer, verifiable, args.max_new_tokens)
        print(f"[{ckpt.label}] verifiable prompts: accuracy {result['verifiable']['accuracy']:.3f}, mean reward "
              f"{result['verifiable']['mean_reward']:.3f} (greedy, {len(verifiable)} prompts)", flush=True)
    if suite is not None:
        start = time.perf_counter()
        result["benchmarks"] = _run_benchmarks(model, tokenizer, ckpt, suite, args)
        result["benchmark_seconds"] = round(time.perf_counter() - start, 2)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ppl = f", perplexity {result['perplexity']}" if result["perplexity"] is not None else ""
    print(f"[{ckpt.label}] {len(prompts)} answer(s) in {result['generation_seconds']}s{ppl}", flush=True)
    return result


def print_summary(prompts: list[str], results: list[dict]) -> None:
    for i, prompt in enumerate(prompts):
        print(f"\n=== 用户：{prompt}")
        for r in results:
            a = r["answers"][i]
            print(f"--- [{r['label']} | {r['template']}] 助手：{a['text']}")
    print("\ncheckpoint            perplexity  repetition  distinct-2  ended")
    for r in results:
        ppl = f"{r['perplexity']:.2f}" if r["perplexity"] is not None else "-"
        print(f"{r['label']:<20} {ppl:>11} {r['mean_repetition_rate']:>11.3f} "
              f"{r['mean_distinct_2']:>11.3f} {round(100 * r['stop_rate']):>5}%")
    for decoding in ("greedy", "sampled"):
        stops = [f"{r['label']} {round(100 * r['degeneration'][decoding]['stop_rate'])}%" for r in results
                 if decoding in r["degeneration"]]
        if stops:
            print(f"stopped with <|im_end|> ({decoding}): " + ", ".join(stops))
    for r in results:
        for row in r["benchmarks"] or []:
            score = "-" if row["acc"] is None else f"{row['acc']:.3f}" + (
                f" ± {row['acc_stderr']:.3f}" if row["acc_stderr"] is not None else "")
            chance = f"{row['chance']:.3f}" if row["chance"] is not None else "-"
            print(f"[{r['label']}] {row['task']}: acc {score} (random guess {chance}, {row['n']} questions)")


def run_batch(checkpoints: list[Checkpoint], prompts: list[str], args, do_sample: bool,
          suite=None) -> dict:
    from mini_qwen.heldout import load_heldout
    from mini_qwen.report import write_report

    heldout, heldout_source = load_heldout(args.heldout, args.heldout_data, args.heldout_docs)
    print(f"held-out text: {heldout_source}", flush=True)
    seed = args.seed if args.seed is not None else 42
    verifiable = None
    if getattr(args, "verifiable", None):
        from mini_qwen.rewards.evaluate import load_verifiable

        verifiable = load_verifiable(args.verifiable)
    results = [evaluate_checkpoint(c, prompts, heldout, args, do_sample, seed, suite, verifiable)
               for c in checkpoints]
    print_summary(prompts, results)

    decodings = {"greedy": {}, "sampled": {"temperature": args.temperature, "top_p": args.top_p, "seed": seed}}
    report = {"created": time.strftime("%Y-%m-%d %H:%M:%S"),
              "generation": {"max_new_tokens": args.max_new_tokens, "do_sample": do_sample,
                             "temperature": args.temperature, "top_p": args.top_p,
                             "repetition_penalty": args.repetition_penalty, "seed": seed, "system": args.system},
              "decodings": decodings, "heldout": heldout_source, "prompts": prompts, "checkpoints": results,
              "benchmarks": None, "verifiable": getattr(args, "verifiable", None)}
    if suite is not None:
        import lm_eval

        from mini_qwen.generate import inference_device

        batch_size = args.bench_batch_size
        if batch_size == "auto":
            batch_size = "auto" if inference_device(args.device).type == "cuda" else "8 (auto on CPU)"
        report["benchmarks"] = {"tasks": suite.names, "num_fewshot": args.num_fewshot, "limit": args.limit,
                                "batch_size": batch_size, "tasks_dir": args.tasks_dir,
                                "lm_eval_version": getattr(lm_eval, "__version__", "?"), "chance": suite.chance}
    out = Path(args.report_dir)
    write_report(report, out)
    for flag in report["regressions"]:
        print(f"worse than {flag['previous']}: {flag['checkpoint']} {flag['metric']} ({flag['decoding']}) "
              f"{flag['before']} -> {flag['after']}")
    plot = f", {out / report['plot']}" if report["plot"] else ""
    print(f"\nreport: {out / 'report.md'} and {out / 'report.json'}{plot}")
    return report
