"""Precision and attention picked from the hardware; every choice can be overridden by a flag.

- bf16 on GPUs with native bf16 tensor cores (compute capability 8.0 and newer: A100, L4, 4090, H100),
  fp16 on older ones (T4 sm_75, V100 sm_70), fp32 on CPU (bf16 on CPU is ~25x slower than fp32 for a
  small model). Decided from the compute capability, not `torch.cuda.is_bf16_supported()`: that
  defaults to `including_emulation=True` and answers True on a T4, where bf16 runs emulated and slow.
- flash_attention_2 when the package is installed and the GPU supports it, else SDPA. Packed batches
  (PT blocks, SFT packed rows) carry the varlen kwargs flash needs to keep documents apart at any batch
  size (mini_qwen/data/packing.py); SDPA builds the same per-document masks from the position ids.
- GPUS: the GPU kinds this project knows (peak FLOP/s for MFU, memory, bf16), one table for the
  training log's MFU (`peak_flops`) and the run planner (mini_qwen/plan.py, `find_gpu`).
"""

import importlib.util
import re
from dataclasses import dataclass

import torch

from mini_qwen.errors import MiniQwenError


@dataclass(frozen=True)
class GPU:
    """One GPU kind. `peak_flops`: dense bf16 tensor-core FLOP/s with fp32 accumulation (fp16 where the GPU has no
    bf16), no sparsity; `memory_gib`: the total the CUDA driver reports (nvidia-smi's total less the driver's
    reserve; GDDR6 cards with ECC lose a few percent more), estimated from public reports of that figure;
    `capability`: the CUDA compute capability (NVIDIA's CUDA GPUs table)."""

    name: str  # as --gpu takes it
    peak_flops: float
    memory_gib: float
    capability: tuple[int, int]
    device_names: tuple  # substrings of torch.cuda.get_device_name(), checked in table order
    source: str

    @property
    def bf16(self) -> bool:
        """Native bf16 tensor cores: compute capability 8.0 and newer."""
        return self.capability >= (8, 0)


# In matching order: a name that contains another (H200 / H20, A100 / A10, L40S / L40 / L4) comes first.
GPUS = [
    GPU("H200", 989e12, 139.8, (9, 0), ("H200",), "NVIDIA H200 datasheet: 989 TFLOPS bf16 dense (1,979 sparse), "
                                                  "141 GB"),
    GPU("H100", 989e12, 79.1, (9, 0), ("H100",), "NVIDIA H100 SXM datasheet: 989 TFLOPS bf16 dense, 80 GB"),
    GPU("H800", 989e12, 79.1, (9, 0), ("H800",), "NVIDIA H800 SXM (the H100 die, export variant): 989 TFLOPS bf16 "
                                                 "dense, 80 GB"),
    GPU("H20", 148e12, 95.0, (9, 0), ("H20",), "NVIDIA H20: 148 TFLOPS bf16 dense, 96 GB"),
    GPU("A100-80", 312e12, 79.2, (8, 0), ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB"),
        "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, 80 GB"),
    GPU("A100-40", 312e12, 39.4, (8, 0), ("A100",), "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, 40 GB"),
    GPU("A800", 312e12, 79.2, (8, 0), ("A800",), "NVIDIA A800 (the A100 die, export variant): 312 TFLOPS bf16 dense, "
                                                 "80 GB"),
    GPU("L40S", 362e12, 44.4, (8, 9), ("L40S",), "NVIDIA L40S datasheet: 362 TFLOPS bf16 dense (733 sparse), 48 GB"),
    GPU("L40", 181e12, 44.4, (8, 9), ("L40",), "NVIDIA L40 datasheet: 181 TFLOPS bf16 dense (362 sparse), 48 GB"),
    GPU("L4", 121e12, 22.0, (8, 9), ("L4",), "NVIDIA L4 datasheet: 121 TFLOPS bf16 dense (242 sparse), 24 GB"),
    GPU("A10", 125e12, 22.0, (8, 6), ("A10",), "NVIDIA A10 datasheet: 125 TFLOPS bf16 dense (250 sparse), 24 GB"),
    GPU("RTX4090", 165e12, 23.6, (8, 9), ("4090",), "NVIDIA Ada (AD102) whitepaper: 165 TFLOPS fp16/bf16 tensor with "
                                                    "fp32 accumulate, 24 GB"),
    GPU("RTX3090", 71e12, 23.6, (8, 6), ("3090",), "NVIDIA Ampere GA102 whitepaper: 71 TFLOPS fp16/bf16 tensor with "
                                                   "fp32 accumulate, 24 GB"),
    GPU("V100-32", 125e12, 31.7, (7, 0), ("V100-SXM2-32GB", "V100-PCIE-32GB", "V100S"),
        "NVIDIA V100 SXM2 datasheet: 125 TFLOPS fp16 tensor, 32 GB (no bf16)"),
    GPU("V100-16", 125e12, 15.8, (7, 0), ("V100",), "NVIDIA V100 SXM2 datasheet: 125 TFLOPS fp16 tensor, 16 GB "
                                                    "(no bf16)"),
    GPU("T4", 65e12, 14.7, (7, 5), ("T4",), "NVIDIA T4 datasheet: 65 TFLOPS fp16 tensor, 16 GB GDDR6 (ECC takes "
                                            "part of it; no bf16)"),
]


