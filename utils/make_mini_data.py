"""Write mini_data/: the project's own tiny PT / SFT / DPO data, in the exact schemas of the BAAI data.

Run as (mini_qwen installed by `bash setup.sh`, `pip install -e .`):
    python utils/make_mini_data.py                      # mini_data/source/*.yaml -> mini_data/**.parquet
    python utils/make_mini_data.py --out /tmp/mini      # anywhere else
    python utils/check_data.py sft mini_data/sft --max_length 128   # then: rows over the demo's length

The demo runs PT -> SFT -> DPO on a CPU in minutes, on files that look to the loaders exactly like the real
downloads (folders, file names, columns, Arrow types) while every word is this project's own. The texts live
in mini_data/source/*.yaml, each file's header says what it holds; this script assembles them. PT teaches
facts (Li Bai, 绿豆糕, mini_qwen) in several wordings, SFT asks about them (the original project's four
evaluation prompts among them), DPO pairs each clean answer with a degenerate one. Every draw comes from a
fixed seed, so the files come out byte-identical (tests/test_mini_data.py checks the hashes). PT's quality
columns are computed from the text as Data-Juicer style filters define them; perplexity and quality_score need
the original raters, so they are seeded draws in the real "high" files' range.
"""

import argparse
import hashlib
import random
import re
import string
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mini_qwen.errors import MiniQwenError, run_main

ROOT = Path(__file__).resolve().parents[1]
SEED = 20241127
PT_SOURCES = ("pt_facts", "pt_travel", "pt_food", "pt_articles", "pt_poems_festivals", "pt_stories")
SOURCES = PT_SOURCES + ("pt_files", "sft", "dpo")

# Schemas equal (names, order, types, list items named "element") to the real BAAI files.
_S, _F, _I = pa.string(), pa.float64(), pa.int64()
PT_ZH_SCHEMA = pa.schema([("text", _S), ("alnum_ratio", _F), ("avg_line_length", _F), ("char_rep_ratio", _F),
                          ("flagged_words_ratio", _F), ("max_line_length", _I), ("num_words", _I),
                          ("perplexity", _F), ("quality_score", _F), ("special_char_ratio", _F),
                          ("word_rep_ratio", _F), ("_id", _I), ("industry_type", _S)])
PT_EN_SCHEMA = pa.schema([("text", _S), ("alnum_ratio", _F), ("avg_line_length", _F), ("char_rep_ratio", _F),
                          ("max_line_length", _I), ("num_words", _I), ("quality_score", _F),
                          ("special_char_ratio", _F), ("industry_type", _S)])
_CONV = pa.list_(pa.field("element", pa.struct([("from", _S), ("value", _S)])))
_LIST = pa.list_(pa.field("element", _S))
_LABEL = pa.struct([(k, _LIST) for k in ("ability_en", "ability_zh", "cate_ability_en", "cate_ability_zh")])
SFT_7M_SCHEMA = pa.schema([("id", _I), ("conversations", _CONV), ("label", _LABEL), ("langdetect", _S),
                           ("source", _S), ("reward", _F)])
SFT_GEN_SCHEMA = pa.schema([("id", _S), ("source", _S), ("langdetect", _S), ("label", _LABEL),
                            ("conversations", _CONV), ("reward", _F)])
_MSGS = pa.list_(pa.field("element", pa.struct([("content", _S), ("role", _S)])))
DPO_SCHEMA = pa.schema([("task_category", _S), ("prompt", _S), ("chosen", _MSGS), ("rejected", _MSGS), ("id", _I)])


# --- reading the sources -------------------------------------------------------------------------------
class Entry(dict):
    """A YAML mapping that names its file and line when a field the generator needs is missing."""
    where = "mini_data/source"

    def __missing__(self, key):
        raise MiniQwenError(f"{self.where}: this entry has no '{key}'; add it (see the entries beside it)")

    def with_(self, **fields):  # a copy with more fields, still naming where it came from
        out = Entry(self, **fields)
        out.where = self.where
        return out


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    def construct_entry(self, node):
        entry = Entry(self.construct_mapping(node, deep=True))
        entry.where = f"{self.source_name}:{node.start_mark.line + 1}"
        return entry


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_entry)


