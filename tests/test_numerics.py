"""Which dtype each recipe keeps, checked where the libraries decide it:

- ds_zero2.json under --bf16: DeepSpeed 0.19.8's own parser and engine methods give fp32 gradient accumulation and
  fp32 gradient communication (bf16 weights, fp32 master copy), and the planner reads the same dtypes.
- LoRA: the adapters are fp32 once the trainer is built, also on TRL's 4-bit path (which casts them to bf16), and
  two steps (the first moves lora_B off zero, the second gives lora_A a gradient) change every adapter matrix.
"""

import importlib
from types import SimpleNamespace

import pytest
import torch
from conftest import MINI_DATA, REPO_ROOT, cli_error

from mini_qwen.lora import (
    ALL_LINEAR,
    DPO_LEARNING_RATE,
    SFT_LEARNING_RATE,
    LoraArguments,
    checkpoint_meta_model,
    smallest_learning_rate,
)


def deepspeed_dtypes(config_path, tmp_path, bf16=True):
    """(module, gradient accumulation, communication) dtypes DeepSpeed's engine picks for a config file, with its
    "auto" values filled by transformers as the Trainer fills them (HfTrainerDeepSpeedConfig)."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.engine import DeepSpeedEngine
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir=str(tmp_path), bf16=bf16, use_cpu=True, per_device_train_batch_size=2,
                             gradient_accumulation_steps=4, report_to="none")
    hf = HfTrainerDeepSpeedConfig(str(config_path))
    hf.trainer_config_process(args)
    config = DeepSpeedConfig(hf.config)
    engine = SimpleNamespace(_config=config)  # the engine's own methods, on the parsed config alone
    for name in ("fp16_enabled", "bfloat16_enabled"):
        setattr(engine, name, getattr(DeepSpeedEngine, name).__get__(engine))
    module, accumulation = DeepSpeedEngine.get_data_types(engine)
    return module, accumulation, DeepSpeedEngine.communication_data_type.fget(engine)


def test_ds_zero2_accumulates_and_reduces_gradients_in_fp32(tmp_path):
    module, accumulation, communication = deepspeed_dtypes(REPO_ROOT / "ds_zero2.json", tmp_path)
    assert module == torch.bfloat16  # DeepSpeed casts the model to bf16; its ZeRO optimizer keeps the fp32 master
    assert accumulation == torch.float32 and communication == torch.float32


def test_the_planner_reads_the_dtypes_deepspeed_uses(tmp_path):
    import json

    from mini_qwen.plan_memory import ZeRO

    bare = json.loads((REPO_ROOT / "ds_zero2.json").read_text())
    del bare["data_types"], bare["communication_data_type"]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    names = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    for path in (REPO_ROOT / "ds_zero2.json", tmp_path / "bare.json"):
        _, accumulation, communication = deepspeed_dtypes(path, tmp_path)
        zero = ZeRO.from_config(json.loads(path.read_text()), 64, str(path))
        assert (zero.accumulation("bf16"), zero.communication("bf16")) == (names[accumulation], names[communication])
    assert ZeRO.from_config(bare, 64, "bare").accumulation("bf16") == "bf16"  # DeepSpeed's own default


# --------------------------------------------------------------------------- LoRA adapters


def lora_argv(stage, checkpoint, output_dir, *extra):
    data = ["--max_prompt_length", "32", "--max_pairs", "2", "--pad_to_multiple_of", "none"] if stage == "dpo" else []
    return ["--model_name_or_path", str(checkpoint), "--data_dir", str(MINI_DATA / stage), "--output_dir",
            str(output_dir), "--max_length", "64", "--per_device_train_batch_size", "1", "--logging_steps", "1",
            "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
            "--warmup_steps", "0", "--use_peft", "true", "--lora_r", "4", *data, *extra]


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_lora_adapters_stay_fp32_and_every_matrix_trains_at_the_default_rate(stage, tiny_checkpoint, tmp_path,
                                                                             monkeypatch, capsys):
    """TRL's QLoRA path (a base with `is_loaded_in_4bit`, which needs CUDA for real) casts the adapters to bf16;
    the stage keeps them fp32. At LoRA's default learning rate two steps move every lora_A and lora_B (the first
    step moves B off zero, which gives A its first gradient); bf16 adapters at the full-training default would
    leave the lora_A entries where they started."""
    module = importlib.import_module(f"mini_qwen_{stage}")
    load, describe, seen = module.load_model, module.describe_adapter, {}

    def four_bit(*args, **kwargs):  # the attribute TRL reads (sft_trainer / dpo_trainer `_is_quantized_model`)
        model = load(*args, **kwargs)
        model.is_loaded_in_4bit = True
        return model

    def watch(model, *args):  # the start message, printed once the trainer is built
        seen.update({name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad})
        seen["model"] = model
        model.get_base_model().is_loaded_in_4bit = False  # training itself would look for bitsandbytes
        return describe(model, *args)

    monkeypatch.setattr(module, "load_model", four_bit)
    monkeypatch.setattr(module, "describe_adapter", watch)
    module.main(lora_argv(stage, tiny_checkpoint, tmp_path / "run", "--max_steps", "2"))
    model = seen.pop("model")
    assert {p.dtype for p in seen.values()} == {torch.float32}, "the adapters after the trainer is built"
    assert len(seen) == 2 * 7 * model.config.num_hidden_layers  # lora_A and lora_B of every linear layer
    trained = dict(model.named_parameters())
    moved = {name: (trained[name].detach().float() != before).float().mean().item() for name, before in seen.items()}
    assert min(moved.values()) > 0.9, sorted(moved.items(), key=lambda item: item[1])[:4]
    rate = {"sft": SFT_LEARNING_RATE, "dpo": DPO_LEARNING_RATE}[stage]
    assert f"fp32 adapter; learning rate {rate:g} (LoRA's default for this stage" in capsys.readouterr().out


def test_lora_learning_rate_default_explicit_and_too_small(tiny_checkpoint, tmp_path, capsys):
    import mini_qwen_sft
    from mini_qwen.cli import parse_args
    from mini_qwen_sft import MiniSFTConfig, SFTDataArguments, SFTModelArguments

    types = (SFTDataArguments, SFTModelArguments, LoraArguments, MiniSFTConfig)
    full = parse_args(types, ["--output_dir", str(tmp_path)])[3]
    _, _, lora, lora_training = parse_args(types, ["--output_dir", str(tmp_path), "--use_peft", "true"])
    assert (full.learning_rate, lora_training.learning_rate) == (1e-5, SFT_LEARNING_RATE)
    assert lora.learning_rate_origin.startswith("LoRA's default")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("use_peft: true\nlearning_rate: 3.0e-4\n")
    _, _, lora, given = parse_args(types, ["--output_dir", str(tmp_path), "--config", str(recipe)])
    assert given.learning_rate == 3e-4 and lora.learning_rate_origin == "--learning_rate"

    out = tmp_path / "never"
    argv = lora_argv("sft", tiny_checkpoint, out, "--learning_rate", "1e-10")
    error = cli_error(mini_qwen_sft.main, argv, capsys).strip()
    assert error.startswith("error: --learning_rate 1e-10 is too small for LoRA") and len(error.splitlines()) == 1
    assert not out.exists()
    fp32, bf16 = (smallest_learning_rate(checkpoint_meta_model(tiny_checkpoint), ALL_LINEAR, dtype)
                  for dtype in (torch.float32, torch.bfloat16))
    assert fp32 < 1e-8 and bf16 > 1e-5  # bf16 lora_A entries would not move at the full-training default


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_help_names_loras_learning_rate(stage, capsys):
    from mini_qwen.cli import parse_args

    module = importlib.import_module(f"mini_qwen_{stage}")
    name = stage.upper()
    types = (getattr(module, f"{name}DataArguments"), getattr(module, f"{name}ModelArguments"), LoraArguments,
             getattr(module, f"Mini{name}Config"))
    with pytest.raises(SystemExit) as exc:  # argparse %-formats every help string: a bare "%" breaks --help
        parse_args(types, ["--help"])
    assert exc.value.code == 0
    rate = {"sft": SFT_LEARNING_RATE, "dpo": DPO_LEARNING_RATE}[stage]
    assert f"not given: {rate:g}, LoRA's own default" in " ".join(capsys.readouterr().out.split())
