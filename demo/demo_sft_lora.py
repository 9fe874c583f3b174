"""Demo: LoRA SFT on mini_data/ from the demo SFT model, with the settings of demo/sft_lora.yaml.

Run as:
    python demo/demo_pt.py && python demo/demo_sft.py && python demo/demo_sft_lora.py
    python demo/demo_sft_lora.py --lora_r 8              # any mini_qwen_sft.py flag still works
    python mini_qwen_eval.py results/demo/sft_lora       # talk to base + adapter
"""

import sys

from mini_qwen.demo import demo_argv
from mini_qwen.errors import run_main
from mini_qwen_sft import main

if __name__ == "__main__":
    run_main(main, demo_argv("sft_lora", sys.argv[1:]))
