"""The built-in verifiable rewards: exact-answer math, answer format, length. Add yours here with @reward."""

import re

from mini_qwen.rewards.numbers import numbers, parse_number
from mini_qwen.rewards.registry import reward

# Where an answer states its final result: "答案：42", "答案是 42", "Answer: 42", "the answer is 42", \boxed{42}.
ANSWER_MARK = re.compile(r"\\boxed\{(?P<boxed>[^{}]*)\}|(?:答案|answer)\s*(?:是|为|is)?\s*[:：]?", re.IGNORECASE)


def stated_answer(completion: str) -> str | None:
    """The text the last answer mark states ("答案：", "Answer:" up to the end, or inside \\boxed{...}), or None
    when there is no mark."""
    found = list(ANSWER_MARK.finditer(completion))
    if not found:
        return None
    last = found[-1]
    return last["boxed"] if last["boxed"] is not None else completion[last.end():]


def final_number(completion: str):
    """The number an answer gives: the first after its last answer mark, else the last number in it."""
    stated = stated_answer(completion)
    if stated is not None:
        found = numbers(stated)
        return found[0] if found else None
    found = numbers(completion)
    return found[-1] if found else None


@reward("math")
def math_reward(completion: str, answer: str, **_) -> float:
    """1 when the answer's final number equals the reference exactly (3.0 = 3, 0.5 = 1/2 = 二分之一), else 0."""
    expected = parse_number(answer)
    return float(expected is not None and final_number(completion) == expected)


@reward("format")
def format_reward(completion: str, answer: str, **_) -> float:
    """Graded answer shape: 1 for a number after an answer mark ("答案：N", "Answer: N", \\boxed{N}), 0.5 for the mark
    without a number, 0.25 for a number without a mark, else 0. The steps give a small model that has never seen
    the mark a gradient towards it (a group all at 0 teaches nothing)."""
    stated = stated_answer(completion)
    if stated is None:
        return 0.25 if numbers(completion) else 0.0
    return 1.0 if numbers(stated) else 0.5


@reward("length")
def length_penalty(completion: str, answer: str, completion_ids=None, max_completion_length=None, **_) -> float:
    """0 for an answer in the first half of --max_completion_length tokens, falling linearly to -1 at the limit
    (DAPO's soft over-length penalty): short, finished answers are preferred over rambling ones."""
    if not completion_ids or not max_completion_length:
        return 0.0
    free = max_completion_length / 2
    return -min(1.0, max(0.0, len(completion_ids) - free) / (max_completion_length - free))
