"""Plan a training run before paying for it: memory per GPU, tokens and steps, time and cost, disk.

`plan_run` takes a stage's own parsed flags (mini_qwen_plan.py parses them with the stage's dataclasses)
and the GPUs it is planned on, and returns the plan as a dict (written to plan.json; `render` prints it).
Every figure says whether it is measured (read from the files, the token cache, the model's parameters)
or estimated (a model of memory or speed), and from what.

- Memory: mini_qwen/plan_memory.py, the real model built on the meta device (no weights are loaded);
  with --use_peft the adapter too, by peft from the stage's own LoRA config (mini_qwen/lora.py).
- Data: mini_qwen/plan_data.py (PT tokens from the token cache, else from the parquet footers; SFT / DPO rows
  and their lengths from a sample run through the stage's own encoding).
- Time: tokens x the FLOPs per token the training log's MFU counts (mini_qwen.callbacks.flops_per_token)
  / (MFU x the GPU's peak from mini_qwen.hardware.GPUS x GPUs); MFU as this project measured it
  (bench/RESULTS.md), else estimated from those figures, or --mfu.
"""

import copy
import math
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

from mini_qwen import stages
from mini_qwen.errors import MiniQwenError
from mini_qwen.plan_data import dpo_data, figure, pt_data, sft_data
from mini_qwen.plan_memory import (
    DTYPE_BYTES,
    GIB,
    Adapter,
    Params,
    Setup,
    ZeRO,
    ceil_div,
    fits,
    largest_batch,
    memory_parts,
    meta_model,
    nf4_bytes,
    total_with_overhead,
)

# MFU of measured runs, in the training log's count (callbacks.flops_per_token: PT with its block, SFT / DPO
# without), by (what is trained, how it is launched): (MFU, GPU, GPUs, source).
ONE_GPU, DS_ONE_GPU, DS_SEVERAL = "one GPU", "DeepSpeed on one GPU", "DeepSpeed on several GPUs"
MEASURED_MFU = {
    # This project on one H200 (bench/RESULTS.md 4.1, 2026-11-30): bf16 weights + bf16 AdamW (--pure_bf16), SDPA,
    # batch 8 x 1024 (DPO 4 pairs).
    ("pt", ONE_GPU): (0.247, "H200", 1, "this project's PT on one H200 (bench/RESULTS.md 4.1)"),
    ("pt chunked loss", ONE_GPU): (0.221, "H200", 1, "this project's PT --chunked_loss on one H200"),
    ("pt", DS_ONE_GPU): (0.143, "H200", 1, "this project's PT under DeepSpeed ZeRO-2 on one H200"),
    ("sft", ONE_GPU): (0.089, "H200", 1, "this project's SFT on real rows, padded batches, one H200"),
    ("dpo", ONE_GPU): (0.041, "H200", 1, "this project's DPO on real pairs, one H200"),
    # The original project's runs (its published logs, excerpts in tests/data/upstream_logs; its code,
    # flash-attention 2, bf16, DeepSpeed ZeRO-2 on 6 x H800). PT: 13,523 steps in 88,784 s, 175.47 blocks of 1024
    # tokens a second, i.e. 29,947 tokens/s a GPU x 6.60 GFLOP a token / 989 TFLOP/s. DPO: 55.0 pairs a second
    # over 6 GPUs x 1,085 tokens a pair (prompt twice + both answers: the mean of 200 real pairs, measured here) x
    # 5.99 GFLOP / 989 TFLOP/s.
    ("pt", DS_SEVERAL): (0.200, "H800", 6, "the original project's PT run on 6 x H800 (its log)"),
    ("dpo", DS_SEVERAL): (0.060, "H800", 6, "the original project's DPO run on 6 x H800 (its log; pair length "
                                            "measured here)"),
}
# The bare loops of the same H200 session: fp32 master weights + bf16 autocast ran at this share of bf16 weights.
FP32_MASTER_SPEED = 33_931 / 43_867
AUTO_ATTENTION = "--attn_implementation auto: flash_attention_2 only where flash-attn is installed"
LINK_BYTES_PER_S = 100e9 / 8  # the example interconnect of the several-nodes caveat: 100 Gb/s


# ---------------------------------------------------------------- the model

def model_config(model_args, preset_args) -> tuple[object, str]:
    """(config, where it comes from) of the model the stage trains."""
    from mini_qwen.model import build_config, validate_config

    path = model_args.model_name_or_path
    if path and Path(path).exists():
        from transformers import AutoConfig

        from mini_qwen.checkpoint import check_checkpoint

        folder = check_checkpoint(path, need_tokenizer=False)
        config = AutoConfig.from_pretrained(folder)
        validate_config(config, source=f"model config ({folder / 'config.json'})")
        return config, f"checkpoint {path}"
    config = build_config(preset_args)
    where = f"preset {preset_args.model_preset}"
    if path:  # SFT / DPO before the previous stage has run: plan with the preset it will train
        where += f" ({path} does not exist yet)"
    return config, where


def resize(config, params: Params, layers: int) -> tuple[object, Params]:
    """The same model with `layers` decoder layers (for the smaller model that would fit)."""
    smaller = copy.deepcopy(config)
    smaller.num_hidden_layers = layers
    smaller.layer_types = ["full_attention"] * layers
    drop = config.num_hidden_layers - layers
    return smaller, Params(params.total - drop * params.layer, params.matmul - drop * params.layer_matmul,
                           params.output, params.layer, params.layer_matmul)


