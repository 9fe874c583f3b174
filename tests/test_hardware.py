"""mini_qwen/hardware.py: precision from the compute capability, the attention implementation.

The GPUs are mocked (conftest's `fake_gpu`: name, compute capability, memory): these run on CPU. torch's own
`is_bf16_supported()` is mocked to True everywhere, as torch answers on a T4 (it counts emulation),
to show the choice never rests on it.
"""

import pytest
import torch
from conftest import GPUS

from mini_qwen.errors import MiniQwenError
from mini_qwen.hardware import check_requested_precision, choose_attention, precision_defaults


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only expectation: a GPU machine has the GPU's defaults")
def test_cpu_defaults_are_fp32_and_sdpa():
    assert precision_defaults() == {"bf16": False, "fp16": False, "use_cpu": True}
    assert choose_attention("auto") == "sdpa"
    with pytest.raises(MiniQwenError, match="flash"):
        choose_attention("flash_attention_2")
    with pytest.raises(MiniQwenError, match="unknown --attn_implementation"):
        choose_attention("fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_defaults_pick_bf16_or_fp16():
    d = precision_defaults()
    assert d["use_cpu"] is False and d["fp16"] != d["bf16"]
    assert d["bf16"] == (torch.cuda.get_device_capability()[0] >= 8)
