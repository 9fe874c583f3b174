"""mini_qwen/rewards: numbers read out of answers as a grader would, the built-in rewards, the registry's errors."""

import math
from fractions import Fraction

import pytest

from mini_qwen.errors import MiniQwenError
from mini_qwen.rewards import REWARDS, RewardFunc, reward, reward_funcs
from mini_qwen.rewards.builtin import final_number, format_reward, length_penalty, math_reward
from mini_qwen.rewards.numbers import chinese_integer, numbers, parse_number


@pytest.mark.parametrize("text, expected", [
    ("三百二十五", 325), ("两千零五个苹果", 2005), ("十二", 12), ("一万三千", 13000), ("一亿零一", 100_000_001),
    ("二〇二六年", 2026), ("负三", -3), ("四分之三", Fraction(3, 4)), ("负二分之一", Fraction(-1, 2)),
    ("二点五", Fraction(5, 2)), ("1,234元", 1234), ("12,345,678 people", 12345678), ("-3/4", Fraction(-3, 4)),
    ("3.50 dollars", Fraction(7, 2)), ("−7 °C", -7), ("5 apples", 5), ("0.5", Fraction(1, 2)),
    ("Seven apples", 7), ("twenty-one", 21), ("ninety nine", 99), ("minus three", -3), ("thirteen", 13),
])
def test_numbers_from_tricky_answers(text, expected):
    assert numbers(text) == [Fraction(expected)]


def test_numbers_in_order_and_nothing_from_non_numbers():
    assert numbers("共有 12 apples, 3 left, 1/0 is no number") == [12, 3]
    assert numbers("no digits here, someone said") == [] and parse_number("abc") is None  # no "one" in "someone"
    assert numbers("a small trained three three") == [3, 3]
    assert chinese_integer("三五") == 35  # digit by digit, as a year or a code


@pytest.mark.parametrize("completion, answer, right", [
    ("答案：12", "12", True),
    ("他一共有十二个苹果。答案：十二", "12", True),
    ("Step 1: 3 + 4 = 7. Answer: 7 apples", "7", True),
    ("3 + 4 = 7, so the answer is 7.0", "7", True),
    ("\\boxed{3/4}", "0.75", True),
    ("答案是1,200元", "1200", True),
    ("Answer: -5", "负五", True),
    ("Answer: 5", "-5", False),
    ("2 + 3 = 5, 答案：6", "5", False),      # the stated answer wins over earlier work
    ("I think 5, no, 6", "6", True),        # no mark: the last number
    ("答案：", "5", False),
    ("", "5", False),
])
def test_math_reward_is_exact_on_the_final_number(completion, answer, right):
    assert math_reward(completion, answer) == float(right)


def test_final_number_prefers_the_last_answer_mark():
    assert final_number("Answer: 3. Wait, Answer: 4") == 4
    assert final_number("nothing") is None


def test_format_reward_and_length_penalty():
    assert format_reward("答案：5", "5") == 1.0
    assert format_reward("Answer: five", "5") == 1.0 and math_reward("Answer: five", "5") == 1.0
    assert format_reward("Answer: I do not know", "5") == 0.5  # the mark without a number
    assert format_reward("5", "5") == 0.25  # a number, but not where the answer is stated
    assert format_reward("no number", "5") == 0.0
    assert format_reward("\\boxed{7}", "7") == 1.0
    assert length_penalty("x", "1", completion_ids=[0] * 4, max_completion_length=16) == 0.0
    assert length_penalty("x", "1", completion_ids=[0] * 12, max_completion_length=16) == pytest.approx(-0.5)
    assert length_penalty("x", "1", completion_ids=[0] * 16, max_completion_length=16) == -1.0


def test_the_registry_names_unknown_rewards_and_failing_rows():
    assert {"math", "format", "length"} <= set(REWARDS)
    with pytest.raises(MiniQwenError, match=r"^--reward_funcs: unknown reward 'nope'; known: .*format.*math"):
        reward_funcs(["math", "nope"])

    @reward("test_boom")
    def boom(completion, answer, **_):
        raise ZeroDivisionError("division by zero")

    @reward("test_nan")
    def nan(completion, answer, **_):
        return math.nan

    try:
        call = reward_funcs(["test_boom"])[0]
        with pytest.raises(MiniQwenError, match=r"^reward 'test_boom' failed on row data/x\.jsonl:3 \("
                                                r"ZeroDivisionError: division by zero\)"):
            call(["p", "p"], ["a", "b"], answer=["1", "2"], row=["data/x.jsonl:3", "data/x.jsonl:7"])
        with pytest.raises(MiniQwenError, match=r"^reward 'test_nan' returned nan on row r:1"):
            RewardFunc("test_nan").score("b", "2", "r:1")
        # TRL's call: a batch of chat completions, the dataset's columns as keyword lists
        chat = [{"role": "assistant", "content": "答案：3"}]
        scores = RewardFunc("math")(["p"] * 2, [chat, "Answer: 4"], completion_ids=[[1], [2]], answer=["3", "3"],
                                    row=["f:1", "f:1"], trainer_state=None)
        assert scores == [1.0, 0.0]
    finally:
        REWARDS.pop("test_boom", None)
        REWARDS.pop("test_nan", None)
