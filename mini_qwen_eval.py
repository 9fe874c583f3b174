"""Talk to what you trained, or compare checkpoints side by side on the same prompts.

Run as:
    python mini_qwen_eval.py results/sft                     # chat with one model: type a question, `exit` to leave
    python mini_qwen_eval.py results/pt --max_new_tokens 64  # a PT model: raw text in, continuation out
    python mini_qwen_eval.py results/pt results/sft results/dpo    # batch: the original 4 prompts on each model
    python mini_qwen_eval.py                                 # batch over whichever of results/{pt,sft,dpo} exist
    python mini_qwen_eval.py --checkpoints pt=results/pt sft-2ep=results/sft/checkpoint-15461 \\
        --prompts "李白是谁？" "tell me a story" --report_dir results/eval
    python mini_qwen_eval.py results/dpo --mode batch --prompts_file my_prompts.txt --heldout mini_data/heldout.txt
    python mini_qwen_eval.py results/pt results/sft results/dpo --benchmarks ceval-valid,cmmlu,mmlu,hellaswag,arc_easy
    python mini_qwen_eval.py results/pt results/sft --benchmarks mini_ceval   # offline: 20 questions of the project
    python mini_qwen_eval.py results/sft --benchmarks my_task --tasks_dir my_tasks/ --limit 50 --num_fewshot 5

Modes (--mode auto picks interactive for one checkpoint and no --prompts / --prompts_file, else batch):
  interactive  the original project's loop: 用户： / 助手：, answers streamed token by token, sampling
               on by default. A typed `\\n` is a newline (the original README's FAQ 16: input() returns the
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

import sys
from dataclasses import dataclass, field
from pathlib import Path

from mini_qwen import stages
from mini_qwen.cli import parse_args
from mini_qwen.errors import MiniQwenError, run_main

STAGE_OUTPUTS = [f"results/{name}" for name in stages.names()]
EMPTY_HINT = "（请输入问题；输入 exit 退出）(type a question, or exit to quit)"


@dataclass
class EvalArguments:
    checkpoints: list[str] = field(default_factory=list, metadata={
        "help": "Checkpoint folders, each `path` or `label=path` (also accepted as positional arguments). "
                "Default: whichever stage outputs exist (results/<stage>).", "action": "extend"})
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
        "help": "true = sample, false = greedy. Default: sample in interactive mode, greedy in batch mode.",
        "nargs": "?", "const": True})
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
    verifiable: str | None = field(default=None, metadata={
        "help": "Held-out prompts with reference answers (.jsonl / .parquet, prompt + answer; e.g. "
                "mini_data/grpo/heldout.jsonl): each chat checkpoint answers them greedily and the report shows "
                "exact-match accuracy and the mean GRPO reward (math + format)."})
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
                "in --benchmarks.", "action": "extend"})
    limit: int | None = field(default=None, metadata={
        "help": "Score only the first N questions of each benchmark task (a quick look; stderr grows)."})
    num_fewshot: int | None = field(default=None, metadata={
        "help": "Few-shot examples per question. Default: each task's own (0 for most)."})
    bench_batch_size: str = field(default="auto", metadata={
        "help": "Benchmark batch size: a number, or auto (lm-eval finds the largest that fits on a GPU; 8 on CPU, "
                "where finding it means allocating until memory runs out)."})


def interactive(ckpt, args: EvalArguments, do_sample: bool) -> None:
    """The original project's chat loop: 用户： / 助手：, each answer streamed as it is generated."""
    from transformers import set_seed

    from mini_qwen.batch_eval import unescape_newlines
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


def main(argv=None):
    (args,) = parse_args((EvalArguments,), argv, positional="checkpoints")
    if args.benchmarks is None and (args.tasks_dir or args.limit or args.num_fewshot is not None):
        raise MiniQwenError("--tasks_dir, --limit and --num_fewshot apply to benchmarks: add --benchmarks "
                            "(e.g. --benchmarks mini_ceval).")
    from mini_qwen.generate import named_checkpoints

    specs = args.checkpoints or [p for p in STAGE_OUTPUTS if Path(p).exists()]
    if not specs:
        raise MiniQwenError(f"no checkpoint given and none of {', '.join(STAGE_OUTPUTS)} exists: train a stage "
                            f"first, or pass a checkpoint folder (python mini_qwen_eval.py path/to/model).")
    checkpoints = named_checkpoints(specs, args.template)
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

    from mini_qwen.batch_eval import load_prompts, run_batch
    from mini_qwen.checkpoint import check_checkpoint

    for c in checkpoints:  # fail before any model is loaded, not after the first one has run
        check_checkpoint(c.path, args.tokenizer_path, adapter_ok=True)
    prompts = load_prompts(args.prompts, args.prompts_file)
    suite = None
    if args.benchmarks is not None:  # every task and its data before the first model: a typo fails in seconds
        from mini_qwen.benchmarks import load_suite, parse_names

        suite = load_suite(parse_names(args.benchmarks), args.tasks_dir, args.limit)
    return run_batch(checkpoints, prompts, args, do_sample, suite)


if __name__ == "__main__":
    run_main(main)
