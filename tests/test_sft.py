"""The SFT stage (mini_qwen_sft.py): a short run from a PT output learns and reloads; the batch layouts (padded,
padding-free, packed rows) give the same per-answer-token loss and gradients; packed rows are the default.
The answer-only labels themselves are tested in test_chat.py."""

import math

import pytest
import torch
from conftest import FAST_TRAIN_FLAGS, MINI_DATA, grads_of, logged_losses, max_diff, tiny_causal_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

import mini_qwen_sft
from mini_qwen.chat import format_prompt

TOL = 1e-5


# ---------------------------------------------------------------- a short run from the PT output

def test_sft_trains_on_answers_and_reloads(pt_run, tmp_path):
    out = tmp_path / "sft"
    mini_qwen_sft.main(["--model_name_or_path", str(pt_run), "--data_dir", str(MINI_DATA / "sft"),
                        "--max_length", "128", "--max_steps", "12", "--learning_rate", "1e-3", "--warmup_steps", "1",
                        "--output_dir", str(out), *FAST_TRAIN_FLAGS])
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(format_prompt("李白是谁？"), return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert gen.shape[1] > ids.shape[1]
    assert (out / "training_loss.png").is_file()
    history = logged_losses(out)
    assert len(history) == 12 and sum(history[-4:]) < sum(history[:4])


# ---------------------------------------------------------------- padding-free SFT = padded SFT

@pytest.fixture(scope="module")
def sft_rows(tokenizer):
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.sft import build_dataset

    files = find_stage_files("sft", str(MINI_DATA / "sft"))
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
    model = tiny_causal_lm()
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
    model = tiny_causal_lm()
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

    files = find_stage_files("sft", str(MINI_DATA / "sft"))
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
