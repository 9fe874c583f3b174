"""GPU check of the three stages: throughput, MFU and peak GPU memory. Driven by bench/gpu_check.sh.

Run as:
    bash bench/gpu_check.sh                      # on a CUDA machine: every sub-run, results in $OUT (or bench/)
    bash bench/gpu_check.sh --dry-run            # print the sub-runs' commands only
    python bench/gpu_check.py all --out DIR      # what the .sh calls after installing the carried wheels
    python bench/gpu_check.py stage pt --name pt --out DIR -- <mini_qwen_pt.py flags>   # one sub-run

`stage` runs a stage's own `main()` in this process, wrapping `Trainer.train` to reset and read
`torch.cuda.max_memory_allocated()` around training and to keep the trainer, whose log history holds
ThroughputCallback's tokens/s and MFU per logged step. `all` runs every sub-run in its own process
under `timeout` (one failure never loses the others), within an overall time budget, then `report`
writes gpu_results.json and gpu_results.md. Without a CUDA GPU, `all` runs a tiny-model CPU smoke
of the same sub-runs instead, to catch script errors.
"""

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAGES = {"pt": "mini_qwen_pt", "sft": "mini_qwen_sft", "dpo": "mini_qwen_dpo"}
WARMUP_LOGS = 2  # logged steps left out of the throughput median (CUDA/cuBLAS init, optimizer state allocation)


# ---------------------------------------------------------------- where a step's time goes

PROFILE_STEPS = 2  # steps traced per row (the last ones of a stage run, extra ones after the bare loop's timing)
KERNEL_KINDS = (  # first match wins; CUDA kernel names on a GPU, aten op names on CPU
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "wgmma", "cublas", "aten::mm", "aten::bmm", "aten::addmm",
                "aten::linear", "aten::matmul")),
    ("attention", ("flash", "fmha", "attention", "efficient", "scaled_dot")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("softmax / cross-entropy", ("softmax", "nll", "cross_entropy", "logsumexp")),
    ("copies / casts", ("copy", "cast", "aten::to", "aten::_to")),
    ("norm / reductions", ("reduce", "norm", "aten::mean", "aten::sum", "rsqrt")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in lowered for k in keys)), "other elementwise")


