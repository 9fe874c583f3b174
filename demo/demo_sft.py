"""Demo: the SFT stage on mini_data/ from the demo PT model, with the settings of demo/sft.yaml.

Run as:
    python demo/demo_pt.py && python demo/demo_sft.py
    python demo/demo_sft.py --first_turn_only true      # any mini_qwen_sft.py flag still works
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mini_qwen.demo import demo_argv  # noqa: E402
from mini_qwen.errors import run_main  # noqa: E402
from mini_qwen_sft import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, demo_argv("sft", sys.argv[1:]))
