"""mini_qwen/model.py: model presets, config validation, a changed depth that saves and reloads."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from mini_qwen.errors import MiniQwenError
from mini_qwen.model import PresetArguments, build_config, count_parameters


def test_1b_preset_is_the_widened_qwen():
    config = build_config(PresetArguments(model_preset="1b"))
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads) == (1024, 48, 16, 4)
    with torch.device("meta"):  # count without allocating 4 GB
        n = count_parameters(AutoModelForCausalLM.from_config(config))
    assert 0.95e9 < n < 1.05e9, n


@pytest.mark.parametrize("overrides, message", [
    (dict(hidden_size=1024, num_attention_heads=15), "not divisible by num_attention_heads 15"),
    (dict(num_attention_heads=16, num_key_value_heads=3), "not divisible by num_key_value_heads 3"),
    (dict(hidden_size=100, num_attention_heads=4, num_key_value_heads=2), "must be even"),
    (dict(num_hidden_layers=0), "positive"),
])
def test_invalid_shapes_fail_with_one_message(overrides, message):
    with pytest.raises(MiniQwenError, match=message):
        build_config(PresetArguments(model_preset="1b", **overrides))


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(MiniQwenError, match="Available presets: .*1b.*tiny"):
        build_config(PresetArguments(model_preset="7b"))


def test_changed_depth_saves_and_reloads(tmp_path):
    # transformers 5 checks len(layer_types) only at save time: the trap the preset code avoids.
    config = build_config(PresetArguments(model_preset="tiny", num_hidden_layers=3))
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.config.num_hidden_layers == 3 and len(again.config.layer_types) == 3
