"""Precision and attention picked from the hardware; every choice can be overridden by a flag.

- bf16 on GPUs with native bf16 tensor cores (compute capability 8.0 and newer: A100, L4, 4090, H100),
  fp16 on older ones (T4 sm_75, V100 sm_70), fp32 on CPU (bf16 on CPU is ~25x slower than fp32 for a
  small model). Decided from the compute capability, not `torch.cuda.is_bf16_supported()`: that
  defaults to `including_emulation=True` and answers True on a T4, where bf16 runs emulated and slow.
- flash_attention_2 when the package is installed and the GPU supports it, else SDPA.
"""

import importlib.util

import torch

from mini_qwen.errors import MiniQwenError

# Dense bf16/fp16 tensor-core peak, FLOP/s, by a substring of the device name. Used for MFU only.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "H20": 148e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12,
    "V100": 125e12, "T4": 65e12,
}


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


def check_requested_precision(values: dict) -> None:
    """bf16 / fp16 / use_cpu as asked (flags over hardware defaults), checked before TrainingArguments
    is built: its own check says only "Your setup doesn't support bf16/gpu"."""
    bf16, fp16, use_cpu = (bool(values.get(k)) for k in ("bf16", "fp16", "use_cpu"))
    if bf16 and fp16:
        raise MiniQwenError("--bf16 and --fp16 are both set: choose one.")
    on_gpu = torch.cuda.is_available() and not use_cpu
    if bf16 and on_gpu and not native_bf16():
        raise MiniQwenError(f"--bf16 was asked but {gpu_description()} has no bf16 tensor cores (they start at "
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
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return None