def lora_adapter(lora_args, config) -> Adapter:
    """The LoRA adapter the stage would train with these flags: peft wraps the meta model with the LoraConfig the
    stage builds (mini_qwen.lora.peft_config, target names checked), and its trainable parameters are counted."""
    import warnings

    import torch
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from mini_qwen.lora import block_linear_names, peft_config

    model = meta_model(config)
    blocks = model.get_decoder().layers
    nf4 = sum(nf4_bytes(m.weight.numel()) for m in blocks.modules() if isinstance(m, torch.nn.Linear))
    lora = peft_config(lora_args, block_linear_names(model), "the planned model's blocks")
    with warnings.catch_warnings():  # peft's own deprecation notices about transformers' checkpointing names
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    targets = frozenset(name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if isinstance(m, LoraLayer))
    quantized = bool(lora_args.load_in_4bit)
    return Adapter(trainable, lora.r, lora.lora_dropout > 0, targets, quantized=quantized, nf4=nf4 if quantized else 0)


# ---------------------------------------------------------------- the run's setup

def deepspeed_source(training_args, accelerate_config: str, world: int) -> tuple[dict | None, str | None]:
    """The DeepSpeed config the run would use: --deepspeed, else (several GPUs) the accelerate config's."""
    from mini_qwen.launch import deepspeed_config

    ds, source = deepspeed_config(training_args)
    if ds or world == 1:
        return ds, source
    import yaml

    try:
        accelerate = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    except OSError as err:
        raise MiniQwenError(f"cannot read accelerate config '{accelerate_config}' (--accelerate_config): "
                            f"{err.strerror}.") from None
    if accelerate.get("distributed_type") != "DEEPSPEED":
        return None, f"{accelerate_config} ({accelerate.get('distributed_type')}: DDP)"
    inline = accelerate.get("deepspeed_config") or {}
    path = inline.get("deepspeed_config_file")
    if path:
        ds, _ = deepspeed_config(SimpleNamespace(deepspeed=path))  # read as the run would read it
        return ds, f"{path} via {accelerate_config}"
    zero = {"stage": inline.get("zero_stage", 0),
            "offload_optimizer": {"device": inline.get("offload_optimizer_device", "none")},
            "offload_param": {"device": inline.get("offload_param_device", "none")}}
    return {"zero_optimization": zero}, accelerate_config


def padded_length(longest: int, max_length: int, multiple) -> int:
    """The length a padded batch reaches: its longest row, rounded up to --pad_to_multiple_of, at most max_length."""
    if isinstance(multiple, int) or (isinstance(multiple, str) and multiple.isdigit()):
        longest = ceil_div(longest, int(multiple)) * int(multiple)
    return min(longest, max_length)


def build_setup(stage: str, args: dict, config, params: Params, world: int, zero: ZeRO | None,
                data: dict, adapter: Adapter | None = None) -> Setup:
    """The memory Setup of the stage as configured: precision, batch shape, attention, loss, reference. Padded
    batches (SFT without packing, DPO) are planned at the longest row of the data's sample. `adapter`: a LoRA
    adapter trains on the frozen model (lora_adapter)."""
    from mini_qwen.model import model_dtype

    model_args, training = args["model"], args["training"]
    half = "bf16" if training.bf16 else "fp16" if training.fp16 else None
    if zero is not None:  # DeepSpeed runs the model in bf16/fp16 and keeps fp32 masters itself
        weights, autocast = half or "fp32", None
        if adapter:  # the engine casts the whole module, adapter included
            adapter = replace(adapter, dtype=weights)
    elif adapter and adapter.quantized:
        # bitsandbytes computes in --bf16 / --fp16's dtype (mini_qwen.lora.quantization_config); peft's
        # prepare_model_for_kbit_training casts everything that is not 4-bit to fp32; TRL casts the adapter to bf16
        # and mini_qwen.lora.keep_adapters_fp32 casts it back: an fp32 adapter (Adapter's default dtype).
        weights, autocast = "fp32", half
    elif adapter:  # the frozen base as mini_qwen.model.load_model loads it; peft keeps the adapter in fp32
        dtype = model_dtype(training, model_args.pure_bf16, frozen=True, on_gpu=True)
        weights, autocast = {"torch.float32": "fp32", "torch.bfloat16": "bf16"}[str(dtype)], half
    else:
        dtype = model_dtype(training, model_args.pure_bf16, on_gpu=True)
        weights = {"torch.float32": "fp32", "torch.bfloat16": "bf16"}[str(dtype)]
        autocast = half if weights == "fp32" else None
    attention = "sdpa" if model_args.attn_implementation == "auto" else model_args.attn_implementation
    setup = dict(config=config, params=params, weights=weights, autocast=autocast, world=world, zero=zero,
                 kahan=bool(model_args.kahan_summation), batch=training.per_device_train_batch_size,
                 attention=attention, checkpointing=bool(training.gradient_checkpointing),
                 grad_accum=training.gradient_accumulation_steps, trained_share=data["trained share"],
                 adapter=adapter)
    kind = stages.stage(stage).plan
    if kind == "tokens":
        loss = "liger" if training.use_liger_kernel else "chunked" if training.chunked_loss else "full"
        masked = args["data"].packing == "documents" or attention == "eager"
        return Setup(**setup, seq_len=args["data"].block_size, mask="rows" if masked else None, loss=loss)
    if kind == "rollouts":  # prompt + answer rows, full length; the KV reference at --beta > 0
        reference = None
        if training.beta > 0 and adapter is None:
            reference = half if zero is not None and half else (
                "bf16" if str(model_dtype(training, True, on_gpu=True)) == "torch.bfloat16" else "fp32")
        return Setup(**setup, seq_len=data["longest"]["value"], mask="rows", loss="full", reference=reference)
    flattened = bool(getattr(training, "padding_free", False))
    mask = "flattened" if flattened else "rows"  # packed rows, padding masks: a dense mask under SDPA
    longest = padded_length(data["longest"]["value"], training.max_length, training.pad_to_multiple_of)
    if kind == "rows":
        fused = args["data"].fused_lm_head
        fused = fused if fused is not None else True  # the stage's default on a GPU
        return Setup(**setup, seq_len=training.max_length if training.packing else longest, mask=mask,
                     loss="fused_head" if fused else "answer_only")
    reference = None
    # A frozen copy loaded as the policy is (mini_qwen_dpo.py: fp32 under autocast, bf16 with --pure_bf16; DeepSpeed
    # casts it with the policy); with an adapter, the model itself with the adapter disabled.
    if not training.precompute_ref_log_probs and adapter is None:
        reference = weights
    return Setup(**setup, rows=2, seq_len=longest, mask=mask, loss="fused_head", reference=reference)


