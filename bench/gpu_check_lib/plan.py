"""The run plan: which sub-runs (rows of the report), in which order, with which stage flags and time limits.

On a GPU: the bare loop, the default recipe and its variants on the 1b preset at the shapes of the original
recipe (block 1024, batch 8); on a CPU: the same rows that can run there, on the tiny preset, as a smoke test.
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "bench" / "gpu_check.py"  # every sub-run is this script's `stage` or `bare` command

# DeepSpeed variants of the repository's ds_zero2.json, each with its own one-process accelerate config.
DEEPSPEED_VARIANTS = {
    "zero2": {},
    "zero2_no_overlap": {"overlap_comm": False, "contiguous_gradients": False},
    "zero1": {"stage": 1, "overlap_comm": False, "contiguous_gradients": False},
}


def plan(gpu: bool, work: Path) -> list[dict]:
    """Sub-runs in order of importance (later ones are skipped when the time budget runs out).

    Every PT sub-run has the same model, batch and steps as the bare loop, so each row's tokens/s is
    comparable to the bare fp32-master row (the `× bare` column of the report). Each sub-run is a dict:
    name, stage, cmd (with `{out}` for the folder of the per-row JSONs) and timeout (seconds).
    """
    py = [sys.executable, str(ENTRY)]
    # Real-length rows: the BAAI samples in tests/data (they travel with the working tree), unless given.
    samples = ROOT / "tests" / "data" / "baai"
    sft_data = os.environ.get("GPU_CHECK_SFT_DATA", str(samples / "sft"))
    dpo_data = os.environ.get("GPU_CHECK_DPO_DATA", str(samples / "dpo"))
    if gpu:
        # --bf16 true with the default fp32 master weights: the recipe under test.
        preset = ["--model_preset", "1b", "--bf16", "true", "--attn_implementation", "sdpa"]
        pt_shape = ["--block_size", "1024", "--per_device_train_batch_size", "8", "--max_steps", "20"]
        sft_shape = ["--max_length", "1024", "--per_device_train_batch_size", "8", "--max_steps", "12"]
        dpo_shape = ["--max_length", "1024", "--per_device_train_batch_size", "4", "--max_steps", "8"]
        precision = ["--bf16", "true", "--attn_implementation", "sdpa"]
        bare = ["--preset", "1b", "--batch", "8", "--seq", "1024", "--steps", "20"]
        limits = {"bare": 120, "pt": 120, "sft": 120, "dpo": 150, "ds": 200, "compile": 240}
    else:  # CPU smoke: the same sub-runs on the tiny preset (GPU-only levers left out)
        preset = ["--model_preset", "tiny", "--use_cpu", "true"]
        pt_shape = ["--block_size", "128", "--per_device_train_batch_size", "2", "--max_steps", "3"]
        sft_shape = ["--max_length", "128", "--per_device_train_batch_size", "2", "--max_steps", "3"]
        dpo_shape = ["--max_length", "128", "--max_prompt_length", "64", "--per_device_train_batch_size", "2",
                     "--max_steps", "3"]
        precision = ["--use_cpu", "true"]
        bare = ["--preset", "tiny", "--batch", "2", "--seq", "128", "--steps", "3"]
        limits = {"bare": 120, "pt": 240, "sft": 300, "dpo": 300, "ds": 300, "compile": 300}
    common = ["--gradient_accumulation_steps", "1", "--logging_steps", "1", "--save_strategy", "no",
              "--report_to", "none", "--warmup_steps", "0", "--disable_tqdm", "true"]
    pt = [*preset, *pt_shape, *common, "--data_dir", str(ROOT / "mini_data" / "pt"),
          "--cache_dir", str(work / "cache"), "--learning_rate", "1e-4"]
    base_model = str(work / "pt")  # the first PT run's output is the starting point of SFT and DPO

    def sub(name, stage, argv, limit, launcher=None):
        cmd = (launcher or py) + ["stage", stage, "--name", name, "--out", "{out}", "--", *argv]
        return {"name": name, "stage": stage, "cmd": cmd, "timeout": limit}

    def pt_run(name, *flags, limit=limits["pt"], launcher=None):
        return sub(name, "pt", [*pt, *flags, "--output_dir", str(work / name)], limit, launcher)

    sft = [*precision, *sft_shape, *common, "--model_name_or_path", base_model, "--data_dir", sft_data,
           "--learning_rate", "1e-5"]
    dpo = [*precision, *dpo_shape, *common, "--model_name_or_path", base_model, "--data_dir", dpo_data,
           "--learning_rate", "5e-7"]

    def dpo_run(name, *flags):  # DPO levers: 4 micro-batches a step, so a length-aware sampler has pairs to sort
        return sub(name, "dpo", [*dpo, "--gradient_accumulation_steps", "4", "--max_steps", "7", *flags,
                                 "--output_dir", str(work / name)], limits["dpo"])
    runs = [
        {"name": "bare", "stage": "bare", "cmd": py + ["bare", "--out", "{out}", *bare], "timeout": limits["bare"]},
        sub("pt", "pt", [*pt, "--output_dir", base_model], limits["pt"]),  # the default recipe
    ]
    if gpu:
        runs.append(pt_run("pt_pure_bf16", "--pure_bf16", "true"))
        # DeepSpeed ZeRO-2 through accelerate, 1 process (on CPU it would JIT-compile an op for ~50 s)
        runs.append(pt_run("pt_zero2", limit=limits["ds"], launcher=deepspeed_launcher(work, "zero2")))
    runs += [
        sub("sft", "sft", [*sft, "--output_dir", str(work / "sft")], limits["sft"]),  # packed rows (default)
        sub("dpo", "dpo", [*dpo, "--output_dir", str(work / "dpo")], limits["dpo"]),
    ]
    sft_padded = sub("sft_padded", "sft", [*sft, "--packing", "false", "--padding_free", "false",
                                           "--output_dir", str(work / "sft_padded")], limits["sft"])
    sft_padding_free = sub("sft_padding_free", "sft", [*sft, "--packing", "false", "--padding_free", "true",
                                                       "--output_dir", str(work / "sft_padding_free")], limits["sft"])
    if gpu:  # levers: each kept only if it beats `pt` at the same loss (bench/RESULTS.md)
        runs += [
            # bf16 weights whose small updates are compensated: the bf16 speed at fp32-master numerics?
            pt_run("pt_pure_bf16_kahan", "--pure_bf16", "true", "--kahan_summation", "true"),
            pt_run("pt_liger", "--use_liger_kernel", "true"),
            sft_padding_free,
            sft_padded,
            pt_run("pt_chunked_loss", "--chunked_loss", "true"),
            pt_run("pt_compile", "--torch_compile", "true", limit=limits["compile"]),
            pt_run("pt_liger_b16", "--use_liger_kernel", "true", "--per_device_train_batch_size", "16"),
            sub("sft_bucketed", "sft", [*sft, "--packing", "false", "--padding_free", "true", "--pad_to_multiple_of",
                                        "1024", "--output_dir", str(work / "sft_bucketed")], limits["sft"]),
            dpo_run("dpo_grouped", "--train_sampling_strategy", "group_by_length"),
            dpo_run("dpo_rebalance", "--train_sampling_strategy", "batch_rebalance"),
            dpo_run("dpo_precompute_ref", "--precompute_ref_log_probs", "true"),
            dpo_run("dpo_unbucketed", "--pad_to_multiple_of", "none"),  # the default pads to a multiple of 64
            pt_run("pt_pure_bf16_liger", "--pure_bf16", "true", "--use_liger_kernel", "true"),
            pt_run("pt_gradient_checkpointing", "--gradient_checkpointing", "true"),
            # ZeRO's cost on one GPU is host-side (a Python hook per parameter in backward): variants without the
            # overlap / contiguous-gradient hooks, and stage 1, which shards only the optimizer states.
            pt_run("pt_zero2_no_overlap", limit=limits["ds"], launcher=deepspeed_launcher(work, "zero2_no_overlap")),
            pt_run("pt_zero1", limit=limits["ds"], launcher=deepspeed_launcher(work, "zero1")),
            # If the profile shows the GPU waiting on the host: CUDA graphs replay a step's kernels in one launch.
            pt_run("pt_compile_graphs", "--torch_compile", "true", "--torch_compile_mode", "reduce-overhead",
                   limit=limits["compile"]),
            pt_run("pt_chunked_loss_b16", "--chunked_loss", "true", "--per_device_train_batch_size", "16"),
        ]
    else:
        runs += [sft_padding_free, sft_padded, pt_run("pt_chunked_loss", "--chunked_loss", "true"),
                 dpo_run("dpo_grouped", "--train_sampling_strategy", "group_by_length")]
    return runs


def deepspeed_launcher(work: Path, variant: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(work / f"accelerate_ds1_{variant}.yaml"), str(ENTRY)]


def write_accelerate_configs(work: Path) -> None:
    """accelerate_config.yaml with one process, pointing at ds_zero2.json or a variant of it (absolute paths)."""
    import yaml

    ds_base = json.loads((ROOT / "ds_zero2.json").read_text())
    accelerate = yaml.safe_load((ROOT / "accelerate_config.yaml").read_text())
    accelerate.update({"num_processes": 1, "num_machines": 1, "machine_rank": 0, "main_process_port": 29517})
    for variant, zero in DEEPSPEED_VARIANTS.items():
        ds_path = work / f"ds_{variant}.json"
        ds_path.write_text(json.dumps({**ds_base, "zero_optimization": {**ds_base["zero_optimization"], **zero}},
                                      indent=1))
        accelerate.setdefault("deepspeed_config", {})["deepspeed_config_file"] = str(ds_path)
        (work / f"accelerate_ds1_{variant}.yaml").write_text(yaml.safe_dump(accelerate))
