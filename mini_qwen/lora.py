"""LoRA and QLoRA for SFT and DPO, through peft and TRL's own peft support.

- `LoraArguments`: the flags (`--use_peft true`, `--lora_r`, `--lora_alpha`, `--lora_dropout`,
  `--lora_target_modules`, `--load_in_4bit`). They become TRL's `ModelConfig`, and TRL's own
  `get_peft_config` / `get_quantization_config` turn that into the peft `LoraConfig` and the
  bitsandbytes config the trainers take (`peft_config=`): TRL wraps the model, trains only the
  adapter, and for DPO scores the reference with the adapter disabled (the base model: no second
  copy in memory).
- `check_lora_args` (in mini_qwen.cli.parse_args): LoRA flags without `--use_peft true` are refused,
  as is `--load_in_4bit` without CUDA or bitsandbytes. `learning_rate_default` (also in parse_args): with
  `--use_peft true` and no `--learning_rate`, the stage's LoRA rate (SFT 1e-4, DPO 5e-6), and why, for the
  start line.
- Precision: the adapters, their gradients and AdamW moments stay fp32 (`keep_adapters_fp32` undoes TRL's
  bf16 cast of a 4-bit model's adapters); `lora_setup` refuses a learning rate whose steps the fp32 adapters
  would round away (`smallest_learning_rate`).
- `lora_setup`: the checked peft config for a checkpoint, before anything is written: target module
  names are compared with the linear layers of that model's blocks (built on the meta device from
  its config.json, so nothing is loaded). `peft_config` is the same for any model (the run planner
  builds the adapter on a meta model to count its parameters).
- The stage saves the adapter in peft's format (adapter_config.json + adapter_model.safetensors)
  with the tokenizer. `adapter_config.json` records the base checkpoint's absolute path; eval, serve
  and the benchmarks load base + adapter merged in memory (`apply_adapter`, through
  mini_qwen.generate.load_for_inference), and utils/merge_lora.py writes the same merge as a full
  checkpoint. Adapter folders are recognised in mini_qwen/checkpoint.py (`is_adapter`, `adapter_base`).
"""

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mini_qwen.checkpoint import check_checkpoint
from mini_qwen.errors import MiniQwenError

DEFAULT_R, DEFAULT_ALPHA, DEFAULT_DROPOUT = 16, 32, 0.05
# LoRA's learning rates when --learning_rate is not given (a stage config names its own as `lora_learning_rate`).
# An adapter learns a low-rank update scaled by alpha / r whose B starts at zero, so the full fine-tuning rates
# (SFT 1e-5, DPO 5e-7) barely move it; peers train adapters ~10x faster. LLaMA-Factory's LoRA examples (all linear
# layers, alpha / r = 2 as our defaults) use 1e-4 for SFT and 5e-6 for DPO; TRL's own sft.py / dpo.py LoRA examples
# (on Qwen2-0.5B, alpha / r = 0.5) use 2e-4 and 5e-6. DPO stays 10x below SFT because its loss pushes the
# log-ratio against a fixed reference, which the original project found overfitting at 1e-6 already (full).
SFT_LEARNING_RATE, DPO_LEARNING_RATE = 1e-4, 5e-6
ALL_LINEAR = "all-linear"  # peft's word for every linear layer but the output layer: the blocks' projections
# The flags that mean something only with --use_peft true (unset = None, so a flag given is a flag meant).
LORA_ONLY = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit")
# The adapter's parameters, gradients and AdamW moments (keep_adapters_fp32); autocast runs its matmuls in bf16.
ADAPTER_DTYPE = torch.float32
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# bitsandbytes 0.50's NF4 / FP4 kernels: NVIDIA compute capability 6.0 (Pascal) and newer (its installation guide).
QLORA_MIN_CAPABILITY = (6, 0)