def describe_adapter(a: Adapter) -> str:
    return (f"{'QLoRA' if a.quantized else 'LoRA'} rank {a.rank} on {' '.join(sorted(a.targets))}"
            f"{'' if a.dropout else ' (no dropout)'}: {a.trainable / 1e6:.2f}M trainable parameters")


def describe_precision(s: Setup) -> str:
    if s.adapter and s.zero is None:
        a = s.adapter
        if a.quantized:
            frozen = "the blocks' linear weights in 4-bit NF4 (bitsandbytes), embeddings and norms in fp32"
        else:
            frozen = f"{s.weights} weights"
        return (f"frozen model: {frozen}; {a.dtype} adapter + {a.dtype} AdamW"
                + (f", {s.autocast} autocast" if s.autocast else ""))
    if s.zero is not None:
        where = "in CPU RAM (offload)" if s.zero.offload_optimizer else f"partitioned over {s.world} GPU(s)"
        return (f"DeepSpeed ZeRO-{s.zero.stage} ({s.zero.source}): {s.weights} weights, fp32 master weights and "
                f"AdamW {where}")
    if s.autocast:
        return f"fp32 master weights + {s.autocast} autocast, fp32 AdamW"
    if s.weights == "fp32":
        return "fp32 throughout (no mixed precision)"
    return f"{s.weights} weights + {s.weights} AdamW (--pure_bf16)" + (" with Kahan summation" if s.kahan else "")


def numerics(s: Setup) -> dict[str, str]:
    """Which dtype the recipe keeps for each thing a training step touches (README "Numerics" has the table)."""
    compute = s.autocast or s.weights
    several = s.world > 1
    if s.zero is not None:
        z, module = s.zero, s.weights
        master = "an fp32 master copy partitioned over the GPUs" if module != "fp32" else "partitioned AdamW"
        return {"weights": f"{module} in the module (DeepSpeed casts it{', adapter included' if s.adapter else ''}), "
                           f"{master}", "compute": module,
                "gradients": f"{module} per micro-batch", "accumulation": z.accumulation(module),
                "optimizer": "fp32 AdamW moments, partitioned" + (" (CPU offload)" if z.offload_optimizer else ""),
                "reference": _reference_numerics(s), "communication": f"{z.communication(module)} "
                "(gradient reduce-scatter), " + f"{module} (weight all-gather)"}
    if s.adapter:
        a = s.adapter
        frozen = "4-bit NF4 blocks, fp32 embeddings and norms" if a.quantized else s.weights
        return {"weights": f"frozen {frozen}; {a.dtype} adapter", "compute": compute,
                "gradients": f"{a.dtype} (adapter only)", "accumulation": a.dtype,
                "optimizer": f"{a.dtype} AdamW moments (adapter only)", "reference": _reference_numerics(s),
                "communication": f"{a.dtype} adapter gradients (DDP all-reduce)" if several else "none (one GPU)"}
    kahan = " + a bf16 Kahan compensation buffer" if s.kahan and s.weights != "fp32" else ""
    return {"weights": s.weights + (" master weights" if s.autocast else ""), "compute": compute,
            "gradients": s.weights, "accumulation": s.weights, "optimizer": f"{s.weights} AdamW moments{kahan}",
            "reference": _reference_numerics(s),
            "communication": f"{s.weights} gradients (DDP all-reduce)" if several else "none (one GPU)"}


def _reference_numerics(s: Setup) -> str:
    if s.rows != 2:  # PT / SFT
        return "none (no DPO)"
    if s.adapter:
        return "the frozen model itself, adapter disabled"
    if s.reference is None:
        return "log-probs precomputed before training"
    return f"{s.reference} frozen copy, computing as the policy does ({s.autocast or s.weights})"


