"""The memory a training step needs on one GPU, by part, for the run planner (mini_qwen/plan.py).

Parameters come from the real model built on the meta device (no weights are allocated). Activations are
the tensors autograd saves in the forward of transformers' Qwen2 (5.24), counted tensor by tensor from
its code (modeling_qwen2.py, integrations/sdpa_attention.py) for each precision, attention kind and
packing; tests/test_plan.py checks the count against the bytes `torch.autograd.graph.saved_tensors_hooks`
sees on CPU. Bytes per token and layer (h hidden, kv the key/value width, i the MLP width, H heads,
L the sequence length, b the compute dtype's bytes):

  RMSNorm (two a layer)  it computes in fp32: saves the fp32 input (a copy when the input is bf16), 1/rms,
                         the normalised value and, unless autocast casts it per matmul, the weighted output
  attention (SDPA, FA2)  q, k, v, the output (also o_proj's input), fp32 logsumexp. With a dense mask
                         (packed documents under SDPA) transformers expands k and v to every head
                         (repeat_kv) and SDPA keeps the mask, in the compute dtype, per layer
  attention (eager)      q, k and v (expanded), the fp32 softmax [H x L] per token, its copy in the
                         compute dtype, o_proj's input
  MLP                    gate, SiLU(gate), up, their product: 4 x i
  autocast               every matmul saves its own bf16/fp16 copy of its input (q, k, v, gate, up) and
                         of its weight (the cast weights live until their layer's backward)

The loss: the model's own cross-entropy keeps the fp32 log-softmax of every position (4 x vocab bytes a
token); its backward holds three such [tokens x vocab] fp32 tensors at once (the saved log-softmax, the
incoming and the outgoing gradient), usually the step's peak. --chunked_loss (mini_qwen/memory.py) and
TRL's fused LM head (SFT, DPO) hold one chunk instead.

With a LoRA adapter (--use_peft) the model is frozen and autograd saves only what the gradients of the
activations and of the adapter need (checked the same way, tests/test_plan.py): a frozen norm keeps its fp32
input and 1/rms but not its normalised value, a frozen linear keeps nothing of its input (its weight, for the
input gradient, is a parameter), the frozen output layer keeps no hidden states, and the first layer's input,
after the frozen embeddings, needs no gradient at all. Each adapted linear adds its own: the dropout mask
(1 byte an input element), the input in the dtype lora_A multiplies in (peft casts it to the adapter's fp32,
autocast casts it back: a copy per adapted linear), and lora_A's r-wide output. QLoRA (--load_in_4bit) keeps
the blocks' linear weights in NF4 and, after peft's prepare_model_for_kbit_training, everything else in fp32,
so the hidden states between the 4-bit matmuls are fp32 (estimated from the bitsandbytes / peft code, not
measured: no CUDA here).

The peak is the largest of three moments: the start of backward (all saved activations + the loss's
backward), the end of a checkpointed backward (all gradients + one layer recomputed), and the optimizer
step. Gradients exist at the first only when gradient accumulation keeps them between micro-batches.

GPU measurements this was checked against: bench/RESULTS.md "Planned vs measured".
"""

import math
from dataclasses import dataclass, replace

import torch

GIB = 2**30
CUDA_CONTEXT_GIB = 0.75  # estimated: CUDA context, cuBLAS / cuDNN workspaces, NCCL buffers (not torch allocations)
ALLOCATOR_SHARE = 0.10  # estimated: what PyTorch's caching allocator reserves beyond its peak allocation
LOSS_CHUNK = 1024  # tokens per chunk of --chunked_loss (mini_qwen.memory.DEFAULT_CHUNK_SIZE)
FUSED_TILE = (4096, 32768)  # TRL 1.16's fused LM head tile (tokens x vocabulary), trl/kernels/chunked_logprob.py
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Params:
    """Parameter counts of the real model (built on the meta device)."""

    total: int  # every parameter once (tied embeddings counted once)
    matmul: int  # weights of every matmul: the layers' linears and the output layer (tied or not)
    output: int  # the output layer (vocab x hidden)
    layer: int  # one decoder layer
    layer_matmul: int  # one decoder layer's matmul weights

    @classmethod
    def of(cls, model) -> "Params":
        total = sum(p.numel() for p in model.parameters())
        first = model.model.layers[0]
        layer = sum(p.numel() for p in first.parameters())
        layer_matmul = sum(m.weight.numel() for m in first.modules() if isinstance(m, torch.nn.Linear))
        output = model.get_output_embeddings().weight.numel()
        return cls(total, layer_matmul * len(model.model.layers) + output, output, layer, layer_matmul)