def _key(name: str) -> str:
    """A GPU name as typed, normalised: `rtx 4090`, `RTX4090` and `4090` alike; `A100 80GB` as `a10080`."""
    key = re.sub(r"[^a-z0-9]", "", name.lower()).replace("nvidia", "").replace("geforce", "")
    return key.removesuffix("gb").replace("rtx", "")


def find_gpu(name: str) -> GPU:
    """The GPU kind --gpu names (case, spaces, dashes, RTX and GB do not matter); one message listing the known
    kinds when it is unknown or could be several (V100: 16 or 32 GB)."""
    known = ", ".join(g.name for g in GPUS)
    wanted = _key(name or "")
    exact = [g for g in GPUS if _key(g.name) == wanted]
    if exact:
        return exact[0]
    several = [g.name for g in GPUS if wanted and _key(g.name).startswith(wanted)]
    if len(several) > 1:
        raise MiniQwenError(f"--gpu {name} could be {' or '.join(several)}: name one (known GPUs: {known}).")
    if not name:
        raise MiniQwenError(f"name the GPU to plan for: --gpu NAME, one of {known}.")
    raise MiniQwenError(f"unknown GPU '{name}' for --gpu: known GPUs are {known}.")


BF16_MIN_CAPABILITY = (8, 0)  # Ampere: the first GPUs with bf16 tensor cores


def native_bf16() -> bool:
    """True on a CUDA GPU of compute capability 8.0 or newer (bf16 in hardware, not emulated)."""
    return torch.cuda.is_available() and tuple(torch.cuda.get_device_capability()) >= BF16_MIN_CAPABILITY


def gpu_description() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"


def precision_defaults() -> dict:
    """Defaults for TrainingArguments' bf16 / fp16 / use_cpu, set before parsing so flags still win."""
    if not torch.cuda.is_available():
        return {"bf16": False, "fp16": False, "use_cpu": True}
    if native_bf16():
        return {"bf16": True, "fp16": False, "use_cpu": False}
    return {"bf16": False, "fp16": True, "use_cpu": False}


def planned_precision_defaults(gpu: GPU) -> dict:
    """precision_defaults for a run planned on `gpu` (mini_qwen_plan.py), whatever this machine has. use_cpu is set
    only so that TrainingArguments can be built here without a GPU; the plan reads bf16 / fp16 from it."""
    return {"bf16": gpu.bf16, "fp16": not gpu.bf16, "use_cpu": True}


def check_requested_precision(values: dict, gpu: GPU | None = None) -> None:
    """bf16 / fp16 / use_cpu as asked (flags over hardware defaults), checked before TrainingArguments
    is built: its own check says only "Your setup doesn't support bf16/gpu". `gpu`: check against the GPU a
    run is planned on (mini_qwen_plan.py) instead of this machine's."""
    bf16, fp16, use_cpu = (bool(values.get(k)) for k in ("bf16", "fp16", "use_cpu"))
    if bf16 and fp16:
        raise MiniQwenError("--bf16 and --fp16 are both set: choose one.")
    on_gpu = gpu is not None or (torch.cuda.is_available() and not use_cpu)
    if bf16 and on_gpu and not (gpu.bf16 if gpu is not None else native_bf16()):
        described = f"the {gpu.name}" if gpu is not None else gpu_description()
        raise MiniQwenError(f"--bf16 was asked but {described} has no bf16 tensor cores (they start at "
                            f"compute capability 8.0; torch would emulate bf16, slowly): use --fp16 true "
                            f"(or leave both unset to choose automatically).")
    if fp16 and not on_gpu:
        raise MiniQwenError("--fp16 needs a CUDA GPU; on CPU leave precision unset (fp32).")


def check_precision(training_args) -> None:
    check_requested_precision({k: getattr(training_args, k) for k in ("bf16", "fp16", "use_cpu")})
    if training_args.bf16 and (training_args.use_cpu or not torch.cuda.is_available()):
        print("note: --bf16 on CPU runs, but far slower than fp32 for a small model; leave precision unset for fp32.")


def flash_attention_available() -> bool:
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability()
    return major >= 8  # FlashAttention-2 needs Ampere or newer


ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager", "flex_attention")  # --attn_implementation's choices


def choose_attention(requested: str, training_args=None) -> str:
    on_gpu = torch.cuda.is_available() and not getattr(training_args, "use_cpu", False)
    if requested == "auto":
        return "flash_attention_2" if on_gpu and flash_attention_available() else "sdpa"
    if requested == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise MiniQwenError("--attn_implementation flash_attention_2 was asked but flash-attn is not installed: "
                                "`pip install flash-attn --no-build-isolation` on a CUDA machine, or use sdpa.")
        if not on_gpu or not flash_attention_available():
            raise MiniQwenError("--attn_implementation flash_attention_2 needs an Ampere-or-newer CUDA GPU; "
                                "use sdpa here.")
    elif requested not in ATTENTION:
        raise MiniQwenError(f"unknown --attn_implementation '{requested}': use one of {', '.join(ATTENTION)}.")
    return requested


def peak_flops() -> float | None:
    """This machine's GPU peak from GPUS (by device name), for the training log's MFU; None on CPU or unknown."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((gpu.peak_flops for gpu in GPUS for part in gpu.device_names if part in name), None)
