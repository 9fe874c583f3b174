"""The registry of rewards: names -> functions, and the wrapper that gives TRL's GRPOTrainer a batch call.

A reward is one function of one answer, registered by name:

    from mini_qwen.rewards.registry import reward

    @reward("ends_politely")
    def ends_politely(completion: str, answer: str, **context) -> float:
        return 1.0 if completion.rstrip().endswith(("谢谢", "thanks")) else 0.0

`completion` is the model's answer text, `answer` the row's reference answer; `context` holds the rest
(`completion_ids`, `prompt`, `max_completion_length`), for a reward that needs it. Put the function in
mini_qwen/rewards/builtin.py (or any module imported before the stage parses its flags) and name it in
`--reward_funcs`. A reward that raises, or returns something that is not a finite number, stops the run with
one message naming the reward and the row (file:line) of the prompt it was scoring.
"""

import math
from collections.abc import Callable

from mini_qwen.errors import MiniQwenError

REWARDS: dict[str, Callable] = {}


def reward(name: str):
    """Register the decorated function under `name` (a --reward_funcs value)."""
    def register(func):
        if name in REWARDS and REWARDS[name] is not func:
            raise ValueError(f"reward {name!r} is registered twice")
        REWARDS[name] = func
        return func
    return register


def known() -> list[str]:
    return sorted(REWARDS)


def text_of(completion) -> str:
    """A completion as TRL hands it: a string, or (chat prompts) a list of {role, content} messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


class RewardFunc:
    """One registered reward in the shape TRL's GRPOTrainer calls (a batch of completions -> a list of floats),
    scoring row by row so that a failure names the row."""

    def __init__(self, name: str, context: dict | None = None):
        self.__name__ = name  # TRL logs rewards/<__name__>/mean
        self.func = REWARDS[name]
        self.context = dict(context or {})

    def __call__(self, prompts, completions, completion_ids=None, answer=None, row=None, **_) -> list[float]:
        out = []
        for i, completion in enumerate(completions):
            out.append(self.score(text_of(completion), answer[i], row[i] if row else f"#{i}",
                                  prompt=prompts[i], completion_ids=completion_ids[i] if completion_ids else None))
        return out

    def score(self, completion: str, answer: str, where: str, **extra) -> float:
        try:
            value = self.func(completion, answer, **self.context, **extra)
        except Exception as err:  # a user's reward: any exception is theirs to fix, named here
            raise MiniQwenError(f"reward '{self.__name__}' failed on row {where} ({type(err).__name__}: {err}); "
                                f"its completion began {completion[:60]!r}. Fix the reward function "
                                f"({self.func.__module__}.{self.func.__name__}).") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MiniQwenError(f"reward '{self.__name__}' returned {value!r} on row {where}: a reward must return "
                                f"a finite number ({self.func.__module__}.{self.func.__name__}).")
        return float(value)


def reward_funcs(names: list[str], context: dict | None = None, flag: str = "--reward_funcs") -> list[RewardFunc]:
    """The rewards named on the command line; an unknown name is one error line listing the known ones."""
    available = known()
    unknown = [n for n in names if n not in REWARDS]
    if unknown or not names:
        what = f"unknown reward {unknown[0]!r}" if unknown else "name at least one reward"
        raise MiniQwenError(f"{flag}: {what}; known: {', '.join(available)} (add one with @reward in "
                            f"mini_qwen/rewards/builtin.py).")
    return [RewardFunc(n, context) for n in names]
