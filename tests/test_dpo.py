"""DPO stage: a few real steps on a tiny model, the truncation policy, and bad input.

The real rows are the Infinity-Preference samples in tests/data/baai/dpo. The starting checkpoint is
conftest's `tiny_checkpoint`: a random tiny model saved with the project tokenizer (no PT/SFT run needed).
"""

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BAAI_SAMPLES, MINI_DATA

from mini_qwen.errors import MiniQwenError

REAL_DPO = BAAI_SAMPLES / "dpo"
MINI_DPO = MINI_DATA / "dpo"


def pair(prompt, chosen, rejected, user=None):
    user = prompt if user is None else user
    return {"task_category": "test", "prompt": prompt,
            "chosen": [{"content": user, "role": "user"}, {"content": chosen, "role": "assistant"}],
            "rejected": [{"content": user, "role": "user"}, {"content": rejected, "role": "assistant"}],
            "id": 0}


def write_pairs(path: Path, rows: list[dict], drop: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table.drop_columns(list(drop)), path)
    return path


def run_args(checkpoint, data_dir, output_dir, *extra):
    return ["--model_name_or_path", str(checkpoint), "--data_dir", str(data_dir), "--output_dir", str(output_dir),
            "--max_length", "64", "--max_prompt_length", "32", "--per_device_train_batch_size", "1",
            "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--learning_rate", "1e-4", "--seed", "0", *extra]


def _reload(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")["input_ids"]
    assert math.isfinite(model(ids).logits.float().abs().max().item())


def test_dpo_trains_on_real_pairs_and_reloads(tiny_checkpoint, tokenizer, tmp_path, capsys):
    from mini_qwen_dpo import main

    out = tmp_path / "dpo"
    trainer = main(run_args(tiny_checkpoint, REAL_DPO, out, "--max_steps", "3", "--max_pairs", "3"))
    history = trainer.state.log_history
    steps = [e for e in history if "loss" in e]
    assert len(steps) == 3
    assert all(math.isfinite(e["loss"]) for e in steps)
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "tokens_per_second"):
        assert all(key in e for e in steps), key
    # step 1 scores the starting model against itself: the reference is the same checkpoint
    assert abs(steps[0]["rewards/margins"]) < 1e-3 and abs(steps[0]["loss"] - math.log(2)) < 1e-3
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())

    # TRL took our rows as they are: one <|im_end|> closing each answer, nothing re-tokenized or re-cut
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    row = trainer.train_dataset[0]
    assert set(trainer.train_dataset.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids"}
    assert len(row["prompt_ids"]) <= 32 and len(row["prompt_ids"]) + len(row["chosen_ids"]) <= 64
    for answer in (row["chosen_ids"], row["rejected_ids"]):
        assert answer[-2:] != [im_end, im_end]
    batch = trainer.data_collator([row])
    assert batch["input_ids"][0, :batch["attention_mask"][0].sum()].tolist() == row["prompt_ids"] + row["chosen_ids"]

    printed = capsys.readouterr().out
    assert "reference: a frozen copy of" in printed and "DPO done: loss" in printed
    assert "reward accuracy" in printed
    assert (out / "training_loss.png").is_file()
    state = json.loads((out / "trainer_state.json").read_text())  # read by demo_all.py and the eval report
    assert [e for e in state["log_history"] if "rewards/margins" in e] == steps
    _reload(out)


def test_dpo_precomputed_reference(tiny_checkpoint, tmp_path, capsys):
    from mini_qwen_dpo import main

    out = tmp_path / "dpo_pre"
    trainer = main(run_args(tiny_checkpoint, REAL_DPO, out, "--max_steps", "2", "--max_pairs", "2",
                            "--precompute_ref_log_probs", "true"))
    assert trainer.ref_model is None  # no second model kept in memory
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)
    steps = [e for e in trainer.state.log_history if "loss" in e]
    assert len(steps) == 2 and all(math.isfinite(e["loss"]) for e in steps)
    assert abs(steps[0]["rewards/margins"]) < 1e-3  # precomputed with the starting model itself
    assert "precomputed before training" in capsys.readouterr().out
    _reload(out)


