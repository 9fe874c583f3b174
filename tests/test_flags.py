"""Every numeric flag of every script is range-checked before anything is built (mini_qwen/ranges.py RANGES):
zero, negative, NaN or out-of-range values end in one message naming the flag and the allowed range.

The table is tested from both ends: every int/float field of every script's dataclasses (the stages' own and
the inherited TrainingArguments / SFTConfig / DPOConfig ones, eval's and serve's) must be in RANGES or
UNCHECKED, and every checked flag of every script is fed a value just outside its range.
"""

import dataclasses
import typing
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from mini_qwen import stages
from mini_qwen.cli import parse_args
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.ranges import RANGES, UNCHECKED


def stage_types(stage: str) -> tuple:
    if stage in stages.BY_NAME:  # the stage script's own dataclasses, as its main parses them
        return tuple(stages.stage(stage).arguments().values())
    if stage == "eval":
        import mini_qwen_eval as m

        return (m.EvalArguments,)
    import mini_qwen_serve as m

    return (m.ServeArguments,)


STAGES = tuple(stages.names())
SCRIPTS = (*STAGES, "eval", "serve")
MIN_CHECKED = {**dict.fromkeys(STAGES, 25), "eval": 9, "serve": 6}


def required(stage: str) -> list[str]:
    """What a script needs besides the flag under test."""
    return ["--output_dir", "unused"] if stage in STAGES else []


def numeric_fields(types) -> dict[str, type]:
    found = {}
    for cls in types:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = typing.get_args(hints[f.name]) or (hints[f.name],)
            if any(a in (int, float) for a in args) and bool not in args:
                found[f.name] = int if int in args and float not in args else float
    return found


@pytest.mark.parametrize("stage", SCRIPTS)
def test_every_numeric_field_is_in_the_table(stage):
    missing = sorted(set(numeric_fields(stage_types(stage))) - set(RANGES) - set(UNCHECKED))
    assert not missing, f"numeric flags of {stage} with no range in mini_qwen/ranges.py RANGES: {missing}"


def outside(name: str, kind: type):
    """A value just outside the allowed range of `name`."""
    r = RANGES[name]
    if r.low is not None:
        value = r.low if r.low_open else r.low - 1
        while value in r.also:
            value -= 1
    else:
        value = r.high if r.high_open else r.high + 1
    return kind(value)


@pytest.mark.parametrize("stage", SCRIPTS)
def test_each_flag_out_of_range_is_one_clear_message(stage):
    types = stage_types(stage)
    fields = numeric_fields(types)
    checked = sorted(set(fields) & set(RANGES))
    assert len(checked) >= MIN_CHECKED[stage]
    for name in checked:
        value = outside(name, fields[name])
        with pytest.raises(MiniQwenError) as err:
            parse_args(types, [f"--{name}", str(value), *required(stage)])
        message = str(err.value)
        assert message.startswith(f"--{name} {value:g} is out of range: allowed "), (name, message)
        assert message.count("out of range") == 1, message