# ---------------------------------------------------------------- what would fit

def levers(stage: str, s: Setup, gpu) -> list[tuple[str, dict]]:
    """Flags that lower memory without changing what is trained, with their effect on the Setup."""
    found = []
    if not s.checkpointing:
        found.append(("--gradient_checkpointing true", {"checkpointing": True}))
    if stage == "pt" and s.loss == "full":
        found.append(("--chunked_loss true", {"loss": "chunked"}))
    if gpu.bf16 and s.zero is None and s.autocast == "bf16" and s.adapter is None:
        found.append(("--pure_bf16 true", {"weights": "bf16", "autocast": None}))
    if s.reference:
        found.append(("--precompute_ref_log_probs true", {"reference": None}))
    return found


def fewest_flags(stage: str, s: Setup, gpu) -> list[str] | None:
    """The fewest memory levers (levers) with which `s` fits at its batch, or None."""
    options = levers(stage, s, gpu)
    for size in range(len(options) + 1):
        for combo in combinations(options, size):
            changes = {k: v for _, change in combo for k, v in change.items()}
            if fits(replace(s, **changes), gpu.memory_gib):
                return [flag for flag, _ in combo]
    return None


def with_every_lever(stage: str, s: Setup, gpu) -> tuple[list[str], Setup]:
    options = levers(stage, s, gpu)
    return [flag for flag, _ in options], replace(s, **{k: v for _, change in options for k, v in change.items()})


def smaller_batch_flags(s: Setup, batch: int) -> list[str]:
    """A per-device batch and the gradient accumulation that keep the tokens of an optimizer step."""
    return [f"--per_device_train_batch_size {batch}",
            f"--gradient_accumulation_steps {ceil_div(s.batch * s.grad_accum, batch)}"]


def adapter_option(stage: str, variants: list[tuple[list[str], Setup]], gpu) -> dict | None:
    """Training a LoRA adapter instead (SFT / DPO that do not fit with every weight training): the first of
    `variants` (LoRA, then QLoRA) that fits at the asked batch with the fewest levers, else at a smaller batch."""
    for flags, lora in variants:
        extra = fewest_flags(stage, lora, gpu)
        if extra is not None:
            chosen = replace(lora, **{k: v for flag, change in levers(stage, lora, gpu) if flag in extra
                                      for k, v in change.items()})
            return {"flags": flags + extra, "total": total_with_overhead(memory_parts(chosen)["tensors"])[1]}
    for flags, lora in variants:
        extra, every = with_every_lever(stage, lora, gpu)
        best = largest_batch(every, gpu.memory_gib)
        if best:
            chosen = replace(every, batch=best)
            return {"flags": flags + extra + smaller_batch_flags(lora, best),
                    "total": total_with_overhead(memory_parts(chosen)["tensors"])[1]}
    return None


def what_fits(stage: str, s: Setup, gpu, preset: bool, adapters: list[tuple[list[str], Setup]] = ()) -> dict:
    """When `s` does not fit: the largest batch that does, the fewest flags that make the asked batch fit,
    and, when nothing does, a smaller model (PT from a preset); for SFT / DPO training every weight, a LoRA
    adapter (`adapters`: the Setups of --use_peft and --load_in_4bit) when it fits where full training does not."""
    memory = gpu.memory_gib
    out = {"largest batch": largest_batch(s, memory)}
    if out["largest batch"]:
        out["smaller batch"] = smaller_batch_flags(s, out["largest batch"])
    flags = fewest_flags(stage, s, gpu)
    if flags is None:
        options, every = with_every_lever(stage, s, gpu)
        best = largest_batch(every, memory)
        if best:
            flags = options + smaller_batch_flags(s, best)
    if flags is not None:
        out["flags"] = flags
    else:
        out["training state"] = "the weights, gradients and optimizer state alone do not fit"
        if preset:
            for layers in range(s.config.num_hidden_layers - 1, 0, -1):
                config, params = resize(s.config, s.params, layers)
                smaller = replace(every, config=config, params=params)
                batch = min(largest_batch(smaller, memory), s.batch)
                if batch:
                    out["flags"] = [f"--num_hidden_layers {layers}"] + options + smaller_batch_flags(s, batch)
                    out["smaller model"] = f"{params.total / 1e9:.2f}B parameters in {layers} layers"
                    break
    if adapters:
        option = adapter_option(stage, list(adapters), gpu)
        if option:
            out["adapter"] = option
    return out


# ---------------------------------------------------------------- time, cost, disk