def _dpo_trainer(checkpoint, output_dir, *flags):
    """The DPO stage's trainer on the real sample at real lengths, built as main() builds it, without training."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mini_qwen.cli import parse_args
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.dpo import LENGTH_SAMPLERS, build_dataset, with_lengths
    from mini_qwen_dpo import DPODataArguments, DPOModelArguments, MiniDPOConfig, TokenizedDPOTrainer

    data_args, _, args = parse_args((DPODataArguments, DPOModelArguments, MiniDPOConfig), [
        "--output_dir", str(output_dir), "--use_cpu", "true", "--report_to", "none", "--seed", "0",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "4", *flags])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    dataset, _ = build_dataset(find_stage_files("dpo", str(REAL_DPO)), tokenizer, args.max_length,
                               data_args.max_prompt_length, log=lambda *a, **k: None)
    if args.train_sampling_strategy in LENGTH_SAMPLERS:
        dataset = with_lengths(dataset)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    return TokenizedDPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=dataset,
                               processing_class=tokenizer)


def _epoch(trainer) -> tuple[float, list[int]]:
    """Real tokens / computed tokens over one epoch of the trainer's own data loader, and the pair ids drawn."""
    draws = trainer._get_train_sampler()  # what get_train_dataloader draws from: ids, or lists of ids (rebalance)
    ids = [i for draw in draws for i in (draw if isinstance(draw, list) else [draw])]
    real = computed = 0
    for batch in trainer.get_train_dataloader():
        real += int(batch["attention_mask"].sum())
        computed += batch["attention_mask"].numel()
    return real / computed, ids


@pytest.mark.parametrize("strategy", ["group_by_length", "batch_rebalance"])
def test_dpo_length_samplers_cut_padding(tiny_checkpoint, tmp_path, strategy):
    """transformers' length-aware samplers work on our tokenized pairs (the `length` column survives Trainer's
    column pruning) and pad far less than random batches of the same real pairs at max_length 1024."""
    plain = _dpo_trainer(tiny_checkpoint, tmp_path / "random")
    grouped = _dpo_trainer(tiny_checkpoint, tmp_path / strategy, "--train_sampling_strategy", strategy)
    random_share, _ = _epoch(plain)
    grouped_share, ids = _epoch(grouped)
    assert sorted(set(ids)) == list(range(len(grouped.train_dataset)))  # every pair, none invented
    print(f"{strategy}: real / computed tokens {random_share:.2f} random -> {grouped_share:.2f}")
    assert random_share < 0.8 and grouped_share > random_share + 0.1, (random_share, grouped_share)


def test_dpo_pads_to_a_multiple_of_64_with_the_same_loss(tiny_checkpoint, tmp_path):
    """The default --pad_to_multiple_of 64 bounds the batch shapes (16 at max_length 1024) and changes no number:
    the same loss as padding to the longest only, on the same real pairs."""
    import torch

    bucketed = _dpo_trainer(tiny_checkpoint, tmp_path / "b")
    plain = _dpo_trainer(tiny_checkpoint, tmp_path / "p", "--pad_to_multiple_of", "none")
    assert bucketed.args.pad_to_multiple_of == 64 and plain.args.pad_to_multiple_of is None
    rows = [bucketed.train_dataset[i] for i in range(4)]
    batch_b, batch_p = bucketed.data_collator(rows), plain.data_collator(rows)
    assert batch_b["input_ids"].shape[1] % 64 == 0 and batch_b["input_ids"].shape[1] > batch_p["input_ids"].shape[1]
    bucketed.model.train(), plain.model.train()
    with torch.no_grad():
        loss_b = bucketed.compute_loss(bucketed.model, batch_b)
        loss_p = plain.compute_loss(plain.model, batch_p)
    assert abs(loss_b.item() - loss_p.item()) < 1e-5, (loss_b.item(), loss_p.item())
    shapes = {bucketed.data_collator([bucketed.train_dataset[j] for j in range(i, i + 4)])["input_ids"].shape[1]
              for i in range(0, len(bucketed.train_dataset) - 3, 4)}
    assert shapes <= set(range(64, 1025, 64))


