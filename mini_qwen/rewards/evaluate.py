"""Held-out verifiable prompts answered greedily and scored: what the GRPO demo and the eval report show.

Accuracy is exact match (the `math` reward: the answer's final number equals the reference); the mean reward is the
sum of the named rewards averaged over the prompts, the number GRPO maximises.
"""

from pathlib import Path

from mini_qwen.chat import format_prompt
from mini_qwen.errors import MiniQwenError
from mini_qwen.rewards.registry import RewardFunc, reward_funcs

SCORED = ("math", "format")  # the demo's rewards; accuracy is "math"


def load_verifiable(path: str) -> list[dict]:
    """The good rows (prompt, answer, row) of a file (or folder) of prompt + answer, in any format of the reader
    layer (data/files.py)."""
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.grpo import NAME, read_rows, row_name, row_problems

    rows = []
    for file in find_stage_files(NAME, path, log=lambda *_: None):
        values = read_rows(Path(file))
        for i, problem in enumerate(row_problems(values)):
            if problem is None:
                rows.append({"prompt": values["prompt"][i], "answer": str(values["answer"][i]),
                             "row": row_name(Path(file), i)})
    if not rows:
        raise MiniQwenError(f"--verifiable {path}: no prompt with a reference answer in it.")
    return rows


def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int = 8) -> list[str]:
    """One greedy answer per question, in the chat format SFT trained (left-padded batches)."""
    import torch

    out = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(prompts), batch):
            texts = [format_prompt(p) for p in prompts[start:start + batch]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def score_verifiable(model, tokenizer, rows: list[dict], max_new_tokens: int, rewards=SCORED) -> dict:
    """{n, accuracy, mean_reward, rewards: {name: mean}, answers: first few} for the rows, greedy."""
    answers = greedy_answers(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens)
    funcs = reward_funcs(list(rewards), {"max_completion_length": max_new_tokens}, flag="rewards")
    exact = RewardFunc("math")
    per_reward = {f.__name__: [f.score(a, r["answer"], r["row"]) for a, r in zip(answers, rows)] for f in funcs}
    right = [exact.score(a, r["answer"], r["row"]) for a, r in zip(answers, rows)]
    n = len(rows)
    return {"n": n, "accuracy": round(sum(right) / n, 4),
            "mean_reward": round(sum(sum(v) for v in per_reward.values()) / n, 4),
            "rewards": {name: round(sum(v) / n, 4) for name, v in per_reward.items()},
            "max_new_tokens": max_new_tokens,
            "answers": [{"prompt": r["prompt"], "answer": r["answer"], "text": a} for r, a in zip(rows[:4], answers)]}


def heldout_scores(checkpoint: str, path: str, max_new_tokens: int) -> dict:
    """score_verifiable for a checkpoint folder (loaded for inference) on the prompts of `path`."""
    from mini_qwen.generate import load_for_inference

    model, tokenizer = load_for_inference(checkpoint, None, None)
    return score_verifiable(model, tokenizer, load_verifiable(path), max_new_tokens)
