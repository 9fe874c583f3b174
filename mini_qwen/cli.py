"""The one argument parser of every script: the stages, mini_qwen_eval.py and mini_qwen_serve.py.

Typed dataclasses parsed by TRL's `TrlParser` (an `HfArgumentParser` that also reads
`--config recipe.yaml`): recipe values replace the defaults, command-line flags win
over both. Every flag is checked here, before anything loads: choices, the numeric ranges
of mini_qwen/ranges.py, precision against the hardware (defaults from it too), the long-run
flags, the speed levers (mini_qwen/speed.py), the LoRA flags (mini_qwen/lora.py, with LoRA's own
--learning_rate default) and the trackers
of --report_to (mini_qwen/tracking.py). Eval and serve also take bare words
(checkpoint folders) anywhere among their flags.
"""

import difflib
import re
import sys
import warnings

import torch
from trl import TrlParser

from mini_qwen.checkpoint import check_checkpoint, is_adapter
from mini_qwen.errors import MiniQwenError
from mini_qwen.hardware import (
    check_precision,
    check_requested_precision,
    find_gpu,
    planned_precision_defaults,
    precision_defaults,
)
from mini_qwen.long_run import LongRunArguments, check_long_run_args
from mini_qwen.lora import LoraArguments, check_lora_args, learning_rate_default
from mini_qwen.ranges import check_ranges
from mini_qwen.speed import check_speed_flags
from mini_qwen.tracking import check_report_to

PRECISION_FLAGS = ("bf16", "fp16", "use_cpu")


def _raise(message: str):
    """argparse's `error` (bad value, unknown choice): one MiniQwenError instead of a 100-line usage + exit."""
    message = re.sub(r"(--\w+)/--[\w-]+", r"\1", message)  # `--max_new_tokens/--max-new-tokens`: name it once
    raise MiniQwenError(f"invalid arguments: {message}.")


