"""Causal-LM loss without the full [tokens x vocab] logits (the 152K-vocabulary output layer).

With Qwen's 151,936-token vocabulary the logits dominate activation memory: a PT batch of
8 x 1024 tokens has 8192 x 151,936 logits, 2.5 GB in bf16 and 5 GB once upcast to fp32 for
the loss, and backward needs as much again for their gradient. `chunked_causal_lm_loss`
projects and scores `chunk_size` tokens at a time, each chunk under `torch.utils.checkpoint`:
forward keeps only the scalar loss of each chunk, and backward recomputes that chunk's logits,
so at most one chunk's logits exist at any moment. The result is the same loss (and gradients)
as the model's own `ForCausalLMLoss`: labels shifted by one, -100 ignored, summed and divided
by `num_items_in_batch` when Trainer passes it (gradient accumulation), else averaged.
The price is one extra lm_head matmul per step (the recompute), ~5% of the 1b model's FLOPs.

Other memory levers, all flags of the stage scripts:
  --gradient_checkpointing   recompute each decoder layer in backward (activations, not logits)
  --use_liger_kernel         Liger's fused linear + cross-entropy Triton kernel (GPU only, `pip install -e .[gpu]`;
                             mini_qwen/speed.py refuses it on CPU or when not installed)
  SFT / DPO                  TRL 1.16 already scores tokens through a fused, chunked LM head
                             (`trl.trainer.utils.add_fused_lm_head`, 4096-token x 32768-vocab tiles
                             recomputed in backward); `--loss_type chunked_nll` is a deprecated alias of
                             the default `nll`, which already computes the loss that way.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Trainer

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 1024  # tokens; 1024 x 151,936 fp32 logits = 0.6 GB per chunk


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    targets: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as the model: lm_head in the weights' dtype, then upcast to fp32 for the loss.
    logits = F.linear(hidden.to(weight.dtype), weight, bias).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss(hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           num_items_in_batch: torch.Tensor | int | None = None, bias: torch.Tensor | None = None,
                           chunk_size: int = DEFAULT_CHUNK_SIZE, shift_labels: torch.Tensor | None = None,
                           recompute: bool = True) -> torch.Tensor:
    """`ForCausalLMLoss(lm_head(hidden_states), labels)` without materialising the logits.

    hidden_states [batch, seq, hidden] (after the final norm), weight [vocab, hidden] (lm_head),
    labels [batch, seq] unshifted, as given to the model (position t is predicted from t-1).
    recompute=False keeps each chunk's logits for backward instead of recomputing them: no memory
    saving beyond skipping untrained positions, but no extra matmul (the faster choice on a CPU).
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.size(-1))
    valid = targets != IGNORE_INDEX
    # Score only the positions that have a target (SFT masks, document starts, the last token of a row).
    hidden, targets = hidden[valid], targets[valid]
    total = hidden.new_zeros((), dtype=torch.float32)
    if hidden.size(0) == 0:
        total = total + 0.0 * hidden_states.sum()  # keep the graph connected: a zero loss, zero gradients
    for start in range(0, hidden.size(0), chunk_size):
        end = start + chunk_size
        if recompute and torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss_sum, hidden[start:end], weight, bias, targets[start:end],
                                       use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(hidden[start:end], weight, bias, targets[start:end])
    if num_items_in_batch is None:
        return total / valid.sum()  # a mean, like F.cross_entropy (nan when nothing is trainable, as there)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class ChunkedCausalLMLoss:
    """A Trainer `compute_loss_func`: reads the final hidden states from the outputs, the lm_head from the model."""

    def __init__(self, model, chunk_size: int = DEFAULT_CHUNK_SIZE, recompute: bool = True):
        self.model, self.chunk_size, self.recompute = model, chunk_size, recompute

    def __call__(self, outputs, labels, num_items_in_batch=None):
        head = self.model.get_output_embeddings()  # looked up per call: DeepSpeed / AMP may replace the tensors
        return chunked_causal_lm_loss(outputs.hidden_states[-1], head.weight, labels, num_items_in_batch,
                                      bias=head.bias, chunk_size=self.chunk_size, recompute=self.recompute)


def hidden_states_only_kwargs(device) -> dict:
    """Model kwargs for a forward that returns the final (normed) hidden states and no logits.

    `output_hidden_states=-1` keeps only the last hidden state (transformers ties it to the normed
    `last_hidden_state`); an empty `logits_to_keep` makes the model project no position at all.
    """
    return {"output_hidden_states": -1, "logits_to_keep": torch.zeros(0, dtype=torch.long, device=device)}


class ChunkedLossTrainer(Trainer):
    """Trainer for causal-LM training whose loss never builds the full logits.

    The model is still called through its (DDP / DeepSpeed) wrapper, so gradient sync and ZeRO
    are untouched; Trainer's own `compute_loss_func` path does the label popping and the
    gradient-accumulation / multi-process scaling. Not for ZeRO-3 (the lm_head weight is used
    outside its module's forward) nor for evaluation with logits (`prediction_step` gets none).
    """

    def __init__(self, *args, loss_chunk_size: int = DEFAULT_CHUNK_SIZE, **kwargs):
        model = kwargs.get("model") if "model" in kwargs else args[0]
        kwargs["compute_loss_func"] = ChunkedCausalLMLoss(model, loss_chunk_size)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" in inputs:
            inputs = {**inputs, **hidden_states_only_kwargs(inputs["labels"].device)}
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)
