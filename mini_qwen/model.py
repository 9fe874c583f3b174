"""Model presets, config validation, and building / loading the model.

Presets are data: `models/<name>.json` holds a full Qwen2 config. `1b` is the
Qwen2.5-0.5B-Instruct config widened to hidden 1024, 48 layers, 16 heads and
4 KV heads (~1.0B parameters, as in the original project); `tiny` trains in
seconds on a CPU.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

from mini_qwen.checkpoint import check_checkpoint
from mini_qwen.errors import MiniQwenError
from mini_qwen.hardware import ATTENTION, choose_attention

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"


@dataclass
class ModelArguments:
    """Where the model comes from and how it runs; shared by every stage."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A checkpoint folder to start from (the previous stage's output_dir). "
                  "PT builds a new random model from --model_preset when unset."},
    )
    attn_implementation: str = field(
        default="auto",
        metadata={"help": "auto (flash_attention_2 when installed on a capable GPU, else sdpa), "
                  "flash_attention_2, sdpa, eager or flex_attention.", "choices": list(ATTENTION)},
    )
    tokenizer_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder. Default: the checkpoint's own, else models/qwen2.5-0.5b-instruct "
                  "(from prepare.sh), else models/tokenizer (built offline by setup.sh)."},
    )
    pure_bf16: bool = field(
        default=False,
        metadata={"help": "GPU with --bf16: keep the weights and AdamW states in bf16 (less memory, faster, but an "
                  "update below ~1/256 of a weight rounds away). Default: fp32 master weights + bf16 autocast "
                  "(DeepSpeed ZeRO-2 also keeps fp32 masters and, with ds_zero2.json, fp32 gradient "
                  "accumulation). Ignored on CPU (always fp32)."},
    )
    kahan_summation: bool = field(
        default=False,
        metadata={"help": "With --pure_bf16: AdamW from torch-optimi with Kahan-compensated updates (a bf16 buffer "
                  "carries each update's rounding error into the next step), so small steps add up instead of "
                  "rounding away while weights, gradients and activations stay bf16; 2 more bytes a parameter."},
    )