@dataclass
class LoraArguments:
    """Train a LoRA adapter instead of every weight (SFT and DPO)."""

    use_peft: bool = field(default=False, metadata={
        "help": "Train a LoRA adapter (peft) on the frozen model instead of all its weights: the output folder "
                "holds the adapter (adapter_config.json + adapter_model.safetensors) and the tokenizer. Merge it "
                "into a full checkpoint with utils/merge_lora.py."})
    lora_r: int | None = field(default=None, metadata={
        "help": f"LoRA rank: the inner width of each adapter's two matrices (default {DEFAULT_R})."})
    lora_alpha: int | None = field(default=None, metadata={
        "help": f"LoRA scaling numerator: the update is scaled by lora_alpha / lora_r (default {DEFAULT_ALPHA})."})
    lora_dropout: float | None = field(default=None, metadata={
        "help": f"Dropout on the adapter's input (default {DEFAULT_DROPOUT})."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Which linear layers of each block get an adapter, by name (q_proj k_proj v_proj o_proj gate_proj "
                "up_proj down_proj). Default: all of them. The embeddings and the output layer stay frozen, so "
                "the tied embeddings stay tied after a merge."})
    load_in_4bit: bool | None = field(default=None, metadata={
        "help": "QLoRA: load the frozen base model in 4-bit NF4 (bitsandbytes, CUDA only; `pip install -e "
                ".[qlora]`) and train the adapter on top; the base weights take ~0.5 byte a parameter. The "
                "adapter stays fp32, as with plain LoRA."})
    # Why --learning_rate has its value (set by mini_qwen.cli.parse_args; printed by describe_adapter). Not a flag.
    learning_rate_origin: str | None = field(default=None, init=False, repr=False, compare=False)


def learning_rate_default(training_type, use_peft: bool, given: str | None) -> tuple[dict, str | None]:
    """(the defaults to set before parsing, why the learning rate is what it is) for mini_qwen.cli.parse_args:
    with --use_peft true and no --learning_rate, the stage's LoRA rate (`lora_learning_rate` of its config)."""
    lora_rate = getattr(training_type, "lora_learning_rate", None)
    if not use_peft or lora_rate is None:
        return {}, None
    if given is not None:
        return {}, "--learning_rate"
    full = training_type.__dataclass_fields__["learning_rate"].default
    return {"learning_rate": lora_rate}, f"LoRA's default for this stage, --learning_rate not given; {full:g} " \
                                         f"when every weight trains"


def qlora_supported(gpu) -> bool:
    """Whether bitsandbytes' 4-bit kernels run on a GPU kind of mini_qwen.hardware.GPUS."""
    return gpu.capability >= QLORA_MIN_CAPABILITY


def check_lora_args(args: LoraArguments, cuda: bool, planned_gpu=None) -> None:
    """The flag checks that need no model (mini_qwen.cli.parse_args): LoRA flags only with --use_peft true;
    4-bit only where bitsandbytes and CUDA are. `planned_gpu`: a run planned for that GPU kind
    (mini_qwen_plan.py), checked against it instead of this machine (which needs no bitsandbytes to plan)."""
    if not args.use_peft:
        given = [f"--{name}" for name in LORA_ONLY if getattr(args, name) not in (None, False)]
        if given:
            verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
            raise MiniQwenError(f"{', '.join(given)} only {verb} to LoRA training: add --use_peft true, or drop {them} "
                                f"to fine-tune every weight.")
        return
    if not args.load_in_4bit:
        return
    if planned_gpu is not None:
        if not qlora_supported(planned_gpu):
            raise MiniQwenError(f"--load_in_4bit (QLoRA): bitsandbytes' 4-bit kernels need compute capability "
                                f"{'.'.join(map(str, QLORA_MIN_CAPABILITY))} or newer, and the {planned_gpu.name} has "
                                f"{'.'.join(map(str, planned_gpu.capability))}. Drop the flag.")
        return
    if not cuda:
        raise MiniQwenError("--load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run "
                            "on CPU. Drop the flag: LoRA on the full-precision model works here.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MiniQwenError("--load_in_4bit: bitsandbytes is not installed: `pip install -e .[qlora]` (the "
                            "optional `qlora` extra in pyproject.toml), or drop the flag.")


def block_linear_names(model) -> list[str]:
    """Names of the linear layers inside the decoder blocks of `model` (q_proj, ..., down_proj)."""
    blocks = model.get_decoder().layers
    return sorted({name.rsplit(".", 1)[-1] for name, module in blocks.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def checkpoint_meta_model(checkpoint: str | Path):
    """The checkpoint's model built on the meta device out of its config.json (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def peft_config(args: LoraArguments, known: list[str], where: str):
    """peft's LoraConfig for the flags (TRL's own `get_peft_config`), the target names checked against `known`,
    the linear layers of the blocks of the model described by `where`."""
    from trl import ModelConfig, get_peft_config

    targets = list(args.lora_target_modules or [])
    if targets in ([], [ALL_LINEAR]):
        targets = ALL_LINEAR
    else:
        unknown = [name for name in targets if name not in known]
        if unknown:
            raise MiniQwenError(f"--lora_target_modules: {', '.join(repr(n) for n in unknown)} is not a linear layer "
                                f"of {where}. Choose among {', '.join(known)} (or leave the flag out: all of them).")
    config = ModelConfig(use_peft=True, lora_r=args.lora_r or DEFAULT_R, lora_alpha=args.lora_alpha or DEFAULT_ALPHA,
                         lora_dropout=DEFAULT_DROPOUT if args.lora_dropout is None else args.lora_dropout,
                         lora_target_modules=targets)
    lora = get_peft_config(config)
    if targets != ALL_LINEAR:
        # TRL's ModelConfig turns a one-name list into the bare name, which peft reads as a regular expression
        # over the full module path ("model.layers.0.self_attn.q_proj"): it matches nothing. Names, as a set.
        lora.target_modules = set(targets)
    return lora


def smallest_learning_rate(model, targets, dtype=ADAPTER_DTYPE) -> float:
    """The learning rate below which an AdamW step rounds away on a typical entry of some lora_A of `model`.

    AdamW moves each entry by about the learning rate a step, whatever the gradient's size. A stored value keeps a
    step only if the step exceeds half the spacing of `dtype`'s numbers next to it, |w| * eps / 2. lora_A starts
    uniform in +-1/sqrt(fan_in) (peft's kaiming init), so a typical entry is 1/(2 sqrt(fan_in)); the adapters with
    the smallest fan-in have the largest entries and freeze first. (lora_B starts at 0, where any step counts.)
    fp32: ~4e-9 on the tiny preset; bf16 (what TRL would cast a QLoRA adapter to) ~2e-4: a stage default of 1e-5
    would leave every lora_A where it started."""
    fan_in = min(module.in_features for name, module in model.get_decoder().layers.named_modules()
                 if isinstance(module, torch.nn.Linear)
                 and (targets == ALL_LINEAR or name.rsplit(".", 1)[-1] in targets))
    return torch.finfo(dtype).eps / 2 / (2 * fan_in ** 0.5)


def lora_setup(args: LoraArguments, checkpoint: str | Path, learning_rate: float | None = None):
    """peft's LoraConfig for training an adapter on `checkpoint` (None without --use_peft), built by TRL's own
    `get_peft_config`; the target module names are checked against that model first, and `learning_rate`
    against the adapter's dtype (smallest_learning_rate)."""
    if not args.use_peft:
        return None
    check_checkpoint(checkpoint, need_tokenizer=False)  # a full checkpoint: an adapter folder is refused there
    model = checkpoint_meta_model(checkpoint)
    lora = peft_config(args, block_linear_names(model), f"the model's blocks in '{checkpoint}'")
    floor = smallest_learning_rate(model, lora.target_modules)
    if learning_rate is not None and learning_rate < floor:
        raise MiniQwenError(f"--learning_rate {learning_rate:g} is too small for LoRA: each AdamW step moves an "
                            f"adapter entry by about the learning rate, and the fp32 adapters of this model round "
                            f"away any step below {floor:.1e}. Raise it, or leave the flag out for LoRA's default.")
    return lora


def keep_adapters_fp32(trainer):
    """Cast the adapter's trainable parameters back to fp32 once `trainer` is built; returns its model.

    TRL 1.16 casts them to bf16 when the base is 4-bit (SFTTrainer / DPOTrainer __init__, after get_peft_model:
    the QLoRA paper's recipe), where peft's own get_peft_model keeps them fp32 (autocast_adapter_dtype). In bf16 an
    AdamW step under ~|w| / 512 rounds away (smallest_learning_rate): at 1e-5 most lora_A entries never move. The
    matmuls still run in the compute dtype under autocast (peft's bnb layers cast the input to the adapter's
    dtype, then autocast casts both to bf16); fp32 costs 2 more bytes a trainable parameter (and fp32 AdamW
    moments), a few MB for a rank-16 adapter. Call before the optimizer is created (Trainer.train builds it).
    Under DeepSpeed nothing is cast: its engine casts the whole module to bf16 and keeps fp32 masters itself, and
    under ZeRO-3 TRL keeps the adapters in the base's dtype on purpose (mixed dtypes break its all-gather)."""
    model = trainer.model
    if trainer.is_deepspeed_enabled:
        return model
    for param in model.parameters():
        if param.requires_grad and param.dtype != ADAPTER_DTYPE:
            param.data = param.data.to(ADAPTER_DTYPE)
    return model


def quantization_config(args: LoraArguments, bf16: bool):
    """bitsandbytes' 4-bit NF4 config for QLoRA (TRL's `get_quantization_config`), or None."""
    if not (args.use_peft and args.load_in_4bit):
        return None
    from trl import ModelConfig, get_quantization_config

    return get_quantization_config(ModelConfig(load_in_4bit=True, dtype="bfloat16" if bf16 else "float16"))


def with_base_path(model, checkpoint: str | Path):
    """Make peft record the base checkpoint as an absolute path in adapter_config.json, so the adapter
    loads from any working directory (and peft never takes a relative path for a Hub model id)."""
    model.name_or_path = str(Path(checkpoint).resolve())
    return model


def describe_adapter(model, args: LoraArguments, learning_rate: float) -> str:
    trained = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in trained)
    total = sum(p.numel() for p in model.parameters())
    dtypes = "/".join(sorted({DTYPE_NAMES.get(p.dtype, str(p.dtype)) for p in trained}))
    config = model.peft_config["default"]
    targets = ", ".join(sorted(config.target_modules)) if not isinstance(config.target_modules, str) \
        else config.target_modules
    origin = f" ({args.learning_rate_origin})" if args.learning_rate_origin else ""
    return (f"LoRA: rank {config.r}, alpha {config.lora_alpha}, dropout {config.lora_dropout} on {targets}: "
            f"{trainable / 1e6:.3f}M trainable of {total / 1e6:.1f}M parameters ({100 * trainable / total:.2f}%), "
            f"{dtypes} adapter; learning rate {learning_rate:g}{origin}")


def apply_adapter(model, folder: str | Path, merge: bool = True):
    """`model` (the base, loaded) with the adapter in `folder`; merged into the weights by default, so the
    result is a plain transformers model (same speed as a full checkpoint, nothing peft-specific downstream)."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(folder))
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise MiniQwenError(f"cannot load the adapter in '{folder}' onto its base: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}") from None
    return peft_model.merge_and_unload() if merge else peft_model
