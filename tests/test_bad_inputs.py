"""A catalogue of bad inputs (files and configurations), each run through the real entry point.

Every case must end in ONE clear `error: ...` line (MiniQwenError, exit 2) that names the
file / row / field, never a traceback from inside datasets / pyarrow / transformers / trl.
In-process cases call the stage's `main([...])` through `run_main`, exactly as the script
does; the `check_data` cases run `utils/check_data.py` as a subprocess.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT

import mini_qwen_dpo
import mini_qwen_pt
import mini_qwen_sft
from mini_qwen.errors import MiniQwenError, run_main

MINI = REPO_ROOT / "mini_data"
CHECK_DATA = REPO_ROOT / "utils" / "check_data.py"
TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
MESSAGE = pa.struct([("content", pa.string()), ("role", pa.string())])


def conv(*turns):
    return [{"from": who, "value": text} for who, text in turns]


GOOD = conv(("human", "Who wrote Hamlet?"), ("gpt", "Shakespeare."))


def pair(question, chosen, rejected):
    ask = {"content": question, "role": "user"}
    return [ask, {"content": chosen, "role": "assistant"}], [ask, {"content": rejected, "role": "assistant"}]


def write(folder, table, name="a.parquet"):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return folder


# --------------------------------------------------------------------------- the catalogue
# Each builder gets (tmp_path, ctx) and returns (stage main, argv); ctx holds the tokenizer
# folder and a tiny saved model. `expected` is a regex the one error line must match.

def pt_argv(ctx, data_dir, *extra):
    return mini_qwen_pt.main, ["--model_preset", "tiny", "--block_size", "64", "--data_dir", str(data_dir),
                               "--tokenizer_path", str(ctx["tokenizer"]), "--output_dir", str(ctx["out"]),
                               "--cache_dir", str(ctx["out"] / "cache"), "--max_steps", "1",
                               "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                               "--save_strategy", "no", "--report_to", "none", *extra]


def sft_argv(ctx, data_dir, *extra):
    return mini_qwen_sft.main, ["--model_name_or_path", str(ctx["model"]), "--data_dir", str(data_dir),
                                "--max_length", "64", "--output_dir", str(ctx["out"]), "--max_steps", "1",
                                "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                                "--save_strategy", "no", "--report_to", "none", *extra]


def dpo_argv(ctx, data_dir, *extra):
    return mini_qwen_dpo.main, ["--model_name_or_path", str(ctx["model"]), "--data_dir", str(data_dir),
                                "--max_length", "64", "--max_prompt_length", "32", "--output_dir", str(ctx["out"]),
                                "--max_steps", "1", "--per_device_train_batch_size", "2",
                                "--gradient_accumulation_steps", "1", "--save_strategy", "no",
                                "--report_to", "none", *extra]


def _empty_dir(tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _corrupt(tmp):
    folder = tmp / "corrupt"
    folder.mkdir()
    raw = next(MINI.glob("pt/**/*.parquet")).read_bytes()
    (folder / "a.parquet").write_bytes(raw[: len(raw) // 2])  # a download cut in half
    return folder


def _raw(folder, name, data: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder


def _jsonl(folder, name, rows):
    return _raw(folder, name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def _mixed_schemas(tmp):
    folder = _jsonl(tmp / "mixed", "a.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "hello"}]}])
    return _jsonl(folder, "b.jsonl", [{"instruction": "hi", "output": "hello"}])


def _tokenizer_without_im_end(tmp, ctx):
    folder = tmp / "tok"
    shutil.copytree(ctx["tokenizer"], folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|im_end|>"]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def _config_only(tmp, ctx):
    folder = tmp / "config_only"
    folder.mkdir()
    shutil.copy(ctx["model"] / "config.json", folder)
    return folder


def _recipe(tmp, text):
    (tmp / "recipe.yaml").write_text(text)
    return str(tmp / "recipe.yaml")


CASES = {
    # --- PT data
    "pt folder without data files": (
        lambda t, c: pt_argv(c, _empty_dir(t)), r"no data files matching .* under PT data folder '.*empty'.*jsonl"),
    "pt folder of an unread format": (
        lambda t, c: pt_argv(c, _raw(t / "d", "a.xlsx", b"PK")),
        r"no readable data file .* it holds a\.xlsx; mini_qwen reads parquet, jsonl / json"),
    "pt jsonl named .parquet": (
        lambda t, c: pt_argv(c, _jsonl(t / "d", "a.parquet", [{"text": "hi"}])),
        r"a\.parquet' is named \.parquet but is not a parquet file .*name it \.jsonl / \.csv"),
    "pt empty jsonl": (
        lambda t, c: pt_argv(c, _raw(t / "d", "a.jsonl", b"")), r"a\.jsonl' holds no records"),
    "pt jsonl with a broken line, on_bad_rows error": (
        lambda t, c: pt_argv(c, _raw(t / "d", "a.jsonl", b'{"text": "fine"}\n{"text": "cut sh\n{"text": "ok"}\n'),
                             "--on_bad_rows", "error"),
        r"a\.jsonl: line 2: not valid JSON .*--on_bad_rows skip"),
    "pt non-UTF-8 text, on_bad_rows error": (
        lambda t, c: pt_argv(c, _raw(t / "d", "a.txt", "fine\n".encode() + "caf\u00e9".encode("latin-1")),
                             "--on_bad_rows", "error"),
        r"a\.txt: line 2, byte offset 8: not UTF-8 text .*iconv"),
    "pt two candidate text columns": (
        lambda t, c: pt_argv(c, _jsonl(t / "d", "a.jsonl", [{"text": "x", "content": "y"}])),
        r"a\.jsonl: several columns could hold the text: \['text', 'content'\].*--text_column"),
    "pt column misnamed txt": (
        lambda t, c: pt_argv(c, write(t / "d", pa.table({"txt": ["some text"]}))),
        r"a\.parquet: missing column 'text' .*did you mean 'txt'"),
    "pt text of int type": (
        lambda t, c: pt_argv(c, write(t / "d", pa.table({"text": [1, 2]}))),
        r"a\.parquet: column 'text' must hold text but has type int64"),
    "pt corrupt parquet": (
        lambda t, c: pt_argv(c, _corrupt(t)), r"cannot read parquet file '.*corrupt/a\.parquet': .*damaged"),
    "pt null text with on_bad_rows error": (
        lambda t, c: pt_argv(c, write(t / "d", pa.table({"text": ["fine text", None]})), "--on_bad_rows", "error"),
        r"a\.parquet: row 1 has a null 'text'"),
    "pt whitespace text with on_bad_rows error": (
        lambda t, c: pt_argv(c, write(t / "d", pa.table({"text": ["fine", "fine too", " \n "]})),
                             "--on_bad_rows", "error"),
        r"a\.parquet: row 2 has an empty 'text'"),
    "pt only empty texts": (
        lambda t, c: pt_argv(c, write(t / "d", pa.table({"text": ["", "  "]}))),
        r"no text to train on: all 2 rows .* null or empty 'text'"),
    # --- SFT data
    "sft without conversations": (
        lambda t, c: sft_argv(c, write(t / "d", pa.table({"conversation": [GOOD]}))),
        r"a\.parquet: missing column 'conversations' .*did you mean 'conversation'"),
    "sft conversations of wrong type": (
        lambda t, c: sft_argv(c, write(t / "d", pa.table({"conversations": ["human: hi"]}))),
        r"a\.parquet: column 'conversations' must be a list of \{from, value\} records .* has type string"),
    "sft unknown role": (
        lambda t, c: sft_argv(c, write(t / "d", pa.table({"conversations": [GOOD, conv(("bot", "hi"), ("gpt", "x"))]})),
                              "--on_bad_rows", "error"),
        r"a\.parquet: row 1: turn 0 has unknown role 'bot'"),
    "sft empty conversation": (
        lambda t, c: sft_argv(c, write(t / "d", pa.table({"conversations": pa.array([GOOD, []], pa.list_(TURN))})),
                              "--on_bad_rows", "error"),
        r"a\.parquet: row 1: empty conversation"),
    "sft no final assistant answer": (
        lambda t, c: sft_argv(c, write(t / "d", pa.table({"conversations": [GOOD, GOOD, conv(("human", "hi?"))]})),
                              "--on_bad_rows", "error"),
        r"a\.parquet: row 2: conversation does not end with an assistant answer"),
    "sft mixed schemas in one folder": (
        lambda t, c: sft_argv(c, _mixed_schemas(t)),
        r"files follow different schemas: .*a\.jsonl is sharegpt/openai turns but .*b\.jsonl is alpaca"),
    "sft columns of no schema": (
        lambda t, c: sft_argv(c, _jsonl(t / "d", "a.jsonl", [{"question": "q", "answer": "a"}])),
        r"a\.jsonl: missing column .* it has \['question', 'answer'\].*SFT data reads sharegpt/openai turns .*alpaca"
        r".*--columns NAME=COLUMN"),
    "sft --messages_column naming a missing column": (
        lambda t, c: sft_argv(c, _jsonl(t / "d", "a.jsonl", [{"messages": []}]), "--messages_column", "dialog"),
        r"a\.jsonl: --messages_column dialog names column 'dialog', which the file lacks"),
    "sft recipe glob of a file that is not in --data_dir": (
        lambda t, c: sft_argv(c, _jsonl(t / "mine", "a.jsonl", [{"prompt": "q", "response": "a"}]),
                              "--config", str(REPO_ROOT / "demo" / "sft.yaml")),
        r"--data_glob '7M/train-00000-of-00002\.parquet' \(a flag, or the data_glob key of a --config recipe\) "
        r"matches no file .* holds 1 data file\(s\) \(e\.g\. a\.jsonl\): pass --data_glob"),
    # --- DPO data
    "dpo without chosen": (
        lambda t, c: dpo_argv(c, write(t / "d", pa.table({"prompt": ["q?"], "rejected": [pair("q?", "a", "b")[1]]}))),
        r"a\.parquet: missing column 'chosen'"),
    # --- model shape
    "hidden 1024 with 15 heads": (
        lambda t, c: pt_argv(c, MINI / "pt", "--hidden_size", "1024", "--num_attention_heads", "15"),
        r"hidden_size 1024 is not divisible by num_attention_heads 15"),
    "16 heads with 3 KV heads": (
        lambda t, c: pt_argv(c, MINI / "pt", "--hidden_size", "1024", "--num_attention_heads", "16",
                             "--num_key_value_heads", "3"),
        r"num_attention_heads 16 is not divisible by num_key_value_heads 3"),
    "block size over max positions": (
        lambda t, c: pt_argv(c, MINI / "pt", "--block_size", "100000"),
        r"--block_size 100000 exceeds the model's max_position_embeddings 4096"),
    "unknown preset": (
        lambda t, c: pt_argv(c, MINI / "pt", "--model_preset", "7b"),
        r"model preset '7b' not found: .*Available presets: .*tiny"),
    # --- checkpoints and tokenizer
    "checkpoint path with no model": (
        lambda t, c: sft_argv({**c, "model": _empty_dir(t)}, MINI / "sft"),
        r"'.*empty' is not a model checkpoint: it has no config\.json"),
    "checkpoint with config but no weights": (
        lambda t, c: sft_argv({**c, "model": _config_only(t, c)}, MINI / "sft"),
        r"'.*config_only' has config.json but no weights"),
    "tokenizer without <|im_end|>": (
        lambda t, c: pt_argv({**c, "tokenizer": _tokenizer_without_im_end(t, c)}, MINI / "pt"),
        r"tokenizer in .*tok is not a Qwen2.5 tokenizer: <\|im_end\|> should be the single token 151645"),
    "resume from a folder that is no checkpoint": (
        lambda t, c: pt_argv(c, MINI / "pt", "--resume_from_checkpoint", str(_empty_dir(t))),
        r"cannot resume from '.*empty': it is not a checkpoint-N folder"),
    "resume from a final model instead of a checkpoint": (
        lambda t, c: pt_argv(c, MINI / "pt", "--resume_from_checkpoint", str(c["model"])),
        r"cannot resume from .* not a checkpoint-N folder .* use --model_name_or_path"),
    # --- precision, attention, flags and recipes
    "fp16 on CPU": (lambda t, c: pt_argv(c, MINI / "pt", "--fp16", "true"), r"--fp16 needs a CUDA GPU"),
    "flash-attention without flash-attn": (
        lambda t, c: pt_argv(c, MINI / "pt", "--attn_implementation", "flash_attention_2"),
        r"flash_attention_2 was asked but flash-attn is not installed"),
    "recipe that does not exist": (
        lambda t, c: pt_argv(c, MINI / "pt", "--config", str(t / "nope.yaml")),
        r"cannot read recipe '.*nope\.yaml': No such file"),
    "recipe with an unknown key": (
        lambda t, c: pt_argv(c, MINI / "pt", "--config", _recipe(t, "model_preset: tiny\nlearning_rat: 0.1\n")),
        r"recipe '.*recipe\.yaml': unknown key\(s\) 'learning_rat' \(did you mean 'learning_rate'\?\)"),
    "recipe that is not YAML": (
        lambda t, c: pt_argv(c, MINI / "pt", "--config", _recipe(t, "model_preset: [tiny\n")),
        r"recipe '.*recipe\.yaml' is not valid YAML at line 2"),
    "misspelt flag": (
        lambda t, c: pt_argv(c, MINI / "pt", "--lerning_rate", "0.1"),
        r"unknown argument\(s\) '--lerning_rate' \(did you mean '--learning_rate'\?\)"),
    "flag value of the wrong type": (
        lambda t, c: pt_argv(c, MINI / "pt", "--learning_rate", "fast"),
        r"argument --learning_rate.*: invalid float value: 'fast'"),
}


@pytest.fixture(scope="module")
def ctx(built_tokenizer_dir, tiny_checkpoint):
    return {"tokenizer": built_tokenizer_dir, "model": tiny_checkpoint}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_in_one_clear_error(case, ctx, tmp_path, capsys):
    if case.startswith("flash") and importlib.util.find_spec("flash_attn"):
        pytest.skip("flash-attn is installed here")
    build, expected = CASES[case]
    main, argv = build(tmp_path, {**ctx, "out": tmp_path / "out"})
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    assert exc.value.code == 2
    assert_one_error(2, capsys.readouterr().err, expected)


def test_bf16_on_a_gpu_without_bf16(monkeypatch, ctx, tmp_path):
    """A T4 has no bf16: asking for it names the GPU (and the hardware default fp16 is not 'also set')."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says on a T4 (emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    main, argv = pt_argv({**ctx, "out": tmp_path}, MINI / "pt", "--bf16", "true")
    with pytest.raises(MiniQwenError, match=r"--bf16 was asked but Tesla T4 \(compute capability 7\.5\) has no bf16 "
                                            r"tensor cores .* use --fp16 true"):
        main(argv)


