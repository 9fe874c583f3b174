"""Launching: run.sh starts a stage on 2 CPU processes through accelerate + DeepSpeed ZeRO-2, and
mini_qwen/launch.py's checks of the launcher against the flags.

These start real processes (each imports torch/transformers/deepspeed), so they are the slow
part of the suite; the first DeepSpeed launch on a machine also JIT-compiles a small op (~1 min).
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, logged_losses
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow

TINY = ["--config", "demo/pt.yaml", "--model_preset", "tiny", "--gradient_accumulation_steps", "1",
        "--logging_steps", "1", "--save_strategy", "no", "--learning_rate", "1e-3", "--warmup_steps", "0",
        "--seed", "0"]


def run_sh(*args, env_extra=None, timeout=600):
    env = dict(os.environ, PYTHON=sys.executable, **(env_extra or {}))
    return subprocess.run(["bash", "run.sh", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def two_process_pt(tmp_path_factory):
    out = tmp_path_factory.mktemp("pt2")
    proc = run_sh("pt", "multi", *TINY, "--per_device_train_batch_size", "2", "--max_steps", "4",
                  "--output_dir", str(out / "run"), "--cache_dir", str(out / "cache"),
                  env_extra={"ACCELERATE_CONFIG": "accelerate_config_cpu.yaml"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "run", proc.stdout + proc.stderr


def test_two_processes_train_with_deepspeed_zero2(two_process_pt):
    out, log = two_process_pt
    # both ranks report in (accelerate's --cpu flag would silently have started one)
    assert "launch: process 0/2" in log and "launch: process 1/2" in log
    assert "= global batch 4 sequences" in log
    assert "DeepSpeed" in log or "deepspeed" in log
    assert len(logged_losses(out)) == 4
    AutoModelForCausalLM.from_pretrained(out)  # the checkpoint reloads


def test_one_process_matches_two_with_the_same_global_batch(two_process_pt, tmp_path):
    two, _ = two_process_pt
    proc = run_sh("pt", "single", *TINY, "--per_device_train_batch_size", "4", "--max_steps", "4",
                  "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one_losses, two_losses = logged_losses(tmp_path / "run"), logged_losses(two)
    assert len(one_losses) == len(two_losses) == 4
    for a, b in zip(one_losses, two_losses):
        assert abs(a - b) < 0.02 * abs(a), (one_losses, two_losses)


def test_grad_accum_mismatch_gets_a_clear_message(tmp_path):
    ds = json.loads((REPO_ROOT / "ds_zero2.json").read_text())
    ds["gradient_accumulation_steps"] = 4
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    yaml = (REPO_ROOT / "accelerate_config_cpu.yaml").read_text().replace("ds_zero2.json", str(tmp_path / "ds.json"))
    (tmp_path / "acc.yaml").write_text(yaml.replace("29511", "29517"))
    proc = run_sh("pt", "multi", *TINY, "--max_steps", "1", "--gradient_accumulation_steps", "2",
                  "--output_dir", str(tmp_path / "o"), env_extra={"ACCELERATE_CONFIG": str(tmp_path / "acc.yaml")})
    assert proc.returncode != 0
    assert "gradient_accumulation_steps disagrees" in proc.stderr
    assert "sets 4 but the script computes 2" in proc.stderr
    assert "AssertionError" not in proc.stderr and "train_batch_size is not equal" not in proc.stderr


def test_sft_on_two_processes(tmp_path, tiny_checkpoint):
    proc = run_sh("sft", "multi", "--config", "demo/sft.yaml", "--model_name_or_path", str(tiny_checkpoint),
                  "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2",
                  "--output_dir", str(tmp_path / "sft"),
                  env_extra={"ACCELERATE_CONFIG": "accelerate_config_cpu.yaml"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "launch: process 0/2" in log and "launch: process 1/2" in log
    assert len(logged_losses(tmp_path / "sft")) == 2
    AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
