"""The whole demo pipeline in one command: every stage of mini_qwen/stages.py in order, then their models side by side.

Run as:
    python demo/demo_all.py            # tiny model on CPU (a few minutes on 2 cores), 1b on a GPU
    bash setup.sh                      # the same, after installing everything on a fresh machine

Each stage (PT -> SFT -> DPO -> GRPO) is the real stage script with its demo recipe (demo/<stage>.yaml);
the report lands in results/demo/eval/report.md, the loss curves next to each model.
"""

import gc
import json
import sys
import time
from pathlib import Path

import mini_qwen_eval
from mini_qwen import stages
from mini_qwen.demo import demo_argv
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.trainlog import REWARD_KEYS, run_summary

OUT = Path("results/demo")


def final_logs(run_dir: Path) -> dict:
    summary = run_summary(run_dir)
    if summary is None or "first_loss" not in summary:
        raise MiniQwenError(f"{run_dir} holds no logged training loss: the stage did not train (see its output above).")
    out = {"first_loss": summary["first_loss"], "last_loss": summary["last_loss"], "steps": summary["global_step"]}
    return {**out, **{key: summary[key] for key in REWARD_KEYS if key in summary}}


def main(argv=None):
    argv = list(argv or [])
    start = time.time()
    timings = {}
    names = stages.names()
    for stage in stages.STAGES:
        print(f"\n========== {stage.name.upper()} ==========", flush=True)
        t0 = time.time()
        # The user's flags go to the stage that builds the model (its preset, its size)
        stage.main()(demo_argv(stage.name, argv if stage.demo_picks_preset else [],
                               pick_preset=stage.demo_picks_preset))
        timings[stage.name] = round(time.time() - t0, 1)
        gc.collect()

    print("\n========== EVAL ==========", flush=True)
    t0 = time.time()
    # mini_ceval: the project's offline 20-question task, so the demo's report has a benchmark table too
    mini_qwen_eval.main(["--checkpoints", *(f"{name}={OUT / name}" for name in names),
                         "--mode", "batch", "--max_new_tokens", "48", "--benchmarks", "mini_ceval",
                         "--report_dir", str(OUT / "eval"), *(f for s in stages.STAGES for f in s.demo_eval)])
    timings["eval"] = round(time.time() - t0, 1)
    timings["total"] = round(time.time() - start, 1)

    summary = {"seconds": timings, **{name: final_logs(OUT / name) for name in names}}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n========== SUMMARY ==========")
    for name in names:
        s = summary[name]
        extra = "".join(f", {k} {s[k]:.3f}" for k in REWARD_KEYS if k in s)
        print(f"{name:>4}: loss {s['first_loss']:.3f} -> {s['last_loss']:.3f} in {s['steps']} steps, "
              f"{timings[name]:.0f}s{extra}")
    print(f"eval: {timings['eval']:.0f}s; total {timings['total']:.0f}s")
    print(f"report: {OUT / 'eval' / 'report.md'}; loss curves: {OUT}/*/training_loss.png")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