class StepProfile:
    """torch.profiler around a few steps: device time by kind of kernel, the top kernels, and how much of the
    wall time the device was busy (the rest: the host launching kernels, syncs, data loading)."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.steps, self.wall = 0, 0.0

    def start(self):
        self._sync()
        self.profiler.start()
        self.t0 = time.perf_counter()

    def stop(self, steps: int):
        self._sync()
        self.wall += time.perf_counter() - self.t0
        self.profiler.stop()
        self.steps += steps

    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def summary(self) -> dict:
        from torch.autograd import DeviceType

        events = []
        for evt in self.profiler.key_averages():
            if self.cuda:  # kernels: their own device time
                if evt.device_type == DeviceType.CUDA and evt.self_device_time_total > 0:
                    events.append((evt.key, evt.self_device_time_total, evt.count))
            elif evt.key.startswith("aten::") and evt.self_cpu_time_total > 0:
                events.append((evt.key, evt.self_cpu_time_total, evt.count))
        steps = max(self.steps, 1)
        busy = sum(t for _, t, _ in events) / 1e3 / steps  # ms a step (microseconds in the profiler)
        kinds: dict = {}
        for name, t, _ in events:
            kind = kernel_kind(name)
            kinds[kind] = kinds.get(kind, 0.0) + t / 1e3 / steps
        top = sorted(events, key=lambda e: -e[1])[:10]
        return {"profiled_steps": self.steps, "wall_ms_per_step": round(self.wall * 1e3 / steps, 2),
                "busy_ms_per_step": round(busy, 2), "clock": "device" if self.cuda else "cpu (aten ops)",
                "kinds_ms_per_step": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
                "top": [[name[:90], round(t / 1e3 / steps, 2), count // steps] for name, t, count in top]}


def profile_callback(last_steps: int = PROFILE_STEPS):
    """A TrainerCallback that profiles a stage run's last `last_steps` optimizer steps (the timed median of the
    logged steps barely moves); the summary lands in `callback.result`."""
    from transformers import TrainerCallback

    class ProfileLastSteps(TrainerCallback):
        result: dict | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.max_steps - state.global_step == last_steps:
                self.profile = StepProfile()
                self.profile.start()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps and getattr(self, "profile", None) is not None:
                self.profile.stop(last_steps)
                self.result = self.profile.summary()

    return ProfileLastSteps()


# ---------------------------------------------------------------- one sub-run, in this process

def run_stage(stage: str, name: str, out: Path, argv: list[str]) -> int:
    import importlib
    import importlib.util

    import torch
    import transformers

    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    captured: dict = {}
    original_train = transformers.Trainer.train
    profile = profile_callback() if os.environ.get("GPU_CHECK_PROFILE", "1") == "1" and rank == 0 else None

    def train(self, *args, **kwargs):
        captured["trainer"] = self
        if profile is not None and self.args.max_steps > PROFILE_STEPS + WARMUP_LOGS:
            self.add_callback(profile)
            captured["profiled_steps"] = PROFILE_STEPS  # left out of the tokens/s median (profiler overhead)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            captured["allocated_before_train"] = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        try:
            return original_train(self, *args, **kwargs)
        finally:
            if cuda:
                torch.cuda.synchronize()
                captured["max_memory_allocated"] = torch.cuda.max_memory_allocated()
                captured["max_memory_reserved"] = torch.cuda.max_memory_reserved()
            captured["train_seconds"] = time.perf_counter() - t0

    transformers.Trainer.train = train
    if importlib.util.find_spec("matplotlib") is None:  # not on the GPU image: the loss PNG would crash train()'s end
        from mini_qwen.callbacks import LossPlotCallback

        LossPlotCallback.on_train_end = lambda *a, **k: print("gpu_check: matplotlib missing: no loss plot")
    result = {"name": name, "stage": stage, "argv": argv, "status": "ok",
              "launcher": "accelerate" if "ACCELERATE_MIXED_PRECISION" in os.environ or "LOCAL_RANK" in os.environ
              else "python"}
    t0 = time.perf_counter()
    rc = 0
    try:
        module = importlib.import_module(STAGES[stage])
        module.main(argv)
    except BaseException as err:  # SystemExit from run_main-style exits too: record, then fail
        rc = 1
        result["status"] = "failed"
        result["error"] = f"{type(err).__name__}: {err}"[:2000]
        result["traceback"] = traceback.format_exc()[-6000:]
        traceback.print_exc()
    finally:
        transformers.Trainer.train = original_train
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    trainer = captured.get("trainer")
    if trainer is not None:
        result.update(summarize(trainer, captured))
    if profile is not None and profile.result:
        result["profile"] = profile.result
    if cuda:
        result["device"] = torch.cuda.get_device_name()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"gpu_check: {name}: {json.dumps({k: v for k, v in result.items() if k not in ('argv', 'traceback')}, default=str)}",
              flush=True)
    return rc


def _class_path(obj) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__name__}"


def summarize(trainer, captured: dict) -> dict:
    history = trainer.state.log_history
    steps = [e for e in history if "loss" in e and "tokens_per_second" in e]
    timed = steps[WARMUP_LOGS:len(steps) - captured.get("profiled_steps", 0)] or steps
    losses = [e["loss"] for e in history if "loss" in e]
    args = trainer.args
    model = trainer.model
    res = {"deepspeed": bool(getattr(trainer, "is_deepspeed_enabled", False)),
           "weights_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
           "bf16_autocast": bool(args.bf16), "optim": str(args.optim), "torch_compile": bool(args.torch_compile),
           "optimizer": _class_path(getattr(trainer.optimizer, "optimizer", trainer.optimizer)),  # the one that ran
           "use_liger_kernel": bool(args.use_liger_kernel), "padding_free": bool(getattr(args, "padding_free", False)),
           "collator": type(trainer.data_collator).__name__,  # SFT: PackedRowsCollator = packed rows (default)
           "losses": [e["loss"] for e in history if "loss" in e][:50],
           "gradient_checkpointing": bool(args.gradient_checkpointing),
           "chunked_loss": bool(getattr(args, "chunked_loss", False)),
           "sequences_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
           "steps": trainer.state.global_step, "logged_steps": len(steps), "warmup_logs_skipped": WARMUP_LOGS,
           "profiled_steps": captured.get("profiled_steps", 0),
           "train_seconds": round(captured.get("train_seconds", float("nan")), 1)}
    if timed:
        res["tokens_per_second"] = round(statistics.median(e["tokens_per_second"] for e in timed), 1)
        mfus = [e["mfu"] for e in timed if "mfu" in e]
        if mfus:
            res["mfu"] = round(statistics.median(mfus), 4)
    if losses:
        res["loss_first"], res["loss_last"] = losses[0], losses[-1]
    for key in ("max_memory_allocated", "max_memory_reserved", "allocated_before_train"):
        if key in captured:
            res[key.replace("max_memory", "peak") + "_gb"] = round(captured[key] / 2**30, 2)
    return res


# ---------------------------------------------------------------- the reference: a bare PyTorch loop

def run_bare(out: Path, preset: str, batch: int, seq: int, steps: int, modes: list[str]) -> int:
    """The same model and batch as the PT sub-runs with no Trainer, data loader or callbacks.

    bf16: bf16 weights and AdamW states (what --pure_bf16 trains); fp32_master: fp32 weights with the
    forward / backward under bf16 autocast (the default recipe). Fused AdamW, grad-norm clipping at 1.0
    and one `loss.item()` per step, as Trainer does with logging_steps 1. Random tokens: only the shapes
    matter for speed. One JSON per mode, in the same form as a stage sub-run's.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from mini_qwen.callbacks import flops_per_token
    from mini_qwen.hardware import peak_flops
    from mini_qwen.model import PresetArguments, build_config

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = build_config(PresetArguments(model_preset=preset))
    fpt = flops_per_token(config, seq)  # as ThroughputCallback counts PT
    peak = peak_flops()
    out.mkdir(parents=True, exist_ok=True)
    rc = 0
    for mode in modes:
        name = f"bare_{mode}"
        result = {"name": name, "stage": "bare", "status": "ok", "launcher": "python", "sequences_per_step": batch,
                  "weights_dtype": "bfloat16" if mode == "bf16" and cuda else "float32",
                  "bf16_autocast": cuda and mode == "fp32_master", "optim": "torch.optim.AdamW(fused=cuda)"}
        try:
            torch.manual_seed(0)
            with device:  # build the weights on the GPU directly: a 1B-parameter init on the CPU takes ~20 s
                model = AutoModelForCausalLM.from_config(
                    config, dtype=torch.bfloat16 if mode == "bf16" and cuda else torch.float32,
                    attn_implementation="sdpa")
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
            ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and mode == "fp32_master")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            def step() -> float:
                with autocast:
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss.item()  # the one host sync per step

            times, losses = [], []
            for _ in range(steps):
                t0 = time.perf_counter()
                losses.append(step())
                times.append(time.perf_counter() - t0)
            timed = times[WARMUP_LOGS:] or times
            tps = batch * seq / statistics.median(timed)
            if os.environ.get("GPU_CHECK_PROFILE", "1") == "1":  # extra steps: the timing above is untouched
                profile = StepProfile()
                profile.start()
                for _ in range(PROFILE_STEPS):
                    step()
                profile.stop(PROFILE_STEPS)
                result["profile"] = profile.summary()
            result.update({"steps": steps, "logged_steps": steps, "warmup_logs_skipped": len(times) - len(timed),
                           "tokens_per_second": round(tps, 1), "losses": losses,
                           "loss_first": losses[0], "loss_last": losses[-1], "train_seconds": round(sum(times), 1)})
            if peak:
                result["mfu"] = round(tps * fpt / peak, 4)
            if cuda:
                result["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
                result["device"] = torch.cuda.get_device_name()
            model = optimizer = None  # free the GPU memory before the next mode
            if cuda:
                torch.cuda.empty_cache()
        except BaseException as err:  # an OOM in one mode must not lose the other's row
            rc = 1
            result.update({"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
                           "traceback": traceback.format_exc()[-6000:]})
            traceback.print_exc()
        (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"gpu_check: {name}: {json.dumps({k: v for k, v in result.items() if k not in ('losses', 'traceback')})}",
              flush=True)
    return rc


# ---------------------------------------------------------------- the plan: which sub-runs, with which flags

def plan(gpu: bool, work: Path) -> list[dict]:
    """Sub-runs in order of importance (later ones are skipped when the time budget runs out).

    Every PT sub-run has the same model, batch and steps as the bare loop, so each row's tokens/s is
    comparable to the bare fp32-master row (the `× bare` column of the report).
    """
    py = [sys.executable, str(Path(__file__).resolve())]
    # Real-length rows when given (or when the shared reference samples sit next to the checkout), else mini_data/.
    samples = ROOT.parent / "shared" / "reference" / "mini_data_baai"
    sft_data = os.environ.get("GPU_CHECK_SFT_DATA", str(samples / "sft" if (samples / "sft").is_dir()
                                                        else ROOT / "mini_data" / "sft"))
    dpo_data = os.environ.get("GPU_CHECK_DPO_DATA", str(samples / "dpo" if (samples / "dpo").is_dir()
                                                        else ROOT / "mini_data" / "dpo"))
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


def save_base_model(folder: Path, preset: str, gpu: bool) -> None:
    """A randomly initialised model + tokenizer, for SFT / DPO when the PT sub-run left none."""
    import torch
    from transformers import AutoModelForCausalLM

    from mini_qwen.model import PresetArguments, build_config
    from mini_qwen.tokenizer import load_tokenizer

    dtype = torch.bfloat16 if gpu else torch.float32
    AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset=preset)), dtype=dtype).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    print(f"gpu_check: saved a random {preset} model to {folder} for the SFT / DPO sub-runs", flush=True)