def load_sources(folder):
    src = {}
    for name in SOURCES:
        path = Path(folder) / f"{name}.yaml"
        try:
            loader = _Loader(path.read_text(encoding="utf-8"))
            loader.source_name = str(path)
            src[name] = loader.get_single_data()
        except OSError as err:
            raise MiniQwenError(f"cannot read {path}: {err.strerror}; restore it from git") from None
        except yaml.YAMLError as err:
            at = f":{err.problem_mark.line + 1}" if getattr(err, "problem_mark", None) else ""
            raise MiniQwenError(
                f"{path}{at} is not valid YAML ({getattr(err, 'problem', err)}); fix that line"
            ) from None
    return src


def language(src, lang):
    """All PT sections of one language in one mapping (t["cities"], ...), with the language's style."""
    t = Entry(src["pt_files"]["style"][lang])
    t.where = f"the '{lang}' sections of mini_data/source/pt_*.yaml"
    for key, per_lang in ((k, v) for name in PT_SOURCES for k, v in src[name].items() if lang in v):
        if key in t:  # one place per section, or an edit would silently lose to the other copy
            raise MiniQwenError(f"{per_lang.where}: section '{key}' is defined twice in mini_data/source/; keep one")
        t[key] = per_lang[lang]
    return t


# --- PT documents ------------------------------------------------------------------------------------------
def fact(item, rng):
    """A fact; one of its wordings when it has several, so the same fact reads differently across documents."""
    return rng.choice(item) if isinstance(item, list) else item


def fill(text, pools, rng):
    """Replace {pool.i} by fact i of a pool and {pool.i.j} by its wording j, left to right."""
    return re.sub(r"\{(\w+)\.(\d+)(?:\.(\d+))?\}", lambda m: pools[m[1]][int(m[2])][int(m[3])] if m[3]
                  else fact(pools[m[1]][int(m[2])], rng), text)


class Writer:
    """Documents of one language from one random stream; the order of the calls fixes the output."""
    KINDS = ("hotel_reviews", "city_guides", "topic", "recipes", "articles", "poems", "festivals", "stories")

    def __init__(self, t, rng):
        self.t, self.rng, self.choice = t, rng, rng.choice
        self.sent, self.para = t["sentence_sep"], t["paragraph_sep"]

    def pick(self, pool, k):  # k distinct items in random order
        return self.rng.sample(pool, min(k, len(pool)))

    def docs(self, spec, where):
        """One `docs` entry of pt_files.yaml ("hotel_reviews 3", "poems :4", ...): its list of documents."""
        kind, *args = spec.split()
        if kind not in self.KINDS:
            raise MiniQwenError(f"{where}: unknown docs entry '{spec}'; the kinds are {', '.join(self.KINDS)}")
        return getattr(self, kind)(*args)

    def hotel_reviews(self, per_city):
        t, choice, docs = self.t, self.choice, []
        for c in (c for c in t["cities"] for _ in range(int(per_city))):
            c = c.with_(hotel=choice(t["hotel_names"]).format_map(c))
            title = choice(t["hotel_titles"]).format_map(c)
            price = choice(t["hotel_prices"]) if "hotel_prices" in t else None  # the English reviews quote none
            c = c.with_(price=price, minutes=choice([5, 8, 10, 15]))
            rooms = self.sent.join(self.pick(t["hotel_rooms"], 3))
            docs.append(self.para.join([title, t["hotel_location"].format_map(c), rooms,
                                        t["hotel_breakfast"].format_map(c), c["sight"],
                                        self.sent.join(self.pick(t["hotel_tips"], 2))]))
        return docs

    def city_guides(self):
        t, choice = self.t, self.choice
        return [self.para.join([choice(t["guide_titles"]).format_map(c), t["guide_season"].format_map(c),
                                self.sent.join(self.pick(c["more"], 3)), t["guide_food"].format_map(c),
                                choice(t["guide_stay"]).format_map(c), choice(t["guide_tips"])]) for c in t["cities"]]

    def recipes(self):
        heading = [self.t["recipe_steps_heading"]] if "recipe_steps_heading" in self.t else []
        return [self.para.join([r["title"], r["intro"]] + heading
                               + ["\n".join(f"{i}. {s}" for i, s in enumerate(r["steps"], 1)), r["tip"]])
                for r in self.t["recipes"]]

    def articles(self, group):
        return [self.para.join([a["title"]] + a["paragraphs"]) for a in self.t["articles"][group]]

    def topic(self, name):
        """The fact documents (two or three facts per paragraph, like an ordinary article), then the extras."""
        topic, docs = self.t["topics"][name], []
        intros, in_body = topic.get("intros"), self.t["intro_in_body"]
        for k in topic["doc_sizes"]:
            lines = [self.choice(topic["titles"])] + ([self.choice(intros)] if intros and not in_body else [])
            # k facts, kept in the pool's own (narrative) order
            idx = sorted(self.rng.sample(range(len(topic["facts"])), min(k, len(topic["facts"]))))
            body = [fact(topic["facts"][i], self.rng) for i in idx]
            body = [self.choice(intros)] + body if intros and in_body else body
            while body:
                n = self.choice([2, 3])
                lines, body = lines + [self.sent.join(body[:n])], body[n:]
            docs.append(self.para.join(lines + ([self.choice(topic["outros"])] if topic.get("outros") else [])))
        pools = {key: x["facts"] for key, x in self.t["topics"].items()}
        return docs + [self.para.join(fill(line, pools, self.rng) for line in d) for d in topic.get("extra_docs", [])]

    def _slice(self, key, where):  # "3:" -> items[3:], one document
        return self.t[key][slice(*[int(x) if x else None for x in where.split(":")])]

    def poems(self, where=":"):
        heading, poems = self.t["poem_heading"], self._slice("poems", where)
        return [self.para.join([self.choice(self.t["poem_doc_titles"])]
                               + ["\n".join([heading.format_map(p), p["text"], p["note"]]) for p in poems])]

    def festivals(self, where=":"):
        return [self.para.join([self.choice(self.t["festival_doc_titles"])]
                               + [self.t["festival_line"].format_map(x) for x in self._slice("festivals", where)])]

    def story(self, char=None, plot=None):
        t, choice = self.t, self.choice
        full, n = char or choice(t["characters"])
        p = plot or choice(t["plots"])
        parts = [t["story_opening"].format(place=choice(t["places"]), full=full), choice(t["traits"]),
                 p["problem"], p["attempt"], p["result"], choice(t["endings"]), t["story_moral"].format_map(p)]
        return self.sent.join(x.format(n=n, N=n[:1].upper() + n[1:]) for x in parts)

    def stories(self, count):
        docs = []
        for _ in range(int(count)):
            title, k = self.choice(self.t["story_doc_titles"]), self.choice([2, 3])
            pairs = zip(self.pick(self.t["characters"], k), self.pick(self.t["plots"], k))
            docs.append(self.para.join([title] + [self.story(c, p) for c, p in pairs]))
        return docs


