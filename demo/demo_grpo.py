"""Demo: the GRPO stage on mini_data/grpo with the settings of demo/grpo.yaml, from the demo SFT model, with the
held-out prompts (mini_data/grpo/heldout.jsonl) scored before and after (greedy: exact-match accuracy, mean reward).

Run as:
    python demo/demo_sft.py && python demo/demo_grpo.py    # tiny model on CPU (a few minutes)
    python demo/demo_grpo.py --max_steps 10                # any mini_qwen_grpo.py flag still works
"""

import json
import sys
import time
from pathlib import Path

import mini_qwen_grpo
from mini_qwen.cli import parse_args
from mini_qwen.demo import demo_argv
from mini_qwen.errors import run_main
from mini_qwen.rewards.evaluate import heldout_scores

HELDOUT = str(Path(__file__).resolve().parents[1] / "mini_data" / "grpo" / "heldout.jsonl")


def main(argv=None):
    argv = demo_argv("grpo", list(sys.argv[1:] if argv is None else argv))
    _, model_args, _, training_args = parse_args(tuple(mini_qwen_grpo.ARGUMENTS.values()), argv)
    tokens = training_args.max_completion_length
    before = heldout_scores(model_args.model_name_or_path, HELDOUT, tokens)
    start = time.time()
    mini_qwen_grpo.main(argv)
    seconds = round(time.time() - start, 1)
    after = heldout_scores(training_args.output_dir, HELDOUT, tokens)
    result = {"heldout": HELDOUT, "train_seconds": seconds, "before": before, "after": after}
    Path(training_args.output_dir, "heldout_before_after.json").write_text(json.dumps(result, indent=1,
                                                                                      ensure_ascii=False))
    for name in ("accuracy", "mean_reward"):
        print(f"held-out {name} (greedy, {before['n']} prompts): {before[name]:.3f} -> {after[name]:.3f}")
    print("held-out rewards: " + ", ".join(f"{k} {before['rewards'][k]:.3f} -> {after['rewards'][k]:.3f}"
                                           for k in before["rewards"]) + f"; GRPO trained for {seconds:.0f}s")
    return result


if __name__ == "__main__":
    run_main(main)
