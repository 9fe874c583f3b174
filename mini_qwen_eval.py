"""Talk to what you trained, or compare checkpoints side by side on the same prompts.

Run as:
    python mini_qwen_eval.py results/sft                     # chat with one model: type a question, `exit` to leave
    python mini_qwen_eval.py results/pt --max_new_tokens 64  # a PT model: raw text in, continuation out
    python mini_qwen_eval.py results/pt results/sft results/dpo    # batch: the seed's 4 prompts on each model
    python mini_qwen_eval.py                                 # batch over whichever of results/{pt,sft,dpo} exist
    python mini_qwen_eval.py --checkpoints pt=results/pt sft-2ep=results/sft/checkpoint-15461 \\
        --prompts "李白是谁？" "tell me a story" --report_dir results/eval
    python mini_qwen_eval.py results/dpo --mode batch --prompts_file my_prompts.txt --heldout mini_data/heldout.txt
    python mini_qwen_eval.py results/pt results/sft results/dpo --benchmarks ceval-valid,cmmlu,mmlu,hellaswag,arc_easy
    python mini_qwen_eval.py results/pt results/sft --benchmarks mini_ceval   # offline: 20 questions of the project
    python mini_qwen_eval.py results/sft --benchmarks my_task --tasks_dir my_tasks/ --limit 50 --num_fewshot 5

Modes (--mode auto picks interactive for one checkpoint and no --prompts / --prompts_file, else batch):
  interactive  the original project's loop: 用户： / 助手：, answers streamed token by token, sampling
               on by default. A typed `\\n` is a newline (the seed README's FAQ 16: input() returns the
               two characters backslash + n, and a chat prompt typed by hand with them fails).
  batch        every prompt x every checkpoint, greedy by default (reproducible), printed per prompt
               and written to <report_dir>/report.{json,md} with each checkpoint's held-out perplexity,
               repetition rate / distinct-2 of its answers and its training losses (DPO: reward
               accuracy and margin) from trainer_state.json. Every prompt is also answered with the
               other decoding (greedy and sampled) for the degeneration table: share of answers that
               stopped with <|im_end|>, 4-gram repetition, distinct-2, mean length, stage by stage.
               With --benchmarks, lm-evaluation-harness scores each checkpoint on those tasks (chat
               checkpoints with the chat template, PT without) into the same report, plus report.png.
Templates (--template auto): raw text for a checkpoint whose name or label says pt (pt, pt1,
mini_qwen_pt, results/pt/checkpoint-100), the Qwen chat format for everything else.
Checkpoints are given as paths or label=path, as positional arguments or after --checkpoints
(put them before --prompts, whose values run to the next flag).
"""

import argparse
import difflib
import gc
import math
import re
import sys
import time
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from mini_qwen.errors import MiniQwenError, run_main

# The four prompts of the original project's evaluation (README, 模型评估), verbatim.
SEED_PROMPTS = ["李白是谁？", "绿豆糕", "who are you?", "tell me a story"]
STAGE_OUTPUTS = ["results/pt", "results/sft", "results/dpo"]
HELDOUT_TXT = "mini_data/heldout.txt"
EMPTY_HINT = "（请输入问题；输入 exit 退出）(type a question, or exit to quit)"