NF4_BLOCK = 64  # bitsandbytes' 4-bit block size (Params4bit's default; transformers' BitsAndBytesConfig sets none)
# The linears of a Qwen2 block by the tensor they read: (names, reads the hidden width or the MLP width).
BLOCK_INPUTS = ((("q_proj", "k_proj", "v_proj"), "attention input"), (("o_proj",), "attention output"),
                (("gate_proj", "up_proj"), "MLP input"), (("down_proj",), "MLP product"))


def nf4_bytes(numel: int) -> int:
    """Bytes bitsandbytes keeps for one weight quantized to 4 bits (bitsandbytes.functional.quantize_4bit): two
    codes a byte, one fp32 absmax a block of NF4_BLOCK weights, and the 16-value fp32 code book of the tensor."""
    return (numel + 1) // 2 + 4 * -(-numel // NF4_BLOCK) + 16 * 4


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter on a frozen model (--use_peft): what decides its memory besides the model's shape."""

    trainable: int  # the adapter's parameters, counted by peft on the meta model
    rank: int
    dropout: bool  # --lora_dropout > 0: each adapted linear keeps a dropout mask and a copy of its input
    targets: frozenset  # the linears of each block it adapts (q_proj, ..., down_proj)
    dtype: str = "fp32"  # its parameters, gradients and AdamW moments (peft upcasts to fp32; TRL: bf16 under QLoRA)
    quantized: bool = False  # --load_in_4bit: the blocks' linear weights in NF4 (bitsandbytes)
    nf4: int = 0  # bytes of the blocks' linear weights in NF4 (with their constants), when quantized


