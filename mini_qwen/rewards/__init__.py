"""Verifiable rewards for the GRPO stage (mini_qwen_grpo.py --reward_funcs), plain Python in one place, next to
mini_qwen/tasks/ (the eval's offline tasks).

  numbers.py   numbers out of free text (Chinese numerals, commas, units, fractions, negatives), exact
  registry.py  the names --reward_funcs takes, and one clear error for a reward that raises
  builtin.py   math (exact answer), format (answer after a stated mark), length (soft over-length penalty)

Adding a reward is writing one function with @reward("name") (see registry.py).
"""

from mini_qwen.rewards import builtin  # noqa: F401  (registers the built-in rewards)
from mini_qwen.rewards.registry import REWARDS, RewardFunc, known, reward, reward_funcs, text_of

__all__ = ["REWARDS", "RewardFunc", "known", "reward", "reward_funcs", "text_of"]