def mfu_for(stage: str, s: Setup, gpu, asked: float | None) -> dict:
    """The MFU to plan with: --mfu, else the measured figure for the stage and launch (MEASURED_MFU), scaled by
    measured ratios where that exact case was not measured. "measured" only for the GPU and count it ran on."""
    if asked:
        return figure(asked, "", "given", "--mfu")
    kind = "pt chunked loss" if stage == "pt" and s.loss == "chunked" else stage
    launch = ONE_GPU if s.zero is None else DS_ONE_GPU if s.world == 1 else DS_SEVERAL
    notes = []
    if (kind, launch) in MEASURED_MFU:
        value, on, count, source = MEASURED_MFU[(kind, launch)]
    else:  # the closest measured case, times a measured ratio
        like = stages.BY_NAME[kind].mfu_like if kind in stages.BY_NAME else None
        base = kind if (kind, ONE_GPU) in MEASURED_MFU else like or "pt"
        value, on, count, source = MEASURED_MFU[(base, ONE_GPU)]
        if base != kind and kind in stages.BY_NAME:
            notes.append(f"not measured for {kind}: {base}'s figure ({stages.stage(kind).summary})")
        if launch != ONE_GPU:
            pt_launch = MEASURED_MFU[("pt", launch)][0] / MEASURED_MFU[("pt", ONE_GPU)][0]
            value *= pt_launch
            on, count = MEASURED_MFU[("pt", launch)][1:3]
            notes.append(f"x {pt_launch:.2f}, PT's measured ratio of {launch} to one GPU")
    if s.autocast and s.weights == "fp32" and s.zero is None:
        value *= FP32_MASTER_SPEED
        notes.append(f"x {FP32_MASTER_SPEED:.2f}, the measured speed of fp32 master weights + autocast against bf16 "
                     "weights (bare loops, one H200)")
    if s.adapter:
        notes.append("measured training every weight, applied to an adapter's run (not measured with one)")
    measured = not notes and gpu.name == on and s.world == count
    if gpu.name != on:
        notes.append(f"applied to the {gpu.name} (measured on the {on})")
    return figure(round(value, 4), "", "measured" if measured else "estimated", "; ".join([source, *notes]))


def steps_and_tokens(data: dict, s: Setup, training) -> dict:
    """Optimizer steps, epochs and trained tokens, as Trainer counts steps (ceil at each division)."""
    per_step = s.batch * s.grad_accum * s.world
    loader = ceil_div(ceil_div(data["units"], s.world), s.batch)  # micro-batches per GPU and epoch
    steps_per_epoch = max(1, ceil_div(loader, s.grad_accum))
    if training.max_steps and training.max_steps > 0:
        steps, basis = training.max_steps, "given"
    else:
        steps, basis = math.ceil(training.num_train_epochs * steps_per_epoch), data["tokens"]["basis"]
    units = min(steps * per_step, data["units"] * max(training.num_train_epochs, steps / steps_per_epoch))
    return {"per step": figure(per_step, data["unit"], "given", "batch x grad-accum x GPUs"),
            "steps per epoch": figure(steps_per_epoch, "steps", data["tokens"]["basis"]),
            "steps": figure(steps, "steps", basis, "--max_steps" if basis == "given" else "epochs x steps per epoch"),
            "epochs": figure(round(steps / steps_per_epoch, 3), "epochs", data["tokens"]["basis"]),
            "tokens": figure(round(units * data["tokens per unit"]), "tokens", "estimated",
                             f"{data['unit']} drawn x tokens in each")}


def network_bytes_per_step(s: Setup) -> float:
    """Bytes each GPU sends per optimizer step (ring collectives: (N - 1) / N of the tensor). DDP all-reduces the
    gradients once a step; ZeRO-1 reduce-scatters them and all-gathers the weights once a step; ZeRO-2 reduce-scatters
    at every micro-batch (DeepSpeed's engine: stage 2 "communicates during non gradient accumulation boundaries as
    well"); ZeRO-3 also gathers the weights for each forward and backward."""
    P, share = s.trained, (s.world - 1) / s.world
    half = DTYPE_BYTES[s.trained_dtype]
    if s.zero is None:
        return 2 * P * half * share
    grads = DTYPE_BYTES[s.zero.communication(s.trained_dtype)]  # ds_zero2.json: fp32, twice bf16's bytes
    stage = min(s.zero.stage, 3)
    reduced = {0: 1, 1: 1, 2: s.grad_accum, 3: s.grad_accum}[stage]  # gradient reductions a step
    gathered = {0: 1, 1: 1, 2: 1, 3: 2 * s.grad_accum}[stage]  # weight gathers a step (ZeRO-3: forward and backward)
    return (reduced * grads + gathered * half) * P * share


def time_and_cost(stage: str, s: Setup, gpu, run: dict, mfu: dict, price: float | None, nodes: int,
                  block_size: int | None) -> dict:
    from mini_qwen.callbacks import flops_per_token

    fpt = flops_per_token(s.config, block_size)  # as the training log counts: PT with its block, SFT / DPO without
    # Under an adapter the frozen weights get no gradient: forward (2 N) + the activations' gradients (2 N) of the
    # 6 N a token the log counts for training every weight (the log's MFU then reads 1.5x high).
    work, how = (4 / 6, " x 4/6 (LoRA: no gradient of the frozen weights)") if s.adapter else (1.0, "")
    if s.adapter and s.adapter.quantized:
        how += "; bitsandbytes' 4-bit dequantisation in forward and backward not counted (slower)"
    seconds = run["tokens"]["value"] * fpt * work / (mfu["value"] * gpu.peak_flops * s.world)
    hours = seconds / 3600
    out = {"flops per token": figure(fpt, "FLOP", "measured", "callbacks.flops_per_token, the training log's count"),
           "peak": figure(gpu.peak_flops, "FLOP/s", "given", gpu.source), "mfu": mfu,
           "hours": figure(round(hours, 2), "hours", "estimated",
                           f"tokens x FLOPs per token{how} / (MFU x peak x GPUs)"),
           "work share": figure(round(work, 4), "", "estimated", how.removeprefix(" x 4/6 ")),
           "seconds per step": figure(round(seconds / max(run["steps"]["value"], 1), 3), "s", "estimated")}
    if price is not None:
        out["cost"] = figure(round(hours * s.world * price, 2), "per GPU-hour price", "estimated",
                             f"{hours:.1f} h x {s.world} GPUs x {price:g} an hour")
    if nodes > 1:
        moved = network_bytes_per_step(s)
        step = out["seconds per step"]["value"]
        out["interconnect"] = (f"{nodes} nodes: each optimizer step sends ~{moved / 1e9:.1f} GB per GPU between them "
                               f"({moved / LINK_BYTES_PER_S:.1f} s at 100 Gb/s, against {step:.1f} s of compute a "
                               f"step). The time above assumes the network keeps up (InfiniBand / RoCE; estimated); "
                               f"where it does not, fewer and larger micro-batches send less per token.")
    return out


