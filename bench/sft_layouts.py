"""SFT batch layouts on real-length conversations: padded, padding-free (one flattened row) and packed rows.

Which layout wastes least compute under SDPA, the attention the GPU image has (no flash-attention)?
Part 1 counts, for the same conversations and the 1b preset, the FLOPs each layout executes per trained token:
SDPA with a mask computes the whole square of every row, so a flattened batch of B conversations pays
(sum of lengths)^2 of attention, a padded batch B x longest^2 plus the pad tokens' layers, packed rows
rows x max_length^2. The ideal is flash-attention's variable-length causal kernel: sum of length^2 / 2.
Part 2 (--time) times the model body's forward + backward per layout on CPU, with the 1b preset's widths and
--layers layers (the LM head's cost is the same in every layout: it runs on the answer positions only).

    python bench/sft_layouts.py                                   # ../shared's real Infinity-Instruct sample
    python bench/sft_layouts.py --time --layers 1 --batch 4       # + CPU timing (a few minutes on 2 cores)
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from mini_qwen.checks import find_stage_files
from mini_qwen.model import PresetArguments, build_config
from mini_qwen.packing import PackedRowsCollator, pack_conversations
from mini_qwen.sft_data import build_dataset

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "reference" / "mini_data_baai" / "sft"


def layouts(rows, batch: int, max_length: int, pad_id: int):
    """The same conversations as padded batches, flattened batches and packed-row batches."""
    out = {"padded": [], "padding-free": [], "packed rows": []}
    for i in range(0, len(rows) - batch + 1, batch):
        group = rows[i:i + batch]
        longest = max(len(r["input_ids"]) for r in group)
        ids = torch.full((batch, longest), pad_id)
        mask = torch.zeros((batch, longest), dtype=torch.long)
        for j, r in enumerate(group):
            ids[j, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[j, :len(r["input_ids"])] = 1
        out["padded"].append({"input_ids": ids, "attention_mask": mask})
        flat = torch.cat([torch.tensor(r["input_ids"]) for r in group])[None]
        positions = torch.cat([torch.arange(len(r["input_ids"])) for r in group])[None]
        out["padding-free"].append({"input_ids": flat, "position_ids": positions})
    packed = pack_conversations(Dataset.from_list(rows), max_length)
    collate = PackedRowsCollator(pad_id, max_length)
    for i in range(0, len(packed) - batch + 1, batch):
        b = collate([packed[j] for j in range(i, i + batch)])
        out["packed rows"].append({"input_ids": b["input_ids"], "position_ids": b["position_ids"]})
    return out, packed


def flops(batches, config, pad_id: int):
    """(real tokens, executed FLOPs, ideal FLOPs) of forward + backward of the layers, SDPA with a mask."""
    h, n_layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    linear = 6 * (2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size)  # per token and layer
    attention = 3 * 4 * h  # QK^T and AV, per (query, key) pair and layer, forward + backward
    real = executed = ideal = 0
    for b in batches:
        ids = b["input_ids"]
        is_real = (b["attention_mask"] == 1 if "attention_mask" in b else ids != pad_id).numpy()
        if "position_ids" in b:  # a sequence starts at each position id 0; a pad tail holds no real token
            starts = [np.flatnonzero(row == 0) for row in b["position_ids"].numpy()]
        else:
            starts = [np.array([0])] * ids.shape[0]
        lengths = [np.add.reduceat(r.astype(np.int64), s) for r, s in zip(is_real, starts)]
        n_real = int(is_real.sum())
        real += n_real
        executed += n_layers * (ids.numel() * linear + ids.shape[0] * ids.shape[1] ** 2 * attention)
        ideal += n_layers * (n_real * linear + sum(int((l ** 2).sum()) for l in lengths) * attention / 2)
    return real, executed, ideal


def time_layouts(model, batches: dict, repeats: int) -> dict:
    """Median seconds per real token of the body's forward + backward (no LM head) for each layout.

    The layouts take turns, batch by batch, so load from other jobs falls on all of them alike; one warm-up
    batch each first.
    """
    body = model.model
    per_token = {name: [] for name in batches}
    for i in range(repeats + 1):
        for name, group in batches.items():
            b = group[i % len(group)]
            n_real = int(b["attention_mask"].sum()) if "attention_mask" in b \
                else int((b["input_ids"] != body.config.pad_token_id).sum())
            t0 = time.perf_counter()
            body(**b, use_cache=False).last_hidden_state.float().pow(2).mean().backward()
            if i:
                per_token[name].append((time.perf_counter() - t0) / n_real)
            model.zero_grad(set_to_none=True)
    return {name: statistics.median(times) for name, times in per_token.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REAL if REAL.is_dir() else ROOT / "mini_data" / "sft"))
    parser.add_argument("--tokenizer", default=str(ROOT / "models" / "tokenizer"))
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="conversations (padded, padding-free) or rows (packed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time", action="store_true", help="also time the model body on CPU")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dataset, _ = build_dataset(find_stage_files("sft", args.data_dir), tokenizer, args.max_length,
                               log=lambda *a, **k: None)
    rows = [dataset[i] for i in np.random.default_rng(args.seed).permutation(len(dataset))]
    lengths = [len(r["input_ids"]) for r in rows]
    batches, packed = layouts(rows, args.batch, args.max_length, tokenizer.pad_token_id)
    config = build_config(PresetArguments(model_preset="1b"))
    print(f"{len(rows)} conversations from {args.data_dir}, max_length {args.max_length}: mean {np.mean(lengths):.0f} "
          f"tokens, median {np.median(lengths):.0f}; packed into {len(packed)} rows "
          f"({len(rows) / len(packed):.2f} a row); batch {args.batch}; 1b preset ({config.num_hidden_layers} layers)")
    print("\n| layout | batch shape (first) | real tokens / computed tokens | executed / ideal FLOPs (SDPA) |")
    print("|---|---|---|---|")
    for name, group in batches.items():
        real, executed, ideal = flops(group, config, tokenizer.pad_token_id)
        computed = sum(b["input_ids"].numel() for b in group)
        print(f"| {name} | {list(group[0]['input_ids'].shape)} | {real / computed:.2f} | {executed / ideal:.2f} |")
    if not args.time:
        return
    torch.manual_seed(0)
    config.num_hidden_layers = args.layers
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    print(f"\nCPU, {torch.get_num_threads()} threads, 1b widths x {args.layers} layer(s), fp32, SDPA; body forward + "
          f"backward, median of {args.repeats} batches after a warm-up, layouts in turn:\n")
    print("| layout | ms per 1K real tokens | x packed rows |")
    print("|---|---|---|")
    timed = time_layouts(model, batches, args.repeats)
    for name, seconds in timed.items():
        print(f"| {name} | {seconds * 1e6:.0f} | {seconds / timed['packed rows']:.2f} |")


if __name__ == "__main__":
    main()
