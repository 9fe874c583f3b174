"""Issue #12 on CPU: the default GPU recipe's dtype, the speed levers' refusals and equivalence, padding-free SFT
and the GPU check's bare reference loop. The GPU figures themselves come from bench/gpu_check.sh."""

import importlib.util
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import grads_of, max_diff
from transformers import AutoModelForCausalLM

from mini_qwen.errors import MiniQwenError
from mini_qwen.model import PresetArguments, build_config, model_dtype
from mini_qwen.speed import check_speed_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset="tiny")),
                                             attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    return model


# ---------------------------------------------------------------- the default recipe: fp32 master weights

def args(**kw):
    base = {"use_cpu": False, "bf16": False, "fp16": False, "use_liger_kernel": False, "chunked_loss": False}
    return SimpleNamespace(**{**base, **kw})


def test_default_gpu_recipe_keeps_fp32_master_weights(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert model_dtype(args(bf16=True)) == torch.float32  # bf16 autocast over fp32 weights: the default
    assert model_dtype(args(bf16=True), pure_bf16=True) == torch.bfloat16  # --pure_bf16: today's old path
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


# ---------------------------------------------------------------- MFU: the FLOPs a token costs

def test_flops_per_token_counts_every_matmul_and_attention_as_palm_does():
    """6 x the model's own matmul parameters (tied output layer included) + 12 x layers x hidden x seq_len."""
    from mini_qwen.callbacks import flops_per_token

    config = build_config(PresetArguments(model_preset="1b"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(config) == 6 * matmul_params  # lm_head is one of them, tied to the embedding or not
    assert flops_per_token(config, 1024) - flops_per_token(config) == 12 * 48 * 1024 * 1024


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
            "--data_dir", str(REPO_ROOT / "mini_data" / "pt"), "--output_dir", str(tmp_path / "out"),
            "--report_to", "none"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(mini_qwen_pt.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--use_liger_kernel needs a CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "config.json").exists()


# ---------------------------------------------------------------- padding-free SFT = padded SFT

@pytest.fixture(scope="module")
def sft_rows(tokenizer):
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.sft import build_dataset

    files = find_stage_files("sft", str(REPO_ROOT / "mini_data" / "sft"))
    dataset, _ = build_dataset(files[:1], tokenizer, 80, log=lambda *a, **k: None)
    rows = [dataset[i] for i in range(4)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # different lengths, or padding would not matter
    return rows


def sft_config(tmp_path, **config):
    from trl import SFTConfig

    return SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=None,
                     dataset_kwargs={"skip_prepare_dataset": True}, **config)


def sft_loss(trainer_cls, model, tokenizer, rows, tmp_path, **config):
    from datasets import Dataset

    cfg = sft_config(tmp_path, **config)

    data = Dataset.from_list(rows)
    trainer = trainer_cls(model=model, args=cfg, train_dataset=data, processing_class=tokenizer)
    batch = trainer.data_collator([dict(r) for r in rows])
    num_items = (batch["labels"] != -100).sum()  # answer tokens: the same count either way (asserted below)
    model.train()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    return batch, num_items.item(), loss, grads_of(model, loss)


@pytest.mark.parametrize("fused", [False, True], ids=["answer_loss_cpu_path", "trl_fused_head_gpu_path"])
def test_padding_free_sft_equals_padded(fused, tokenizer, sft_rows, tmp_path):
    """Same per-answer-token mean loss and gradients, flattened or padded (and flattened + bucketed)."""
    from trl import SFTTrainer

    from mini_qwen_sft import AnswerLossSFTTrainer

    cls = SFTTrainer if fused else AnswerLossSFTTrainer
    model = tiny_model()
    padded, n_padded, loss_padded, g_padded = sft_loss(cls, model, tokenizer, sft_rows, tmp_path, padding_free=False)
    flat, n_flat, loss_flat, g_flat = sft_loss(cls, model, tokenizer, sft_rows, tmp_path, padding_free=True)
    bucket, n_bucket, loss_bucket, g_bucket = sft_loss(cls, model, tokenizer, sft_rows, tmp_path,
                                                       padding_free=True, pad_to_multiple_of=64)
    real = sum(len(r["input_ids"]) for r in sft_rows)
    assert padded["input_ids"].shape == (len(sft_rows), max(len(r["input_ids"]) for r in sft_rows))
    assert flat["input_ids"].shape == (1, real)  # no pad token computed
    assert bucket["input_ids"].shape == (1, math.ceil(real / 64) * 64)
    assert "attention_mask" not in flat and flat["position_ids"][0, 0] == 0
    assert n_padded == n_flat == n_bucket > 0
    assert abs(loss_flat.item() - loss_padded.item()) <= TOL
    assert abs(loss_bucket.item() - loss_padded.item()) <= TOL
    assert max_diff(g_flat, g_padded) <= TOL
    assert max_diff(g_bucket, g_padded) <= TOL


@pytest.mark.parametrize("fused", [False, True], ids=["answer_loss_cpu_path", "trl_fused_head_gpu_path"])
def test_packed_rows_sft_equals_padded(fused, tokenizer, sft_rows, tmp_path):
    """Conversations packed into fixed [rows, max_length] rows: the padded batches' loss and gradients."""
    from datasets import Dataset
    from trl import SFTTrainer

    from mini_qwen.data.packing import PackedRowsCollator, pack_conversations
    from mini_qwen_sft import AnswerLossSFTTrainer

    cls = SFTTrainer if fused else AnswerLossSFTTrainer
    model = tiny_model()
    _, n_padded, loss_padded, g_padded = sft_loss(cls, model, tokenizer, sft_rows, tmp_path, padding_free=False)

    max_length = 128
    packed = pack_conversations(Dataset.from_list(sft_rows), max_length)
    rows = [packed[i] for i in range(len(packed))]
    assert len(rows) < len(sft_rows)  # several conversations share a row
    assert sorted(n for r in rows for n in r["seq_lengths"]) == sorted(len(r["input_ids"]) for r in sft_rows)
    batch = PackedRowsCollator(tokenizer.pad_token_id, max_length)(rows)
    assert batch["input_ids"].shape == (len(rows), max_length) and "attention_mask" not in batch
    starts = (batch["position_ids"] == 0).sum().item()  # one per conversation, one per pad tail
    assert starts == len(sft_rows) + sum(1 for r in rows if len(r["input_ids"]) < max_length)
    num_items = (batch["labels"] != -100).sum()
    assert num_items.item() == n_padded  # the same answer tokens are targets, none across a boundary
    model.train()
    trainer = cls(model=model, data_collator=PackedRowsCollator(tokenizer.pad_token_id, max_length),
                  args=sft_config(tmp_path), train_dataset=packed, processing_class=tokenizer)
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    assert abs(loss.item() - loss_padded.item()) <= TOL
    assert max_diff(grads_of(model, loss), g_padded) <= TOL
    # --packing true --padding_free true: TRL's own collator flattens the packed rows (position ids from seq_lengths)
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)
    assert flat["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
    assert (flat["labels"] != -100).sum().item() == n_padded
    loss = trainer.compute_loss(model, dict(flat), num_items_in_batch=num_items)
    assert abs(loss.item() - loss_padded.item()) <= TOL
    assert max_diff(grads_of(model, loss), g_padded) <= TOL


def test_packed_rows_give_one_batch_shape(tokenizer):
    """Every full batch of the packed real rows has the same shape, whatever the conversations' lengths."""
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.packing import PackedRowsCollator, pack_conversations
    from mini_qwen.data.sft import build_dataset

    files = find_stage_files("sft", str(REPO_ROOT / "mini_data" / "sft"))
    dataset, _ = build_dataset(files, tokenizer, 256, log=lambda *a, **k: None)
    packed = pack_conversations(dataset, 256)
    collate = PackedRowsCollator(tokenizer.pad_token_id, 256)
    shapes = {tuple(collate([packed[j] for j in range(i, i + 4)])["input_ids"].shape)
              for i in range(0, len(packed) - 3, 4)}
    assert shapes == {(4, 256)}
    lengths = [len(r) for r in packed["input_ids"]]
    assert sum(lengths) == sum(len(r) for r in dataset["input_ids"])  # no token lost
    assert sum(lengths) / (len(lengths) * 256) > 0.9  # rows nearly full: little pad compute


def test_sft_defaults_to_packed_rows():
    from mini_qwen.cli import parse_args
    from mini_qwen_sft import MiniSFTConfig, SFTDataArguments, SFTModelArguments

    *_, cfg = parse_args((SFTDataArguments, SFTModelArguments, MiniSFTConfig), ["--output_dir", "/tmp/x"])
    assert cfg.packing is True and cfg.padding_free is False and cfg.packing_strategy == "bfd"
    *_, cfg = parse_args((SFTDataArguments, SFTModelArguments, MiniSFTConfig),
                         ["--output_dir", "/tmp/x", "--packing", "false", "--padding_free", "true"])
    assert cfg.packing is False and cfg.padding_free is True


# ---------------------------------------------------------------- torch.compile: same loss and gradients

# Runs on CPU too (passed there once: `MINI_QWEN_CPU_COMPILE_TEST=1 pytest -k torch_compile`), but inductor needs
# ~45 s of 2 busy cores to compile the tiny model's forward + backward: more than this file's whole test budget.
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("MINI_QWEN_CPU_COMPILE_TEST") != "1",
                    reason="needs a CUDA GPU (or MINI_QWEN_CPU_COMPILE_TEST=1: ~45 s of inductor compile on CPU)")
def test_torch_compile_gives_the_eager_loss_and_gradients():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eager = tiny_model().to(device)
    ids = torch.randint(0, eager.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))
    position_ids = torch.cat([torch.arange(20), torch.arange(28)]).repeat(2, 1)  # packed documents, as PT
    batch = {"input_ids": ids.to(device), "labels": ids.to(device), "position_ids": position_ids.to(device)}
    ref = eager(**batch).loss
    ref_grads = grads_of(eager, ref)
    compiled_model = tiny_model().to(device)
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
              "--data_dir", str(REPO_ROOT / "mini_data" / "pt"), "--report_to", "none", "--save_strategy", "no",
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

    plain, liger = tiny_model().cuda(), tiny_model().cuda()
    apply_liger_kernel(liger, {})
    ids = torch.randint(0, plain.config.vocab_size, (2, 64), device="cuda")
    ref = plain(input_ids=ids, labels=ids).loss
    loss = liger(input_ids=ids, labels=ids).loss
    assert abs(loss.item() - ref.item()) <= 1e-3
    assert max_diff(grads_of(liger, loss), grads_of(plain, ref)) <= 1e-3
