"""mini_qwen/demo.py and bench/t4_fit.py: the GPU demo's model size from the GPU's memory (mocked GPUs, conftest's
`fake_gpu`), and on a real GPU the demo stages under a 15 GiB cap."""

from pathlib import Path

import pytest
import torch
from conftest import GIB, REPO_ROOT, load_script

from mini_qwen.demo import demo_layers, demo_model_flags
from mini_qwen.model import PresetArguments, build_config


def params_of(config, layers: int) -> int:
    """Parameter count of `config` with `layers` decoder layers, counted on a real (meta-device) model."""
    from transformers import AutoModelForCausalLM

    config = type(config).from_dict({**config.to_dict(), "num_hidden_layers": layers,
                                     "layer_types": ["full_attention"] * layers})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def test_demo_layers_fit_the_training_state_in_the_gpu():
    config = build_config(PresetArguments(model_preset="1b"))
    full = config.num_hidden_layers
    # fp16 AMP: 16 bytes of state a parameter + 4 for DPO's reference; 70% of the memory for it.
    t4 = demo_layers(int(15.1 * GIB), bf16=False, config=config)
    assert 8 <= t4 < full
    n = params_of(config, t4)
    assert 20 * n <= 0.7 * 15.1 * GIB < 20 * params_of(config, t4 + 1)  # the most layers that fit, not fewer
    assert 20 * params_of(config, full) > 15 * GIB  # why: the whole 1b preset does not fit a 16 GB card with fp16
    assert demo_layers(int(32 * GIB), bf16=False, config=config) == full  # a 32 GB V100 trains it all
    # bf16 autocast keeps the same fp32 state and an fp32 reference (computing as the policy does): 20 bytes too
    bf16_16gb = demo_layers(int(15.1 * GIB), bf16=True, config=config)
    assert bf16_16gb == t4
    assert demo_layers(int(39.4 * GIB), bf16=True, config=config) == full  # an A100 40GB trains it all
    assert demo_layers(int(79.1 * GIB), bf16=True, config=config) == full


@pytest.mark.parametrize("gpu, layers", [("T4", True), ("V100", True), ("A100", False), ("H100", False)])
def test_demo_model_flags_per_gpu(fake_gpu, gpu, layers):
    fake_gpu(gpu)
    config = build_config(PresetArguments(model_preset="1b"))
    flags = demo_model_flags(config)
    if layers:
        assert flags[0] == "--num_hidden_layers" and 0 < int(flags[1]) < config.num_hidden_layers
    else:
        assert flags == []


def test_demo_argv_on_a_t4_trains_fewer_layers(fake_gpu):
    from mini_qwen.demo import demo_argv

    fake_gpu("T4")
    argv = demo_argv("pt", [], pick_preset=True)
    assert argv[argv.index("--model_preset") + 1] == "1b" and "--num_hidden_layers" in argv
    assert "--num_hidden_layers" not in demo_argv("pt", ["--model_preset", "tiny"], pick_preset=True)
    argv = demo_argv("pt", ["--num_hidden_layers", "4"], pick_preset=True)
    assert argv.count("--num_hidden_layers") == 1  # the user's own choice wins


def test_t4_fit_bench_plans_fp16_demo_stages_at_the_t4_size():
    """bench/t4_fit.py (the GPU check below) runs the demo recipes in fp16 with the layers a 15 GiB GPU gets."""
    t4_fit = load_script("bench/t4_fit.py")

    layers = t4_fit.t4_layers()
    assert 0 < layers < 48
    pt = t4_fit.stage_argv("pt", Path("/tmp/w"), layers)
    assert pt[:2] == ["--config", str(REPO_ROOT / "demo" / "pt.yaml")]
    assert pt[pt.index("--num_hidden_layers") + 1] == str(layers) and pt[pt.index("--fp16") + 1] == "true"
    dpo = t4_fit.stage_argv("dpo", Path("/tmp/w"), layers)
    assert dpo[dpo.index("--bf16") + 1] == "false" and dpo[dpo.index("--model_name_or_path") + 1] == "/tmp/w/sft"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: runs the demo stages under a 15 GiB cap")
def test_demo_stages_fit_a_16gb_gpu_in_fp16(tmp_path):
    import json
    import subprocess
    import sys

    subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "t4_fit.py"), "--out", str(tmp_path / "out"),
                    "--work", str(tmp_path / "work")], cwd=REPO_ROOT, timeout=900)
    summary = json.loads((tmp_path / "out" / "t4_fit.json").read_text())
    assert summary["fits"], (tmp_path / "out" / "t4_fit.md").read_text()
    for stage, row in summary["stages"].items():
        assert row["peak_reserved_gb"] <= 15.0, (stage, row)
