"""Talking to a trained checkpoint, and the numbers used to compare checkpoints.

- `load_for_inference` loads a stage's output folder (model + its tokenizer) for generation:
  fp32 on CPU, bf16 on a GPU that has it, in eval mode, with one clear message when the
  folder is not a complete checkpoint. A LoRA adapter folder loads as its base model with the
  adapter merged in.
- `build_input` renders a question the way each stage was trained: raw text for PT (the model
  only continues text), the Qwen chat format for SFT / DPO (`mini_qwen.chat.format_prompt`).
- `generate` stops at `<|im_end|>` (the end token of every stage, PT included: PT appends it to
  each document) or `<|endoftext|>`.
- `repetition_rate` and `distinct_n` put a number on the "复读机" loops of the original
  project's evaluation; `perplexity` scores held-out text.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mini_qwen.chat import format_prompt
from mini_qwen.checkpoint import adapter_base, check_checkpoint, is_adapter
from mini_qwen.errors import MiniQwenError

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")  # 151645, 151643


# --------------------------------------------------------------------------- loading


def inference_device(device: str | None = None) -> torch.device:
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise MiniQwenError(f"--device {device} was asked but no CUDA GPU is available; use cpu.")
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    # bf16 on CPU is ~25x slower than fp32 for a small model; fp16 may overflow a model trained in bf16;
    # bf16 on a GPU without bf16 tensor cores (T4, V100) is emulated and slow.
    from mini_qwen.hardware import native_bf16

    if device.type == "cuda" and native_bf16():
        return torch.bfloat16
    return torch.float32


def load_for_inference(path: str | Path, tokenizer_path: str | Path | None = None, device: str | None = None):
    """(model, tokenizer) of a checkpoint folder, ready to generate (eval mode, no dropout)."""
    folder = check_checkpoint(path, tokenizer_path, adapter_ok=True)  # before the slow imports: fails fast

    from transformers import AutoConfig, AutoModelForCausalLM

    from mini_qwen.model import validate_config
    from mini_qwen.tokenizer import has_tokenizer_files, load_tokenizer

    # A LoRA adapter folder: its base checkpoint's model with the adapter merged in (mini_qwen/lora.py).
    adapter = folder if is_adapter(folder) else None
    base = adapter_base(folder) if adapter else folder
    tokenizer = load_tokenizer(tokenizer_path or (folder if has_tokenizer_files(folder) else base))
    try:
        config = AutoConfig.from_pretrained(base)
    except Exception as err:  # a broken config.json: name the file, not a stack of library frames
        raise MiniQwenError(f"cannot read {base / 'config.json'}: {type(err).__name__}: {err}") from None
    validate_config(config, source=f"model config ({base / 'config.json'})")
    if config.vocab_size < len(tokenizer):
        raise MiniQwenError(f"model in '{path}' has {config.vocab_size} token embeddings but the tokenizer has "
                            f"{len(tokenizer)} tokens: this is not the tokenizer the model was trained with.")
    dev = inference_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=inference_dtype(dev), attn_implementation="sdpa")
    except (OSError, ValueError, RuntimeError) as err:
        raise MiniQwenError(f"cannot load the weights in '{base}': {type(err).__name__}: {err}") from None
    if adapter:
        from mini_qwen.lora import apply_adapter

        model = apply_adapter(model, adapter)
    model.to(dev)
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- generation


def build_input(prompt: str, mode: str = "chat", system: str | None = None) -> str:
    """What the model is given: "pt" = the raw text to continue, "chat" = the Qwen chat prompt."""
    if mode == "pt":
        return prompt
    if mode == "chat":
        return format_prompt(prompt, system)
    raise MiniQwenError(f"unknown template '{mode}': use pt (raw text, for a PT model) or chat (SFT / DPO).")


def stop_token_ids(tokenizer) -> list[int]:
    ids = []
    for token in STOP_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id >= 0 and token_id != tokenizer.unk_token_id:
            ids.append(token_id)
    return ids


@torch.no_grad()
def generate_tokens(model, tokenizer, text: str | list[int], max_new_tokens: int = 256, temperature: float = 0.7,
                    top_p: float = 0.9, repetition_penalty: float = 1.0, do_sample: bool = False,
                    streamer=None, seed: int | None = None, stopping_criteria=None) -> tuple[list[int], bool]:
    """(new token ids without the stop token, whether a stop token ended the answer).

    `text` is the prompt as text or as token ids already built (`mini_qwen.chat.encode_prompt`);
    `stopping_criteria` (transformers StoppingCriteria) can end the answer early, e.g. a server's
    cancel flag when the client went away."""
    from transformers import GenerationConfig, set_seed

    if max_new_tokens < 1:
        raise MiniQwenError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise MiniQwenError(f"sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, {top_p}); "
                            f"for deterministic answers use --do_sample false.")
    if repetition_penalty <= 0:
        raise MiniQwenError(f"repetition_penalty must be > 0 (1.0 = off), got {repetition_penalty}.")
    if isinstance(text, str):
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        ids = torch.tensor([list(text)], dtype=torch.long)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if enc["input_ids"].shape[1] == 0:
        raise MiniQwenError("the prompt is empty: type some text.")
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[-1]
    # A fresh config, so a checkpoint's generation_config.json (e.g. Qwen's top_k=20) does not leak in.
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, repetition_penalty=repetition_penalty,
                   eos_token_id=stops, pad_token_id=pad_id)
    if do_sample:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    if seed is not None:
        set_seed(seed)
    device = next(model.parameters()).device
    out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                         generation_config=GenerationConfig(**options), streamer=streamer,
                         stopping_criteria=stopping_criteria)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    stopped = False
    for i, token_id in enumerate(new):
        if token_id in stops:
            new, stopped = new[:i], True
            break
    return new, stopped


def generate(model, tokenizer, text: str, max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.9,
             repetition_penalty: float = 1.0, do_sample: bool = False, streamer=None, seed: int | None = None) -> str:
    """The model's continuation of `text` (special tokens stripped), streamed to `streamer` if given."""
    ids, _ = generate_tokens(model, tokenizer, text, max_new_tokens, temperature, top_p, repetition_penalty,
                             do_sample, streamer, seed)
    return tokenizer.decode(ids, skip_special_tokens=True)


