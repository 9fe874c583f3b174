"""Argument parsing shared by the stage scripts.

Typed dataclasses parsed by TRL's `TrlParser` (an `HfArgumentParser` that also reads
`--config recipe.yaml`): recipe values replace the defaults, command-line flags win
over both. Precision defaults (bf16 / fp16 / use_cpu) come from the hardware.
"""

import sys

from trl import TrlParser

from mini_qwen.errors import MiniQwenError
from mini_qwen.hardware import check_precision, precision_defaults


def parse_args(dataclass_types, argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = TrlParser(dataclass_types)
    parser.set_defaults_with_config(**precision_defaults())
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise MiniQwenError("--config needs a YAML file path.")
        try:
            open(argv[i + 1]).close()
        except OSError as err:
            raise MiniQwenError(f"cannot read recipe '{argv[i + 1]}': {err.strerror}.") from None
    try:
        parsed = parser.parse_args_and_config(argv)
    except (ValueError, TypeError) as err:
        # TrainingArguments.__post_init__ and the YAML loader raise these for bad values.
        raise MiniQwenError(f"invalid arguments: {err}") from None
    for obj in parsed:
        if hasattr(obj, "bf16") and hasattr(obj, "fp16"):
            check_precision(obj)
    return parsed