@pytest.mark.parametrize("stage, argv, expected", [
    ("pt", ["--block_size", "0"], "--block_size 0 is out of range: allowed at least 2."),
    ("pt", ["--learning_rate", "-0.0001"], "--learning_rate -0.0001 is out of range: allowed above 0 and at most 1."),
    ("pt", ["--learning_rate", "nan"], "--learning_rate nan is out of range"),
    ("pt", ["--max_steps", "0"], "--max_steps 0 is out of range: allowed -1 (use num_train_epochs), or at least 1."),
    ("pt", ["--save_steps", "2.5"], "--save_steps 2.5 is out of range: allowed above 0 (a fraction of all steps "
                                    "below 1, a whole number of steps above)."),
    ("pt", ["--gradient_accumulation_steps", "-3"], "--gradient_accumulation_steps -3 is out of range: allowed at "
                                                    "least 1."),
    ("pt", ["--loss_spike_factor", "0.5"], "--loss_spike_factor 0.5 is out of range: allowed 0 (off), or above 1."),
    ("sft", ["--max_length", "1"], "--max_length 1 is out of range: allowed at least 2."),
    ("sft", ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0 is out of range"),
    ("dpo", ["--max_prompt_length", "0"], "--max_prompt_length 0 is out of range: allowed at least 1."),
    ("dpo", ["--beta", "0"], "--beta 0 is out of range: allowed above 0."),
    ("dpo", ["--logging_steps", "0", "--num_train_epochs", "0"],
     "--num_train_epochs 0 is out of range: allowed above 0 and at most 1e+06; --logging_steps 0 is out of range"),
    ("eval", ["results/sft", "--ppl_batch_size", "0"], "--ppl_batch_size 0 is out of range: allowed at least 1."),
    ("eval", ["--bench_batch_size", "0"],
     "--bench_batch_size 0 is not allowed: give a positive integer or one of auto"),
    ("serve", ["--port", "0", "results/sft"], "--port 0 is out of range: allowed at least 1 and at most 65535."),
])
def test_messages(stage, argv, expected):
    with pytest.raises(MiniQwenError) as err:
        parse_args(stage_types(stage), [*argv, *required(stage)], positional="checkpoints")
    assert str(err.value).startswith(expected) or expected in str(err.value), str(err.value)


@pytest.mark.parametrize("stage", STAGES)
def test_defaults_and_demo_recipes_are_in_range(stage):
    types = stage_types(stage)
    parse_args(types, ["--output_dir", "unused"])
    parse_args(types, ["--config", str(REPO_ROOT / "demo" / f"{stage}.yaml")])


def test_a_bad_recipe_value_names_the_recipe_and_stops_before_loading(tmp_path, capsys):
    import mini_qwen_pt

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(Path(REPO_ROOT / "demo" / "pt.yaml").read_text() + "\nper_device_train_batch_size: 0\n")
    with pytest.raises(SystemExit) as exc:
        run_main(mini_qwen_pt.main, ["--config", str(recipe), "--output_dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --per_device_train_batch_size 0 (from {recipe}) is out of range: allowed at least 1."]
    assert not (tmp_path / "out").exists()
    # The command line wins over the recipe, and then it is the flag that is named.
    with pytest.raises(MiniQwenError, match=r"^--per_device_train_batch_size -2 is out of range"):
        mini_qwen_pt.main(["--config", str(recipe), "--per_device_train_batch_size", "-2"])


def test_transformers_jit_checkpoint_is_refused_at_parse_time():
    with pytest.raises(MiniQwenError, match=r"^--enable_jit_checkpoint is transformers' SIGTERM handler"):
        parse_args(stage_types("pt"), ["--enable_jit_checkpoint", "true", "--output_dir", "unused"])


@pytest.mark.parametrize("stage, flag, bad", [("pt", "packing", "docs"), ("sft", "on_bad_rows", "eror"),
                                              ("dpo", "on_bad_rows", "eror")])
def test_a_choice_typo_is_refused_from_the_command_line_and_from_a_recipe(stage, flag, bad, tmp_path):
    """argparse checks choices on the command line only; a recipe value is a default it never checks."""
    expected = rf"^invalid arguments: argument --{flag}(/--[\w-]+)?: invalid choice: '{bad}'"
    with pytest.raises(MiniQwenError, match=expected + r" \(choose from "):
        parse_args(stage_types(stage), [f"--{flag}", bad, "--output_dir", "unused"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"{flag}: {bad}\n")
    with pytest.raises(MiniQwenError, match=expected + rf" \(from {recipe}\) \(choose from '"):
        parse_args(stage_types(stage), ["--config", str(recipe), "--output_dir", "unused"])


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_pad_to_multiple_of_takes_a_positive_int_or_a_word(stage):
    """TRL converts it itself and fails with a bare int() error; the range check names the flag first."""
    types = stage_types(stage)
    for bad in ("abc", "0", "-64"):
        with pytest.raises(MiniQwenError, match=f"--pad_to_multiple_of {bad} is not allowed: give a positive integer"):
            parse_args(types, ["--output_dir", "/tmp/x", f"--pad_to_multiple_of={bad}"])
    for good, parsed in (("64", 64), ("none", None)):
        *_, args = parse_args(types, ["--output_dir", "/tmp/x", "--pad_to_multiple_of", good])
        assert args.pad_to_multiple_of == parsed


@pytest.mark.parametrize("stage", STAGES)
def test_gradient_checkpointing_starts_without_a_deprecation_notice(stage):
    """The original recipe's `--gradient_checkpointing` reaches transformers' `activation_checkpointing`, and no
    FutureWarning about the name greets the user at each start (TRL's configs give the old name a default)."""
    import warnings

    from transformers import Qwen2Config, Qwen2ForCausalLM

    tiny = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    for value in ("false", "true"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            *_, training = parse_args(stage_types(stage), ["--output_dir", "unused", "--gradient_checkpointing", value])
            assert tiny.is_gradient_checkpointing is False  # the pinned TRL reads this alias during DPO
        assert training.activation_checkpointing is (value == "true")
        assert not [w for w in seen if "checkpointing" in str(w.message)], [str(w.message) for w in seen]
