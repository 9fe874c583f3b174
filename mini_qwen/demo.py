"""What the demo scripts share: the recipe path and the hardware-dependent model preset."""

from pathlib import Path

import torch

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"


def demo_argv(stage: str, user_argv: list[str], pick_preset: bool = False) -> list[str]:
    """`--config demo/<stage>.yaml`, the preset for this hardware, then the user's own flags (which win)."""
    argv = ["--config", str(DEMO_DIR / f"{stage}.yaml")]
    if pick_preset and "--model_preset" not in user_argv:
        argv += ["--model_preset", "1b" if torch.cuda.is_available() else "tiny"]
        if torch.cuda.is_available() and "--num_hidden_layers" not in user_argv:
            # Fewer layers of 1b where its fp16 training state would not fit (a 16 GB T4 or V100).
            from mini_qwen.hardware import demo_model_flags
            from mini_qwen.model import PresetArguments, build_config

            argv += demo_model_flags(build_config(PresetArguments(model_preset="1b")))
    return argv + list(user_argv)