def meta_model(config, dtype: torch.dtype = torch.float32):
    """The real transformers model for `config`, on the meta device: shapes and dtypes, no memory."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # TrainingArguments with a ZeRO-3 config makes from_config partition the model across processes (it would
    # start torch.distributed); a plan only counts parameters.
    unset_hf_deepspeed_config()
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


# The names DeepSpeed's DtypeEnum accepts for the dtypes a ZeRO config can name.
DEEPSPEED_DTYPES = {name: short for short, names in (("fp32", ("fp32", "float32", "float", "torch.float32")),
                                                     ("bf16", ("bf16", "bfloat16", "torch.bfloat16")),
                                                     ("fp16", ("fp16", "float16", "half", "torch.float16")))
                    for name in names}


@dataclass(frozen=True)
class ZeRO:
    """What of a DeepSpeed config decides memory."""

    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket: float = 5e8  # elements
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    prefetch_bucket: float = 5e7  # elements (ZeRO-3)
    source: str = ""
    # data_types.grad_accum_dtype and communication_data_type as written (fp32 / bf16 / fp16), None when unset:
    # DeepSpeed then accumulates and reduces in the model's dtype (engine.get_data_types, communication_data_type).
    grad_accum_dtype: str | None = None
    comm_dtype: str | None = None

    def accumulation(self, model_dtype: str) -> str:
        """The dtype gradients are summed in over micro-batches, for a model DeepSpeed runs in `model_dtype`."""
        return self.grad_accum_dtype or model_dtype

    def communication(self, model_dtype: str) -> str:
        """The dtype gradients are reduced across GPUs in."""
        return self.comm_dtype or model_dtype

    @classmethod
    def from_config(cls, ds: dict, hidden: int, source: str) -> "ZeRO":
        """An unset bucket size is DeepSpeed's default; "auto" is what transformers fills in from the hidden size
        (integrations/deepspeed.py)."""
        zero = ds.get("zero_optimization", {}) or {}

        def number(key, default, auto):
            value = zero.get(key, default)
            return float(auto if value == "auto" else value)

        def device(key):
            return (zero.get(key) or {}).get("device", "none") not in ("none", None)

        def dtype(value):
            return DEEPSPEED_DTYPES.get(str(value).lower()) if value is not None else None

        return cls(int(zero.get("stage", 0)), device("offload_optimizer"), device("offload_param"),
                   number("reduce_bucket_size", 5e8, hidden * hidden), bool(zero.get("overlap_comm", False)),
                   bool(zero.get("contiguous_gradients", True)),
                   number("stage3_prefetch_bucket_size", 5e7, 0.9 * hidden * hidden), source,
                   dtype((ds.get("data_types") or {}).get("grad_accum_dtype")),
                   dtype(ds.get("communication_data_type")))


@dataclass(frozen=True)
class Setup:
    """Everything that decides one GPU's memory in a training step."""

    config: object  # the model's Qwen2 config
    params: Params
    weights: str  # dtype of the trained weights: fp32 (master weights, or no mixed precision), bf16, fp16
    autocast: str | None  # bf16 / fp16 autocast over fp32 weights, or None
    world: int = 1  # data-parallel processes (GPUs)
    zero: ZeRO | None = None  # DeepSpeed, or None (one GPU, or DDP when world > 1)
    kahan: bool = False  # --kahan_summation: a bf16 compensation buffer per parameter
    batch: int = 1  # sequences per micro-batch and GPU
    rows: int = 1  # rows a sequence becomes in the forward (DPO: chosen + rejected)
    seq_len: int = 1024
    mask: str | None = None  # a dense attention mask: "rows" (one per row), "flattened" (one over the batch), None
    attention: str = "sdpa"
    checkpointing: bool = False
    loss: str = "full"  # full | chunked | fused_head | answer_only | liger
    trained_share: float = 1.0  # share of positions with a label (SFT / DPO answers)
    grad_accum: int = 1
    reference: str | None = None  # DPO's frozen copy: its dtype; None without one
    adapter: Adapter | None = None  # --use_peft: a LoRA adapter trains on the frozen model (`weights` is its dtype)
    device: str = "cuda"  # "cpu": as autograd saves on CPU (tests/test_plan.py checks the count there)

    @property
    def tokens(self) -> int:
        return self.batch * self.rows * self.seq_len

    @property
    def mask_len(self) -> int | None:
        """The length of the dense mask's rows: a row, or the whole flattened batch (padding-free)."""
        return None if self.mask is None else self.seq_len if self.mask == "rows" else self.tokens

    @property
    def compute(self) -> int:
        """Bytes of the dtype matmuls run in."""
        return DTYPE_BYTES[self.autocast or self.weights]

    @property
    def trained(self) -> int:
        """Parameters that train: the adapter's, or every one."""
        return self.adapter.trainable if self.adapter else self.params.total

    @property
    def trained_dtype(self) -> str:
        """The dtype of the trained parameters, their gradients and AdamW moments."""
        return self.adapter.dtype if self.adapter else self.weights

    @property
    def frozen(self) -> float:
        """Bytes of the frozen model under an adapter (0 without one): NF4 blocks + fp32 rest under QLoRA."""
        if self.adapter is None:
            return 0.0
        if self.adapter.quantized:
            block_linears = self.params.matmul - self.params.output
            return self.adapter.nf4 + (self.params.total - block_linears) * DTYPE_BYTES[self.weights]
        return self.params.total * DTYPE_BYTES[self.weights]


