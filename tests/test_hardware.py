"""Precision from the compute capability, and the GPU demo's model size from the GPU's memory.

The GPUs are mocked (name, compute capability, memory): these run on CPU. torch's own
`is_bf16_supported()` is mocked to True everywhere, as torch answers on a T4 (it counts emulation),
to show the choice never rests on it.
"""

from pathlib import Path

import pytest
import torch

from mini_qwen.demo import demo_layers, demo_model_flags
from mini_qwen.errors import MiniQwenError
from mini_qwen.hardware import check_requested_precision, precision_defaults
from mini_qwen.model import PresetArguments, build_config

GIB = 2**30
# name, compute capability, memory as torch reports it, expected default precision
GPUS = {
    "T4": ("Tesla T4", (7, 5), 15.1 * GIB, "fp16"),
    "V100": ("Tesla V100-SXM2-16GB", (7, 0), 15.8 * GIB, "fp16"),
    "A100": ("NVIDIA A100-SXM4-40GB", (8, 0), 39.4 * GIB, "bf16"),
    "H100": ("NVIDIA H100 80GB HBM3", (9, 0), 79.1 * GIB, "bf16"),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(key):
        name, capability, memory, _ = GPUS[key]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says on a T4
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
        props = type("Props", (), {"name": name, "total_memory": int(memory),
                                   "major": capability[0], "minor": capability[1]})()
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a, **k: props)

    return install


@pytest.mark.parametrize("gpu", list(GPUS))
def test_precision_follows_the_compute_capability(fake_gpu, gpu):
    fake_gpu(gpu)
    expected = GPUS[gpu][3]
    defaults = precision_defaults()
    assert defaults == {"bf16": expected == "bf16", "fp16": expected == "fp16", "use_cpu": False}
    check_requested_precision(defaults)  # the default itself always passes


@pytest.mark.parametrize("gpu", ["T4", "V100"])
def test_bf16_asked_on_a_gpu_without_bf16_tensor_cores(fake_gpu, gpu):
    fake_gpu(gpu)
    name, (major, minor) = GPUS[gpu][0], GPUS[gpu][1]
    with pytest.raises(MiniQwenError, match=rf"--bf16 was asked but {name} \(compute capability {major}\.{minor}\) "
                                            r"has no bf16 tensor cores .* use --fp16 true"):
        check_requested_precision({"bf16": True, "fp16": False, "use_cpu": False})
    check_requested_precision({"bf16": False, "fp16": True, "use_cpu": False})
    check_requested_precision({"bf16": True, "fp16": False, "use_cpu": True})  # on CPU: slow, but allowed


@pytest.mark.parametrize("gpu", ["A100", "H100"])
def test_fp16_or_bf16_asked_on_an_ampere_or_newer_gpu(fake_gpu, gpu):
    fake_gpu(gpu)
    check_requested_precision({"bf16": True, "fp16": False, "use_cpu": False})
    check_requested_precision({"bf16": False, "fp16": True, "use_cpu": False})
    with pytest.raises(MiniQwenError, match="--bf16 and --fp16 are both set"):
        check_requested_precision({"bf16": True, "fp16": True, "use_cpu": False})


def test_cpu_defaults_to_fp32_and_refuses_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision_defaults() == {"bf16": False, "fp16": False, "use_cpu": True}
    with pytest.raises(MiniQwenError, match="--fp16 needs a CUDA GPU"):
        check_requested_precision({"fp16": True, "use_cpu": True})


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
    # bf16 autocast keeps the same fp32 state; only DPO's frozen reference is bf16 (18 bytes a parameter, not 20)
    bf16_16gb = demo_layers(int(15.1 * GIB), bf16=True, config=config)
    assert t4 <= bf16_16gb < full and 18 * params_of(config, bf16_16gb) <= 0.7 * 15.1 * GIB
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
    import importlib.util

    spec = importlib.util.spec_from_file_location("t4_fit", Path(__file__).resolve().parents[1] / "bench" / "t4_fit.py")
    t4_fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t4_fit)

    layers = t4_fit.t4_layers()
    assert 0 < layers < 48
    pt = t4_fit.stage_argv("pt", Path("/tmp/w"), layers)
    assert pt[:2] == ["--config", str(Path(__file__).resolve().parents[1] / "demo" / "pt.yaml")]
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

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "bench" / "t4_fit.py"), "--out", str(tmp_path / "out"),
                    "--work", str(tmp_path / "work")], cwd=root, timeout=900)
    summary = json.loads((tmp_path / "out" / "t4_fit.json").read_text())
    assert summary["fits"], (tmp_path / "out" / "t4_fit.md").read_text()
    for stage, row in summary["stages"].items():
        assert row["peak_reserved_gb"] <= 15.0, (stage, row)