@dataclass
class PresetArguments:
    """The shape of a new model (PT): a preset from models/, with optional overrides."""

    model_preset: str = field(
        default="1b",
        metadata={"help": "A preset in models/ (1b, tiny) or a path to a Qwen2 config.json."},
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Override the preset's hidden size."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Override the number of layers."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Override the number of heads."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "Override the number of KV heads."})
    intermediate_size: int | None = field(default=None, metadata={"help": "Override the MLP width."})


SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")


def _preset_path(preset: str) -> Path:
    candidates = [MODELS_DIR / f"{preset}.json", Path(preset), Path(preset) / "config.json"]
    for path in candidates:
        if path.is_file():
            return path
    names = sorted(p.stem for p in MODELS_DIR.glob("*.json"))
    raise MiniQwenError(
        f"model preset '{preset}' not found: expected models/{preset}.json or a config.json path. "
        f"Available presets: {', '.join(names)}."
    )


def validate_config(config, source: str = "model config") -> None:
    """Fail at start, with one message, on shapes that would crash later inside transformers."""
    h, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    problems = []
    if min(h, heads, kv, config.num_hidden_layers, config.intermediate_size) <= 0:
        problems.append("all sizes must be positive")
    elif h % heads:
        problems.append(f"hidden_size {h} is not divisible by num_attention_heads {heads} "
                        f"(pick heads among the divisors of {h}, e.g. {h // 64 or 1})")
    elif heads % kv:
        problems.append(f"num_attention_heads {heads} is not divisible by num_key_value_heads {kv}")
    elif (h // heads) % 2:
        problems.append(f"head dim {h // heads} (hidden_size / heads) must be even for rotary embeddings")
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and len(layer_types) != config.num_hidden_layers:
        problems.append(f"layer_types has {len(layer_types)} entries but num_hidden_layers is "
                        f"{config.num_hidden_layers}")
    if problems:
        raise MiniQwenError(f"invalid {source}: " + "; ".join(problems) + ".")


def build_config(args: PresetArguments) -> Qwen2Config:
    path = _preset_path(args.model_preset)
    raw = json.loads(path.read_text())
    for name in SHAPE_FIELDS:
        value = getattr(args, name)
        if value is not None:
            raw[name] = value
    # transformers 5 checks len(layer_types) == num_hidden_layers only when saving:
    # a changed depth without matching layer_types trains fine and then crashes save_model().
    raw["layer_types"] = ["full_attention"] * raw["num_hidden_layers"]
    raw["max_window_layers"] = raw["num_hidden_layers"]
    raw.pop("model_type", None)
    raw.pop("architectures", None)
    probe = type("Shape", (), {k: raw.get(k, 0) for k in SHAPE_FIELDS + ("layer_types",)})
    validate_config(probe, source=f"model config ({path})")
    config = Qwen2Config(**raw)
    config.architectures = ["Qwen2ForCausalLM"]
    return config


def count_parameters(model) -> int:
    # Tied embeddings are one tensor; parameters() already yields it once.
    return sum(p.numel() for p in model.parameters())


def model_dtype(training_args, pure_bf16: bool = False, frozen: bool = False,
                on_gpu: bool | None = None) -> torch.dtype:
    """The dtype the weights are loaded in: fp32 master weights unless --pure_bf16 on a GPU with --bf16.

    With --bf16, Trainer runs forward and backward under bf16 autocast either way; the question is only
    what the optimizer updates. bf16 has 8 mantissa bits: next to a weight of ~0.02 one ulp is ~1.2e-4,
    so an AdamW step of ~1e-4 (warmup, the schedule's decayed tail) rounds to zero or to a whole ulp.
    fp32 master weights keep those steps. DeepSpeed ZeRO-2 (`run.sh pt multi`) keeps fp32 masters too, and
    ds_zero2.json accumulates and reduces gradients in fp32, but it casts the module itself to bf16: its
    embeddings, norms and residual stream run in bf16 where this path runs them in fp32 (close numerics, not
    the same; README "Numerics"). `frozen` (the base under a LoRA adapter): no update ever
    reaches these weights, so they need no fp32 copy and are loaded in bf16 under --bf16. `on_gpu`: decided
    by the caller (the run planner plans a GPU it does not run on); default: this machine has a CUDA GPU
    and --use_cpu is off.
    """
    if on_gpu is None:
        on_gpu = torch.cuda.is_available() and not getattr(training_args, "use_cpu", False)
    if not on_gpu:
        return torch.float32
    if training_args.bf16 and (pure_bf16 or frozen):
        return torch.bfloat16
    return torch.float32  # bf16 / fp16 autocast over fp32 master weights


def new_model(preset_args: PresetArguments, model_args: ModelArguments, training_args):
    config = build_config(preset_args)
    attn = choose_attention(model_args.attn_implementation, training_args)
    # Built where it will train: the random init of the 1b preset takes ~20 s on a GPU machine's CPU cores and a
    # fraction of a second on its GPU (each process its own: training_args.device is cuda:<local rank>).
    device = training_args.device if training_args.device.type == "cuda" else torch.device("cpu")
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=model_dtype(training_args, model_args.pure_bf16),
                                                 attn_implementation=attn)
    return model


def load_model(path: str, model_args: ModelArguments, training_args, quantization=None, frozen: bool = False):
    """Load a checkpoint written by an earlier stage, with a clear message when it is not one.
    `frozen`: the base of a LoRA adapter (bf16 under --bf16, see model_dtype). `quantization`: a bitsandbytes
    config (QLoRA, mini_qwen/lora.py): the frozen weights in 4-bit on this process's GPU, the rest in the
    compute dtype."""
    folder = check_checkpoint(path, need_tokenizer=False)  # the tokenizer is load_stage_tokenizer's
    config = AutoConfig.from_pretrained(path)
    validate_config(config, source=f"model config ({folder / 'config.json'})")
    attn = choose_attention(model_args.attn_implementation, training_args)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = AutoModelForCausalLM.from_pretrained(path, dtype=quantization.bnb_4bit_compute_dtype,
                                                     attn_implementation=attn, quantization_config=quantization,
                                                     device_map={"": training_args.device})
        # Norms in fp32 and input gradients on (for gradient checkpointing through frozen 4-bit layers).
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    return AutoModelForCausalLM.from_pretrained(path, dtype=model_dtype(training_args, model_args.pure_bf16, frozen),
                                                attn_implementation=attn)


def describe(model) -> str:
    c = model.config
    n = count_parameters(model)
    return (f"model: {n / 1e6:.1f}M parameters (hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
            f"{c.num_attention_heads} heads, {c.num_key_value_heads} KV heads, vocab {c.vocab_size}), "
            # `_attn_implementation` is private (transformers 5.24; pinned in tests/test_architecture.py).
            f"dtype {next(model.parameters()).dtype}, attention {c._attn_implementation}")



def load_stage_tokenizer(model_args: ModelArguments, checkpoint: str | None = None):
    """--tokenizer_path if given, else the checkpoint's own tokenizer, else the project default."""
    from mini_qwen.tokenizer import load_tokenizer

    if checkpoint:  # the model first: "no model here" says more than "no tokenizer here"
        check_checkpoint(checkpoint, model_args.tokenizer_path)
    if model_args.tokenizer_path:
        return load_tokenizer(model_args.tokenizer_path)
    return load_tokenizer(checkpoint) if checkpoint else load_tokenizer()
