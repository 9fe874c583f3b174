"""mini_qwen/speed.py and the default GPU recipe's dtype, on CPU: fp32 master weights under bf16 autocast by
default (--pure_bf16 for bf16 weights), the speed flags' refusals, --kahan_summation's optimizer, and torch.compile /
liger-kernel giving the plain loss and gradients (on a GPU). The GPU figures come from bench/gpu_check.sh."""

import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import MINI_DATA, grads_of, max_diff, tiny_causal_lm

from mini_qwen.errors import MiniQwenError
from mini_qwen.model import model_dtype
from mini_qwen.speed import check_speed_flags

# ---------------------------------------------------------------- the default recipe: fp32 master weights

def args(**kw):
    base = {"use_cpu": False, "bf16": False, "fp16": False, "use_liger_kernel": False, "chunked_loss": False}
    return SimpleNamespace(**{**base, **kw})


def test_default_gpu_recipe_keeps_fp32_master_weights(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert model_dtype(args(bf16=True)) == torch.float32  # bf16 autocast over fp32 weights: the default
    assert model_dtype(args(bf16=True), pure_bf16=True) == torch.bfloat16  # --pure_bf16: bf16 weights
    assert model_dtype(args(fp16=True), pure_bf16=True) == torch.float32  # fp16 AMP always needs fp32 masters
    assert model_dtype(args(bf16=True, use_cpu=True), pure_bf16=True) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert model_dtype(args(bf16=True), pure_bf16=True) == torch.float32  # CPU: always fp32


def test_bf16_weights_lose_small_updates_that_fp32_masters_keep():
    """The README's reason for the default: a 1e-4 step on a 0.02 weight is below half a bf16 ulp."""
    weight = torch.full((1000,), 0.02)
    step = torch.full((1000,), 4e-5)
    bf16 = start = weight.bfloat16()  # one bf16 ulp at 0.02 is 2**-13 = 1.2e-4
    for _ in range(10):  # ten small steps, as in warmup or the schedule's decayed tail
        bf16 = bf16 + step.bfloat16()
        weight = weight + step
    assert torch.equal(bf16, start)  # every step rounded away
    assert weight.sub(0.02).mean().item() == pytest.approx(4e-4, rel=1e-3)


def test_speed_flags_that_cannot_run_here_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MiniQwenError, match="--use_liger_kernel needs a CUDA GPU"):
        check_speed_flags(args(use_liger_kernel=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if importlib.util.find_spec("liger_kernel") is None:
        with pytest.raises(MiniQwenError, match=r"pip install -e \.\[gpu\]"):
            check_speed_flags(args(use_liger_kernel=True, bf16=True))
    with pytest.raises(MiniQwenError, match="--pure_bf16 true needs --bf16 true"):
        check_speed_flags(args(), SimpleNamespace(pure_bf16=True))
    check_speed_flags(args(bf16=True), SimpleNamespace(pure_bf16=True))  # a valid combination passes


# ---------------------------------------------------------------- --kahan_summation: bf16 weights that keep small steps

def _regression(dtype, optimizer_cls, steps=300, **kw):
    """A least-squares fit whose updates are ~1e-4 next to weights of ~0.02: AdamW's warmup / late-schedule regime."""
    torch.manual_seed(0)
    x, target = torch.randn(256, 64), torch.randn(64, 8) * 0.02
    y = x @ target
    weight = torch.nn.Parameter((target + 0.01 * torch.randn(64, 8)).to(dtype))
    optimizer = optimizer_cls([weight], lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **kw)
    for _ in range(steps):
        loss = (x.to(dtype) @ weight - y.to(dtype)).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return weight.detach().float()


def test_kahan_summation_keeps_the_small_bf16_updates_plain_bf16_loses():
    from optimi import AdamW

    reference = _regression(torch.float32, torch.optim.AdamW)
    plain = _regression(torch.bfloat16, torch.optim.AdamW)
    kahan = _regression(torch.bfloat16, AdamW, kahan_sum=True)
    start = _regression(torch.float32, torch.optim.AdamW, steps=0)
    moved = (reference - start).abs().mean()
    assert (plain - reference).abs().mean() > 0.3 * moved  # bf16 rounding eats a large part of the fp32 path
    assert (kahan - reference).abs().mean() < 0.05 * moved  # compensated: on the fp32 path


def test_kahan_adamw_on_fp32_weights_is_trainers_adamw(tmp_path):
    """On fp32 weights (CPU) --kahan_summation is plain AdamW with Trainer's hyper-parameters: the same weights."""
    from optimi import AdamW
    from transformers import TrainingArguments

    from mini_qwen.speed import kahan_adamw

    targs = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, learning_rate=1e-3, weight_decay=0.1,
                              report_to="none")
    assert kahan_adamw(SimpleNamespace(kahan_summation=False), targs) is None
    cls, kwargs = kahan_adamw(SimpleNamespace(kahan_summation=True), targs)
    assert cls is AdamW and kwargs["kahan_sum"] and kwargs["betas"] == (targs.adam_beta1, targs.adam_beta2)
    torch.manual_seed(0)
    start = torch.randn(500)
    ours, torch_ = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt_ours = cls([ours], **kwargs)
    opt_torch = torch.optim.AdamW([torch_], lr=1e-3, betas=(targs.adam_beta1, targs.adam_beta2),
                                  eps=targs.adam_epsilon, weight_decay=0.1)
    for _ in range(20):
        grad = torch.randn(500)
        ours.grad, torch_.grad = grad.clone(), grad.clone()
        opt_ours.step(), opt_torch.step()
    assert (ours - torch_).abs().max().item() < 1e-6 and (ours - start).abs().mean().item() > 1e-3


def test_kahan_summation_flag_is_checked_up_front(monkeypatch):
    with pytest.raises(MiniQwenError, match="--kahan_summation true needs --pure_bf16 true"):
        check_speed_flags(args(bf16=True), SimpleNamespace(pure_bf16=False, kahan_summation=True))
    with pytest.raises(MiniQwenError, match="DeepSpeed keeps fp32 master weights itself"):
        check_speed_flags(args(bf16=True, deepspeed="ds_zero2.json"),
                          SimpleNamespace(pure_bf16=True, kahan_summation=True))
    check_speed_flags(args(bf16=True), SimpleNamespace(pure_bf16=True, kahan_summation=True))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "optimi" else real_find_spec(name, *a))
    with pytest.raises(MiniQwenError, match="torch-optimi is not installed"):
        check_speed_flags(args(bf16=True), SimpleNamespace(pure_bf16=True, kahan_summation=True))


