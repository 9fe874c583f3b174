"""What runs inside one sub-run's process: a stage run, the bare PyTorch reference loop, a random base model.

Each runner writes one JSON row `<name>.json` (the same keys for a stage and the bare loop), which report.py reads.
"""

import json
import os
import statistics
import time
import traceback
from pathlib import Path

from .profile import PROFILE_STEPS, StepProfile, profile_callback

STAGES = {"pt": "mini_qwen_pt", "sft": "mini_qwen_sft", "dpo": "mini_qwen_dpo"}
WARMUP_LOGS = 2  # logged steps left out of the throughput median (CUDA/cuBLAS init, optimizer state allocation)


def profiling_on() -> bool:
    return os.environ.get("GPU_CHECK_PROFILE", "1") == "1"


# ---------------------------------------------------------------- a stage's own main(), measured from inside

def run_stage(stage: str, name: str, out: Path, argv: list[str]) -> int:
    """Run a stage script's `main(argv)` in this process, wrapping `Trainer.train` to reset and read
    `torch.cuda.max_memory_allocated()` around training and to keep the trainer, whose log history holds
    ThroughputCallback's tokens/s and MFU per logged step. Returns 1 when the stage failed (its row says why)."""
    import importlib
    import importlib.util

    import torch
    import transformers

    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    captured: dict = {}
    original_train = transformers.Trainer.train
    profile = profile_callback() if profiling_on() and rank == 0 else None

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
        shown = {k: v for k, v in result.items() if k not in ("argv", "traceback")}
        print(f"gpu_check: {name}: {json.dumps(shown, default=str)}", flush=True)
    return rc


def _class_path(obj) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__name__}"


def summarize(trainer, captured: dict) -> dict:
    """A stage row from the trainer's log history: median tokens/s and MFU after the warm-up (and without the
    profiled steps), losses, peak memory, and the settings that actually ran."""
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
           "losses": losses[:50],
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

def train_step(model, optimizer, ids, autocast) -> float:
    """One step as Trainer takes it with logging_steps 1: forward / backward, grad-norm clipping at 1.0, AdamW."""
    import torch

    with autocast:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()  # the one host sync per step


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
            times, losses = [], []
            for _ in range(steps):
                t0 = time.perf_counter()
                losses.append(train_step(model, optimizer, ids, autocast))
                times.append(time.perf_counter() - t0)
            timed = times[WARMUP_LOGS:] or times
            tps = batch * seq / statistics.median(timed)
            if profiling_on():  # extra steps: the timing above is untouched
                profile = StepProfile()
                profile.start()
                for _ in range(PROFILE_STEPS):
                    train_step(model, optimizer, ids, autocast)
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
        shown = {k: v for k, v in result.items() if k not in ("losses", "traceback")}
        print(f"gpu_check: {name}: {json.dumps(shown)}", flush=True)
    return rc


# ---------------------------------------------------------------- the starting point of SFT and DPO

def save_base_model(folder: Path, preset: str, gpu: bool) -> None:
    """A randomly initialised model + tokenizer, for SFT / DPO when the PT sub-run left none."""
    import torch
    from transformers import AutoModelForCausalLM

    from mini_qwen.model import PresetArguments, build_config
    from mini_qwen.tokenizer import load_tokenizer

    dtype = torch.bfloat16 if gpu else torch.float32
    model = AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset=preset)), dtype=dtype)
    model.save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    print(f"gpu_check: saved a random {preset} model to {folder} for the SFT / DPO sub-runs", flush=True)
