"""How much of SFT's and DPO's compute goes to real tokens, for each batch layout, on real-length rows.

Which layout wastes least under SDPA, the attention the GPU image has (no flash-attention)? For the same rows
and the 1b preset, each layout's FLOPs per real token are counted against the ideal. A masked SDPA call computes
the whole square of every row, so a flattened batch of B conversations pays (sum of lengths)^2 of attention, a
padded batch B x longest^2 plus the pad tokens' layers, a packed row max_length^2. The ideal is flash-attention's
variable-length causal kernel on the real tokens only: sum of length^2 / 2.

SFT: padded (the original), padding-free (one flattened row), packed rows (the default).
DPO: TRL pads the 2 x batch sequences (prompt + chosen, prompt + rejected) to the longest; random batches (the
default) against transformers' length-aware samplers, `--train_sampling_strategy group_by_length` and
`batch_rebalance`, at the original run's 16 micro-batches a step.
--time also times the model body's forward + backward for each SFT layout on CPU, with the 1b preset's widths and
--layers layers (the LM head costs the same in every layout: it runs on the answer positions only).

    python bench/batch_layouts.py                           # real Infinity-Instruct / -Preference rows (tests/data)
    python bench/batch_layouts.py --time --layers 1         # + CPU timing of the SFT layouts (minutes on 2 cores)
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_pt_utils import BatchRebalanceSampler, LengthGroupedSampler

from mini_qwen.data import dpo as dpo_data
from mini_qwen.data import sft as sft_data
from mini_qwen.data.checks import find_stage_files
from mini_qwen.data.packing import PackedRowsCollator, pack_conversations
from mini_qwen.model import PresetArguments, build_config

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "baai"  # real-length rows of the datasets the stages train on (tests/data/README.md)


class Cost:
    """FLOPs of forward + backward through the layers, per batch of padded rows, under SDPA with a mask."""

    def __init__(self, config):
        h = config.hidden_size
        kv = config.num_key_value_heads * (h // config.num_attention_heads)
        self.layers = config.num_hidden_layers
        self.linear = 6 * (2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size)  # per token and layer
        self.attention = 3 * 4 * h  # QK^T and AV, per (query, key) pair and layer
        self.real = self.computed = self.executed = self.ideal = 0

    def add(self, rows: int, width: int, segments: list[list[int]]):
        """A [rows, width] batch whose rows hold these real sequences (the rest is pad)."""
        n_real = sum(map(sum, segments))
        self.real += n_real
        self.computed += rows * width
        self.executed += self.layers * (rows * width * self.linear + rows * width ** 2 * self.attention)
        pairs = sum(n * n for s in segments for n in s) / 2  # causal (query, key) pairs of the real sequences
        self.ideal += self.layers * (n_real * self.linear + pairs * self.attention)

    def row(self, name: str, shape: str) -> str:
        return f"| {name} | {shape} | {self.real / self.computed:.2f} | {self.executed / self.ideal:.2f} |"


def sft_batches(rows, batch: int, max_length: int, pad_id: int) -> dict:
    """The same conversations as padded batches, flattened batches and packed-row batches (model inputs)."""
    out = {"padded": [], "padding-free": [], "packed rows": []}
    for i in range(0, len(rows) - batch + 1, batch):
        group = [torch.tensor(r["input_ids"]) for r in rows[i:i + batch]]
        longest = max(len(ids) for ids in group)
        ids = torch.full((batch, longest), pad_id)
        mask = torch.zeros((batch, longest), dtype=torch.long)
        for j, row in enumerate(group):
            ids[j, :len(row)], mask[j, :len(row)] = row, 1
        out["padded"].append({"input_ids": ids, "attention_mask": mask})
        out["padding-free"].append({"input_ids": torch.cat(group)[None],
                                    "position_ids": torch.cat([torch.arange(len(r)) for r in group])[None]})
    packed = pack_conversations(Dataset.from_list(rows), max_length)
    collate = PackedRowsCollator(pad_id, max_length)
    for i in range(0, len(packed) - batch + 1, batch):
        b = collate([packed[j] for j in range(i, i + batch)])
        out["packed rows"].append({"input_ids": b["input_ids"], "position_ids": b["position_ids"]})
    return out


def segments_of(b, pad_id: int) -> list[list[int]]:
    """Real tokens of each sequence in each row of a model-input batch (a sequence starts at position id 0)."""
    is_real = (b["attention_mask"] == 1 if "attention_mask" in b else b["input_ids"] != pad_id).numpy()
    if "position_ids" not in b:
        return [[int(r.sum())] for r in is_real]
    starts = [np.flatnonzero(p == 0) for p in b["position_ids"].numpy()]
    return [[int(n) for n in np.add.reduceat(r.astype(np.int64), s) if n] for r, s in zip(is_real, starts)]


def time_layouts(model, batches: dict, repeats: int) -> dict:
    """Median seconds per real token of the body's forward + backward (no LM head), per layout. The layouts take
    turns batch by batch, so load from other jobs falls on all of them alike; one warm-up batch each first."""
    body = model.model
    per_token = {name: [] for name in batches}
    for i in range(repeats + 1):
        for name, group in batches.items():
            b = group[i % len(group)]
            n_real = sum(map(sum, segments_of(b, body.config.pad_token_id)))
            t0 = time.perf_counter()
            body(**b, use_cache=False).last_hidden_state.float().pow(2).mean().backward()
            if i:
                per_token[name].append((time.perf_counter() - t0) / n_real)
            model.zero_grad(set_to_none=True)
    return {name: statistics.median(times) for name, times in per_token.items()}


def sft(args, tokenizer, config):
    dataset, _ = sft_data.build_dataset(find_stage_files("sft", args.sft_dir), tokenizer, args.max_length,
                                        log=lambda *a, **k: None)
    rows = [dataset[int(i)] for i in np.random.default_rng(args.seed).permutation(len(dataset))]
    lengths = [len(r["input_ids"]) for r in rows]
    batches = sft_batches(rows, args.sft_batch, args.max_length, tokenizer.pad_token_id)
    print(f"## SFT: {len(rows)} conversations from {args.sft_dir}, max_length {args.max_length}, batch "
          f"{args.sft_batch}\n\nlengths: mean {np.mean(lengths):.0f}, median {np.median(lengths):.0f}; packed "
          f"{len(rows) / len(pack_conversations(Dataset.from_list(rows), args.max_length)):.2f} a row\n")
    print("| layout | first batch | real / computed tokens | executed / ideal FLOPs |\n|---|---|---|---|")
    for name, group in batches.items():
        cost = Cost(config)
        for b in group:
            cost.add(*b["input_ids"].shape, segments_of(b, tokenizer.pad_token_id))
        print(cost.row(name, str(list(group[0]["input_ids"].shape))))
    return batches


def dpo(args, tokenizer, config):
    dataset, _ = dpo_data.build_dataset(find_stage_files("dpo", args.dpo_dir), tokenizer, args.max_length,
                                        args.max_prompt_length, log=lambda *a, **k: None)
    pairs = [(len(p), len(c), len(r)) for p, c, r in
             zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    padded = [p + max(c, r) for p, c, r in pairs]  # TRL pads both answers of a pair to the same length
    B, accum = args.dpo_batch, args.dpo_accumulation
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(pairs), generator=generator).tolist()
    grouped = list(LengthGroupedSampler(B * accum, lengths=padded, generator=generator))
    samplers = {
        "random (default)": [order[i:i + B] for i in range(0, len(order) - B + 1, B)],
        "group_by_length": [grouped[i:i + B] for i in range(0, len(grouped) - B + 1, B)],
        "batch_rebalance": list(BatchRebalanceSampler(padded, B * accum, dp_size=1, grad_accum=accum,
                                                      seed=args.seed)),
    }
    print(f"\n## DPO: {len(pairs)} pairs from {args.dpo_dir}, max_length {args.max_length}, batch {B} x "
          f"{accum} micro-batches a step\n\nprompt + chosen: mean {np.mean([p + c for p, c, _ in pairs]):.0f} "
          f"tokens; prompt + rejected: {np.mean([p + r for p, _, r in pairs]):.0f}\n")
    print("| sampler | pairs per micro-batch | real / computed tokens | executed / ideal FLOPs |\n|---|---|---|---|")
    for name, micro_batches in samplers.items():
        cost = Cost(config)
        for ids in micro_batches:
            width = max(padded[i] for i in ids)
            cost.add(2 * len(ids), width, [[pairs[i][0] + pairs[i][1]] for i in ids] +
                     [[pairs[i][0] + pairs[i][2]] for i in ids])
        sizes = sorted({len(ids) for ids in micro_batches})
        print(cost.row(name, f"{sizes[0]}–{sizes[-1]}" if len(sizes) > 1 else str(sizes[0])))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft_dir", default=str(REAL / "sft"))
    parser.add_argument("--dpo_dir", default=str(REAL / "dpo"))
    parser.add_argument("--tokenizer", default=str(ROOT / "models" / "tokenizer"))
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--max_prompt_length", type=int, default=512)
    parser.add_argument("--sft_batch", type=int, default=8, help="conversations (padded, padding-free) or rows")
    parser.add_argument("--dpo_batch", type=int, default=4)
    parser.add_argument("--dpo_accumulation", type=int, default=16, help="micro-batches a step (the original's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time", action="store_true", help="also time the SFT layouts' model body on CPU")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = build_config(PresetArguments(model_preset="1b"))
    print(f"1b preset ({config.num_hidden_layers} layers, hidden {config.hidden_size}); ideal = flash-attention's "
          f"variable-length causal kernel on the real tokens\n")
    batches = sft(args, tokenizer, config)
    dpo(args, tokenizer, config)
    if not args.time:
        return
    torch.manual_seed(0)
    config.num_hidden_layers, config.pad_token_id = args.layers, tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    timed = time_layouts(model, batches, args.repeats)
    print(f"\n## SFT layouts timed on CPU ({torch.get_num_threads()} threads, 1b widths x {args.layers} layer(s), "
          f"fp32, SDPA): body forward + backward, median of {args.repeats} batches after a warm-up, in turn\n")
    print("| layout | ms per 1K real tokens | x packed rows |\n|---|---|---|")
    for name, seconds in timed.items():
        print(f"| {name} | {seconds * 1e6:.0f} | {seconds / timed['packed rows']:.2f} |")


if __name__ == "__main__":
    main()
