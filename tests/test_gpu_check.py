"""The GPU check (bench/gpu_check.sh -> bench/gpu_check.py, parts in bench/gpu_check_lib/) on CPU: the bare
reference loop and the report, a stage run's profile, the run plan and its DeepSpeed variants, and its exit
status (a failed Python part or sub-run is not a success). The GPU figures themselves come from a GPU machine."""

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch):
    """bench/ is a folder of scripts run in place (not installed): put it on sys.path as running them does."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    return SimpleNamespace(entry=importlib.import_module("gpu_check"),
                           plan=importlib.import_module("gpu_check_lib.plan"),
                           runners=importlib.import_module("gpu_check_lib.runners"),
                           report=importlib.import_module("gpu_check_lib.report"))


def test_gpu_check_bare_loop_and_report_on_cpu(gpu_check, tmp_path):
    runs = tmp_path / "gpu_runs"
    assert gpu_check.runners.run_bare(runs, "tiny", batch=1, seq=16, steps=3, modes=["fp32_master", "bf16"]) == 0
    rows = {p.stem: json.loads(p.read_text()) for p in runs.glob("*.json")}
    assert set(rows) == {"bare_fp32_master", "bare_bf16"}
    for row in rows.values():
        assert row["status"] == "ok" and row["tokens_per_second"] > 0 and len(row["losses"]) == 3
        assert all(math.isfinite(x) for x in row["losses"]) and row["losses"][-1] < row["losses"][0]
    # On CPU both modes are fp32 with the same torch.manual_seed: the same losses (the loop is deterministic).
    assert rows["bare_bf16"]["losses"] == rows["bare_fp32_master"]["losses"]
    prof = rows["bare_fp32_master"]["profile"]  # 2 extra steps under torch.profiler: where a step's time goes
    assert prof["profiled_steps"] == 2 and 0 < prof["busy_ms_per_step"] and prof["kinds_ms_per_step"]["matmul"] > 0
    assert any("mm" in name for name, _, _ in prof["top"])
    gpu_check.report.report(tmp_path, {"bare": "ok", "pt_zero2": "skipped (time budget)"})
    md = (tmp_path / "gpu_results.md").read_text()
    assert "| bare_fp32_master | ok | float32 | 3 |" in md and "| 1.00 |" in md
    assert "| bare |" not in md and "| pt_zero2 | skipped (time budget) |" in md
    assert "pt_zero2 / pt: not measured (target ≥ 0.9)" in md
    assert "Where a step goes" in md and "| bare_fp32_master |" in md.split("Where a step goes")[1]


def test_gpu_check_stage_profiles_its_last_steps(gpu_check, tmp_path, built_tokenizer_dir):
    """A stage sub-run traces its last 2 steps and leaves them out of the tokens/s median."""
    argv = ["--model_preset", "tiny", "--use_cpu", "true", "--block_size", "64", "--per_device_train_batch_size",
            "2", "--gradient_accumulation_steps", "1", "--max_steps", "6", "--logging_steps", "1",  # not the default 16
            "--save_strategy", "no", "--report_to", "none",
            "--data_dir", str(REPO_ROOT / "mini_data" / "pt"), "--cache_dir", str(tmp_path / "cache"),
            "--tokenizer_path", str(built_tokenizer_dir), "--output_dir", str(tmp_path / "pt")]
    assert gpu_check.runners.run_stage("pt", "pt", tmp_path / "runs", argv) == 0
    row = json.loads((tmp_path / "runs" / "pt.json").read_text())
    assert row["status"] == "ok" and row["logged_steps"] == 6 and row["profiled_steps"] == 2
    assert row["profile"]["profiled_steps"] == 2 and row["profile"]["kinds_ms_per_step"]["matmul"] > 0


def test_gpu_check_plan_covers_the_recipe_and_every_lever(gpu_check, tmp_path):
    plan = gpu_check.plan
    names = [r["name"] for r in plan.plan(True, tmp_path)]
    assert names[:4] == ["bare", "pt", "pt_pure_bf16", "pt_zero2"]  # the reference and the recipe first
    for name in ("sft", "sft_padded", "dpo", "pt_liger", "pt_chunked_loss", "pt_compile", "pt_liger_b16",
                 "sft_bucketed", "pt_gradient_checkpointing"):
        assert name in names
    cmds = {r["name"]: " ".join(r["cmd"]) for r in plan.plan(True, tmp_path)}
    assert "--pure_bf16 true" in cmds["pt_pure_bf16"] and "--pure_bf16" not in cmds["pt"]
    assert "--packing false --padding_free false" in cmds["sft_padded"] and "--packing" not in cmds["sft"]
    assert "--packing false --padding_free true" in cmds["sft_padding_free"]
    for name, flag in (("dpo_grouped", "--train_sampling_strategy group_by_length"),
                       ("dpo_rebalance", "--train_sampling_strategy batch_rebalance"),
                       ("dpo_precompute_ref", "--precompute_ref_log_probs true")):
        assert flag in cmds[name] and "--gradient_accumulation_steps 4" in cmds[name] and flag not in cmds["dpo"]
    assert "--torch_compile true" in cmds["pt_compile"] and "accelerate" in cmds["pt_zero2"]
    # Every sub-run, launched directly or through accelerate, is the entry script's `stage` / `bare` command.
    assert all(f"{plan.ENTRY} {'bare' if n == 'bare' else 'stage'} " in cmd for n, cmd in cmds.items())
    # DeepSpeed variants: the repository's ds_zero2.json with only the named knobs changed, one process each.
    import yaml

    plan.write_accelerate_configs(tmp_path)
    base = json.loads((REPO_ROOT / "ds_zero2.json").read_text())["zero_optimization"]
    for variant, knobs in plan.DEEPSPEED_VARIANTS.items():
        accelerate = yaml.safe_load((tmp_path / f"accelerate_ds1_{variant}.yaml").read_text())
        assert accelerate["num_processes"] == 1 and accelerate["distributed_type"] == "DEEPSPEED"
        ds = json.loads(Path(accelerate["deepspeed_config"]["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"] == {**base, **knobs}
        assert f"accelerate_ds1_{variant}.yaml" in cmds[f"pt_{variant}"]
    # The loss comparison of the ZeRO-2 target (ZeRO-2 vs one process, first 20 steps within 1%).
    assert gpu_check.report.loss_gap({"losses": [10.0, 9.0]}, {"losses": [10.0, 9.09]}) == pytest.approx(0.0099,
                                                                                                       rel=1e-2)


# ---------------------------------------------------------------- exit status: a failure is not a success

def test_gpu_check_all_exits_1_when_a_sub_run_fails(gpu_check, tmp_path, monkeypatch, capsys):
    """`all` still writes the report, then exits 1 naming the failed row; a row skipped for time is no failure."""
    fail = {"name": "pt", "stage": "pt", "cmd": [sys.executable, "-c", "raise SystemExit(3)"], "timeout": 60}
    late = {"name": "bare", "stage": "bare", "cmd": [sys.executable, "-c", "pass"], "timeout": 60}
    monkeypatch.setattr(gpu_check.entry, "plan", lambda gpu, work: [fail])
    monkeypatch.delenv("GPU_CHECK_ONLY", raising=False)
    assert gpu_check.entry.run_all(tmp_path / "out", 120, False, tmp_path / "work") == 1
    assert "| pt | exit 3 |" in (tmp_path / "out" / "gpu_results.md").read_text()
    assert "1 sub-run(s) failed or timed out: pt" in capsys.readouterr().out
    monkeypatch.setattr(gpu_check.entry, "plan", lambda gpu, work: [late])
    assert gpu_check.entry.run_all(tmp_path / "out", 30, False, tmp_path / "work") == 0  # 30 s: past the budget
    assert "| bare | skipped (time budget) |" in (tmp_path / "out" / "gpu_results.md").read_text()


def test_gpu_check_report_names_a_killed_row_timeout(gpu_check, tmp_path):
    """`timeout` stops a stage with SIGTERM, which the stage's own handler turns into a SystemExit the row records
    as its failure: the report says what happened (timeout) and keeps the row's figures."""
    runs = tmp_path / "gpu_runs"
    runs.mkdir()
    (runs / "dpo_grouped.json").write_text(json.dumps({"name": "dpo_grouped", "status": "failed", "steps": 5,
                                                       "error": "SystemExit: 0", "tokens_per_second": 14.0}))
    rows = gpu_check.report.report(tmp_path, {"dpo_grouped": "timeout", "pt": "exit 1"})
    assert [(r["name"], r["status"]) for r in rows] == [("dpo_grouped", "timeout"), ("pt", "exit 1")]
    assert "| dpo_grouped | timeout | – | 5 | 14 |" in (tmp_path / "gpu_results.md").read_text()


def test_gpu_check_sh_exits_non_zero_when_its_python_part_fails(tmp_path):
    """bench/gpu_check.sh exits with the Python part's status, after writing its log to $OUT."""
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho broken python >&2\nexit 3\n")
    broken.chmod(0o755)
    env = {**os.environ, "PYTHON": str(broken), "OUT": str(tmp_path / "out"), "WHEEL_DIR": str(tmp_path / "none"),
           "GPU_CHECK_WORK": str(tmp_path / "work")}
    env.pop("GPU_CHECK_T4_FIT", None)
    done = subprocess.run(["bash", str(REPO_ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "gpu_check: done (exit 3)" in done.stdout
    assert "done (exit 3)" in (tmp_path / "out" / "gpu_check.log").read_text()  # the log still lands in $OUT
