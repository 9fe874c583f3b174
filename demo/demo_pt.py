"""Demo: the PT stage on mini_data/ with the settings of demo/pt.yaml.

Run as:
    python demo/demo_pt.py                      # tiny model on CPU (about a minute), 1b on a GPU
    python demo/demo_pt.py --max_steps 20       # any mini_qwen_pt.py flag still works
"""

import sys

from mini_qwen.demo import demo_argv
from mini_qwen.errors import run_main
from mini_qwen_pt import main

if __name__ == "__main__":
    run_main(main, demo_argv("pt", sys.argv[1:], pick_preset=True))