def disk(stage: str, s: Setup, training, data: dict, run: dict) -> dict:
    P = s.trained
    wb = DTYPE_BYTES[s.trained_dtype]
    # save_model writes the trained dtype (DeepSpeed: its bf16/fp16 model); with an adapter, the adapter alone
    # (peft's adapter_model.safetensors; Trainer / DeepSpeed leave the frozen weights out of checkpoints too)
    weights = P * wb
    if training.save_only_model:
        checkpoint, what = weights, "weights only (--save_only_model)"
    elif s.zero is not None:
        checkpoint = weights + P * wb + 12 * P  # + DeepSpeed's model states and fp32 master + AdamW partitions
        what = "weights + DeepSpeed's model states + fp32 master weights and AdamW moments"
    else:
        kahan = 2 if s.kahan and wb == 2 else 0  # torch-optimi keeps it for bf16 / fp16 parameters only
        checkpoint = weights + P * (2 * wb + kahan)
        what = "weights + AdamW moments" + (" + Kahan buffer" if kahan else "")
    if s.adapter:
        what = what.replace("weights", "adapter", 1)
    saving = training.save_strategy != "no"
    kept = min(training.save_total_limit or run["steps"]["value"], 10**9) if saving else 0
    out = {"checkpoint": figure(checkpoint, "bytes", "estimated", what),
           "checkpoints kept": figure(kept, "checkpoints", "given", "--save_total_limit" if saving else
                                      "--save_strategy no"),
           "final model": figure(weights, "bytes", "estimated", f"the {s.trained_dtype} adapter" if s.adapter else
                                 f"{s.weights} weights"),
           "cache": data["cache bytes"]}
    out["total"] = figure(kept * checkpoint + weights + data["cache bytes"]["value"], "bytes", "estimated",
                          "checkpoints kept + final model + cache (the data files not included)")
    return out


# ---------------------------------------------------------------- the plan