def text_streamer(tokenizer):
    """Prints the answer token by token as it is generated (not the prompt), then a newline."""
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


# --------------------------------------------------------------------------- measures


def _ngrams(tokens, n: int) -> list[tuple]:
    tokens = list(tokens)
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(token_ids, n: int = 4) -> float:
    """Share of the answer's n-grams that repeat an n-gram seen earlier in the same answer.

    0 = every n-gram is new; a "复读机" loop (the same phrase again and again) tends to 1.
    Answers shorter than n tokens score 0. (Equals 1 - distinct_n(token_ids, n).)
    """
    grams = _ngrams(token_ids, n)
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def distinct_n(token_ids, n: int = 2) -> float:
    """Unique n-grams / all n-grams of one answer (Li et al. 2016); 0 when the answer has no n-gram."""
    grams = _ngrams(token_ids, n)
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def heldout_nll(model, tokenizer, texts, max_length: int = 512, batch_size: int = 4) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods, number of predicted tokens) over `texts`.

    Each text is tokenized alone (no stop token added) and cut into windows of `max_length`
    tokens; inside a window every token but the first is predicted from those before it.
    The output layer is applied to a few hundred positions at a time, so memory stays small
    even with Qwen's 152K-token vocabulary.
    """
    if max_length < 2:
        raise MiniQwenError(f"perplexity max_length must be at least 2, got {max_length}.")
    windows = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        windows += [ids[i:i + max_length] for i in range(0, len(ids), max_length) if len(ids[i:i + max_length]) > 1]
    windows.sort(key=len)  # similar lengths together: less padding
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        width = max(len(w) for w in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, w in enumerate(batch):  # right padding: the real tokens keep positions 0..len-1
            input_ids[row, :len(w)] = torch.tensor(w)
            mask[row, :len(w)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        valid = mask[:, 1:].bool()
        states, targets = hidden[:, :-1][valid], input_ids[:, 1:][valid]
        for i in range(0, len(targets), 256):
            logits = head(states[i:i + 256]).float()
            total += torch.nn.functional.cross_entropy(logits, targets[i:i + 256], reduction="sum").item()
        count += len(targets)
    return total, count


def perplexity(model, tokenizer, texts, max_length: int = 512, batch_size: int = 4) -> float:
    """exp(token-weighted mean NLL) of held-out texts; nan when they hold no predictable token."""
    total, count = heldout_nll(model, tokenizer, texts, max_length, batch_size)
    return math.exp(total / count) if count else float("nan")


# --------------------------------------------------------------------------- naming checkpoints on a command line
# mini_qwen_eval.py and mini_qwen_serve.py take checkpoints as `path` or `label=path` and pick each one's
# prompt format by name; both use these, so a checkpoint is labelled and templated the same way everywhere.


def is_pt_name(*names: str) -> bool:
    """pt, pt1, mini_qwen_pt, pt-small... but not sft, dpo, adapter or script."""
    return any(re.search(r"(?:^|[^a-z])pt\d*(?:$|[^a-z])", name.lower()) for name in names if name)


def _run_of(folder: Path) -> str:
    """The run folder's name for a checkpoint-N folder inside it (results/pt/checkpoint-100 -> "pt"), else ""."""
    return folder.resolve().parent.name if folder.name.startswith("checkpoint-") else ""


def parse_checkpoint_specs(specs: list[str]) -> list[tuple[str, str]]:
    """`path` or `label=path` -> [(label, path)], labels unique. An unlabelled `.../run/checkpoint-N` is
    labelled `run/checkpoint-N`, any other folder by its name."""
    out = []
    for spec in specs:
        label, path = None, spec
        if "=" in spec and not Path(spec).exists():
            label, path = spec.split("=", 1)
            if not label.strip() or not path.strip():
                raise MiniQwenError(f"bad checkpoint '{spec}': write label=path, e.g. sft=results/sft.")
        if label is None:
            folder = Path(path)
            run = _run_of(folder)
            label = f"{run}/{folder.name}" if run else folder.name or str(folder)
        out.append((label.strip(), path.strip()))
    labels = [label for label, _ in out]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise MiniQwenError(f"checkpoint label(s) {', '.join(duplicates)} used twice: name them, "
                            f"e.g. --checkpoints a=runs/a/sft b=runs/b/sft.")
    return out


def chat_or_pt(label: str, path: str, template: str = "auto") -> str:
    """The prompt format for a checkpoint: `template` when set, else "pt" (raw text) when its label or
    folder says pt (pt, mini_qwen_pt, results/pt/checkpoint-100), else "chat"."""
    if template != "auto":
        return template
    folder = Path(path)
    return "pt" if is_pt_name(label, folder.name, _run_of(folder)) else "chat"


@dataclass
class Checkpoint:
    """A checkpoint named on a command line: its label (the report's column, the API's model id), its folder
    and its prompt format ("pt" or "chat")."""

    label: str
    path: str
    template: str


def named_checkpoints(specs: list[str], template: str = "auto") -> list[Checkpoint]:
    """`path` / `label=path` specs as Checkpoints, each with its prompt format (`chat_or_pt`)."""
    return [Checkpoint(label, path, chat_or_pt(label, path, template)) for label, path in parse_checkpoint_specs(specs)]