def _attention_saved(s: Setup, o_proj_input: bool) -> float:
    """Bytes the attention saves per token in one layer; `o_proj_input`: o_proj keeps its input (its weight
    trains). SDPA / flash keep their output, which is o_proj's input already; eager makes a copy."""
    c = s.config
    h, heads = c.hidden_size, c.num_attention_heads
    kv = c.num_key_value_heads * (h // heads)
    b = s.compute
    repeat = s.attention == "eager" or (s.mask_len is not None and s.attention == "sdpa")
    kv_saved = h if repeat else kv
    if s.attention == "eager":
        return b * (3 + o_proj_input) * h + 4 * heads * s.seq_len + (b * heads * s.seq_len if b != 4 else 0)
    attention = b * (2 * h + 2 * kv_saved) + 4 * heads
    if s.mask_len is not None and s.attention == "sdpa":
        attention += b * s.mask_len
    return attention


def _layer_saved(s: Setup, checkpointing: bool, first: bool = False) -> float:
    """Bytes autograd saves per token in one decoder layer (`first`: the model's first layer)."""
    c = s.config
    h, i = c.hidden_size, c.intermediate_size
    b, residual = s.compute, DTYPE_BYTES[s.weights]
    if checkpointing:  # torch.utils.checkpoint keeps the layer's input only
        return residual * h
    if s.adapter:
        return _frozen_layer_saved(s, first)
    if s.autocast:  # fp32 input and normalised value; the weighted output is saved as each matmul's own cast
        norms = 2 * (8 * h + 4) + (3 + 2) * 2 * h
    elif b == 4:
        norms = 2 * (12 * h + 4)
    else:  # an fp32 copy of the bf16 input, then bf16 normalised and weighted values
        norms = 2 * (8 * h + 4)
    return norms + _attention_saved(s, o_proj_input=True) + 4 * b * i


def _frozen_layer_saved(s: Setup, first: bool) -> float:
    """Bytes saved per token in one layer of a frozen model under a LoRA adapter. The first layer's input comes
    from the frozen embeddings and needs no gradient: there only what follows an adapter does (with gradient
    checkpointing TRL makes the embeddings' output require one, but then a layer keeps only its input)."""
    h, i = s.config.hidden_size, s.config.intermediate_size

    def adapted(*names):
        return bool(s.adapter.targets.intersection(names))

    layer_input = not first
    qkv = layer_input or adapted("q_proj", "k_proj", "v_proj")
    residual = qkv or adapted("o_proj")  # o_proj's output and the residual stream after the attention
    gate, up = residual or adapted("gate_proj"), residual or adapted("up_proj")
    # A frozen norm keeps its fp32 input (a copy when it is bf16) and 1/rms, not its normalised value.
    saved = (layer_input + residual) * (4 * h + 4)
    saved += _attention_saved(s, o_proj_input=False) if qkv else 0
    # SiLU keeps gate, the product keeps up (for gate's gradient) and SiLU(gate) (for up's), in the dtype the
    # projections return: the compute dtype, or under QLoRA their input's (4-bit linears cast back to it: fp32).
    projected = DTYPE_BYTES[s.weights] if s.adapter.quantized else s.compute
    saved += projected * i * (2 * gate + up)
    needs_grad = {"attention input": layer_input, "attention output": qkv, "MLP input": residual,
                  "MLP product": gate or up}
    return saved + _adapter_saved(s, needs_grad, kept_attention_output=qkv and s.attention != "eager")


def _adapter_saved(s: Setup, needs_grad: dict, kept_attention_output: bool) -> float:
    """Bytes the adapters of one layer save per token: per adapted linear the dropout mask, lora_A's input in the
    dtype it multiplies in, and lora_B's r-wide input (peft's lora.Linear / lora.bnb.Linear4bit forward).
    `needs_grad`: which inputs need a gradient (dropout keeps no mask otherwise); `kept_attention_output`: SDPA
    already keeps o_proj's input."""
    a, c = s.adapter, s.config
    h, i = c.hidden_size, c.intermediate_size
    residual = DTYPE_BYTES[s.weights]
    projected = residual if a.quantized else s.compute
    # Each input: its width, its dtype, and whether the frozen model saves that very tensor already.
    inputs = {"attention input": (h, residual, False), "attention output": (h, s.compute, kept_attention_output),
              "MLP input": (h, residual, False), "MLP product": (i, projected, False)}
    total = 0.0
    for names, read in BLOCK_INPUTS:
        n = len(a.targets.intersection(names))
        if not n:
            continue
        width, dtype, kept = inputs[read]
        # peft casts the input to the adapter's dtype (QLoRA under autocast: not), then autocast to its own
        source = dtype if a.quantized and s.autocast else DTYPE_BYTES[a.dtype]
        matmul = s.compute if s.autocast else source
        if a.dropout and needs_grad[read]:  # CUDA's fused dropout keeps a bool mask; on CPU the scaled noise
            total += n * width * (1 if s.device == "cuda" else source)
        if a.dropout or source != dtype or matmul != source:
            total += n * width * matmul  # a copy of its own for each adapted linear
        elif not kept:
            total += width * matmul  # the input itself, once for the linears that read it
        total += n * a.rank * matmul  # lora_A's output, lora_B's input
    return total


def _cast_weights(s: Setup, layers: bool) -> float:
    """Weight copies autocast makes and a matmul keeps for backward: every trained fp32 weight once (autocast caches
    it), a frozen fp32 weight at each use (autocast caches only weights that train); `layers`: the layers' too (not
    only the output layer's: with checkpointing they are recomputed with their layer)."""
    if not s.autocast:
        return 0.0
    if s.adapter is None:
        return 2 * (s.params.matmul if layers else s.params.output)
    frozen = 0.0
    if DTYPE_BYTES[s.weights] != s.compute:  # an fp32 frozen model (QLoRA: only the output layer is not 4-bit)
        frozen = 2 * (s.params.matmul if layers and not s.adapter.quantized else s.params.output)
    adapter = 2 * s.adapter.trainable if layers and s.adapter.dtype != s.autocast else 0.0
    return frozen + adapter


def _outside_saved(s: Setup) -> float:
    """Bytes saved per token outside the layers: token ids, rotary cos / sin, the final norm."""
    c = s.config
    h, d = c.hidden_size, c.hidden_size // c.num_attention_heads
    residual = DTYPE_BYTES[s.weights]
    rotary = 0 if s.checkpointing else 2 * d * residual  # inside the checkpointed layers they are recomputed
    if s.adapter:  # frozen embeddings keep no token ids; the frozen final norm and output layer no hidden states
        return rotary + 4 * h + 4
    # The final norm's fp32 input and normalised value; its output is saved by the output layer over every position
    # (the model's own loss: as is, or its autocast cast); the other losses copy the positions they score.
    final_norm = 8 * h + 4 if s.autocast or s.compute == 4 else 6 * h + 4
    if s.loss == "full":
        final_norm += 2 * h if s.autocast else s.compute * h
    return 8 + rotary + final_norm


def loss_bytes(s: Setup) -> tuple[float, float]:
    """(bytes the loss saves in the forward, bytes its backward adds on top at its peak)."""
    V, h = s.config.vocab_size, s.config.hidden_size
    T, b = s.tokens, s.compute
    final = DTYPE_BYTES[s.weights] * h  # the final hidden states' dtype
    trained = max(1, round(T * s.trained_share))
    if s.loss == "full":  # fp32 log-softmax saved; backward: it, the incoming and the outgoing gradient
        return T * (4 * V + 8), T * 8 * V
    if s.loss == "chunked":  # a copy of the hidden states; one chunk of logits recomputed at a time
        chunk = min(T, LOSS_CHUNK)
        return T * (final + 8), chunk * 12 * V + (2 * V * h if s.autocast else 0)
    if s.loss == "answer_only":  # SFT --fused_lm_head false: chunks of answer positions, logits kept
        kept = 0 if s.adapter else final  # the answer positions' hidden states, for the output layer's gradient
        return trained * (kept + 4 * V + 8), min(trained, LOSS_CHUNK) * 8 * V
    if s.loss == "fused_head":  # TRL: answer positions' hidden states; fp32 gradient buffers in backward
        tile_tokens, tile_vocab = FUSED_TILE
        weight_grad = 0 if s.adapter else 4 * V * h  # the output layer's fp32 gradient, unless it is frozen
        return trained * (final + 6 * 4), (min(trained, tile_tokens) * tile_vocab * b + tile_vocab * h * b
                                           + weight_grad + 4 * h * trained)
    if s.loss == "liger":  # Liger's fused linear cross-entropy computes the gradients in forward (estimated)
        return T * (4 * h + 8), 4 * V * h
    raise ValueError(f"unknown loss kind {s.loss!r}")


def activation_bytes(s: Setup) -> dict[str, float]:
    """Bytes autograd saves in one forward, by part (the figure tests/test_plan.py counts on CPU)."""
    c, T = s.config, s.tokens
    layers = c.num_hidden_layers * _layer_saved(s, s.checkpointing)
    if s.adapter and not s.checkpointing:
        layers += _layer_saved(s, False, first=True) - _layer_saved(s, False)
    parts = {"layers": T * layers, "outside layers": T * _outside_saved(s)}
    if s.autocast:  # each matmul's cast weight; under checkpointing only the output layer's outlives its layer
        parts["cast weights"] = _cast_weights(s, layers=not s.checkpointing)
    parts["loss"] = loss_bytes(s)[0]
    return parts


def _gradient_bytes(s: Setup) -> dict[str, float]:
    """Gradient bytes: "persistent" exist at every moment of the step; "full" from the backward until the
    optimizer step has used them (between micro-batches too, under gradient accumulation)."""
    P, N = s.trained, s.world
    z = s.zero
    half = DTYPE_BYTES[s.trained_dtype]
    if z is None:
        full = P * half
        return {"full": full, "persistent": full if N > 1 else 0}  # DDP's buckets: a second copy of each gradient
    # ZeRO-2 stages gradients in buckets of the model's dtype and casts a bucket to the communication dtype as it
    # reduces it (stage_1_and_2.py setup_buckets, gradient_reduction_w_predivide): ds_zero2.json's fp32 a copy more.
    comm = z.communication(s.trained_dtype)
    buckets = (2 if z.overlap_comm else 1) * z.reduce_bucket * half if z.contiguous_gradients else 0
    buckets += z.reduce_bucket * DTYPE_BYTES[comm] if comm != s.trained_dtype else 0
    if z.stage >= 2:  # each GPU sums its partition over micro-batches (on the CPU with offload), freed after the step
        accumulated = DTYPE_BYTES[z.accumulation(s.trained_dtype)]
        return {"full": 0 if z.offload_optimizer else P * accumulated / N, "persistent": buckets}
    return {"full": P * half, "persistent": buckets}


def training_state(s: Setup) -> dict[str, float]:
    """Weights, gradients (all of them) and optimizer state on one GPU, plus what ZeRO offload puts in host RAM
    and what the optimizer step adds for a moment. Under an adapter only its parameters train; "weights" is then
    the frozen model ("frozen weights") plus the adapter."""
    P, N, z = s.trained, s.world, s.zero
    wb = DTYPE_BYTES[s.trained_dtype]
    grads = _gradient_bytes(s)
    state = {"gradients": grads["full"] + grads["persistent"], "host": 0.0}
    kahan = 2 if s.kahan and wb == 2 else 0  # torch-optimi keeps a Kahan buffer for bf16 / fp16 parameters only
    if z is None:
        state["weights"] = s.frozen + P * wb
        state["optimizer state"] = P * (2 * wb + kahan)  # AdamW's moments in the weights' dtype
        state["step"] = 0.0  # fused AdamW updates in place
    else:
        state["weights"] = (s.frozen + P * wb) / (N if z.stage >= 3 else 1)
        if z.stage >= 3:  # the gathered layers and the embedding
            state["weights"] += (z.prefetch_bucket + s.params.output) * DTYPE_BYTES[s.weights]
        master = 4 * P if wb != 4 else 0.0  # fp32 master weights
        state["optimizer state"] = (master + 8 * P) / (N if z.stage >= 1 else 1)
        # the fp32 gradient partition at the step, unless the gradients were accumulated in fp32 already
        state["step"] = 4 * P / N if z.stage in (1, 2) and z.accumulation(s.trained_dtype) != "fp32" else 0.0
        if z.offload_optimizer:
            state["host"] = state["optimizer state"] + state["step"]
            state["optimizer state"] = state["step"] = 0.0
        if z.offload_param and z.stage >= 3:
            state["host"] += (s.frozen + P * wb) / N
            state["weights"] = (z.prefetch_bucket + s.params.output) * DTYPE_BYTES[s.weights]
    if s.adapter:
        state["frozen weights"] = min(state["weights"], s.frozen / (N if z is not None and z.stage >= 3 else 1))
    return state


def memory_parts(s: Setup) -> dict:
    """Bytes per GPU at the step's peak, by part, and the moment the peak falls on."""
    P, N, z = s.params.total, s.world, s.zero
    state = training_state(s)
    weights, optimizer, step_extra, host = state["weights"], state["optimizer state"], state["step"], state["host"]
    reference = 0.0
    if s.reference:
        reference = P * DTYPE_BYTES[s.reference] / (N if z is not None and z.stage >= 3 else 1)
    grads = _gradient_bytes(s)
    saved = activation_bytes(s)
    loss_saved, loss_extra = loss_bytes(s)
    mask = 0.0
    if s.mask_len is not None and s.attention in ("sdpa", "eager"):  # the boolean mask, kept for the whole step
        mask = s.tokens * s.mask_len * (1 if s.attention == "sdpa" else s.compute)
    persistent = {"weights": weights, "optimizer state": optimizer, "reference model": reference}
    if s.adapter:
        persistent = {"frozen weights": state["frozen weights"], "adapter weights": weights - state["frozen weights"],
                      "optimizer state": optimizer, "reference model": reference}
    # At the start of backward the gradients exist only when accumulation keeps them between micro-batches;
    # a chunked loss makes the (trained) output layer's gradient with its first chunk.
    first_grads = grads["full"] if s.grad_accum > 1 else (
        s.params.output * DTYPE_BYTES[s.weights]
        if s.loss in ("chunked", "answer_only") and s.zero is None and s.adapter is None else 0)
    body = sum(v for k, v in saved.items() if k != "loss")
    loss_part = loss_saved + loss_extra
    backward_start = {**persistent, "gradients": grads["persistent"] + first_grads,
                      "activations": body + mask, "logits / loss": loss_part}
    layers = s.config.num_hidden_layers
    layer_recompute = s.tokens * _layer_saved(s, False) + (
        _cast_weights(s, layers=True) - _cast_weights(s, layers=False)) / layers
    moments = {"start of backward": backward_start,
               "optimizer step": {**persistent, "gradients": grads["persistent"] + grads["full"],
                                  "optimizer state": optimizer + step_extra,
                                  "activations": 0.0, "logits / loss": 0.0}}
    if s.checkpointing:
        moments["end of backward"] = {**persistent, "gradients": grads["persistent"] + grads["full"],
                                      "activations": layer_recompute + s.tokens * _outside_saved(s) + mask,
                                      "logits / loss": 0.0}
    when, parts = max(moments.items(), key=lambda item: sum(item[1].values()))
    return {"parts": parts, "peak": when, "saved": saved, "host": host, "tensors": sum(parts.values())}


def total_with_overhead(tensors: float) -> tuple[float, float]:
    """(framework overhead, total) for a peak of `tensors` allocated bytes."""
    overhead = CUDA_CONTEXT_GIB * GIB + ALLOCATOR_SHARE * tensors
    return overhead, tensors + overhead


def fits(s: Setup, memory_gib: float) -> bool:
    return total_with_overhead(memory_parts(s)["tensors"])[1] <= memory_gib * GIB


def largest_batch(s: Setup, memory_gib: float, limit: int = 4096) -> int:
    """The largest per-device batch that fits (0: not even one sequence)."""
    if not fits(replace(s, batch=1), memory_gib):
        return 0
    low, high = 1, limit
    while low < high:  # memory grows with the batch: bisect
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(replace(s, batch=mid), memory_gib) else (low, mid - 1)
    return low


def ceil_div(a: float, b: float) -> int:
    return int(math.ceil(a / b))
