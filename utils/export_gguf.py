"""Export a checkpoint to GGUF for llama.cpp, Ollama and LM Studio, with llama.cpp's own converter.

Run as:
    python utils/export_gguf.py results/sft --out export/model.gguf                 # f16 (+ export/Modelfile)
    python utils/export_gguf.py results/dpo --out export/model-q8_0.gguf --type q8_0
    python utils/export_gguf.py results/pt --out pt.gguf --tokenizer_path models/tokenizer --verify false

Needs `pip install -r requirements-export.txt` (sentencepiece for the converter; llama-cpp-python, built from
source, for --verify). The first run fetches llama.cpp's convert_hf_to_gguf.py from the pinned llama-cpp-python
source distribution into .cache/. The GGUF carries the tokenizer and the chat format SFT trained on (no default
system prompt); the Modelfile written beside it gives Ollama the same format and stops at <|im_end|>.

--verify (default true when llama-cpp-python is installed) loads the GGUF in llama.cpp and the checkpoint in
transformers and prints, for a few prompts, how many greedy tokens agree and the NMSE of the next-token
log-probabilities. llama.cpp runs in a child process with its weights not repacked (mini_qwen/llama_child.py): a
crash there is one error line, not the end of this script. A LoRA adapter folder is refused: merge it first with
utils/merge_lora.py.
"""

from __future__ import annotations

import argparse
import importlib.util

from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.export import GGUF_TYPES, GOOD_NMSE, INSTALL_EXPORT, compare_gguf, export_gguf

VERIFY_QUESTIONS = ("你好，请介绍一下你自己。", "What is the capital of France?", "1+1等于几？")
VERIFY_TEXT = "The quick brown fox jumps over the lazy dog. 人工智能是"


def parse_bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def verify(checkpoint: str, gguf, tokenizer_path: str | None, new_tokens: int) -> None:
    from mini_qwen.chat import encode_prompt
    from mini_qwen.generate import load_for_inference

    model, tokenizer = load_for_inference(checkpoint, tokenizer_path, device="cpu")
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in VERIFY_QUESTIONS]
    prompts.append(tokenizer(VERIFY_TEXT, add_special_tokens=False)["input_ids"])
    results = compare_gguf(model, gguf, prompts, new_tokens)  # llama.cpp in a child: a crash there is one error
    print(f"verify: llama.cpp vs transformers (fp32) on {len(prompts)} prompts, {new_tokens} greedy tokens each")
    for r in results:
        shown = tokenizer.decode(r.prompt_ids[-12:]).replace("\n", "\\n")
        print(f"  same first {r.same_prefix:2d}/{new_tokens} tokens, log-prob NMSE {r.logprob_nmse:.2e}  ...{shown}")
    worst = max(r.logprob_nmse for r in results)
    if worst >= GOOD_NMSE:
        raise MiniQwenError(f"the GGUF ({gguf}) does not compute what the checkpoint does: next-token log-prob NMSE "
                            f"{worst:.2e} >= {GOOD_NMSE:g} (llama.cpp's own limit for a good conversion). The file "
                            f"is kept for inspection; do not ship it.")
    # greedy tokens may part where two candidates are nearly tied (more so in q8_0): only the NMSE is a verdict
    print(f"verify: passed (worst NMSE {worst:.2e} < {GOOD_NMSE:g}; same greedy tokens "
          f"{sum(r.same_prefix for r in results)}/{new_tokens * len(results)})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python utils/export_gguf.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a full checkpoint folder (config.json + *.safetensors), e.g. results/sft")
    parser.add_argument("--out", required=True, help="the GGUF file to write, e.g. export/model.gguf")
    parser.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES, default="f16",
                        help="tensor type: f16 (same answers as the checkpoint) or q8_0 (8-bit, about half the "
                             "size; default: f16)")
    parser.add_argument("--tokenizer_path", default=None,
                        help="tokenizer folder when the checkpoint has none (e.g. models/tokenizer)")
    parser.add_argument("--modelfile", default=None, help="where to write the Ollama Modelfile (default: Modelfile "
                                                          "in the folder of --out)")
    parser.add_argument("--verify", type=parse_bool, default=None,
                        help="true/false: compare the GGUF in llama.cpp with the checkpoint in transformers "
                             "(default: true when llama-cpp-python is installed)")
    parser.add_argument("--verify_tokens", type=int, default=16, help="greedy tokens compared per prompt")
    args = parser.parse_args(argv)
    if args.verify_tokens < 1:
        raise MiniQwenError(f"--verify_tokens must be at least 1 (got {args.verify_tokens}).")
    installed = importlib.util.find_spec("llama_cpp") is not None
    if args.verify and not installed:
        raise MiniQwenError(f"--verify true needs llama-cpp-python: {INSTALL_EXPORT}.")

    gguf, modelfile = export_gguf(args.checkpoint, args.out, args.gguf_type, args.tokenizer_path, args.modelfile)
    if args.verify is None and not installed:
        print(f"not verified: llama-cpp-python is not installed ({INSTALL_EXPORT})")
    elif args.verify is not False:
        verify(args.checkpoint, gguf, args.tokenizer_path, args.verify_tokens)
    print(f"run it: llama-cli -m {gguf} -cnv    |    ollama create mini-qwen -f {modelfile} && ollama run mini-qwen")
    return 0


if __name__ == "__main__":
    run_main(main)
