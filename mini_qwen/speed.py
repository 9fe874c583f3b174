"""The speed levers' flags: refusing, before any model is built, the ones that cannot run here, and
the optimizer that --kahan_summation asks for.

- `--use_liger_kernel`: Liger's Triton kernels (CUDA only; `pip install -e .[gpu]`).
- `--pure_bf16`: bf16 weights and AdamW states (a bf16 run only).
- `--kahan_summation`: with --pure_bf16, torch-optimi's AdamW whose Kahan buffer keeps the small updates
  that bf16 weights would round away (not under DeepSpeed, which keeps fp32 master weights itself).

`check_speed_flags` runs in mini_qwen.cli.parse_args with the other flag checks, so every stage refuses
these the same way, and Trainer never fails late (after tokenizing) with an ImportError traceback.
"""

import importlib.util

import torch

from mini_qwen.errors import MiniQwenError
from mini_qwen.launch import uses_deepspeed

KAHAN_UNDER_DEEPSPEED = ("--kahan_summation: DeepSpeed keeps fp32 master weights itself and wraps its own optimizer; "
                         "drop the flag (and --pure_bf16) under `run.sh ... multi`.")


def check_speed_flags(training_args, model_args=None, planned: bool = False) -> None:
    """Refuse, before any model is built, the speed levers that cannot run on this machine.

    Trainer would otherwise fail late (after tokenizing) with an ImportError traceback. `planned`: the flags
    of a run planned for a GPU elsewhere (mini_qwen_plan.py): what this machine lacks does not matter.
    """
    cuda = planned or (torch.cuda.is_available() and not getattr(training_args, "use_cpu", False))
    if getattr(training_args, "use_liger_kernel", False):
        if not cuda:
            raise MiniQwenError("--use_liger_kernel needs a CUDA GPU (Liger's kernels are Triton-only): "
                                "drop the flag on CPU.")
        if not planned and importlib.util.find_spec("liger_kernel") is None:
            raise MiniQwenError("--use_liger_kernel: liger-kernel is not installed: `pip install -e .[gpu]` "
                                "(the optional `gpu` extra in pyproject.toml), or drop the flag.")
        if getattr(training_args, "chunked_loss", False):
            raise MiniQwenError("--use_liger_kernel and --chunked_loss both replace the loss: pick one.")
    if model_args is not None and getattr(model_args, "pure_bf16", False) and not training_args.bf16:
        raise MiniQwenError("--pure_bf16 true needs --bf16 true (it keeps the bf16 weights of a bf16 run).")
    if model_args is not None and getattr(model_args, "kahan_summation", False):
        if not getattr(model_args, "pure_bf16", False):
            raise MiniQwenError("--kahan_summation true needs --pure_bf16 true: fp32 master weights lose no small "
                                "update, so there is nothing to compensate.")
        if uses_deepspeed(training_args):
            raise MiniQwenError(KAHAN_UNDER_DEEPSPEED)
        if not planned and importlib.util.find_spec("optimi") is None:
            raise MiniQwenError("--kahan_summation: torch-optimi is not installed: `pip install "
                                "torch-optimi==0.3.3` (requirements.txt pins it), or drop the flag.")


def kahan_adamw(model_args, training_args) -> tuple | None:
    """--kahan_summation: (optimizer class, kwargs) for Trainer's `optimizer_cls_and_kwargs`, else None.

    torch-optimi's AdamW with Trainer's own betas / eps / weight decay (its defaults differ); Trainer still
    builds the decay / no-decay parameter groups. Kahan summation applies to bf16 / fp16 weights only, so on
    fp32 weights (CPU) this is plain AdamW.
    """
    if not getattr(model_args, "kahan_summation", False):
        return None
    from optimi import AdamW

    return AdamW, {"lr": training_args.learning_rate, "betas": (training_args.adam_beta1, training_args.adam_beta2),
                   "eps": training_args.adam_epsilon, "weight_decay": training_args.weight_decay, "kahan_sum": True}