def test_asking_fp16_switches_off_the_bf16_default(monkeypatch):
    """On a bf16 GPU the hardware default is bf16; `--fp16 true` must not fail as 'both set'."""
    import mini_qwen.cli as cli
    from mini_qwen_pt import PTDataArguments, PTTrainingArguments

    monkeypatch.setattr(cli, "precision_defaults", lambda: {"bf16": True, "fp16": False, "use_cpu": True})
    monkeypatch.setattr(cli, "check_requested_precision", lambda values: None)  # no GPU here to check against
    monkeypatch.setattr(cli, "check_precision", lambda args: None)
    _, args = cli.parse_args((PTDataArguments, PTTrainingArguments), ["--fp16", "true", "--output_dir", "x"])
    assert (args.fp16, args.bf16) == (True, False)
    _, args = cli.parse_args((PTDataArguments, PTTrainingArguments), ["--output_dir", "x"])
    assert (args.fp16, args.bf16) == (False, True)


def test_id_type_clash_between_7m_and_gen_is_not_an_error():
    """7M has an int64 `id`, Gen a string one; SFT never reads `id`, so they load together."""
    from mini_qwen.data import sft
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.common import read_schema

    files = find_stage_files("sft", str(MINI / "sft"), log=lambda *_: None)
    types = {str(pq.read_schema(f).field("id").type) for f in files}
    assert types == {"int64", "string"}
    rows = sum(len(batch["conversations"]) for f in files for batch in sft.check_schema(f, read_schema(f)).batches(f))
    assert rows == sum(pq.ParquetFile(f).metadata.num_rows for f in files)


