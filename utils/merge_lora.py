"""Merge a LoRA adapter (SFT / DPO with --use_peft true) into its base model: a full checkpoint.

Run as:
    python utils/merge_lora.py results/sft_lora --out results/sft_lora_merged
    python mini_qwen_dpo.py --model_name_or_path results/sft_lora_merged ...   # what a full checkpoint is for

The base is the checkpoint recorded in the adapter's adapter_config.json (base_model_name_or_path).
The merge runs in fp32 (W + B @ A * alpha / r, peft's `merge_and_unload`), and the result is saved
in the base's own dtype with the adapter's tokenizer and training history (trainer_state.json, for
the eval report). The adapter never touches the embeddings or the output layer, so tied embeddings
stay one tensor. Eval, serve and the benchmarks also take the adapter folder itself; merging is for
what needs a plain checkpoint: the next training stage, exporting, other tools.

The merged folder is written beside --out under a temporary name and renamed when complete, so a
failed merge leaves nothing that looks like a checkpoint.
"""

import argparse
import shutil
from pathlib import Path

from mini_qwen.checkpoint import adapter_base, check_checkpoint, is_adapter
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.long_run import free_space


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("adapter", help="A LoRA adapter folder (adapter_config.json + adapter_model.safetensors).")
    parser.add_argument("--out", required=True, help="Folder for the merged full checkpoint (new or empty).")
    parser.add_argument("--tokenizer_path", default=None, help="Tokenizer folder, if neither the adapter nor "
                                                                "its base has one.")
    return parser.parse_args(argv)


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MiniQwenError(f"--out '{out}' already exists and is not an empty folder: choose a new folder (the "
                            f"merge never writes over a checkpoint).")


def main(argv=None):
    args = parse(argv)
    if not is_adapter(args.adapter):
        check_checkpoint(args.adapter, need_tokenizer=False)  # not even a checkpoint: that message
        raise MiniQwenError(f"'{args.adapter}' is a full checkpoint (config.json + weights), not a LoRA adapter "
                            f"(adapter_config.json): there is nothing to merge; use it as it is.")
    folder = check_checkpoint(args.adapter, args.tokenizer_path, adapter_ok=True)
    base = adapter_base(folder)
    out = Path(args.out)
    check_out(out)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mini_qwen.lora import apply_adapter
    from mini_qwen.tokenizer import has_tokenizer_files, load_tokenizer

    saved_dtype = AutoConfig.from_pretrained(base).dtype or torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # merge in fp32, save as the base was
    model = apply_adapter(model, folder).to(saved_dtype)
    tokenizer = load_tokenizer(args.tokenizer_path or (folder if has_tokenizer_files(folder) else base))

    partial = out.parent / f".{out.name}.partial"
    try:
        shutil.rmtree(partial, ignore_errors=True)  # left by a merge killed earlier
        partial.mkdir(parents=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        if (folder / "trainer_state.json").is_file():  # the loss history, for the eval report
            shutil.copy2(folder / "trainer_state.json", partial / "trainer_state.json")
        if out.exists():
            out.rmdir()  # empty (checked above)
        partial.rename(out)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise MiniQwenError(f"cannot write the merged checkpoint to '{out}': {err.strerror or err} "
                            f"({free_space(out.parent)}). Choose a writable --out.") from None
    tied = "tied embeddings kept tied" if model.config.tie_word_embeddings else "untied embeddings"
    print(f"merged: {base} + adapter {folder} -> {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters, {saved_dtype}, {tied})")
    return out


if __name__ == "__main__":
    run_main(main)