def test_dpo_stage_keeps_lengths_for_a_length_sampler(tiny_checkpoint, tmp_path):
    from mini_qwen_dpo import main

    trainer = main(run_args(tiny_checkpoint, REAL_DPO, tmp_path / "dpo",
                            "--max_steps", "1", "--per_device_train_batch_size", "2",
                            "--train_sampling_strategy", "group_by_length"))
    assert "length" in trainer.train_dataset.column_names
    assert math.isfinite([e for e in trainer.state.log_history if "loss" in e][0]["loss"])


def test_dpo_trains_with_the_kahan_optimizer(tiny_checkpoint, tmp_path):
    """--pure_bf16 --kahan_summation: the stage builds torch-optimi's AdamW (Kahan summation) and trains with it."""
    from optimi import AdamW

    from mini_qwen_dpo import main

    trainer = main(run_args(tiny_checkpoint, MINI_DPO, tmp_path / "dpo", "--use_cpu", "true", "--bf16", "true",
                            "--pure_bf16", "true", "--kahan_summation", "true", "--max_steps", "1", "--max_pairs", "2"))
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), AdamW)
    assert math.isfinite([e for e in trainer.state.log_history if "loss" in e][0]["loss"])


def test_truncation_keeps_question_end_and_headers(tokenizer, tmp_path, capsys):
    from mini_qwen.chat import ChatTokens, format_prompt
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.dpo import build_dataset

    ct = ChatTokens.of(tokenizer)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    long_question = "background " * 200 + "So what is the capital of France?"
    long_answer = "Paris is the capital. " * 60
    rows = [pair("Is the sky blue?", "Yes, it is blue.", "No."),  # fits: untouched
            pair(long_question, "Paris.", "Lyon."),  # prompt cut from its head
            pair("Tell me about Paris.", long_answer, "I do not know.")]  # chosen answer cut at its tail
    write_pairs(tmp_path / "data" / "train.parquet", rows)
    dataset, stats = build_dataset(find_stage_files("dpo", str(tmp_path / "data")), tokenizer,
                                   max_length=64, max_prompt_length=32)
    assert stats["trained"] == 3 and stats["prompt_truncated"] == 1 and stats["answer_truncated"] == 1
    assert stats["truncated"] == 2 and stats["dropped"] == {} and stats["skipped"] == {}
    short, cut_prompt, cut_answer = dataset[0], dataset[1], dataset[2]

    # untouched pair: exactly the ids of format_prompt(...) and each answer + <|im_end|>
    assert short["prompt_ids"] == enc(format_prompt("Is the sky blue?"))
    assert short["chosen_ids"] == enc("Yes, it is blue.") + [ct.im_end]
    assert short["rejected_ids"] == enc("No.") + [ct.im_end]

    # cut prompt: within budget, user header first, assistant header last, the question's end kept
    p = cut_prompt["prompt_ids"]
    assert len(p) == 32
    assert p[:len(ct.role_header["user"])] == ct.role_header["user"]
    assert p[-len(ct.role_header["assistant"]) - 2:] == [ct.im_end] + ct.newline + ct.role_header["assistant"]
    assert tokenizer.decode(p).endswith("So what is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert cut_prompt["chosen_ids"] == enc("Paris.") + [ct.im_end]

    # cut answer: prompt + answer == max_length, and no <|im_end|> where the answer did not end
    assert len(cut_answer["prompt_ids"]) + len(cut_answer["chosen_ids"]) == 64
    assert cut_answer["chosen_ids"][-1] != ct.im_end
    assert cut_answer["rejected_ids"][-1] == ct.im_end
    assert "3 trained (2 of them truncated" in capsys.readouterr().out


def test_pair_without_answer_room_is_dropped(tokenizer, tmp_path, capsys):
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.dpo import build_dataset

    rows = [pair("word " * 100 + "question?", "Yes.", "No."),  # prompt fills the whole max_length
            pair("Hi?", "Hello.", "Go away."),
            pair("Same start?", "Shared start. " * 10 + "A", "Shared start. " * 10 + "B")]  # same once cut
    write_pairs(tmp_path / "data" / "train.parquet", rows)
    dataset, stats = build_dataset(find_stage_files("dpo", str(tmp_path / "data")), tokenizer,
                                   max_length=24, max_prompt_length=24)
    assert stats["trained"] == 1
    assert stats["dropped"] == {"no answer token left": 1, "answers identical after truncation": 1}
    assert stats["truncated"] == 0  # counts cover trained pairs only
    out = capsys.readouterr().out
    assert "dropped 1: no answer token left" in out and "note: --max_prompt_length 24 >= --max_length 24" in out
    assert len(dataset[0]["prompt_ids"]) + len(dataset[0]["chosen_ids"]) <= 24


def test_missing_chosen_column_names_file_and_column(tiny_checkpoint, tmp_path):
    from mini_qwen_dpo import main

    bad = write_pairs(tmp_path / "data" / "train.parquet", [pair("Q?", "A.", "B.")], drop=("chosen",))
    with pytest.raises(MiniQwenError) as err:
        main(run_args(tiny_checkpoint, tmp_path / "data", tmp_path / "out", "--max_steps", "1"))
    assert str(bad) in str(err.value) and "missing column 'chosen'" in str(err.value)


def test_bad_rows_skipped_and_counted_or_error(tiny_checkpoint, tokenizer, tmp_path, capsys):
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.dpo import build_dataset
    from mini_qwen_dpo import main

    rows = [pair("Q1?", "A good answer.", "A bad answer."),
            pair("Q2?", "Same answer.", "Same answer."),  # row 1: nothing to prefer
            pair("", "A.", "B."),  # row 2: empty prompt
            pair("Q4?", "   ", "B.")]  # row 3: empty chosen answer
    path = write_pairs(tmp_path / "data" / "train.parquet", rows)
    dataset, stats = build_dataset(find_stage_files("dpo", str(tmp_path / "data")), tokenizer, 128, 64)
    assert stats["rows"] == 4 and stats["trained"] == 1
    assert stats["skipped"] == {"chosen and rejected answers are identical": 1, "empty prompt": 1,
                                "chosen assistant answer is empty": 1}
    assert "3 skipped as bad rows" in capsys.readouterr().out

    with pytest.raises(MiniQwenError) as err:
        main(run_args(tiny_checkpoint, tmp_path / "data", tmp_path / "out", "--max_steps", "1",
                      "--on_bad_rows", "error"))
    message = str(err.value)
    assert str(path) in message and "row 1" in message and "identical" in message


def test_step_0_log_ratio_is_zero_with_the_gpu_dtypes(tiny_checkpoint, tmp_path, monkeypatch):
    """The frozen reference computes what the policy computes: at step 0 (no update yet) the policy's and the
    reference's log-probs of the chosen and the rejected answer agree to 1e-6. Run under bf16 autocast (CPU's
    too) with the dtypes mini_qwen.model.model_dtype picks on a GPU: an fp32-master policy, and a reference
    that used to be loaded in bf16 (its embeddings, norms and residual stream in bf16: off by ~1e-2 nats)."""
    import mini_qwen.model
    from mini_qwen_dpo import main

    gpu_dtype = mini_qwen.model.model_dtype
    monkeypatch.setattr(mini_qwen.model, "model_dtype", lambda *a, **k: gpu_dtype(*a, **{**k, "on_gpu": True}))
    trainer = main(run_args(tiny_checkpoint, REAL_DPO, tmp_path / "dpo", "--max_steps", "1", "--max_pairs", "1",
                            "--bf16", "true", "--use_cpu", "true", "--pad_to_multiple_of", "none"))
    step = [e for e in trainer.state.log_history if "loss" in e][0]  # one pair: the batch mean is that pair
    beta = trainer.args.beta
    assert abs(step["rewards/chosen"] / beta) < 1e-6 and abs(step["rewards/rejected"] / beta) < 1e-6, step
    policy = next(trainer.model.parameters()).dtype
    assert policy == next(trainer.ref_model.parameters()).dtype == mini_qwen.model.torch.float32
