"""What the demo scripts share: the recipe path and the hardware-dependent model preset."""

from pathlib import Path

import torch

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"


def demo_argv(stage: str, user_argv: list[str], pick_preset: bool = False) -> list[str]:
    """`--config demo/<stage>.yaml`, the preset for this hardware, then the user's own flags (which win)."""
    argv = ["--config", str(DEMO_DIR / f"{stage}.yaml")]
    if pick_preset and "--model_preset" not in user_argv:
        argv += ["--model_preset", "1b" if torch.cuda.is_available() else "tiny"]
    return argv + list(user_argv)
