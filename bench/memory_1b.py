"""CPU memory of one PT optimizer step of the `1b` preset: baseline vs gradient checkpointing vs chunked loss.

Run as:
    python bench/memory_1b.py                             # 12 of the 48 layers (fits beside other work in 24 GB)
    python bench/memory_1b.py --num_hidden_layers 48      # the full 1b model: ~16 GB fp32 + AdamW, needs ~20 GB free
    python bench/memory_1b.py --block_size 1024           # a longer block, where activations matter more

Each configuration runs in a fresh subprocess through the PT script's own pieces (flags parsed by
mini_qwen_pt's argument classes, `new_model`, `PackedBlocks` on mini_data/pt, Trainer or
ChunkedLossTrainer), fp32 on CPU, for one optimizer step. It reports:
  peak       the process's peak RSS over the whole run (model build, step, optimizer state)
  fwd+bwd    the peak RSS growth during the forward and backward of the step (activations, logits and
             gradients), read from VmHWM after resetting it at the step's start; the part the two
             memory options act on
Weights (4 B/param), gradients (4 B) and AdamW's two moments (8 B) do not depend on the options.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rss import proc_status_mb, reset_peak_rss  # bench/rss.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "baseline": [],
    "gradient_checkpointing": ["--gradient_checkpointing", "true"],
    "chunked_loss": ["--chunked_loss", "true"],
    "both": ["--gradient_checkpointing", "true", "--chunked_loss", "true"],
}


def child(argv: list[str]) -> None:
    import torch
    from transformers import Trainer, TrainerCallback, set_seed

    from mini_qwen.cli import parse_args
    from mini_qwen.data.common import find_data_files
    from mini_qwen.data.packing import PackedBlocks, collate_blocks
    from mini_qwen.data.pt import prepare_token_cache
    from mini_qwen.memory import ChunkedLossTrainer
    from mini_qwen.model import ModelArguments, PresetArguments, count_parameters, load_stage_tokenizer, new_model
    from mini_qwen_pt import PTDataArguments, PTTrainingArguments

    data_args, preset_args, model_args, training_args = parse_args(
        (PTDataArguments, PresetArguments, ModelArguments, PTTrainingArguments), argv)
    set_seed(training_args.seed)
    tokenizer = load_stage_tokenizer(model_args)
    files = find_data_files(data_args.data_dir)
    cache = prepare_token_cache(files, tokenizer, data_args.cache_dir, log=lambda *a: None)
    dataset = PackedBlocks(cache, data_args.block_size, data_args.packing)
    model = new_model(preset_args, model_args, training_args)
    stats = {"params": count_parameters(model), "after_build_mb": proc_status_mb("VmRSS")}

    class StepMemory(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            stats["build_peak_mb"] = proc_status_mb("VmHWM")
            stats["hwm_reset"] = reset_peak_rss()
            stats["step_start_mb"] = proc_status_mb("VmRSS")

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            stats["fwd_bwd_peak_mb"] = proc_status_mb("VmHWM")

        def on_step_end(self, args, state, control, **kwargs):
            stats["step_peak_mb"] = proc_status_mb("VmHWM")  # with AdamW's moments, allocated by this first step

    cls = ChunkedLossTrainer if training_args.chunked_loss else Trainer
    trainer = cls(model=model, args=training_args, train_dataset=dataset, data_collator=collate_blocks,
                  callbacks=[StepMemory()])
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    trainer.train()
    stats["peak_mb"] = max(stats["build_peak_mb"], stats["step_peak_mb"])
    stats["fwd_bwd_mb"] = stats["fwd_bwd_peak_mb"] - stats["step_start_mb"]
    stats["loss"] = next(e["loss"] for e in trainer.state.log_history if "loss" in e)
    print("RESULT " + json.dumps(stats))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_hidden_layers", type=int, default=12, help="48 = the full 1b preset")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--_child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child is not None:
        return child(args._child)

    params = 155.6e6 + 17.6e6 * args.num_hidden_layers  # tied embedding + 48 layers of 17.6M = 1.0B
    need_gb = params * 16 / 1e9 * 1.15  # weights, gradients, AdamW moments, 15% for the rest
    avail_gb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    print(f"1b preset with {args.num_hidden_layers} layers, batch {args.batch_size} x {args.block_size} tokens, fp32, "
          f"CPU; needs ~{need_gb:.1f} GB, {avail_gb:.1f} GB free now")
    if need_gb > avail_gb:
        print("not enough free memory: lower --num_hidden_layers")
        return 2
    results, failed = {}, []
    with tempfile.TemporaryDirectory(prefix="bench_memory_1b_") as tmp:
        for name in args.configs.split(","):
            argv = ["--model_preset", "1b", "--num_hidden_layers", str(args.num_hidden_layers),
                    "--data_dir", str(ROOT / "mini_data" / "pt"), "--cache_dir", str(Path(tmp) / "cache"),
                    "--block_size", str(args.block_size), "--per_device_train_batch_size", str(args.batch_size),
                    "--gradient_accumulation_steps", "1", "--max_steps", "1", "--logging_steps", "1",
                    "--save_strategy", "no", "--report_to", "none", "--output_dir", str(Path(tmp) / name),
                    "--use_cpu", "true", "--bf16", "false", "--learning_rate", "1e-4", "--warmup_steps", "0",
                    "--disable_tqdm", "true", *CONFIGS[name]]
            out = subprocess.run([sys.executable, __file__, "--_child", *argv], capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode or line is None:
                print(f"{name}: FAILED (exit {out.returncode})\n{out.stderr[-3000:]}")
                failed.append(name)
                continue
            r = json.loads(line[len("RESULT "):])
            results[name] = r
            print(f"  {name:24s} peak {r['peak_mb'] / 1024:6.2f} GB   fwd+bwd +{r['fwd_bwd_mb']:7.0f} MB   "
                  f"(step start {r['step_start_mb'] / 1024:.2f} GB, model build peak {r['build_peak_mb'] / 1024:.2f} "
                  f"GB, {r['params'] / 1e6:.0f}M params, loss {r['loss']:.4f})", flush=True)
    base = results.get("baseline")
    if base:
        print("relative to baseline:")
        for name, r in results.items():
            growth = r["fwd_bwd_mb"] - base["fwd_bwd_mb"]
            print(f"  {name:24s} peak x{r['peak_mb'] / base['peak_mb']:.3f}   "
                  f"fwd+bwd x{r['fwd_bwd_mb'] / base['fwd_bwd_mb']:.2f} ({growth:+.0f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