# --- PT quality columns, computed from the text ---------------------------------------------------
_SPECIAL = set(string.punctuation + string.digits + string.whitespace + "，。！？、；：“”‘’（）《》【】—…·「」『』～")
_CJK = re.compile(r"[\u4e00-\u9fff]+|[A-Za-z0-9_]+")


def _words(text, lang):
    if lang == "en":
        return re.findall(r"\w+|[^\w\s]", text)
    # No word segmenter offline: a CJK run counts as words of two characters (the commonest Chinese word
    # length); Latin runs count as one word each.
    return [w for run in _CJK.findall(text)
            for w in ([run] if run[0].isascii() else [run[i:i + 2] for i in range(0, len(run), 2)])]


def _rep_ratio(seq, n=10):
    grams = Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))
    total = sum(grams.values())
    return sum(v for v in grams.values() if v > 1) / total if total else 0.0


def quality_row(text, lang, rng):
    lines, words = text.split("\n"), _words(text, lang)
    row = {"text": text, "alnum_ratio": round(sum(c.isalnum() for c in text) / len(text), 10),
           "avg_line_length": round(len(text) / len(lines), 10), "char_rep_ratio": round(_rep_ratio(text), 10),
           "max_line_length": max(len(line) for line in lines), "num_words": len(words),
           # the original raters' scores: only their range ("high" files: >= 4) can be matched
           "quality_score": 4.0 + rng.randint(0, 100) / 256,
           "special_char_ratio": round(sum(c in _SPECIAL for c in text) / len(text), 10)}
    if lang == "zh":
        row.update(flagged_words_ratio=0.0, perplexity=round(rng.uniform(450.0, 1500.0), 1),
                   word_rep_ratio=round(_rep_ratio(words), 10))
    return row