def test_pt_refuses_liger_on_cpu_before_building_anything(tmp_path, capsys):
    import mini_qwen_pt
    from mini_qwen.errors import run_main

    argv = ["--model_preset", "tiny", "--use_cpu", "true", "--use_liger_kernel", "true", "--max_steps", "1",
            "--data_dir", str(MINI_DATA / "pt"), "--output_dir", str(tmp_path / "out"),
            "--report_to", "none"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(mini_qwen_pt.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--use_liger_kernel needs a CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "config.json").exists()


# ---------------------------------------------------------------- torch.compile: same loss and gradients

# Runs on CPU too (passed there once: `MINI_QWEN_CPU_COMPILE_TEST=1 pytest -k torch_compile`), but inductor needs
# ~45 s of 2 busy cores to compile the tiny model's forward + backward: more than this file's whole test budget.
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("MINI_QWEN_CPU_COMPILE_TEST") != "1",
                    reason="needs a CUDA GPU (or MINI_QWEN_CPU_COMPILE_TEST=1: ~45 s of inductor compile on CPU)")
def test_torch_compile_gives_the_eager_loss_and_gradients():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eager = tiny_causal_lm().to(device)
    ids = torch.randint(0, eager.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))
    position_ids = torch.cat([torch.arange(20), torch.arange(28)]).repeat(2, 1)  # packed documents, as PT
    batch = {"input_ids": ids.to(device), "labels": ids.to(device), "position_ids": position_ids.to(device)}
    ref = eager(**batch).loss
    ref_grads = grads_of(eager, ref)
    compiled_model = tiny_causal_lm().to(device)
    compiled = torch.compile(compiled_model)
    loss = compiled(**batch).loss
    grads = grads_of(compiled_model, loss)
    assert abs(loss.item() - ref.item()) <= 1e-4
    assert max_diff(grads, ref_grads) <= 1e-4


# ---------------------------------------------------------------- on a GPU (skipped here)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_default_recipe_trains_fp32_weights_under_bf16_autocast(tmp_path):
    import mini_qwen_pt

    common = ["--model_preset", "tiny", "--block_size", "128", "--per_device_train_batch_size", "2", "--max_steps", "2",
              "--data_dir", str(MINI_DATA / "pt"), "--report_to", "none", "--save_strategy", "no",
              "--bf16", "true", "--cache_dir", str(tmp_path / "cache")]
    mini_qwen_pt.main([*common, "--output_dir", str(tmp_path / "a")])
    mini_qwen_pt.main([*common, "--pure_bf16", "true", "--output_dir", str(tmp_path / "b")])
    a = json.loads((tmp_path / "a" / "config.json").read_text())
    b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert a.get("dtype", a.get("torch_dtype")) == "float32" and b.get("dtype", b.get("torch_dtype")) == "bfloat16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
                    reason="needs a CUDA GPU and liger-kernel (pip install -e .[gpu])")
def test_liger_kernel_gives_the_plain_loss_and_gradients():
    from transformers.integrations.liger import apply_liger_kernel

    plain, liger = tiny_causal_lm().cuda(), tiny_causal_lm().cuda()
    apply_liger_kernel(liger, {})
    ids = torch.randint(0, plain.config.vocab_size, (2, 64), device="cuda")
    ref = plain(input_ids=ids, labels=ids).loss
    loss = liger(input_ids=ids, labels=ids).loss
    assert abs(loss.item() - ref.item()) <= 1e-3
    assert max_diff(grads_of(liger, loss), grads_of(plain, ref)) <= 1e-3
