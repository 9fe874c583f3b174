"""Training memory of the `1b` preset: full fine-tuning vs LoRA vs QLoRA (SFT and DPO), per GPU.

Run as:
    python bench/lora_memory.py                       # batch 1 x 1024 tokens, LoRA rank 16 on every block linear
    python bench/lora_memory.py --tokens 4096 --lora_r 64

How each part is obtained:
  weights, gradients, AdamW   computed from parameter counts: the 1b model is built on the meta device (no
                              memory, no weights) and wrapped by peft exactly as `--use_peft true` does, so
                              the counts of frozen and trainable parameters are the real ones. Bytes per
                              parameter are those of the stages on a bf16 GPU: full fine-tuning keeps fp32
                              weights + fp32 gradients + two fp32 AdamW moments (16 B; the DPO reference adds
                              a bf16 copy, 2 B); LoRA loads the frozen base in bf16 (2 B; mini_qwen.model:
                              `frozen`) and trains fp32 adapters (16 B each); QLoRA stores the blocks' linear
                              weights in 4-bit NF4 (0.5 B + one fp32 absmax scale per 64 weights), the
                              embeddings and norms in bf16. DPO with LoRA has no reference copy.
  activations                 measured on this CPU: the bytes autograd keeps for backward (every tensor saved by
                              a forward with gradients, counted once per storage through
                              torch.autograd.graph.saved_tensors_hooks) in one forward + loss of 1 and of 2
                              decoder layers of the 1b preset at the given shape, fp32; the difference is one
                              layer, extrapolated to 48. fp32 here: under bf16 autocast most saved tensors are
                              half as large, so on a GPU expect roughly half.
Not counted: the CUDA context and allocator slack (~1-3 GB), temporary buffers inside one op.
"""

import argparse
import json

import torch
import torch.nn.functional as F

GB = 1e9


def lora_config(rank: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def build(config, rank: int | None, device: str):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    if rank:
        model = get_peft_model(model, lora_config(rank))
    return model


def parameter_counts(config, rank: int) -> dict:
    full = build(config, None, "meta")
    lora = build(config, rank, "meta")
    block_linear = sum(m.weight.numel() for m in full.model.layers.modules() if isinstance(m, torch.nn.Linear))
    return {"total": sum(p.numel() for p in full.parameters()),
            "lora_trainable": sum(p.numel() for p in lora.parameters() if p.requires_grad),
            "block_linear": block_linear}


def saved_bytes(config, layers: int, rank: int | None, tokens: int) -> int:
    """Bytes of the tensors autograd saves for backward in one forward + causal-LM loss, each storage once."""
    cfg = config.__class__(**{**config.to_dict(), "num_hidden_layers": layers,
                              "layer_types": ["full_attention"] * layers, "max_window_layers": layers})
    torch.manual_seed(0)
    model = build(cfg, rank, "cpu")
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved too, but not activations
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, cfg.vocab_size, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
    del loss, logits, model
    return sum(storages.values())


def activations(config, rank: int | None, tokens: int) -> tuple[float, float]:
    """(all 48 layers' activations, one layer's) in bytes, from 1 and 2 measured layers."""
    one, two = saved_bytes(config, 1, rank, tokens), saved_bytes(config, 2, rank, tokens)
    per_layer = two - one
    return one - per_layer + config.num_hidden_layers * per_layer, per_layer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="1b", help="A preset in models/.")
    parser.add_argument("--tokens", type=int, default=1024, help="Tokens in one micro-batch (batch x length).")
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank (--lora_r of the stages' default).")
    parser.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)

    from mini_qwen.model import PresetArguments, build_config

    config = build_config(PresetArguments(model_preset=args.preset))
    n = parameter_counts(config, args.lora_r)
    frozen, trainable, linear = n["total"], n["lora_trainable"], n["block_linear"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    act_full, layer_full = activations(config, None, args.tokens)
    act_lora, layer_lora = activations(config, args.lora_r, args.tokens)
    nf4 = linear * (0.5 + 4 / 64) + (frozen - linear) * 2  # 4-bit blocks + fp32 absmax per 64, bf16 rest

    rows = [  # (setup, weights, gradients + AdamW, DPO reference, activations)
        ("full fine-tuning", 4 * frozen, 12 * frozen, 2 * frozen, act_full),
        (f"LoRA r={args.lora_r}", 2 * frozen + 4 * trainable, 12 * trainable, 0, act_lora),
        (f"QLoRA r={args.lora_r} (NF4)", nf4 + 4 * trainable, 12 * trainable, 0, act_lora),
    ]
    print(f"{args.preset} preset: {frozen / 1e6:.1f}M parameters ({linear / 1e6:.1f}M in the blocks' linear layers); "
          f"LoRA r={args.lora_r} on all of those: {trainable / 1e6:.2f}M trainable ({100 * trainable / frozen:.2f}%)")
    print(f"activations (fp32, {args.tokens} tokens, measured on CPU): full {act_full / GB:.2f} GB "
          f"({layer_full / 1e6:.1f} MB a layer), LoRA {act_lora / GB:.2f} GB ({layer_lora / 1e6:.1f} MB a layer)\n")
    print("| setup | weights | gradients + AdamW | SFT total | DPO reference | DPO total |")
    print("|---|---|---|---|---|---|")
    out = []
    for name, weights, optimizer, reference, act in rows:
        sft = weights + optimizer + act
        # DPO scores chosen and rejected in one batch: twice the activations of one sequence of each.
        dpo = weights + optimizer + reference + 2 * act
        print(f"| {name} | {weights / GB:.2f} GB | {optimizer / GB:.2f} GB | {sft / GB:.2f} GB | "
              f"{reference / GB:.2f} GB | {dpo / GB:.2f} GB |")
        out.append({"setup": name, "weights": weights, "gradients_adamw": optimizer, "activations": act,
                    "dpo_reference": reference, "sft_total": sft, "dpo_total": dpo})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "tokens": args.tokens, "counts": n, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
