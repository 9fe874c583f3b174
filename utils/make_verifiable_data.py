"""Write mini_data/grpo: arithmetic word problems in Chinese and English with exact answers, for the GRPO demo.

Run as:
    python utils/make_verifiable_data.py                      # mini_data/grpo/{train,heldout}.jsonl
    python utils/make_verifiable_data.py --train 2000 --heldout 200 --max_operand 99 --out data/grpo

The project writes this set itself (no download, no licence): each row is {"prompt", "answer", "lang"}, and
every prompt states the answer format ("答案：<数字>" / "Answer: <number>") that the format reward checks.
The problems are deliberately easy (one addition or subtraction of small numbers): the tiny demo model must
get some answers right or in the right shape, or every reward of a group is equal and GRPO learns nothing.
Held-out problems are distinct from the training ones (no (template, numbers) pair is in both).
"""

import argparse
import json
import random
from pathlib import Path

# (template, operation): {a} and {b} are the operands; the answer is a + b or a - b.
TEMPLATES = {
    "zh": [
        ("小明有{a}个苹果，又买了{b}个。他现在一共有几个苹果？最后写“答案：数字”。", "+"),
        ("书架上有{a}本书，拿走了{b}本。还剩几本书？最后写“答案：数字”。", "-"),
        ("{a}加{b}等于多少？最后写“答案：数字”。", "+"),
        ("{a}减{b}等于多少？最后写“答案：数字”。", "-"),
    ],
    "en": [
        ("Tom has {a} apples and buys {b} more. How many apples does he have now? End with 'Answer: <number>'.", "+"),
        ("There are {a} birds on a tree and {b} fly away. How many are left? End with 'Answer: <number>'.", "-"),
        ("What is {a} plus {b}? End with 'Answer: <number>'.", "+"),
        ("What is {a} minus {b}? End with 'Answer: <number>'.", "-"),
    ],
}


def problems(max_operand: int) -> list[dict]:
    """Every problem the templates make with operands 1..max_operand (subtraction never goes below zero)."""
    out = []
    for lang, templates in TEMPLATES.items():
        for t, (template, op) in enumerate(templates):
            for a in range(1, max_operand + 1):
                for b in range(1, max_operand + 1):
                    if op == "-" and b > a:
                        continue
                    answer = a + b if op == "+" else a - b
                    out.append({"prompt": template.format(a=a, b=b), "answer": str(answer), "lang": lang,
                                "key": (lang, t, a, b)})
    return out


def split(rows: list[dict], train: int, heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint random samples, each half Chinese and half English."""
    rng = random.Random(seed)
    picked = {"train": [], "heldout": []}
    for lang in TEMPLATES:
        mine = [r for r in rows if r["lang"] == lang]
        rng.shuffle(mine)
        n_train, n_held = train // len(TEMPLATES), heldout // len(TEMPLATES)
        if n_train + n_held > len(mine):
            raise SystemExit(f"error: only {len(mine)} distinct {lang} problems; raise --max_operand or ask fewer.")
        picked["heldout"] += mine[:n_held]
        picked["train"] += mine[n_held:n_held + n_train]
    for part in picked.values():
        rng.shuffle(part)
    return picked["train"], picked["heldout"]


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ("prompt", "answer", "lang")}, ensure_ascii=False) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="mini_data/grpo", help="output folder")
    parser.add_argument("--train", type=int, default=240, help="training problems (half Chinese, half English)")
    parser.add_argument("--heldout", type=int, default=40, help="held-out problems (half Chinese, half English)")
    parser.add_argument("--max_operand", type=int, default=9, help="largest operand (small: easy problems)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, heldout = split(problems(args.max_operand), args.train, args.heldout, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "train.jsonl", train)
    write(out / "heldout.jsonl", heldout)
    print(f"wrote {len(train)} training and {len(heldout)} held-out problems to {out}")


if __name__ == "__main__":
    main()