def pt_tables(src, seed):
    writers = {lang: Writer(language(src, lang), random.Random(f"{seed}-pt-{lang}")) for lang in ("zh", "en")}
    rng, next_id, out = random.Random(f"{seed}-pt-scores"), 0, {}
    for f in src["pt_files"]["files"]:
        docs = [doc for spec in f["docs"] for doc in writers[f["lang"]].docs(spec, f.where)]
        random.Random(f"{seed}-pt-order-{f['order']}").shuffle(docs)
        rows = []
        for text in docs:
            row = quality_row(text, f["lang"], rng)
            row["industry_type"] = src["pt_files"]["industry_types"][f["path"].split("/")[1]]
            if f["lang"] == "zh":  # `_id` runs across the Chinese files, as in the real data
                row["_id"], next_id = next_id, next_id + 1
            rows.append(row)
        out[f["path"]] = pa.Table.from_pylist(rows, schema=PT_ZH_SCHEMA if f["lang"] == "zh" else PT_EN_SCHEMA)
    return out


# --- SFT and DPO -------------------------------------------------------------------------------------
def prompt_answers(src, seed):
    """{key: answers} of the evaluation prompts; the story prompt's are written by the story writer, from their
    own seed."""
    out = {}
    for sp in src["sft"]["eval_prompts"]:
        if "stories" in sp:
            # The stream's name is part of what fixes the generated bytes: it stays as it is.
            w = Writer(language(src, sp["lang"]), random.Random(f"{seed}-seed-stories"))
            out[sp["key"]] = [w.story(w.t["characters"][i], w.t["plots"][j]) for i, j in sp["stories"]]
        else:
            out[sp["key"]] = sp["answers"]
    return out


def build_sft_conversations(src, answers, seed):
    """A list of (category, lang, [(from, value), ...]) in a fixed order."""
    sft, rng, convs = src["sft"], random.Random(f"{seed}-sft"), []
    zh_stories = Writer(language(src, "zh"), rng)  # Chinese story prompts get a fresh story from this stream

    def single(q, prompt, answer, system=None):
        if answer is None:
            answer = zh_stories.story() if q["lang"] == "zh" else rng.choice(answers["ans_story"])
        convs.append((q["cat"], q["lang"], ([("system", system)] if system else [])
                      + [("human", prompt), ("gpt", answer)]))

    for i in range(6):  # the evaluation prompts, several times each, with consistent answers
        for sp in sft["eval_prompts"]:
            single(sp, sp["prompt"], answers[sp["key"]][i % len(answers[sp["key"]])])
    for q in sft["qa"]:
        for p in q["prompts"]:
            single(q, p, q.get("answer"))
    for q in sft["qa"][::10]:  # a second copy of a few items, this time with a system turn
        single(q, q["prompts"][0], q.get("answer"), sft["system"][q["lang"]])
    for q in sft["long_qa"]:
        single(q, q["prompts"][0], q["answer"])
    for k, q in enumerate(sft["multi_turn"]):
        msgs = [("system", sft["system"][q["lang"]])] if k % 5 == 0 else []
        for turn in q["turns"]:
            msgs += [("human", turn["human"]), ("gpt", fill(turn["gpt"], answers, rng))]
        convs.append((q["cat"], q["lang"], msgs))
    rng.shuffle(convs)
    return convs


def sft_tables(src, answers, seed):
    rng, prompts = random.Random(f"{seed}-sft-rows"), [sp["prompt"] for sp in src["sft"]["eval_prompts"]]
    prompt_rows, other_rows, rows_gen = [], [], []  # 7M file 0, 7M file 1, Gen
    for cat, lang, msgs in build_sft_conversations(src, answers, seed):
        row = {"conversations": [{"from": f, "value": v} for f, v in msgs], "label": dict(src["sft"]["labels"][cat]),
               "langdetect": "zh-cn" if lang == "zh" else "en",
               "reward": round(rng.uniform(-5.0, 30.0) * 32) / 32}  # the real rewards are multiples of 1/32
        # About a third goes to Gen, as in the real mix (7M is the larger set); conversations on the evaluation
        # prompts all go to the first 7M file, which the CPU demo trains on (see demo/sft.yaml).
        on_prompt = any(p in v for _, v in msgs for p in prompts)
        if rng.random() < 0.33 and not on_prompt:
            rows_gen.append(dict(row, source="Subjective"))
        else:
            (prompt_rows if on_prompt else other_rows).append(dict(row, source=src["sft"]["sources"][cat]))
    for i, row in enumerate(rows_gen):
        key = f"{seed}-gen-{i}-" + "".join(m["value"] for m in row["conversations"])
        row["id"] = hashlib.md5(key.encode("utf-8")).hexdigest()
    for i, row in enumerate(prompt_rows + other_rows):
        row["id"] = i
    return {"sft/7M/train-00000-of-00002.parquet": pa.Table.from_pylist(prompt_rows, schema=SFT_7M_SCHEMA),
            "sft/7M/train-00001-of-00002.parquet": pa.Table.from_pylist(other_rows, schema=SFT_7M_SCHEMA),
            "sft/Gen/train-00000-of-00001.parquet": pa.Table.from_pylist(rows_gen, schema=SFT_GEN_SCHEMA)}


