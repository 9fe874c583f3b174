"""What the demo scripts share: the recipe path and the model size for this hardware.

On a GPU the demo trains the 1b preset where its training state fits, and fewer of its layers on a
16 GB card with fp16 (`demo_layers`); on a CPU the tiny preset.
"""

from pathlib import Path

import torch

from mini_qwen.hardware import native_bf16

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"


def demo_argv(stage: str, user_argv: list[str], pick_preset: bool = False) -> list[str]:
    """`--config demo/<stage>.yaml`, the preset for this hardware, then the user's own flags (which win)."""
    argv = ["--config", str(DEMO_DIR / f"{stage}.yaml")]
    if pick_preset and "--model_preset" not in user_argv:
        argv += ["--model_preset", "1b" if torch.cuda.is_available() else "tiny"]
        if torch.cuda.is_available() and "--num_hidden_layers" not in user_argv:
            # Fewer layers of 1b where its fp16 training state would not fit (a 16 GB T4 or V100).
            from mini_qwen.model import PresetArguments, build_config

            argv += demo_model_flags(build_config(PresetArguments(model_preset="1b")))
    return argv + list(user_argv)


# Training-state bytes per parameter on the plain (non-DeepSpeed) path, as mini_qwen.model.model_dtype loads it
# (the demo never passes --pure_bf16): fp32 master weights + fp32 grads + two fp32 AdamW moments, under bf16
# or fp16 autocast alike. DPO adds a frozen reference model loaded as the policy is (fp32: mini_qwen_dpo.py).
STATE_BYTES = {"bf16": 4 + 4 + 8, "fp16": 4 + 4 + 8}
REFERENCE_BYTES = {"bf16": 4, "fp16": 4}
STATE_SHARE = 0.7  # of the GPU's memory; the rest is the CUDA context, activations and the 152K-vocab logits


def demo_layers(total_memory: int, bf16: bool, config) -> int:
    """How many of `config`'s decoder layers the GPU demo trains so that all three stages fit `total_memory`.

    The demo's activations are small (128-token rows), so the training state decides: DPO, the largest
    (state + a frozen reference), must fit in STATE_SHARE of the memory. The 1b preset (0.99B params) needs
    20 bytes a parameter under fp16 AMP, ~20 GB: too much for a 16 GB T4 or V100, so there it keeps
    fewer layers (23 of 48, ~0.56B). bf16 autocast needs the same 20 bytes (fp32 master weights and an fp32
    reference, which computes as the policy does): a 24 GB card keeps most layers, a 32 GB or larger one all.
    """
    kind = "bf16" if bf16 else "fp16"
    h, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + h + 2 * kv + 2 * h  # projections, biases, two norms
    fixed = config.vocab_size * h * (1 if config.tie_word_embeddings else 2) + h
    budget = STATE_SHARE * total_memory / (STATE_BYTES[kind] + REFERENCE_BYTES[kind])
    return max(1, min(config.num_hidden_layers, int((budget - fixed) // per_layer)))


def demo_model_flags(config) -> list[str]:
    """Extra PT flags for the GPU demo: `--num_hidden_layers N` when the whole preset would not fit this GPU."""
    if not torch.cuda.is_available():
        return []
    total = torch.cuda.get_device_properties(0).total_memory
    layers = demo_layers(total, native_bf16(), config)
    return [] if layers >= config.num_hidden_layers else ["--num_hidden_layers", str(layers)]
