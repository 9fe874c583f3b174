"""Demo: the SFT stage on mini_data/ from the demo PT model, with the settings of demo/sft.yaml.

Run as:
    python demo/demo_pt.py && python demo/demo_sft.py
    python demo/demo_sft.py --first_turn_only true      # any mini_qwen_sft.py flag still works
"""

import sys

from mini_qwen.demo import demo_argv
from mini_qwen.errors import run_main
from mini_qwen_sft import main

if __name__ == "__main__":
    run_main(main, demo_argv("sft", sys.argv[1:]))