# DeepSpeed variants of the repository's ds_zero2.json, each with its own one-process accelerate config.
DEEPSPEED_VARIANTS = {
    "zero2": {},
    "zero2_no_overlap": {"overlap_comm": False, "contiguous_gradients": False},
    "zero1": {"stage": 1, "overlap_comm": False, "contiguous_gradients": False},
}


def deepspeed_launcher(work: Path, variant: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(work / f"accelerate_ds1_{variant}.yaml"), str(Path(__file__).resolve())]


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


def run_all(out: Path, budget: float, dry_run: bool, work: Path, force_plan: str | None = None) -> int:
    import torch

    gpu = torch.cuda.is_available() if force_plan is None else force_plan == "gpu"
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = work / "gpu_runs"  # one JSON a sub-run; $OUT gets only the merged results (few files come back)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not dry_run:
        for stale in runs_dir.glob("*.json"):
            stale.unlink()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU: running a tiny-model CPU smoke of the same sub-runs instead", flush=True)
    runs = plan(gpu, work)
    only = [n for n in os.environ.get("GPU_CHECK_ONLY", "").split(",") if n]  # e.g. a second call for the levers
    if only:
        unknown = sorted(set(only) - {r["name"] for r in runs})
        if unknown:
            print(f"gpu_check: GPU_CHECK_ONLY names no sub-run {unknown}; known: {[r['name'] for r in runs]}")
            return 2
        runs = [r for r in runs if r["name"] in only]
    if gpu and not dry_run:
        write_accelerate_configs(work)
    start = time.monotonic()
    status = {}
    for run in runs:
        cmd = [c.replace("{out}", str(runs_dir)) for c in run["cmd"]]
        left = budget - (time.monotonic() - start)
        limit = int(min(run["timeout"], left - 5))
        line = f"timeout -k 15 {limit} " + " ".join(shlex.quote(c) for c in cmd)
        if dry_run:
            print(f"[{run['name']}] {line}")
            continue
        if limit < 45:
            print(f"gpu_check: {run['name']}: skipped, {left:.0f} s of the {budget:.0f} s budget left", flush=True)
            status[run["name"]] = "skipped (time budget)"
            continue
        if run["stage"] in ("sft", "dpo") and not (work / "pt" / "config.json").is_file():
            subprocess.call(["timeout", "-k", "10", "180", sys.executable, str(Path(__file__).resolve()), "base",
                             "--dir", str(work / "pt"), "--preset", "1b" if gpu else "tiny"], cwd=ROOT)
        print(f"\n===== {run['name']} ({limit} s max): {line}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(["timeout", "-k", "15", str(limit), *cmd], cwd=ROOT)
        status[run["name"]] = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else f"exit {rc}")
        print(f"===== {run['name']}: {status[run['name']]} in {time.monotonic() - t0:.0f} s", flush=True)
    if dry_run:
        return 0
    report(out, status, gpu, runs_dir)
    return 0


