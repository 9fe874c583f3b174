"""Demo: the DPO stage on mini_data/ with the settings of demo/dpo.yaml, from the demo SFT model.

Run as:
    python demo/demo_sft.py && python demo/demo_dpo.py     # tiny model on CPU (about a minute)
    python demo/demo_dpo.py --max_steps 4                  # any mini_qwen_dpo.py flag still works
"""

import sys

from mini_qwen.demo import demo_argv
from mini_qwen.errors import run_main
from mini_qwen_dpo import main

if __name__ == "__main__":
    run_main(main, demo_argv("dpo", sys.argv[1:]))
