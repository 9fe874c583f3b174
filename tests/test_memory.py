"""Chunked causal-LM loss: same loss and gradients as the model's own, without the full logits."""

import pytest
import torch
from conftest import grads_of, max_diff
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from mini_qwen.memory import ChunkedLossTrainer, chunked_causal_lm_loss, hidden_states_only_kwargs
from mini_qwen.model import PresetArguments, build_config

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset="tiny")),
                                             attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    return model


def make_batch(vocab: int, batch: int = 3, seq: int = 41, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = input_ids.clone()
    labels[torch.rand(batch, seq, generator=g) < 0.3] = -100  # scattered masked positions
    labels[0, :17] = -100  # a masked prompt
    labels[1, -1] = -100  # ignored last label (its prediction is dropped by the shift anyway)
    return input_ids, labels


@pytest.mark.parametrize("chunk_size", [7, 64, 10_000])
@pytest.mark.parametrize("use_num_items", [False, True])
@pytest.mark.parametrize("recompute", [True, False])
def test_chunked_loss_equals_model_loss(tiny_model, chunk_size, use_num_items, recompute):
    model = tiny_model
    input_ids, labels = make_batch(model.config.vocab_size)
    # What Trainer passes under gradient accumulation: the trainable targets of all micro-batches (here x2).
    num_items = (labels[..., 1:] != -100).sum() * 2 if use_num_items else None
    kwargs = {"num_items_in_batch": num_items} if use_num_items else {}

    ref = model(input_ids=input_ids, labels=labels, **kwargs).loss
    ref_grads = grads_of(model, ref)

    out = model(input_ids=input_ids, **hidden_states_only_kwargs(input_ids.device))
    assert out.logits.shape == (3, 0, model.config.vocab_size)  # the model projected nothing
    hidden = out.hidden_states[-1]
    assert hidden.shape == (3, 41, model.config.hidden_size)
    assert all(h is None for h in out.hidden_states[:-1])  # only the last one is kept
    loss = chunked_causal_lm_loss(hidden, model.lm_head.weight, labels, num_items, chunk_size=chunk_size,
                                  recompute=recompute)
    grads = grads_of(model, loss)

    assert abs(loss.item() - ref.item()) <= TOL
    assert max_diff(grads, ref_grads) <= TOL


def test_no_trainable_token_gives_zero_gradients(tiny_model):
    input_ids, labels = make_batch(tiny_model.config.vocab_size)
    labels[:] = -100
    out = tiny_model(input_ids=input_ids, **hidden_states_only_kwargs(input_ids.device))
    loss = chunked_causal_lm_loss(out.hidden_states[-1], tiny_model.lm_head.weight, labels, num_items_in_batch=1)
    grads = grads_of(tiny_model, loss)
    assert loss.item() == 0.0 and all(g.abs().max().item() == 0.0 for g in grads.values())


def _saved_logit_rows(model, fn) -> int:
    """Largest number of vocabulary-wide rows among the activations autograd keeps for backward while running fn
    (the weights, e.g. lm_head.weight.T, are not activations)."""
    vocab = model.config.vocab_size
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    rows = [0]

    def pack(t):
        if t.dim() >= 2 and t.shape[-1] == vocab and t.untyped_storage().data_ptr() not in weights:
            rows.append(t.numel() // vocab)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(rows)


def test_forward_keeps_no_logits_for_backward(tiny_model):
    input_ids, labels = make_batch(tiny_model.config.vocab_size, batch=2, seq=300)

    def standard():
        return tiny_model(input_ids=input_ids, labels=labels).loss

    def chunked():
        out = tiny_model(input_ids=input_ids, **hidden_states_only_kwargs(input_ids.device))
        return chunked_causal_lm_loss(out.hidden_states[-1], tiny_model.lm_head.weight, labels, chunk_size=64)

    assert _saved_logit_rows(tiny_model, standard) >= 600  # [2 x 300, vocab] logits kept (fp32 upcast too)
    assert _saved_logit_rows(tiny_model, chunked) == 0  # chunks are recomputed in backward, never kept


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_trainer_compute_loss_equals_standard(tiny_model, tmp_path, gradient_checkpointing):
    model = tiny_model
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                             gradient_checkpointing=gradient_checkpointing)
    input_ids, labels = make_batch(model.config.vocab_size)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": torch.arange(41).expand(3, 41)}
    num_items = (labels[..., 1:] != -100).sum()
    results = []
    for cls, extra in ((Trainer, {}), (ChunkedLossTrainer, {"loss_chunk_size": 16})):
        trainer = cls(model=model, args=args, **extra)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        results.append((loss.item(), grads_of(model, loss)))
        model.gradient_checkpointing_disable()
    (ref_loss, ref_grads), (loss, grads) = results
    assert abs(loss - ref_loss) <= TOL
    assert max_diff(grads, ref_grads) <= TOL


def test_answer_loss_sft_trainer_equals_model_loss(tiny_model, tokenizer, tmp_path):
    """The CPU SFT loss (lm_head on answer positions only) is the model's own loss, on a padding-free batch."""
    from datasets import Dataset
    from trl import SFTConfig

    from mini_qwen_sft import AnswerLossSFTTrainer

    model = tiny_model
    input_ids, labels = (t[:1] for t in make_batch(model.config.vocab_size, batch=2, seq=60))
    position_ids = torch.cat([torch.arange(25), torch.arange(35)])[None]  # two packed conversations
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    num_items = (labels[..., 1:] != -100).sum()
    ref = model(**batch, num_items_in_batch=num_items).loss
    ref_grads = grads_of(model, ref)

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", padding_free=True, max_length=None,
                     dataset_kwargs={"skip_prepare_dataset": True})
    data = Dataset.from_dict({"input_ids": input_ids.tolist(), "labels": labels.tolist()})
    trainer = AnswerLossSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    model.train()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    assert abs(loss.item() - ref.item()) <= TOL
    assert max_diff(grads_of(model, loss), ref_grads) <= TOL