def _suggest(name: str, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _read_recipe(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except OSError as err:
        raise MiniQwenError(f"cannot read recipe '{path}': {err.strerror}.") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise MiniQwenError(f"recipe '{path}' is not valid YAML{at}: {problem}.") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise MiniQwenError(f"recipe '{path}' must be a YAML mapping of flag: value lines "
                            f"(e.g. `learning_rate: 1e-4`), not a {type(recipe).__name__}.")
    return recipe


def _explicit(argv: list[str], recipe: dict, names) -> dict:
    """The values of `names` set on the command line or in the recipe (the command line wins)."""
    from transformers.hf_argparser import string_to_bool

    found = {name: recipe[name] for name in names if name in recipe}
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        name = flag[2:] if flag.startswith("--") else None
        if name not in names:
            continue
        if not value:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true"
        try:
            found[name] = string_to_bool(value) if isinstance(value, str) else bool(value)
        except Exception:  # argparse reports the bad value itself
            pass
    return found


def _value(argv: list[str], recipe: dict, name: str) -> str | None:
    """The raw value of flag `name` from the command line (last one wins) or else the recipe; None when unset."""
    found = recipe.get(name)
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag == f"--{name}":
            found = value if equals else (argv[i + 1] if i + 1 < len(argv) else None)
    return None if found is None else str(found)


def _plain(value):
    return str(getattr(value, "value", value))  # enum members (lr_scheduler_type, ...) by their value


def check_flag_values(parser, cli: list[str], recipe: dict, recipe_path: str | None) -> None:
    """Every flag as the stage would get it (recipe, then command line), before any dataclass (and so
    TrainingArguments' own checks, the model or the data) is built: numeric flags in RANGES, and flags
    with choices. argparse checks choices on the command line only; a recipe value becomes a default,
    which argparse never checks, so `packing: docs` in a YAML file is caught here, with the same words."""
    parser.set_defaults_with_config(**{k: v for k, v in recipe.items() if k != "env"})
    namespace, _ = parser.parse_known_args(cli)
    for action in parser._actions:
        value = getattr(namespace, action.dest, None)
        if not action.choices or value is None:
            continue
        allowed = [_plain(c) for c in action.choices]
        for item in value if isinstance(value, list) else [value]:
            if _plain(item) not in allowed:
                raise MiniQwenError(f"invalid arguments: argument --{action.dest}: invalid choice: '{_plain(item)}'"
                                    + (f" (from {recipe_path})" if recipe_path and action.dest in recipe else "")
                                    + f" (choose from {', '.join(repr(a) for a in allowed)}).")
    def source(name: str) -> str:
        from_recipe = recipe_path and name in recipe and not any(a == f"--{name}" or a.startswith(f"--{name}=")
                                                                 for a in cli)
        return f" (from {recipe_path})" if from_recipe else ""

    check_ranges(vars(namespace), source)


def _takes_value(parser, flag: str) -> str | int:
    """How many words follow `flag` as its value: 0, 1, "?" (one if it is not a flag) or "+" (to the next flag)."""
    if flag == "--config":
        return 1
    action = parser._option_string_actions.get(flag)
    if action is None:
        return 0  # an unknown flag: parsing reports it by name
    if action.nargs is None:
        return 1
    if action.nargs in ("?", "+", "*"):
        return action.nargs
    return action.nargs if isinstance(action.nargs, int) else 0


def _is_flag(word: str) -> bool:
    if not word.startswith("-") or word == "-":
        return False
    try:
        float(word)  # -1, -0.5: a value, not a flag
        return False
    except ValueError:
        return True


def split_positionals(parser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(bare words, the flags with their values) of a command line, as argparse would read it: a flag's
    values are not bare words (`--prompts a b` takes both; put checkpoints before it)."""
    words, flags, i = [], [], 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            words += argv[i:]
            break
        if not _is_flag(word):
            words.append(word)
            continue
        flags.append(word)
        name, equals, _ = word.partition("=")
        takes = 0 if equals else _takes_value(parser, name)
        if takes == "?":
            takes = 1 if i < len(argv) and not _is_flag(argv[i]) else 0
        if takes in ("+", "*"):
            while i < len(argv) and not _is_flag(argv[i]):
                flags.append(argv[i])
                i += 1
        else:
            flags += argv[i:i + takes]
            i += takes
    return words, flags


def parse_args(dataclass_types, argv=None, positional: str | None = None, gpu_flag: str | None = None):
    """The dataclasses filled from `--config`, the command line and the defaults, every flag checked.
    `positional`: the list field that also takes the bare words of the command line, in order before
    its own flag's values (eval's and serve's checkpoints); without it a bare word is refused.
    `gpu_flag`: the flag naming the GPU a run is planned for (mini_qwen_plan.py): precision defaults
    and checks follow that GPU, not this machine."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--gradient_checkpointing` is the original recipe's flag and TRL's; transformers 5 maps it onto
    # `activation_checkpointing` and warns on every SFT / DPO start (TRL's configs give it a default), and again
    # when the pinned TRL reads `model.is_gradient_checkpointing` in DPO. The pinned transformers keeps both
    # aliases, so the notices tell a user nothing they can act on.
    warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing", category=FutureWarning)
    parser = TrlParser(dataclass_types, allow_abbrev=False)  # `--learning_rat` must not pass for a real flag
    parser.error = _raise
    words = []
    if positional:
        words, argv = split_positionals(parser, argv)
    known = {action.dest for action in parser._actions}
    recipe, cli = {}, list(argv)
    if "--config" in cli:
        i = cli.index("--config")
        if i + 1 >= len(cli):
            raise MiniQwenError("--config needs a YAML file path.")
        recipe = _read_recipe(cli[i + 1])
        del cli[i:i + 2]
        unknown = [key for key in recipe if key not in known and key != "env"]
        if unknown:
            raise MiniQwenError(f"recipe '{argv[i + 1]}': unknown key(s) "
                                + ", ".join(f"'{k}'{_suggest(k, known)}" for k in unknown)
                                + ". Fix the spelling or remove them.")
    _, unknown = parser.parse_known_args(cli)
    flags = [a for a in unknown if a.startswith("-")]
    if unknown:
        raise MiniQwenError("unknown argument(s) "
                            + ", ".join(f"'{a}'{_suggest(a.lstrip('-').split('=')[0], known, '--')}"
                                        for a in (flags or unknown))
                            + ". See `--help` for the flags of this stage.")

    gpu = find_gpu(_value(cli, recipe, gpu_flag)) if gpu_flag else None
    if "bf16" in known:  # a training script
        # Hardware picks bf16/fp16 defaults; asking for one precision must switch off the other default
        # (else `--fp16` on an A100 meets the default bf16 and fails as "both set").
        defaults = precision_defaults() if gpu is None else planned_precision_defaults(gpu)
        asked = _explicit(cli, recipe, PRECISION_FLAGS)
        for name, other in (("bf16", "fp16"), ("fp16", "bf16")):
            if asked.get(name) and other not in asked:
                defaults[other] = False
        # before transformers' own, less helpful, check
        if gpu is None:
            check_requested_precision({**defaults, **asked})
        else:
            if asked.get("use_cpu"):
                raise MiniQwenError(f"--use_cpu: a plan is for the GPU named by --{gpu_flag}; drop --use_cpu.")
            check_requested_precision({**defaults, **asked}, gpu)
        parser.set_defaults_with_config(**defaults)
    learning_rate_origin = None
    if LoraArguments in dataclass_types:  # LoRA's own --learning_rate default, named by the stage's config
        training_type = next((t for t in dataclass_types if "learning_rate" in getattr(t, "__dataclass_fields__", {})),
                             None)
        lora_defaults, learning_rate_origin = learning_rate_default(
            training_type, _explicit(cli, recipe, ("use_peft",)).get("use_peft", False),
            _value(cli, recipe, "learning_rate"))
        parser.set_defaults_with_config(**lora_defaults)
    check_flag_values(parser, cli, recipe, argv[argv.index("--config") + 1] if recipe else None)
    try:
        parsed = parser.parse_args_and_config(argv)
    except (ValueError, TypeError) as err:
        # TrainingArguments.__post_init__ raises these for values that cannot work together.
        raise MiniQwenError(f"invalid arguments: {err}") from None
    training = next((obj for obj in parsed if hasattr(obj, "bf16") and hasattr(obj, "fp16")), None)
    if training is not None:
        if gpu is None:
            check_precision(training)
        check_speed_flags(training, next((obj for obj in parsed if hasattr(obj, "pure_bf16")), None),
                          planned=gpu is not None)
        check_report_to(training)
    for obj in parsed:
        if isinstance(obj, LongRunArguments):
            check_long_run_args(obj)
        if isinstance(obj, LoraArguments):
            obj.learning_rate_origin = learning_rate_origin
            check_lora_args(obj, cuda=torch.cuda.is_available() and not getattr(training, "use_cpu", False),
                            planned_gpu=gpu)
        start = getattr(obj, "model_name_or_path", None)
        if start and is_adapter(start):  # training starts from a full checkpoint: refused here, before any file
            check_checkpoint(start, need_tokenizer=False)  # is written, with the merge command
        if getattr(obj, "prepare_shard", None) is not None:  # a stage's data arguments
            from mini_qwen.data.prepare import check_prepare_flags

            check_prepare_flags(obj.prepare_only, obj.prepare_shard)
        if positional and hasattr(obj, positional):
            setattr(obj, positional, words + list(getattr(obj, positional) or []))
    return parsed