def report(out: Path, status: dict | None = None, gpu: bool | None = None, runs_dir: Path | None = None) -> None:
    runs_dir = runs_dir or out / "gpu_runs"
    results = []
    for path in sorted(runs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        results.append(json.loads(path.read_text()))
    names = {r["name"] for r in results}
    for name, st in (status or {}).items():
        if name not in names and not any(n.startswith(name + "_") for n in names):  # bare -> bare_<mode>
            results.append({"name": name, "status": st})
        else:
            for r in results:
                if r["name"] == name and r.get("status") == "ok" and st != "ok":
                    r["status"] = st
    import torch

    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": sys.version.split()[0], "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    for pkg in ("transformers", "trl", "accelerate", "datasets", "deepspeed", "tokenizers"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception as err:  # a missing package is a finding, not a crash
            env[pkg] = f"unavailable ({type(err).__name__})"
    (out / "gpu_results.json").write_text(json.dumps({"env": env, "runs": results}, indent=1, default=str))
    by_name = {r["name"]: r for r in results}
    ref = by_name.get("bare_fp32_master", {}).get("tokens_per_second")
    lines = [f"# GPU check ({env['gpu'] or 'no GPU: CPU smoke, tiny preset'})", "",
             " ".join(f"{k} {v};" for k, v in env.items()), "",
             f"tokens/s and MFU: median over the logged steps after the first {WARMUP_LOGS} (ThroughputCallback; "
             "the bare loop times its own steps); × bare = tokens/s over the bare fp32-master loop's; "
             "peak = torch.cuda.max_memory_allocated during train().", "",
             "| run | status | weights | steps | tokens/s | × bare | MFU | peak alloc GB | peak reserved GB | "
             "loss first → last | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def f(key, fmt="{}"):
            v = r.get(key)
            return fmt.format(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "–"
        loss = (f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if "loss_first" in r else "–")
        ratio = f"{r['tokens_per_second'] / ref:.2f}" if ref and r.get("tokens_per_second") else "–"
        lines.append(f"| {r['name']} | {r.get('status')} | {f('weights_dtype')} | {f('steps')} | "
                     f"{f('tokens_per_second', '{:,.0f}')} | {ratio} | {f('mfu', '{:.1%}')} | "
                     f"{f('peak_allocated_gb')} | {f('peak_reserved_gb')} | {loss} | {f('train_seconds')} |")
    lines += ["", *comparisons(by_name), *profiles(results)]
    failed = [r for r in results if r.get("status") != "ok"]
    for r in failed:
        lines += ["", f"**{r['name']}**: {r.get('status')}: {r.get('error', 'see gpu_check.log')}"]
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def loss_gap(a: dict, b: dict, steps: int = 20) -> float | None:
    """Largest relative difference of two runs' logged losses over their first `steps` common steps."""
    pairs = list(zip(a.get("losses") or [], b.get("losses") or []))[:steps]
    return max(abs(x - y) / abs(y) for x, y in pairs) if pairs else None


TARGET_ROWS = ("pt", "pt_zero2", "sft", "dpo")  # the rows the targets are about; the others are levers


def comparisons(by_name: dict) -> list[str]:
    """The issue's targets, as measured in this run (a row that did not run says so)."""
    def tps(name):
        return by_name.get(name, {}).get("tokens_per_second")

    def ratio(name, over, target):
        if not (tps(name) and tps(over)):
            return f"- {name} / {over}: not measured (target {target})"
        return f"- {name} / {over} tokens/s: {tps(name) / tps(over):.2f} (target {target})"

    lines = ["Targets (issue #12):"]
    mfu = by_name.get("pt", {}).get("mfu")
    lines.append(f"- pt (default recipe) MFU: {mfu:.1%} (target ≥ 45%)" if mfu else "- pt MFU: not measured (target ≥ 45%)")
    lines.append(ratio("pt_zero2", "pt", "≥ 0.9"))
    gap = loss_gap(by_name.get("pt_zero2", {}), by_name.get("pt", {}))
    lines.append(f"- pt_zero2 vs pt, first 20 logged losses: largest relative gap {gap:.2%} (target ≤ 1%)"
                 if gap is not None else "- pt_zero2 vs pt losses: not measured (target within 1%)")
    lines.append(ratio("sft", "pt", "≥ 0.8"))
    lines.append(ratio("dpo", "pt", "≥ 0.5"))
    levers = [name for name in by_name if name not in TARGET_ROWS and not name.startswith("bare")]
    for lever in levers:  # every other row of the run: a lever, named <its base row>_<what changes>
        base = lever.split("_")[0]
        line = ratio(lever, base, "< 1 keeps packed rows" if base == "sft" else "> 1 to keep a lever")
        if base == "pt":
            gap = loss_gap(by_name[lever], by_name.get(base, {}), 5)
            line += f"; first-5 loss gap {gap:.2%}" if gap is not None else ""
        elif lever == "dpo_precompute_ref":  # tokens/s counts the steps; the reference pass over every pair is before
            line += f" (steps only; train() with the reference pass: {by_name[lever].get('train_seconds')} s)"
        # SFT / DPO levers put other conversations / pairs in each step: their losses are not comparable
        lines.append(line)
    return lines


def profiles(results: list[dict]) -> list[str]:
    """Where each profiled row's step goes: device-busy share of the wall time, time by kind, top kernels."""
    rows = [r for r in results if r.get("profile")]
    if not rows:
        return []
    clock = rows[0]["profile"]["clock"]
    lines = ["", f"Where a step goes ({PROFILE_STEPS} profiled steps a row, torch.profiler, {clock} time; busy = "
                 "time in kernels / wall time, the rest is the host launching, syncing or loading):", "",
             "| run | wall ms/step | busy | by kind (ms/step) | top kernels (ms/step) |", "|---|---|---|---|---|"]
    for r in rows:
        prof = r["profile"]
        busy = prof["busy_ms_per_step"] / prof["wall_ms_per_step"] if prof["wall_ms_per_step"] else 0
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in prof["kinds_ms_per_step"].items())
        top = "; ".join(f"`{name[:48]}` {t:.1f}" for name, t, _ in prof["top"][:3])
        lines.append(f"| {r['name']} | {prof['wall_ms_per_step']:.1f} | {busy:.0%} | {kinds} | {top} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all")
    a.add_argument("--out", required=True)
    a.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", 420)),
                   help="seconds for all sub-runs together")
    a.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "/tmp/mini_qwen_gpu_check"))
    a.add_argument("--dry-run", action="store_true")
    a.add_argument("--plan", choices=["gpu", "cpu"], default=None, help="with --dry-run: show that plan")
    s = sub.add_parser("stage")
    s.add_argument("stage", choices=sorted(STAGES))
    s.add_argument("--name", required=True)
    s.add_argument("--out", required=True)
    b = sub.add_parser("base")
    b.add_argument("--dir", required=True)
    b.add_argument("--preset", default="1b")
    e = sub.add_parser("bare")
    e.add_argument("--out", required=True)
    e.add_argument("--preset", default="1b")
    e.add_argument("--batch", type=int, default=8)
    e.add_argument("--seq", type=int, default=1024)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--modes", default="fp32_master,bf16", help="comma-separated: fp32_master, bf16")
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "/tmp/mini_qwen_gpu_check"))
    own = sys.argv[1:]
    stage_argv = []
    if "--" in own:  # everything after `--` goes to the stage script untouched
        i = own.index("--")
        own, stage_argv = own[:i], own[i + 1:]
    args = parser.parse_args(own)
    if args.cmd == "all":
        sys.exit(run_all(Path(args.out), args.budget, args.dry_run, Path(args.work), args.plan))
    if args.cmd == "stage":
        sys.exit(run_stage(args.stage, args.name, Path(args.out), stage_argv))
    if args.cmd == "bare":
        sys.exit(run_bare(Path(args.out), args.preset, args.batch, args.seq, args.steps, args.modes.split(",")))
    if args.cmd == "base":
        import torch

        return save_base_model(Path(args.dir), args.preset, torch.cuda.is_available())
    report(Path(args.out), runs_dir=Path(args.work) / "gpu_runs")


if __name__ == "__main__":
    main()
