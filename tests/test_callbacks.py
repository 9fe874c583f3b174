"""mini_qwen/callbacks.py: the FLOPs a token costs, which the tokens/s + MFU log lines divide by."""

import torch
from transformers import AutoModelForCausalLM

from mini_qwen.model import PresetArguments, build_config


def test_flops_per_token_counts_every_matmul_and_attention_as_palm_does():
    """6 x the model's own matmul parameters (tied output layer included) + 12 x layers x hidden x seq_len."""
    from mini_qwen.callbacks import flops_per_token

    config = build_config(PresetArguments(model_preset="1b"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(config) == 6 * matmul_params  # lm_head is one of them, tied to the embedding or not
    assert flops_per_token(config, 1024) - flops_per_token(config) == 12 * 48 * 1024 * 1024
