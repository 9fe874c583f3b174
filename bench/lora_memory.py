"""Training memory of the `1b` preset: full fine-tuning vs LoRA vs QLoRA (SFT and DPO), per GPU, from the run
planner's memory model, with its activation count checked against what autograd saves on this CPU.

Run as:
    python bench/lora_memory.py                       # 1 x 1024 tokens, LoRA rank 16 on every block linear
    python bench/lora_memory.py --tokens 4096 --lora_r 64

The figures: every part comes from the planner's memory model (mini_qwen/plan_memory.py, the arithmetic
mini_qwen_plan.py uses), for the stages' recipes on a bf16 GPU: full fine-tuning keeps fp32 weights, gradients
and AdamW moments under bf16 autocast (DPO adds its frozen fp32 reference, loaded as the policy is); LoRA
(`--use_peft true`, the stages' LoraConfig from mini_qwen/lora.py, built by peft on the meta model) keeps the
frozen base in bf16 and trains an fp32 adapter (DPO: the reference is the base with the adapter disabled);
QLoRA (`--load_in_4bit true`) keeps the blocks' linear weights in NF4 (bitsandbytes' 4-bit codes + fp32 absmax
per 64 weights), everything else in fp32 (peft's prepare_model_for_kbit_training) and an fp32 adapter (TRL
casts it to bf16, mini_qwen.lora.keep_adapters_fp32 back). SFT scores one sequence of --tokens with TRL's fused
LM head, DPO a pair (chosen + rejected) of --tokens each.

The check, measured on this CPU: the bytes autograd keeps for backward (every tensor saved by a forward with
gradients, each storage once, weights excluded, torch.autograd.graph.saved_tensors_hooks) in one fp32 forward
+ causal-LM loss of 1 and of 2 decoder layers of the preset at --tokens, full and with the LoRA adapter; the
difference is one layer, extrapolated to all of them, and compared with the planner's count of the same fp32
CPU forward. QLoRA needs CUDA: its activations are the planner's alone.
Not counted: the CUDA context and allocator slack (the planner's "framework overhead"), temporary buffers
inside one op.
"""

import argparse
import json
from dataclasses import replace

import torch
import torch.nn.functional as F

GB = 1e9


def build(config, lora_args, device: str):
    """The model on `device` (fp32, SDPA), wrapped by peft with the stages' LoraConfig when `lora_args`."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mini_qwen.lora import block_linear_names, peft_config

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    if lora_args is not None:
        model = get_peft_model(model, peft_config(lora_args, block_linear_names(model), "the preset's blocks"))
    return model


def saved_bytes(config, layers: int, lora_args, tokens: int) -> int:
    """Bytes of the tensors autograd saves for backward in one forward + causal-LM loss, each storage once."""
    cfg = config.__class__(**{**config.to_dict(), "num_hidden_layers": layers,
                              "layer_types": ["full_attention"] * layers, "max_window_layers": layers})
    torch.manual_seed(0)
    model = build(cfg, lora_args, "cpu")
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


def measured_activations(config, lora_args, tokens: int) -> float:
    """All layers' activations in bytes, from 1 and 2 measured layers (their difference is one layer)."""
    one, two = saved_bytes(config, 1, lora_args, tokens), saved_bytes(config, 2, lora_args, tokens)
    return one + (config.num_hidden_layers - 1) * (two - one)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="1b", help="A preset in models/.")
    parser.add_argument("--tokens", type=int, default=1024, help="Tokens in one sequence (batch 1).")
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank (--lora_r of the stages' default).")
    parser.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)

    from mini_qwen.lora import LoraArguments
    from mini_qwen.model import PresetArguments, build_config
    from mini_qwen.plan import lora_adapter
    from mini_qwen.plan_memory import Params, Setup, activation_bytes, memory_parts, meta_model, training_state

    config = build_config(PresetArguments(model_preset=args.preset))
    params = Params.of(meta_model(config))
    lora_args = LoraArguments(use_peft=True, lora_r=args.lora_r)
    lora = replace(lora_adapter(lora_args, config), dtype="fp32")
    qlora = replace(lora_adapter(replace(lora_args, load_in_4bit=True), config), dtype="fp32")
    base = Setup(config, params, weights="fp32", autocast="bf16", batch=1, seq_len=args.tokens, attention="sdpa",
                 loss="fused_head")
    setups = [("full fine-tuning", base),
              (f"LoRA r={args.lora_r}", replace(base, weights="bf16", adapter=lora)),
              (f"QLoRA r={args.lora_r} (NF4)", replace(base, adapter=qlora))]
    print(f"{args.preset} preset: {params.total / 1e6:.1f}M parameters "
          f"({(params.matmul - params.output) / 1e6:.1f}M in the blocks' linear layers); LoRA r={args.lora_r} on "
          f"{' '.join(sorted(lora.targets))}: {lora.trainable / 1e6:.2f}M trainable "
          f"({100 * lora.trainable / params.total:.2f}%)\n")

    print(f"planned, on a bf16 GPU, {args.tokens} tokens a sequence (GB = 1e9 bytes):\n")
    print("| setup | weights | gradients + AdamW | SFT activations + loss | SFT peak | DPO reference | "
          "DPO activations + loss | DPO peak |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name, sft in setups:
        dpo = replace(sft, rows=2, reference=None if sft.adapter else "fp32")
        state = training_state(sft)
        sft_peak, dpo_peak = memory_parts(sft), memory_parts(dpo)
        activations = {stage: sum(m["parts"].get(k, 0) for k in ("activations", "logits / loss"))
                       for stage, m in (("sft", sft_peak), ("dpo", dpo_peak))}
        reference = dpo_peak["parts"]["reference model"]
        row = {"setup": name, "weights": state["weights"], "gradients_adamw": state["gradients"]
               + state["optimizer state"], "sft_activations": activations["sft"], "sft_peak": sft_peak["tensors"],
               "dpo_reference": reference, "dpo_activations": activations["dpo"], "dpo_peak": dpo_peak["tensors"]}
        rows.append(row)
        print(f"| {name} | {row['weights'] / GB:.2f} | {row['gradients_adamw'] / GB:.2f} | "
              f"{row['sft_activations'] / GB:.2f} | {row['sft_peak'] / GB:.2f} | {reference / GB:.2f} | "
              f"{row['dpo_activations'] / GB:.2f} | {row['dpo_peak'] / GB:.2f} |")

    # The check: the same count for the fp32 forward this CPU runs, against autograd's own.
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"\nactivations of one fp32 forward + loss of {args.tokens} tokens on this CPU, all "
          f"{config.num_hidden_layers} layers:\n")
    print("| setup | planned | measured (autograd, 1 and 2 layers extrapolated) | planned / measured |")
    print("|---|---|---|---|")
    cpu = replace(base, weights="fp32", autocast=None, loss="full", device="cpu")
    checks = []
    for name, setup, flags in (("full fine-tuning", cpu, None), (f"LoRA r={args.lora_r}", replace(cpu, adapter=lora),
                                                                   lora_args)):
        planned = sum(activation_bytes(setup).values())
        measured = measured_activations(config, flags, args.tokens)
        checks.append({"setup": name, "planned": planned, "measured": measured})
        print(f"| {name} | {planned / GB:.3f} GB | {measured / GB:.3f} GB | {planned / measured:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "tokens": args.tokens, "trainable": lora.trainable, "rows": rows,
                       "cpu_check": checks}, f, indent=1)


if __name__ == "__main__":
    main()
