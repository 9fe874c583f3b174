"""SFT data, all in one place: conversations (Infinity-Instruct parquet, or any format data/files.py reads) ->
a tokenized dataset (input_ids + labels).

The same face as every stage's data module (see mini_qwen/data/pt.py): SCHEMAS, columns, check_schema,
row_problems, overlong_rows, build_dataset. Every schema in SCHEMAS becomes SFT's own column, `conversations`,
a list of turns (7M and Gen files are mixed; their `id` types differ, so `id` is never read):
  sharegpt / openai   `conversations` or `messages` (or --messages_column): {from, value} or {role, content}
                      turns (an optional `system` column becomes the system turn)
  alpaca              instruction, input, output (+ optional system, history [[question, answer], ...])
  prompt/response     prompt + response (or completion), texts (+ optional system)
The turn rules (roles, order, a final assistant answer) are `chat.normalize_messages`; the label
mask and the answer-keeping truncation are `chat.encode_conversations`.

Bad rows (empty conversation, unknown role, no final assistant answer, ...) are skipped and
counted by default, since one odd row in millions should not stop a day-long run;
`on_bad_rows="error"` stops at the first one with its file and row instead.
"""

import sys
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa

from mini_qwen import chat
from mini_qwen.chat import BadConversation, encode_conversations, normalize_messages
from mini_qwen.data import common
from mini_qwen.data.common import RowSchema, detect_layout, is_text, is_turns, parse_rows
from mini_qwen.data.prepare import DataCache

NAME = "sft"
FILES_MERGED = False  # read file by file into fixed features (common.encode_rows_file): types never meet
WHAT = "SFT data"  # how messages name the data
COLUMNS = {"conversations": "a list of turns"}


def _with_system(conversations, systems):
    """A `system` column's text as each conversation's first turn (unless it has one)."""
    out = []
    for conv, system in zip(conversations, systems):
        if system and conv and not any(chat.parse_turn(t)[0] == "system" for t in conv[:1] if isinstance(t, dict)):
            conv = [{"role": "system", "content": system}, *conv]
        out.append(conv)
    return out


def _turns(values):
    convs = values["conversations"]
    return {"conversations": _with_system(convs, values["system"]) if "system" in values else convs}


def _alpaca(values):
    n = len(values["instruction"])
    convs = []
    for i in range(n):
        instruction, output = values["instruction"][i], values["output"][i]
        extra = (values.get("input") or [None] * n)[i]
        conv = []
        for pair in (values.get("history") or [None] * n)[i] or []:
            conv += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        question = instruction if not extra else (f"{instruction}\n{extra}" if instruction else extra)
        convs.append(conv + [{"role": "user", "content": question}, {"role": "assistant", "content": output}])
    return {"conversations": _with_system(convs, values["system"]) if "system" in values else convs}


def _pair(values):
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in zip(values["prompt"], values["response"])]
    return {"conversations": _with_system(convs, values["system"]) if "system" in values else convs}


def _texts(*names):
    def fits(types):
        wrong = [f"column '{n}' must hold text but has type {types[n]}" for n in (*names, "system")
                 if n in types and not is_text(types[n]) and not pa.types.is_null(types[n])]
        return wrong[0] if wrong else None
    return fits


SCHEMAS = (
    RowSchema("sharegpt/openai turns", {"conversations": "a list of {from, value} or {role, content} turns"},
              fits=lambda types: None if is_turns(types["conversations"]) else
              f"column 'conversations' must be a list of {{from, value}} records (Infinity-Instruct format) or "
              f"{{role, content}} messages but has type {types['conversations']}",
              convert=_turns, optional=("system",), aliases={"conversations": ("messages",)},
              example='{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}'),
    RowSchema("alpaca", {"instruction": "the question", "output": "the answer"}, fits=_texts("instruction", "output",
              "input"), convert=_alpaca, optional=("input", "system", "history"),
              example='{"instruction": "Translate to French", "input": "cat", "output": "chat"}'),
    RowSchema("prompt/response", {"prompt": "the question", "response": "the answer"},
              fits=_texts("prompt", "response"), convert=_pair, optional=("system",),
              aliases={"response": ("completion",)}, example='{"prompt": "2+2?", "response": "4"}'),
)


def columns(options: dict | None = None) -> list[str]:
    """SFT's own column: `conversations`, a list of turns (whatever schema the files follow)."""
    return list(COLUMNS)


def check_schema(path: Path, schema: pa.Schema, options: dict | None = None):
    """The file's Layout: the first of SCHEMAS its columns fit; else MiniQwenError naming the file, the columns
    it has, the schemas accepted and the flag that maps a column."""
    return detect_layout(path, schema, options, SCHEMAS, WHAT)


