"""Demo: the PT stage on mini_data/ with the settings of demo/pt.yaml.

Run as:
    python demo/demo_pt.py                      # tiny model on CPU (about a minute), 1b on a GPU
    python demo/demo_pt.py --max_steps 20       # any mini_qwen_pt.py flag still works
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mini_qwen.demo import demo_argv  # noqa: E402
from mini_qwen.errors import run_main  # noqa: E402
from mini_qwen_pt import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, demo_argv("pt", sys.argv[1:], pick_preset=True))