def plan_run(stage: str, args: dict, gpu, plan_args) -> dict:
    """The whole plan as a dict (plan.json). `args`: the stage's parsed dataclasses by role (data, model,
    preset, training); `plan_args`: mini_qwen_plan.py's own flags."""
    from mini_qwen.model import load_stage_tokenizer

    kind = stages.stage(stage).plan  # how this stage's work is counted (an unknown stage stops here, no fallback)
    data_args, model_args, training = args["data"], args["model"], args["training"]
    world = plan_args.num_gpus * plan_args.num_nodes
    if kind != "tokens" and plan_args.dataset_tokens:
        raise MiniQwenError("--dataset_tokens is for PT; the other stages count their rows in the files.")
    if kind in ("rows", "pairs") and not training.max_length:
        raise MiniQwenError("--max_length must be set (the original run used 1024).")
    config, model_source = model_config(model_args, args["preset"])
    if kind == "tokens" and data_args.block_size > config.max_position_embeddings:
        raise MiniQwenError(f"--block_size {data_args.block_size} exceeds the model's max_position_embeddings "
                            f"{config.max_position_embeddings}: lower it or pick another preset.")
    ds, ds_source = deepspeed_source(training, plan_args.accelerate_config, world)
    zero = ZeRO.from_config(ds, config.hidden_size, ds_source) if ds else None
    if zero is not None and model_args.kahan_summation:
        from mini_qwen.speed import KAHAN_UNDER_DEEPSPEED

        raise MiniQwenError(KAHAN_UNDER_DEEPSPEED)
    checkpoint = model_args.model_name_or_path if model_source.startswith("checkpoint") else None
    # The tokenizer names PT's token cache and measures SFT / DPO lengths; a PT plan from --dataset_tokens needs none.
    tokenizer = None if kind == "tokens" and plan_args.dataset_tokens else load_stage_tokenizer(model_args, checkpoint)
    if kind == "tokens":
        data = pt_data(data_args, tokenizer, plan_args.dataset_tokens)
    elif kind == "rows":
        data = sft_data(data_args, training, tokenizer, plan_args.sample_rows)
    elif kind == "pairs":
        data = dpo_data(data_args, training, tokenizer, plan_args.sample_rows)
    else:
        from mini_qwen.plan_grpo import grpo_data

        data = grpo_data(data_args, training, tokenizer, plan_args.sample_rows)

    params = Params.of(meta_model(config))
    lora_args = args.get("lora")
    adapter = lora_adapter(lora_args, config) if lora_args is not None and lora_args.use_peft else None
    setup = build_setup(stage, args, config, params, world, zero, data, adapter)
    memory = memory_parts(setup)
    if kind == "rollouts":  # generation's KV cache, counted on top of the training peak (conservative)
        from mini_qwen.plan_grpo import kv_cache_bytes

        memory["parts"]["generation KV cache"] = kv = kv_cache_bytes(setup, training, data)
        memory["tensors"] += kv
    overhead, total = total_with_overhead(memory["tensors"])
    ok = total <= gpu.memory_gib * GIB
    run = steps_and_tokens(data, setup, training)
    mfu = mfu_for(stage, setup, gpu, plan_args.mfu)
    timing = time_and_cost(stage, setup, gpu, run, mfu, plan_args.price_per_gpu_hour, plan_args.num_nodes,
                           data_args.block_size if kind == "tokens" else None)
    if kind == "rollouts":  # answers are generated before they are trained on: add that time
        from mini_qwen.plan_grpo import generation_time

        timing["generation"] = generation_time(setup, training, gpu, run, data, mfu["value"])
        timing["training hours"] = timing["hours"]
        total_hours = round(timing["hours"]["value"] + timing["generation"]["hours"]["value"], 2)
        timing["hours"] = figure(total_hours, "hours", "estimated", "training passes + generation")
        if "cost" in timing:
            timing["cost"] = figure(round(total_hours * world * plan_args.price_per_gpu_hour, 2), "per GPU-hour "
                                    "price", "estimated", f"{total_hours:.1f} h x {world} GPUs x "
                                    f"{plan_args.price_per_gpu_hour:g} an hour")
    memory_figures = {name: figure(value, "bytes", "estimated", "memory model (mini_qwen/plan_memory.py)")
                      for name, value in memory["parts"].items() if value}
    memory_figures["framework overhead"] = figure(overhead, "bytes", "estimated",
                                                  "CUDA context + 10% allocator reserve")
    plan = {"stage": stage, "gpu": {"name": gpu.name, "count": plan_args.num_gpus, "nodes": plan_args.num_nodes,
                                    "memory_gib": gpu.memory_gib, "peak_flops": gpu.peak_flops,
                                    "source": gpu.source},
            "model": {"source": model_source, "parameters": figure(params.total, "parameters", "measured",
                                                                   "counted on the meta device"),
                      "adapter": describe_adapter(setup.adapter) if setup.adapter else "",
                      "trained parameters": figure(setup.trained, "parameters", "measured",
                                                   "peft's adapter on the meta model" if setup.adapter else
                                                   "every parameter"),
                      "precision": describe_precision(setup), "numerics": numerics(setup),
                      "attention": setup.attention,
                      "attention note": AUTO_ATTENTION if model_args.attn_implementation == "auto" else ""},
            "batch": {"per device": setup.batch, "sequence": setup.seq_len, "rows": setup.rows,
                      "gradient accumulation": setup.grad_accum, "processes": world,
                      "gradient checkpointing": setup.checkpointing, "loss": setup.loss},
            "memory": {"per GPU": memory_figures, "peak at": memory["peak"],
                       "tensors": figure(memory["tensors"], "bytes", "estimated", "peak allocated"),
                       "total": figure(total, "bytes", "estimated", "peak allocated + framework overhead"),
                       "available": figure(gpu.memory_gib * GIB, "bytes", "estimated", gpu.source),
                       "fits": ok},
            "data": {**{k: v for k, v in data.items() if isinstance(v, dict) and k != "cache bytes"},
                     "units": figure(round(data["units"]), data["unit"], data["tokens"]["basis"], "what a step draws"),
                     "unit": data["unit"]},
            "run": run, "time": timing, "disk": disk(stage, setup, training, data, run)}
    if memory["host"]:
        plan["memory"]["host RAM per GPU"] = figure(memory["host"], "bytes", "estimated", "ZeRO offload")
    if not ok:
        adapters = []
        if kind != "tokens" and adapter is None:  # a stage from a checkpoint, every weight: would an adapter fit?
            from mini_qwen.lora import LoraArguments, qlora_supported

            lora = build_setup(stage, args, config, params, world, zero, data,
                               lora_adapter(LoraArguments(use_peft=True), config))
            adapters.append((["--use_peft true"], lora))
            if qlora_supported(gpu) and zero is None:
                qlora = build_setup(stage, args, config, params, world, zero, data,
                                    lora_adapter(LoraArguments(use_peft=True, load_in_4bit=True), config))
                adapters.append((["--use_peft true", "--load_in_4bit true"], qlora))
        plan["memory"]["what fits"] = what_fits(stage, setup, gpu, kind == "tokens" and not checkpoint, adapters)
    return plan


# ---------------------------------------------------------------- printing

def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"


def _count(x: float) -> str:
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= size:
            return f"{x / size:.2f}{suffix}"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}"


