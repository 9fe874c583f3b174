"""mini_qwen/run_config.py: run_config.json records the run; a resume with another batch, process count or data set
is refused unless allowed (--allow_changed_resume), and the change is then printed and recorded."""

import json
from types import SimpleNamespace

import pytest
from conftest import REPO_ROOT, error_lines
from test_checkpoint import MINI, fake_checkpoint

from mini_qwen.errors import run_main
from mini_qwen.run_config import compare, record_run


def test_run_config_records_the_run_and_refuses_a_changed_resume(built_tokenizer_dir, tmp_path, capsys):
    import mini_qwen_pt
    from mini_qwen.cli import parse_args

    out = tmp_path / "run"
    argv = ["--model_preset", "tiny", "--data_dir", str(MINI / "pt"), "--block_size", "64",
            "--cache_dir", str(tmp_path / "cache"), "--tokenizer_path", str(built_tokenizer_dir),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
            "--seed", "0", "--report_to", "none", "--max_steps", "4", "--output_dir", str(out)]
    from mini_qwen.model import ModelArguments, PresetArguments

    parsed = parse_args((mini_qwen_pt.PTDataArguments, PresetArguments, ModelArguments,
                         mini_qwen_pt.PTTrainingArguments), argv)
    files = sorted((MINI / "pt").rglob("*.parquet"))
    config = record_run("pt", parsed, files, parsed[-1])
    written = json.loads((out / "run_config.json").read_text())
    assert written["arguments"]["learning_rate"] == 1e-4 and written["arguments"]["block_size"] == 64
    assert written["processes"] == 1 and written["per_device_train_batch_size"] == 2
    assert {f["path"]: f["bytes"] for f in written["data_files"]} == {str(f.resolve()): f.stat().st_size for f in files}
    assert {"python", "torch", "transformers", "trl", "accelerate"} <= set(written["versions"])
    if (REPO_ROOT / ".git").exists():
        assert len(written["git"]["commit"]) == 40
    assert config["arguments"] == written["arguments"]

    fake_checkpoint(out, 2)  # something to resume from
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # refused before the model is built
        run_main(mini_qwen_pt.main, [*argv, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
                                     "--resume_from_checkpoint", "auto"])
    assert exc.value.code == 2
    err = error_lines(capsys)
    assert "per_device_train_batch_size: 2 -> 4" in err[0], err
    assert "gradient_accumulation_steps: 1 -> 2" in err[0] and "--allow_changed_resume true" in err[0]
    assert "model:" not in capsys.readouterr().out
    assert json.loads((out / "run_config.json").read_text())["per_device_train_batch_size"] == 2  # kept

    # Allowed: the change is printed and recorded.
    parsed = parse_args((mini_qwen_pt.PTDataArguments, PresetArguments, ModelArguments,
                         mini_qwen_pt.PTTrainingArguments),
                        [*argv, "--per_device_train_batch_size", "4", "--resume_from_checkpoint", "auto",
                         "--allow_changed_resume", "true"])
    record_run("pt", parsed, files, parsed[-1])
    assert "resuming despite changes (--allow_changed_resume): per_device_train_batch_size: 2 -> 4" in \
        capsys.readouterr().out
    assert json.loads((out / "run_config.json").read_text())["changed_on_resume"]


def test_compare_names_process_count_and_data_changes():
    old = {"processes": 6, "per_device_train_batch_size": 12, "gradient_accumulation_steps": 16,
           "data_files": [{"path": "/d/a.parquet", "bytes": 10}, {"path": "/d/b.parquet", "bytes": 20}],
           "arguments": {"learning_rate": 1e-4, "output_dir": "x", "resume_from_checkpoint": None}}
    new = {**old, "processes": 8, "data_files": [{"path": "/d/a.parquet", "bytes": 11}, {"path": "/d/c.parquet",
                                                                                         "bytes": 5}],
           "arguments": {"learning_rate": 2e-4, "output_dir": "y", "resume_from_checkpoint": "auto", "seed": 1}}
    blocking, other = compare(old, new)
    assert blocking[0] == "processes: 6 -> 8"
    assert "1 file(s) gone (e.g. /d/b.parquet)" in blocking[1] and "1 file(s) new (e.g. /d/c.parquet)" in blocking[1]
    assert "/d/a.parquet: 10 -> 11 bytes" in blocking[1]
    assert blocking[2:] == ["seed: None -> 1"]  # another data order
    assert other == ["learning_rate: 0.0001 -> 0.0002"]  # output_dir / resume_from_checkpoint differ by design
    assert compare(old, old) == ([], [])


def test_a_resume_without_checkpoints_is_not_compared(tmp_path):
    (tmp_path / "run_config.json").write_text(json.dumps({"processes": 6}))
    args = SimpleNamespace(resume_from_checkpoint="auto", output_dir=str(tmp_path), world_size=1, process_index=0,
                           per_device_train_batch_size=2, gradient_accumulation_steps=1, allow_changed_resume=False)
    record_run("pt", (), [], args)  # nothing to resume: a new run, whose config replaces the old file
    assert json.loads((tmp_path / "run_config.json").read_text())["processes"] == 1
