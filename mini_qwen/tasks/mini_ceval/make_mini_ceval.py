"""Writes mini_ceval_val.jsonl (20 questions) and mini_ceval_dev.jsonl (5 few-shot examples).

Run as:
    python mini_qwen/tasks/mini_ceval/make_mini_ceval.py    # rewrites both files, byte for byte the same

C-Eval's shape (question, A, B, C, D, answer letter), general-knowledge questions written for this
project, so the whole lm-eval path can be tested offline. Deterministic: the correct option's letter
cycles A, B, C, D (random guessing scores 25% and a model that always answers the same letter does
too), the distractors keep the order written here.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LETTERS = "ABCD"

# (question, correct answer, three wrong answers)
VAL = [
    ("中国的首都是哪座城市？", "北京", ["上海", "广州", "南京"]),
    ("一年有多少个月？", "12", ["10", "11", "13"]),
    ("水在标准大气压下的沸点是多少摄氏度？", "100", ["0", "50", "90"]),
    ("《静夜思》的作者是谁？", "李白", ["杜甫", "白居易", "苏轼"]),
    ("地球绕太阳公转一周大约需要多长时间？", "一年", ["一天", "一个月", "十年"]),
    ("下列哪种动物是哺乳动物？", "鲸", ["鲨鱼", "鳄鱼", "企鹅"]),
    ("3 乘以 7 等于多少？", "21", ["10", "24", "37"]),
    ("中国最长的河流是哪一条？", "长江", ["黄河", "珠江", "淮河"]),
    ("植物进行光合作用主要吸收哪种气体？", "二氧化碳", ["氧气", "氮气", "氢气"]),
    ("一个星期有几天？", "7", ["5", "6", "8"]),
    ("太阳从哪个方向升起？", "东方", ["西方", "南方", "北方"]),
    ("《红楼梦》的作者通常被认为是谁？", "曹雪芹", ["罗贯中", "施耐庵", "吴承恩"]),
    ("人体最大的器官是什么？", "皮肤", ["心脏", "肝脏", "大脑"]),
    ("化学式 H2O 表示哪种物质？", "水", ["盐", "氧气", "二氧化碳"]),
    ("端午节吃的传统食品是什么？", "粽子", ["月饼", "汤圆", "饺子"]),
    ("100 的平方根是多少？", "10", ["5", "20", "50"]),
    ("太阳系中离太阳最近的行星是哪一颗？", "水星", ["金星", "地球", "火星"]),
    ("秦朝的建立者是谁？", "秦始皇", ["汉武帝", "唐太宗", "刘邦"]),
    ("绿豆糕的主要原料是什么？", "绿豆", ["红豆", "黄豆", "糯米"]),
    ("光在真空中的传播速度约为每秒多少千米？", "30 万", ["3 千", "3 万", "300 万"]),
]
DEV = [
    ("一天有多少小时？", "24", ["12", "20", "48"]),
    ("2 加 3 等于多少？", "5", ["4", "6", "7"]),
    ("熊猫最喜欢吃什么？", "竹子", ["鱼", "苹果", "大米"]),
    ("冰融化后变成什么？", "水", ["石头", "空气", "火"]),
    ("中国的国旗是什么颜色为底色？", "红色", ["蓝色", "绿色", "白色"]),
]


def rows(items: list[tuple[str, str, list[str]]]) -> list[dict]:
    out = []
    for i, (question, right, wrong) in enumerate(items):
        gold = i % 4
        options = list(wrong)
        options.insert(gold, right)
        out.append({"id": i, "question": question, **dict(zip(LETTERS, options)), "answer": LETTERS[gold]})
    return out


def main() -> None:
    for name, items in (("mini_ceval_val.jsonl", VAL), ("mini_ceval_dev.jsonl", DEV)):
        lines = [json.dumps(r, ensure_ascii=False) for r in rows(items)]
        (HERE / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {HERE / name}: {len(lines)} questions")


if __name__ == "__main__":
    main()