def repetitive(answer, lang, rng):
    """A "复读机" answer: the opening phrase over and over, never finished."""
    if lang == "zh":
        phrase = (re.split(r"[，。！？：\n]", answer)[0] or answer[:8])[:12]
        return "，".join([phrase] * rng.randint(8, 12)) + "，" + phrase[: max(1, len(phrase) // 2)]
    words = re.split(r"[,.!?:\n]", answer)[0].split()[:7]
    return ", ".join([" ".join(words)] * rng.randint(6, 9)) + ", " + " ".join(words[: max(1, len(words) // 2)])


def truncated(answer, lang):
    """An answer cut off in the middle: no proper ending."""
    text = answer[:max(4, int(len(answer) * 0.45))].rstrip("，。,. ")
    return text if lang == "zh" else text.rsplit(" ", 1)[0]


def dpo_tables(src, answers, seed):
    """Evaluation prompts get one pair per kind of failure; every other question with a fixed answer gets one."""
    dpo, rng = src["dpo"], random.Random(f"{seed}-dpo")
    items = [(sp["cat"], sp["lang"], sp["prompt"], answer, kind) for sp in src["sft"]["eval_prompts"]
             for answer in answers[sp["key"]][:2] for kind in ("repeat", "wrong", "off_topic")]
    for q in src["sft"]["qa"]:
        if "answer" in q:
            kind = "wrong" if q["prompts"][0] in dpo["wrong_answers"] else rng.choices(
                ["repeat", "off_topic", "truncated"], weights=[6, 2, 2])[0]
            items.append((q["cat"], q["lang"], q["prompts"][0], q["answer"], kind))
    def rejected(kind, lang, prompt, answer):
        if kind == "repeat":
            return repetitive(answer, lang, rng)
        if kind == "truncated":
            return truncated(answer, lang)
        if kind == "wrong":
            return rng.choice(dpo["wrong_answers"][prompt])
        return rng.choice(dpo["off_topic"][lang])

    pairs = []
    for cat, lang, prompt, answer, kind in items:
        bad = rejected(kind, lang, prompt, answer)
        pairs.append({"task_category": dpo["task_categories"][cat], "prompt": prompt,
                      "chosen": [{"content": prompt, "role": "user"}, {"content": answer, "role": "assistant"}],
                      "rejected": [{"content": prompt, "role": "user"}, {"content": bad, "role": "assistant"}]})
    rng.shuffle(pairs)
    n_test = max(1, len(pairs) // 6)
    train, test = pairs[n_test:], pairs[:n_test]
    for i, row in enumerate(train + test):  # ids are unique across both splits, as in the real data
        row["id"] = i
    return {"dpo/train-00000-of-00001.parquet": pa.Table.from_pylist(train, schema=DPO_SCHEMA),
            "dpo/test-00000-of-00001.parquet": pa.Table.from_pylist(test, schema=DPO_SCHEMA)}


# --- writing ------------------------------------------------------------------------------------------------
def build_all(source=ROOT / "mini_data" / "source", seed=SEED):
    """{relative path: pyarrow.Table} for every parquet file of mini_data/."""
    src = load_sources(source)
    answers = prompt_answers(src, seed)
    return {**pt_tables(src, seed), **sft_tables(src, answers, seed), **dpo_tables(src, answers, seed)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "mini_data"), help="output folder (default: mini_data/)")
    parser.add_argument("--source", default=str(ROOT / "mini_data" / "source"),
                        help="folder of the source texts (default: mini_data/source/)")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed; the committed files use the default")
    args = parser.parse_args(argv)
    tables = build_all(args.source, args.seed)  # all of it first: a bad source writes nothing
    for rel, table in tables.items():
        (Path(args.out) / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, Path(args.out) / rel)
        print(f"{table.num_rows:5d} rows  {Path(args.out) / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