def render(plan: dict) -> str:
    """The plan as a short table: value, measured / estimated / given, and where from."""
    g, m, mem, b = plan["gpu"], plan["model"], plan["memory"], plan["batch"]
    lines = [f"plan: {plan['stage']} on {g['count']} x {g['name']} ({g['memory_gib']:g} GiB)"
             + (f" x {g['nodes']} nodes" if g["nodes"] > 1 else ""),
             f"model: {m['source']}, {_count(m['parameters']['value'])} parameters (measured: counted on the meta "
             f"device)", *([f"adapter: {m['adapter']} (measured: peft on the meta model)"] if m["adapter"] else []),
             f"precision: {m['precision']}",
             "numerics (the dtype of each):", *(f"  {k:14s} {v}" for k, v in m["numerics"].items()),
             f"attention: {m['attention']}" + (f" ({m['attention note']})" if m["attention note"] else ""),
             f"batch: {b['per device']} x {'2 x ' if b['rows'] == 2 else ''}{b['sequence']} tokens a GPU"
             f"{' (chosen + rejected)' if b['rows'] == 2 else ''}, grad-accum "
             f"{b['gradient accumulation']}, {b['processes']} process(es); gradient checkpointing "
             f"{'on' if b['gradient checkpointing'] else 'off'}; loss: {b['loss']}", "",
             f"memory per GPU (estimated; peak at the {mem['peak at']})"]
    for name, f in mem["per GPU"].items():
        lines.append(f"  {name:22s} {_gib(f['value']):>11s}")
    verdict = "fits" if mem["fits"] else "DOES NOT FIT"
    lines.append(f"  {'total':22s} {_gib(mem['total']['value']):>11s}  of {g['memory_gib']:g} GiB: {verdict}")
    if "host RAM per GPU" in mem:
        lines.append(f"  {'host RAM per GPU':22s} {_gib(mem['host RAM per GPU']['value']):>11s}  (ZeRO offload)")
    if "what fits" in mem:
        w = mem["what fits"]
        if w.get("largest batch"):
            lines.append(f"  largest per-device batch that fits: {w['largest batch']} "
                         f"(same tokens a step: {' '.join(w['smaller batch'])})")
        if w.get("training state"):
            lines.append(f"  {w['training state']}: more GPUs with DeepSpeed ZeRO (run.sh ... multi), a DeepSpeed "
                         f"config with offload_optimizer, or a smaller model")
        if w.get("flags"):
            lines.append(f"  fits with: {' '.join(w['flags'])}"
                         + (f" ({w['smaller model']})" if w.get("smaller model") else ""))
        if w.get("adapter"):
            lines.append(f"  or train a LoRA adapter instead of every weight: {' '.join(w['adapter']['flags'])} "
                         f"({_gib(w['adapter']['total'])} in all)")
    d, r, t = plan["data"], plan["run"], plan["time"]
    lines += ["", "tokens and steps"]
    for key in ("files", "rows", "documents", "conversations", "conversations per row", "pairs", "prompts",
                "mean length", "tokens"):
        f = d.get(key)
        if f:
            lines.append(f"  {key:22s} {_count(f['value']):>11s}  {f['basis']}: {f['source']}")
    lines.append(f"  {'optimizer steps':22s} {_count(r['steps']['value']):>11s}  {r['steps']['basis']}: "
                 f"{r['per step']['value']} {d['unit']} a step, {r['epochs']['value']:g} epoch(s)")
    lines.append(f"  {'tokens trained':22s} {_count(r['tokens']['value']):>11s}  {r['tokens']['basis']}")
    lines += ["", "time and cost"]
    lines.append(f"  {'MFU':22s} {t['mfu']['value'] * 100:>10.1f}%  {t['mfu']['basis']}: {t['mfu']['source']}")
    hours = t["hours"]["value"]
    took = f"{hours:,.1f} h" if hours >= 1 else f"{hours * 60:.1f} min"
    lines.append(f"  {'time':22s} {took:>11s}  estimated: "
                 f"{_count(t['flops per token']['value'])} FLOPs a token (the log's count)"
                 f"{' x 4/6 ' + t['work share']['source'] if t['work share']['value'] != 1 else ''}, peak "
                 f"{t['peak']['value'] / 1e12:g} TFLOP/s a GPU")
    if "generation" in t:
        gen = t["generation"]
        lines.append(f"  {'of which generation':22s} {gen['hours']['value'] * 60:>7.1f} min  estimated: "
                     f"{gen['seconds per step']['value']:g} s a step, {gen['seconds per step']['source']}")
    if "cost" in t:
        lines.append(f"  {'cost':22s} {t['cost']['value']:>11,.0f}  estimated: {t['cost']['source']}")
    if "interconnect" in t:
        lines.append(f"  note: {t['interconnect']}")
    k = plan["disk"]
    lines += ["", "disk"]
    lines.append(f"  {'checkpoint':22s} {_gib(k['checkpoint']['value']):>11s}  estimated: {k['checkpoint']['source']}"
                 f"; {k['checkpoints kept']['value']} kept ({k['checkpoints kept']['source']})")
    lines.append(f"  {'final model':22s} {_gib(k['final model']['value']):>11s}  estimated")
    lines.append(f"  {'cache':22s} {_gib(k['cache']['value']):>11s}  {k['cache']['basis']}: {k['cache']['source']}")
    lines.append(f"  {'total':22s} {_gib(k['total']['value']):>11s}  estimated: {k['total']['source']}")
    return "\n".join(lines)