# --------------------------------------------------------------------------- utils/check_data.py


def check_data(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(CHECK_DATA), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO_ROOT)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_error(rc, err, expected):
    """Exit 2, no traceback, and exactly one `error: ...` line (the last; progress bars may precede it)."""
    assert rc == 2 and "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert re.search(expected, errors[0]), errors[0]


def test_check_data_mini_data_is_clean_and_reports_the_id_clash_as_info():
    rc, out, err = check_data("sft", MINI / "sft")
    assert rc == 0, err
    assert "info: type clash: 'id' is int64 in 2 files" in out and "sft never reads 'id'" in out
    assert "train-00000-of-00002.parquet: 41 rows; extra columns (not read): id, label" in out
    assert "ok: 164 usable rows" in out


def test_check_data_sft_bad_rows_error_then_skip(tmp_path):
    rows = [GOOD, conv(("bot", "hi"), ("gpt", "x")), None, conv(("human", "q"), ("gpt", "a"), ("human", "more?")),
            GOOD]
    folder = write(tmp_path / "sft", pa.table({"conversations": pa.array(rows, pa.list_(TURN))}))
    rc, out, err = check_data("sft", folder, "--on_bad_rows", "error")
    assert_one_error(rc, err, r"3 bad rows in 1 of 1 files .*first: .*a\.parquet: row 1: turn 0 has unknown role 'bot'")
    assert "null 'conversations' (first at row 2)" in out
    assert "conversation does not end with an assistant answer (first at row 3)" in out
    rc, out, err = check_data("sft", folder)  # the stages' default, skip: the good rows can be trained on
    assert rc == 0, err
    assert "ok: 2 usable rows (3 bad rows will be skipped)" in out