@dataclass
class EvalArguments:
    checkpoints: list[str] = field(default_factory=list, metadata={
        "help": "Checkpoint folders, each `path` or `label=path` (also accepted as positional arguments). "
                "Default: whichever of results/pt, results/sft, results/dpo exist."})
    mode: str = field(default="auto", metadata={
        "help": "interactive, batch, or auto (interactive for one checkpoint without --prompts/--prompts_file).",
        "choices": ["auto", "interactive", "batch"]})
    template: str = field(default="auto", metadata={
        "help": "pt (raw text), chat (<|im_start|>user ... assistant), or auto (pt when the checkpoint's "
                "folder name / label says pt, else chat).", "choices": ["auto", "pt", "chat"]})
    system: str | None = field(default=None, metadata={"help": "Optional system turn for the chat template "
                                                               "(the original stages trained without one)."})
    tokenizer_path: str | None = field(default=None, metadata={
        "help": "Tokenizer folder for checkpoints saved without one (e.g. models/tokenizer)."})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda; default cuda when available."})
    prompts: list[str] | None = field(default=None, metadata={
        "help": "Batch prompts. Default: the original project's 李白是谁？ / 绿豆糕 / who are you? / tell me a story."})
    prompts_file: str | None = field(default=None, metadata={
        "help": "A UTF-8 text file, one prompt per line (blank lines skipped, a typed \\n is a newline)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest answer in tokens."})
    do_sample: bool | None = field(default=None, metadata={
        "help": "true = sample, false = greedy. Default: sample in interactive mode, greedy in batch mode."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with sampling only)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling threshold (with sampling only)."})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "1.0 = off, so the report shows the model's own repetition; ~1.1 hides much of it."})
    seed: int | None = field(default=None, metadata={
        "help": "Random seed for sampling. Batch mode reseeds before each answer (default 42)."})
    report_dir: str = field(default="results/eval", metadata={"help": "Where batch mode writes report.json / .md."})
    heldout: str | None = field(default=None, metadata={
        "help": "Held-out text for perplexity: a .txt file (documents separated by blank lines, else one per "
                "line) or a parquet file / folder with a text column; `none` skips perplexity. Default: "
                "mini_data/heldout.txt if it exists, else the last --heldout_docs documents of --heldout_data."})
    heldout_data: str = field(default="mini_data/pt", metadata={
        "help": "PT parquet folder whose last documents are used when there is no held-out file."})
    heldout_docs: int = field(default=32, metadata={"help": "At most this many held-out texts."})
    ppl_max_length: int = field(default=512, metadata={"help": "Perplexity window in tokens (longer texts are "
                                                                 "split into windows)."})
    ppl_batch_size: int = field(default=4, metadata={"help": "Windows per forward pass for perplexity."})
    degeneration: str = field(default="both", metadata={
        "help": "both: also answer every prompt with the other decoding, so the degeneration table has greedy and "
                "sampled; primary: only the decoding of the answers (half the generation time).",
        "choices": ["both", "primary"]})
    benchmarks: str | None = field(default=None, metadata={
        "help": "lm-evaluation-harness tasks, comma-separated, as lm-eval spells them: ceval-valid, cmmlu, mmlu, "
                "hellaswag, arc_easy, ... or mini_ceval (the project's offline 20 questions). Their datasets come "
                "from the Hugging Face Hub on first use."})
    tasks_dir: list[str] | None = field(default=None, metadata={
        "help": "Folder(s) of your own lm-eval task YAML files (lm-eval's include_path): run them by name "
                "in --benchmarks."})
    limit: int | None = field(default=None, metadata={
        "help": "Score only the first N questions of each benchmark task (a quick look; stderr grows)."})
    num_fewshot: int | None = field(default=None, metadata={
        "help": "Few-shot examples per question. Default: each task's own (0 for most)."})
    bench_batch_size: str = field(default="auto", metadata={
        "help": "Benchmark batch size: a number, or auto (lm-eval finds the largest that fits on a GPU; 8 on CPU, "
                "where finding it means allocating until memory runs out)."})


# --------------------------------------------------------------------------- arguments


def _to_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not true or false")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's own report (usage + exit 2) becomes one MiniQwenError line, still exit 2."""
        flags = re.findall(r"(--?[\w-]+)", message.partition("unrecognized arguments:")[2])
        known = [o for a in self._actions for o in a.option_strings]
        hints = [f"did you mean '{c[0]}' for '{f}'?" for f in flags
                 if (c := difflib.get_close_matches(f.split("=")[0], known, n=1, cutoff=0.75))]
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise MiniQwenError(f"invalid arguments: {message}{hint}. See `python mini_qwen_eval.py --help`.")


def build_parser() -> argparse.ArgumentParser:
    """One flag per EvalArguments field (its type, default, help and choices), checkpoints also positional."""
    parser = _Parser(prog="mini_qwen_eval.py", allow_abbrev=False,  # `--max_new_token` must not pass for a flag
                     description=__doc__.split("\n")[0])
    parser.add_argument("positional", nargs="*", metavar="CHECKPOINT", help="Checkpoint folders, `path` or "
                        "`label=path`.")
    hints = typing.get_type_hints(EvalArguments)
    for f in fields(EvalArguments):
        kind = hints[f.name]
        args = typing.get_args(kind)
        if isinstance(kind, types.UnionType):  # `int | None` -> int
            kind = next(a for a in args if a is not type(None))
        options = {"help": f.metadata.get("help"), "choices": f.metadata.get("choices"),
                   "default": f.default if f.default is not MISSING else f.default_factory()}
        if typing.get_origin(kind) is list:
            repeatable = f.name in ("checkpoints", "tasks_dir")  # `--tasks_dir a --tasks_dir b` keeps both
            options.update(nargs="+", type=str, action="extend" if repeatable else "store")
        elif kind is bool:  # --do_sample, --do_sample true, --do_sample false
            options.update(nargs="?", const=True, type=_to_bool)
        else:
            options.update(type=kind)
        parser.add_argument(f"--{f.name}", **options)
    return parser


def parse_arguments(argv: list[str]) -> EvalArguments:
    # Intermixed: `a --max_new_tokens 8 b` gives checkpoints a and b, as before.
    namespace = vars(build_parser().parse_intermixed_args(argv))
    positional = namespace.pop("positional")
    args = EvalArguments(**namespace)
    args.checkpoints = positional + list(args.checkpoints)
    return args


@dataclass
class Checkpoint:
    label: str
    path: str
    template: str


def parse_checkpoints(specs: list[str], template: str) -> list[Checkpoint]:
    from mini_qwen.checkpoint import chat_or_pt, parse_checkpoint_specs

    if not specs:
        specs = [p for p in STAGE_OUTPUTS if Path(p).exists()]
        if not specs:
            raise MiniQwenError(f"no checkpoint given and none of {', '.join(STAGE_OUTPUTS)} exists: train a stage "
                                f"first, or pass a checkpoint folder (python mini_qwen_eval.py path/to/model).")
    return [Checkpoint(label, path, chat_or_pt(label, path, template))
            for label, path in parse_checkpoint_specs(specs)]


def unescape_newlines(text: str) -> str:
    """A typed backslash + n becomes a real newline (input() returns the two characters)."""
    return text.replace("\\n", "\n")


def load_prompts(args: EvalArguments) -> list[str]:
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise MiniQwenError(f"cannot read --prompts_file '{args.prompts_file}': {err}.") from None
        prompts = [unescape_newlines(line) for line in lines if line.strip()]
        if not prompts:
            raise MiniQwenError(f"--prompts_file '{args.prompts_file}' has no prompts (one per line).")
    elif args.prompts is not None:
        prompts = [unescape_newlines(p) for p in args.prompts if p.strip()]
        if not prompts:
            raise MiniQwenError("--prompts has no non-empty prompt: give at least one, e.g. --prompts '李白是谁？'.")
    else:
        prompts = list(SEED_PROMPTS)
    return prompts


# --------------------------------------------------------------------------- held-out text


def _tail_of_parquet(files: list[Path], limit: int) -> list[str]:
    """The last documents of each file (so Chinese and English folders both count), `limit` in all."""
    import pyarrow.parquet as pq

    from mini_qwen.data import check_string_column, read_schema, require_columns

    per_file = max(1, math.ceil(limit / len(files)))
    texts = []
    for path in files:
        schema = read_schema(path)
        require_columns(path, schema, {"text": "the document text"})
        check_string_column(path, schema, "text")
        reader, tail = pq.ParquetFile(path), []
        for group in reversed(range(reader.num_row_groups)):  # read only the row groups needed
            rows = [t for t in reader.read_row_group(group, columns=["text"]).column(0).to_pylist() if t and t.strip()]
            tail = rows + tail
            if len(tail) >= per_file:
                break
        texts += tail[-per_file:]
    return texts[-limit:]


def load_heldout(args: EvalArguments) -> tuple[list[str] | None, str]:
    """(texts, where they come from) or (None, why perplexity is skipped)."""
    from mini_qwen.data import find_parquet_files

    if args.heldout_docs < 1:
        raise MiniQwenError(f"--heldout_docs must be at least 1, got {args.heldout_docs}.")
    note = ""
    if args.heldout and args.heldout.strip().lower() == "none":
        return None, "perplexity skipped (--heldout none)"
    if args.heldout:
        path = Path(args.heldout)
        if not path.exists():
            raise MiniQwenError(f"--heldout '{args.heldout}' does not exist: give a .txt file, a parquet file or "
                                f"folder, or `none` to skip perplexity.")
    elif Path(HELDOUT_TXT).is_file():
        path = Path(HELDOUT_TXT)
    elif Path(args.heldout_data).exists():
        path = Path(args.heldout_data)
        note = " (PT data: also in training unless the PT run held these documents out)"
    else:
        return None, (f"perplexity skipped: no held-out text ({HELDOUT_TXT} and {args.heldout_data} do not exist; "
                      f"pass --heldout FILE)")
    if path.is_dir() or path.suffix == ".parquet":
        texts = _tail_of_parquet(find_parquet_files(str(path), what="held-out data"), args.heldout_docs)
        source = f"last {len(texts)} documents of {path}{note}"
    else:
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise MiniQwenError(f"cannot read held-out text '{path}': {err}.") from None
        blocks = re.split(r"\n\s*\n", raw) if re.search(r"\n\s*\n", raw.strip()) else raw.splitlines()
        texts = [b.strip() for b in blocks if b.strip()][:args.heldout_docs]
        source = f"{len(texts)} texts of {path}"
    if not texts:
        raise MiniQwenError(f"held-out text '{path}' holds no text: fill it, or pass --heldout none.")
    return texts, source


# --------------------------------------------------------------------------- modes


def interactive(ckpt: Checkpoint, args: EvalArguments, do_sample: bool) -> None:
    from transformers import set_seed

    from mini_qwen.generate import build_input, generate, load_for_inference, text_streamer

    model, tokenizer = load_for_inference(ckpt.path, args.tokenizer_path, args.device)
    if args.seed is not None:
        set_seed(args.seed)
    decoding = f"sampling (temperature {args.temperature}, top_p {args.top_p})" if do_sample else "greedy"
    print(f"{ckpt.path}: {ckpt.template} template, {decoding}, up to {args.max_new_tokens} new tokens. "
          f"Type a question; `\\n` is a newline; exit / quit / Ctrl-D leaves.", flush=True)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # a terminal sending bad bytes must not end the session
    streamer = text_streamer(tokenizer)
    echo = not sys.stdin.isatty()  # piped questions: show each one (as read, \n resolved) in the transcript
    while True:
        try:
            line = input("用户：")
        except (EOFError, KeyboardInterrupt):
            print()
            break
        prompt = unescape_newlines(line)
        if echo:
            print(prompt, flush=True)
        if line.strip().lower() in ("exit", "quit"):
            break
        if not prompt.strip():
            print(EMPTY_HINT, flush=True)
            continue
        if ckpt.template == "chat" and "<|im_start|>" in prompt:
            text = prompt  # the user typed the whole chat prompt (FAQ 16): use it as is, newlines now real
        else:
            text = build_input(prompt, ckpt.template, args.system)
        print("助手：", end="", flush=True)
        try:
            generate(model, tokenizer, text, args.max_new_tokens, args.temperature, args.top_p,
                     args.repetition_penalty, do_sample, streamer=streamer)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the session
            streamer.end()
            print("（已中断 interrupted）", flush=True)


def _answer_all(model, tokenizer, ckpt: Checkpoint, prompts: list[str], args: EvalArguments, do_sample: bool,
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


def _run_benchmarks(model, tokenizer, ckpt: Checkpoint, suite, args: EvalArguments) -> list[dict]:
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


def _evaluate_checkpoint(ckpt: Checkpoint, prompts: list[str], heldout: list[str] | None,
                         args: EvalArguments, do_sample: bool, seed: int, suite=None) -> dict:
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


def _print_summary(prompts: list[str], results: list[dict]) -> None:
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


def batch(checkpoints: list[Checkpoint], prompts: list[str], args: EvalArguments, do_sample: bool,
          suite=None) -> dict:
    from mini_qwen.report import write_report

    heldout, heldout_source = load_heldout(args)
    print(f"held-out text: {heldout_source}", flush=True)
    seed = args.seed if args.seed is not None else 42
    results = [_evaluate_checkpoint(c, prompts, heldout, args, do_sample, seed, suite) for c in checkpoints]
    _print_summary(prompts, results)

    decodings = {"greedy": {}, "sampled": {"temperature": args.temperature, "top_p": args.top_p, "seed": seed}}
    report = {"created": time.strftime("%Y-%m-%d %H:%M:%S"),
              "generation": {"max_new_tokens": args.max_new_tokens, "do_sample": do_sample,
                             "temperature": args.temperature, "top_p": args.top_p,
                             "repetition_penalty": args.repetition_penalty, "seed": seed, "system": args.system},
              "decodings": decodings, "heldout": heldout_source, "prompts": prompts, "checkpoints": results,
              "benchmarks": None}
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


def _check_numbers(args: EvalArguments) -> None:
    from mini_qwen.ranges import check_ranges  # the stages' one table of allowed ranges

    check_ranges({name: getattr(args, name) for name in ("max_new_tokens", "limit", "num_fewshot")})
    size = args.bench_batch_size
    if size != "auto" and not (size.isdigit() and int(size) >= 1):
        raise MiniQwenError(f"--bench_batch_size must be a whole number >= 1 or auto, got '{size}'.")
    if args.benchmarks is None and (args.tasks_dir or args.limit or args.num_fewshot is not None):
        raise MiniQwenError("--tasks_dir, --limit and --num_fewshot apply to benchmarks: add --benchmarks "
                            "(e.g. --benchmarks mini_ceval).")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(argv)
    _check_numbers(args)
    checkpoints = parse_checkpoints(args.checkpoints, args.template)
    wants_prompts = args.prompts is not None or args.prompts_file is not None
    mode = args.mode
    if mode == "auto":
        mode = "interactive" if len(checkpoints) == 1 and not wants_prompts and not args.benchmarks else "batch"
    if mode == "interactive" and len(checkpoints) > 1:
        raise MiniQwenError(f"interactive mode talks to one checkpoint, got {len(checkpoints)}: "
                            f"drop --mode interactive to compare them in batch mode.")
    if mode == "interactive" and args.benchmarks:
        raise MiniQwenError("--benchmarks runs in batch mode: drop --mode interactive.")
    do_sample = args.do_sample if args.do_sample is not None else mode == "interactive"
    if mode == "interactive":
        interactive(checkpoints[0], args, do_sample)
        return None
    from mini_qwen.generate import check_checkpoint

    for c in checkpoints:  # fail before any model is loaded, not after the first one has run
        check_checkpoint(c.path, args.tokenizer_path)
    prompts = load_prompts(args)
    suite = None
    if args.benchmarks is not None:  # every task and its data before the first model: a typo fails in seconds
        from mini_qwen.benchmarks import load_suite, parse_names

        suite = load_suite(parse_names(args.benchmarks), args.tasks_dir, args.limit)
    return batch(checkpoints, prompts, args, do_sample, suite)


if __name__ == "__main__":
    run_main(main)