def row_problems(values: dict[str, list]) -> list[str | None]:
    """Why each conversation of a batch cannot be trained on, or None for a good one."""
    return common.row_problems(values, normalize_messages, BadConversation)


def overlong_rows(values: dict[str, list], tokenizer, max_length: int,
                  max_prompt_length: int | None = None) -> list[str | None]:
    """For good rows: truncation keeps the answer when it can, else the row is dropped."""
    convs = [normalize_messages(conv) for conv in values["conversations"]]
    encoded = encode_conversations(tokenizer, convs, max_length)
    out = []
    for truncated, labels in zip(encoded["truncated"], encoded["labels"]):
        if not truncated:
            out.append(None)
        elif any(t != -100 for t in labels):
            out.append(f"longer than {max_length} tokens (truncated)")
        else:
            out.append(f"longer than {max_length} tokens with no answer token left (dropped)")
    return out


def _encode_batch(batch, indices, tokenizer, max_length, first_turn_only, on_bad_rows, locate):
    good, problems = parse_rows(zip(batch["conversations"]), indices,
                                lambda conv: normalize_messages(conv, first_turn_only), BadConversation,
                                on_bad_rows, locate)
    encoded = encode_conversations(tokenizer, good, max_length)
    out = {"input_ids": [], "labels": [], "truncated": [], "problem": problems}
    it = iter(range(len(good)))
    for problem in problems:
        if problem:
            out["input_ids"].append([])
            out["labels"].append([])
            out["truncated"].append(False)
        else:
            i = next(it)
            for key in ("input_ids", "labels", "truncated"):
                out[key].append(encoded[key][i])
    return out


# What `_encode_batch` writes for each input row (the part files of the cache; prepare.py).
ENCODED = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                             "labels": datasets.List(datasets.Value("int64")),
                             "truncated": datasets.Value("bool"), "problem": datasets.Value("string")})
CACHE_CODE = (__file__, chat.__file__)  # how rows are encoded: editing these makes a new cache


def cache_settings(max_length: int, first_turn_only: bool = False, options: dict | None = None) -> dict:
    """What, besides the files and the tokenizer, changes SFT's encoded rows (the cache key)."""
    return {"max_length": max_length, "first_turn_only": first_turn_only,
            "options": dict(sorted((options or {}).items()))}


def encode_file(path: Path, part: Path, tokenizer, settings: dict, on_bad_rows: str, report, **options) -> dict:
    """One data file -> its part of the cache (mini_qwen/data/prepare.py)."""
    return common.encode_rows_file(path, part, sys.modules[__name__], _encode_batch, ENCODED, tokenizer, settings,
                                   on_bad_rows, report, "input_ids", **options)


finish_cache = common.finish_rows_cache


def data_cache(files: list[Path], tokenizer, cache_dir: str, max_length: int, first_turn_only: bool = False,
               options: dict | None = None):
    """The SFT cache of these (checked) files: `.ready()`, `.prepare(num_proc, shard)` (prepare.py)."""
    return DataCache(sys.modules[__name__], files, tokenizer, cache_dir,
                     cache_settings(max_length, first_turn_only, options))


def build_dataset(files: list[Path], tokenizer, max_length: int, first_turn_only: bool = False,
                  on_bad_rows: str = "skip", num_proc: int | None = None, source: str | None = None, log=print,
                  cache_dir: str = ".cache/mini_qwen", options: dict | None = None):
    """The SFT training set and its counts, from files the stage script has already found and checked."""
    cache = data_cache(files, tokenizer, cache_dir, max_length, first_turn_only, options)
    encoded = common.encoded_rows(cache, num_proc, on_bad_rows, log)
    n_rows = len(encoded)
    problems = Counter(p for p in encoded["problem"] if p)
    no_answer_left = sum(1 for p, labels in zip(encoded["problem"], encoded["labels"])
                         if not p and all(t == -100 for t in labels))
    truncated = sum(encoded["truncated"])
    dataset = encoded.filter(lambda ex: not ex["problem"] and any(t != -100 for t in ex["labels"]),
                             desc="dropping rows with no trainable token")
    dataset = dataset.remove_columns(["problem", "truncated"])
    log(f"data: {n_rows} conversations in {len(files)} file(s) -> {len(dataset)} trained; "
        f"{truncated} truncated to {max_length} tokens, {no_answer_left} dropped (no answer token left), "
        f"{sum(problems.values())} skipped as bad rows")
    common.log_skipped_or_stop(dataset, problems, log, f"no trainable conversation in '{source or files[0].parent}' "
                             f"(see the counts above): check the data or raise --max_length.")
    stats = {"rows": n_rows, "trained": len(dataset), "truncated": truncated, "dropped_no_answer": no_answer_left,
             "skipped": dict(problems)}
    return dataset, stats