def test_check_data_pt_missing_column_and_empty_texts(tmp_path):
    folder = write(tmp_path / "pt", pa.table({"text": ["a document", "", None, "   "]}), "good.parquet")
    write(folder, pa.table({"txt": ["x"]}), "renamed.parquet")
    rc, out, err = check_data("pt", folder, "--on_bad_rows", "skip")  # skip does not excuse a missing column
    assert_one_error(rc, err, r"no pt run can get past: .*renamed\.parquet: missing column 'text' .*did you mean 'txt'")
    assert "good.parquet: 4 rows; bad rows: 2 empty or whitespace-only 'text' (first at row 1); 1 null 'text'" in out


def test_check_data_dpo_identical_answers_and_over_long(tmp_path, built_tokenizer_dir, capsys):
    same_c, same_r = pair("What is 2+2?", "4", "4")
    good_c, good_r = pair("Name a colour.", "Blue. " * 60, "Red.")
    folder = write(tmp_path / "dpo", pa.table({
        "prompt": ["Name a colour.", "What is 2+2?"],
        "chosen": pa.array([good_c, same_c], pa.list_(MESSAGE)),
        "rejected": pa.array([good_r, same_r], pa.list_(MESSAGE)),
        "id": [1, 2]}))
    rc, out, err = check_data("dpo", folder, "--on_bad_rows", "error")
    assert_one_error(rc, err, r"a\.parquet: row 1: chosen and rejected answers are identical")
    # Over-long rows need the tokenizer: run that one in-process (the subprocess would reload torch).
    spec = importlib.util.spec_from_file_location("check_data", CHECK_DATA)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["dpo", str(folder), "--max_length", "64", "--tokenizer_path", str(built_tokenizer_dir),
                        "--on_bad_rows", "skip"]) == 0
    out = capsys.readouterr().out
    assert ("a.parquet: 2 rows; extra columns (not read): id; bad rows: 1 chosen and rejected answers are identical"
            in out)
    assert "1 longer than 64 tokens (truncated)" in out and "ok: 1 usable rows (1 bad rows will be skipped)" in out


def test_check_data_usage_errors_are_one_line(tmp_path):
    rc, _, err = check_data("sft", tmp_path / "missing")
    assert_one_error(rc, err, r"SFT data folder '.*missing' does not exist")
