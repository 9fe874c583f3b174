"""DPO data, all in one place: preference pairs (Infinity-Preference parquet, or any format data/files.py reads)
-> a tokenized dataset (prompt_ids, chosen_ids, rejected_ids), with counts.

The same face as every stage's data module (see mini_qwen/data/pt.py): SCHEMAS, columns, check_schema,
row_problems, overlong_rows, build_dataset.

DPO's own columns are a `prompt` (the user's question) and two conversations, `chosen` and `rejected`,
as lists of {content, role} messages ([user, assistant] in the real data). Every schema in SCHEMAS becomes them:
  conversational   prompt (text, or TRL's list of messages), chosen / rejected lists of messages (BAAI, TRL)
  plain strings    prompt, chosen, rejected as texts (+ optional system)
  sharegpt pairs   conversations ({from, value} turns ending with the question), chosen / rejected {from, value}
                   records (+ optional system)
We read only those columns (never `id`, whose type differs between releases) and build, in the
Qwen chat format of mini_qwen/chat.py:

    prompt_ids   = [<|im_start|>system\\n{system}<|im_end|>\\n]
                   <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n
    chosen_ids   = {chosen answer}<|im_end|>
    rejected_ids = {rejected answer}<|im_end|>

i.e. the ids of `format_prompt(prompt, system)` and each answer closed by the `<|im_end|>` that
makes the model stop. Every text is tokenized on its own and joined with the fixed header ids,
as in SFT, so no BPE merge straddles the prompt/answer border.

Truncation (the answers are what DPO compares, so they keep as much room as possible):
  1. the prompt gets at most `max_prompt_length` tokens: the HEAD of the user text is cut, so
     the `<|im_start|>user\\n` header, the end of the question and the assistant header stay
     (a system text, if any, loses its head only when the question alone cannot make room);
  2. each answer's TAIL is cut so that prompt + answer <= `max_length` (a cut answer loses its
     closing `<|im_end|>`: it did not end there);
  3. a pair is dropped (and counted) when an answer has no token left, or when both answers are
     the same tokens after the cut (identical answers give DPO no signal).

Bad rows (empty prompt, no assistant answer, chosen == rejected, ...) are skipped and counted
by default; `on_bad_rows="error"` stops at the first one with its file and row instead.
"""

import sys
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa

from mini_qwen import chat
from mini_qwen.chat import ChatTokens, parse_turn
from mini_qwen.data import common
from mini_qwen.data.common import RowSchema, detect_layout, is_text, is_turns, parse_rows, record_keys
from mini_qwen.data.prepare import DataCache
from mini_qwen.errors import MiniQwenError

NAME = "dpo"
FILES_MERGED = False  # read file by file into fixed features (common.encode_rows_file): types never meet
WHAT = "DPO data"  # how messages name the data
COLUMNS = {
    "prompt": "the user's question as text",
    "chosen": "the preferred conversation, a list of {content, role} messages",
    "rejected": "the dispreferred conversation, a list of {content, role} messages",
}
ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


class BadPair(ValueError):
    """A row that cannot be trained on; the message says why."""


def _system_first(messages, system):
    return messages if not system or messages is None else [{"role": "system", "content": system}, *messages]


def _prompt_text(prompt):
    """TRL's conversational prompt (a list of messages) -> (system or None, the question); a multi-turn prompt
    stays a list, which parse_pair refuses with its reason."""
    if not isinstance(prompt, list):
        return None, prompt
    system = next((m.get("content") for m in prompt if isinstance(m, dict) and parse_turn(m)[0] == "system"), None)
    users = [parse_turn(m)[1] for m in prompt if isinstance(m, dict) and parse_turn(m)[0] == "user"]
    return system, (users[0] if len(users) == 1 else prompt)


def _conversational(values):
    out = {"prompt": [], "chosen": [], "rejected": []}
    systems = values.get("system") or [None] * len(values["prompt"])
    for prompt, chosen, rejected, system in zip(values["prompt"], values["chosen"], values["rejected"], systems):
        prompt_system, question = _prompt_text(prompt)
        system = system or prompt_system
        out["prompt"].append(question)
        out["chosen"].append(_system_first(chosen, system))
        out["rejected"].append(_system_first(rejected, system))
    return out


def _answer_turn(text):
    return None if text is None else [{"role": "assistant", "content": text}]


def _strings(values):
    return _conversational({**values, "chosen": [_answer_turn(c) for c in values["chosen"]],
                            "rejected": [_answer_turn(r) for r in values["rejected"]]})


def _sharegpt(values):
    prompts = []
    for conv in values["conversations"]:
        turns = [{"role": parse_turn(t)[0], "content": parse_turn(t)[1]} for t in conv or [] if isinstance(t, dict)]
        prompts.append(turns or None)
    pick = [_answer_turn(r.get("value", r.get("content"))) if isinstance(r, dict) else None for r in values["chosen"]]
    drop = [_answer_turn(r.get("value", r.get("content"))) if isinstance(r, dict) else None for r in values["rejected"]]
    return _conversational({**values, "prompt": prompts, "chosen": pick, "rejected": drop})


def _fits_conversational(types):
    if not is_text(types["prompt"]) and not is_turns(types["prompt"]):
        return f"column 'prompt' must hold text or a list of messages but has type {types['prompt']}"
    for name in ("chosen", "rejected"):
        if not is_turns(types[name]):
            return (f"column '{name}' must be a list of {{content, role}} messages (Infinity-Preference format) or "
                    f"text but has type {types[name]}")
    return None


def _fits_strings(types):
    wrong = [n for n in ("prompt", "chosen", "rejected") if not is_text(types[n])]
    return f"column '{wrong[0]}' must hold text but has type {types[wrong[0]]}" if wrong else None


def _fits_sharegpt(types):
    if not is_turns(types["conversations"]):
        return f"column 'conversations' must be a list of {{from, value}} turns but has type {types['conversations']}"
    for name in ("chosen", "rejected"):
        if not {"from", "value"} <= record_keys(types[name], 0):
            return f"column '{name}' must be a {{from, value}} record but has type {types[name]}"
    return None


SCHEMAS = (
    RowSchema("conversational (BAAI / TRL)", {"prompt": "the question, text or messages",
                                              "chosen": "the preferred answer as messages",
                                              "rejected": "the dispreferred answer as messages"},
              fits=_fits_conversational, convert=_conversational, optional=("system",),
              example='{"prompt": "2+2?", "chosen": [{"role": "assistant", "content": "4"}], '
                      '"rejected": [{"role": "assistant", "content": "5"}]}'),
    RowSchema("plain strings", {"prompt": "the question", "chosen": "the preferred answer",
                                "rejected": "the dispreferred answer"},
              fits=_fits_strings, convert=_strings, optional=("system",),
              example='{"prompt": "2+2?", "chosen": "4", "rejected": "5"}'),
    RowSchema("sharegpt pairs", {"conversations": "{from, value} turns ending with the question",
                                 "chosen": "the preferred {from, value} answer",
                                 "rejected": "the dispreferred {from, value} answer"},
              fits=_fits_sharegpt, convert=_sharegpt, optional=("system",),
              example='{"conversations": [{"from": "human", "value": "2+2?"}], "chosen": {"from": "gpt", '
                      '"value": "4"}, "rejected": {"from": "gpt", "value": "5"}}'),
)


def columns(options: dict | None = None) -> list[str]:
    """DPO's own columns (whatever schema the files follow): prompt, chosen, rejected."""
    return list(COLUMNS)


def check_schema(path: Path, schema: pa.Schema, options: dict | None = None):
    """The file's Layout: the first of SCHEMAS its columns fit; else MiniQwenError naming the file, the columns
    it has, the schemas accepted and the flag that maps a column."""
    return detect_layout(path, schema, options, SCHEMAS, WHAT)


def _answer(messages, side: str) -> tuple[str | None, str]:
    """(system text or None, the assistant answer) of one side of a pair, validated."""
    if messages is None or len(messages) == 0:
        raise BadPair(f"{side} has no messages")
    system, users, answer = None, 0, None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadPair(f"{side} message {i} is not a {{content, role}} record")
        role, content, raw_role = parse_turn(message)
        if role not in ("system", "user", "assistant"):
            raise BadPair(f"{side} message {i} has unknown role {raw_role!r} (expected user/assistant/system)")
        if role == "system":
            if i > 0:
                raise BadPair(f"{side} message {i} is a system message after the start")
            system = content or None
        elif role == "user":
            users += 1
        else:
            answer = content
    if answer is None:
        raise BadPair(f"{side} has no assistant message")
    if role != "assistant":
        raise BadPair(f"{side} does not end with the assistant answer")
    if users > 1:
        raise BadPair(f"{side} is a multi-turn conversation (only single-turn pairs are supported)")
    if not answer.strip():
        raise BadPair(f"{side} assistant answer is empty")
    return system, answer


def parse_pair(prompt, chosen, rejected) -> tuple[str | None, str, str, str]:
    """(system, prompt, chosen answer, rejected answer) of one row, or BadPair."""
    if isinstance(prompt, list):
        raise BadPair("the prompt is a multi-turn conversation (only single-turn pairs are supported)")
    if prompt is None or not str(prompt).strip():
        raise BadPair("empty prompt")
    system, chosen_answer = _answer(chosen, "chosen")
    rejected_system, rejected_answer = _answer(rejected, "rejected")
    if system != rejected_system:
        raise BadPair("chosen and rejected have different system messages")
    if chosen_answer.strip() == rejected_answer.strip():
        raise BadPair("chosen and rejected answers are identical")
    return system, prompt, chosen_answer, rejected_answer


def min_prompt_length(ct: ChatTokens) -> int:
    """The fewest prompt tokens: user header, one question token, <|im_end|>\\n, assistant header."""
    return len(ct.role_header["user"]) + 1 + 1 + len(ct.newline) + len(ct.role_header["assistant"])


def build_pair(ct: ChatTokens, user_ids: list[int], chosen_ids: list[int], rejected_ids: list[int],
               max_length: int, max_prompt_length: int, system_ids: list[int] | None = None) -> dict:
    """One tokenized pair cut to its budgets (see the module docstring).

    Returns {prompt_ids, chosen_ids, rejected_ids, prompt_cut, answer_cut, dropped}; `dropped` is
    "" or why the pair cannot be trained on.
    """
    tail = [ct.im_end] + ct.newline + ct.role_header["assistant"]
    head = ct.role_header["user"]
    sys_fixed = len(ct.role_header["system"]) + 1 + len(ct.newline) if system_ids is not None else 0
    system_ids = list(system_ids or [])
    over = sys_fixed + len(system_ids) + len(head) + len(user_ids) + len(tail) - max_prompt_length
    prompt_cut = over > 0
    if over > 0:  # cut the head of the question, keeping at least its last token
        cut = min(over, max(len(user_ids) - 1, 0))
        user_ids, over = user_ids[cut:], over - cut
    if over > 0 and system_ids:  # then the head of the system text
        cut = min(over, len(system_ids))
        system_ids, over = system_ids[cut:], over - cut
    empty = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "prompt_cut": prompt_cut, "answer_cut": False}
    if over > 0:
        return {**empty, "dropped": "prompt headers do not fit max_prompt_length"}
    system_part = (ct.role_header["system"] + system_ids + [ct.im_end] + ct.newline) if sys_fixed else []
    prompt_ids = system_part + head + user_ids + tail
    room = max(max_length - len(prompt_ids), 0)
    chosen = (chosen_ids + [ct.im_end])[:room]
    rejected = (rejected_ids + [ct.im_end])[:room]
    answer_cut = len(chosen) <= len(chosen_ids) or len(rejected) <= len(rejected_ids)
    out = {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected, "prompt_cut": prompt_cut,
           "answer_cut": answer_cut, "dropped": ""}
    if not chosen or not rejected:
        return {**empty, "prompt_cut": prompt_cut, "answer_cut": True, "dropped": "no answer token left"}
    if chosen == rejected:
        return {**empty, "prompt_cut": prompt_cut, "answer_cut": answer_cut,
                "dropped": "answers identical after truncation"}
    return out


def encode_pairs(tokenizer, pairs: list[tuple], max_length: int, max_prompt_length: int) -> list[dict]:
    """build_pair for many (system, prompt, chosen, rejected) tuples, all texts tokenized in one Rust call."""
    ct = ChatTokens.of(tokenizer)
    texts = []
    for system, prompt, chosen, rejected in pairs:
        texts += [prompt, chosen, rejected] + ([system] if system is not None else [])
    encoded = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False) if texts else []
    out, pos = [], 0
    for system, *_ in pairs:
        user_ids, chosen_ids, rejected_ids = (encoded[pos + i].ids for i in range(3))
        system_ids = encoded[pos + 3].ids if system is not None else None
        pos += 3 + (system is not None)
        out.append(build_pair(ct, user_ids, chosen_ids, rejected_ids, max_length, max_prompt_length, system_ids))
    return out


def row_problems(values: dict[str, list]) -> list[str | None]:
    """Why each pair of a batch cannot be trained on, or None for a good one."""
    return common.row_problems({name: values[name] for name in COLUMNS}, parse_pair, BadPair)


def overlong_rows(values: dict[str, list], tokenizer, max_length: int,
                  max_prompt_length: int | None = None) -> list[str | None]:
    """For good rows: what the truncation above does to a pair longer than `max_length` tokens."""
    pairs = [parse_pair(*row) for row in zip(*(values[name] for name in COLUMNS))]
    out = []
    for pair in encode_pairs(tokenizer, pairs, max_length, max_prompt_length or max(max_length // 2, 1)):
        if pair["dropped"]:
            out.append(f"dropped after truncation to {max_length} tokens: {pair['dropped']}")
        elif pair["prompt_cut"] or pair["answer_cut"]:
            out.append(f"longer than {max_length} tokens (truncated)")
        else:
            out.append(None)
    return out


def _encode_batch(batch, indices, tokenizer, max_length, max_prompt_length, on_bad_rows, locate):
    good, problems = parse_rows(zip(batch["prompt"], batch["chosen"], batch["rejected"]), indices, parse_pair,
                                BadPair, on_bad_rows, locate)
    encoded = iter(encode_pairs(tokenizer, good, max_length, max_prompt_length))
    keys = ID_COLUMNS + ("prompt_cut", "answer_cut", "dropped")
    out = {key: [] for key in keys}
    out["problem"] = problems
    for problem in problems:
        pair = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "prompt_cut": False, "answer_cut": False,
                "dropped": ""} if problem else next(encoded)
        for key in keys:
            out[key].append(pair[key])
    return out


# What `_encode_batch` writes for each input row (the part files of the cache; prepare.py).
ENCODED = datasets.Features({**{name: datasets.List(datasets.Value("int64")) for name in ID_COLUMNS},
                             "prompt_cut": datasets.Value("bool"), "answer_cut": datasets.Value("bool"),
                             "dropped": datasets.Value("string"), "problem": datasets.Value("string")})
CACHE_CODE = (__file__, chat.__file__)  # how rows are encoded: editing these makes a new cache


def cache_settings(max_length: int, max_prompt_length: int, options: dict | None = None) -> dict:
    """What, besides the files and the tokenizer, changes DPO's encoded pairs (the cache key)."""
    return {"max_length": max_length, "max_prompt_length": max_prompt_length,
            "options": dict(sorted((options or {}).items()))}


def encode_file(path: Path, part: Path, tokenizer, settings: dict, on_bad_rows: str, report, **options) -> dict:
    """One data file -> its part of the cache (mini_qwen/data/prepare.py)."""
    return common.encode_rows_file(path, part, sys.modules[__name__], _encode_batch, ENCODED, tokenizer, settings,
                                   on_bad_rows, report, "chosen_ids", **options)


finish_cache = common.finish_rows_cache


def data_cache(files: list[Path], tokenizer, cache_dir: str, max_length: int, max_prompt_length: int,
               options: dict | None = None):
    """The DPO cache of these (checked) files: `.ready()`, `.prepare(num_proc, shard)` (prepare.py)."""
    return DataCache(sys.modules[__name__], files, tokenizer, cache_dir,
                     cache_settings(max_length, max_prompt_length, options))


def build_dataset(files: list[Path], tokenizer, max_length: int, max_prompt_length: int, on_bad_rows: str = "skip",
                  num_proc: int | None = None, source: str | None = None, log=print,
                  cache_dir: str = ".cache/mini_qwen", options: dict | None = None):
    """The DPO training set and its counts: (datasets.Dataset of prompt_ids/chosen_ids/rejected_ids, stats),
    from files the stage script has already found and checked."""
    ct = ChatTokens.of(tokenizer)
    if max_prompt_length < min_prompt_length(ct):
        raise MiniQwenError(f"--max_prompt_length {max_prompt_length} is too small: the chat headers alone need "
                            f"{min_prompt_length(ct) - 1} tokens (the original run used 512).")
    if max_prompt_length >= max_length:
        log(f"note: --max_prompt_length {max_prompt_length} >= --max_length {max_length}: pairs whose prompt "
            f"fills max_length keep no answer token and are dropped.")
    cache = data_cache(files, tokenizer, cache_dir, max_length, max_prompt_length, options)
    encoded = common.encoded_rows(cache, num_proc, on_bad_rows, log)
    n_rows = len(encoded)
    problems = Counter(p for p in encoded["problem"] if p)
    dropped = Counter(d for d in encoded["dropped"] if d)
    kept = [not p and not d for p, d in zip(encoded["problem"], encoded["dropped"])]  # counts below: trained pairs
    prompt_cut = sum(c for c, k in zip(encoded["prompt_cut"], kept) if k)
    answer_cut = sum(c for c, k in zip(encoded["answer_cut"], kept) if k)
    truncated = sum(1 for a, b, k in zip(encoded["prompt_cut"], encoded["answer_cut"], kept) if k and (a or b))
    dataset = encoded.filter(lambda ex: not ex["problem"] and not ex["dropped"],
                             desc="dropping pairs with nothing to compare")
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in ID_COLUMNS])
    log(f"data: {n_rows} pairs in {len(files)} file(s) -> {len(dataset)} trained ({truncated} of them truncated: "
        f"{prompt_cut} prompts cut to {max_prompt_length} tokens, {answer_cut} with an answer cut to fit "
        f"{max_length}), {sum(dropped.values())} dropped, {sum(problems.values())} skipped as bad rows")
    for reason, count in dropped.most_common():
        log(f"  dropped {count}: {reason}")
    common.log_skipped_or_stop(dataset, problems, log, f"no trainable preference pair in '{source or files[0].parent}' "
                             f"(see the counts above): check the data or raise --max_length / lower "
                             f"--max_prompt_length.")
    stats = {"rows": n_rows, "trained": len(dataset), "truncated": truncated, "prompt_truncated": prompt_cut,
             "answer_truncated": answer_cut, "dropped": dict(dropped), "skipped": dict(problems)}
    return dataset, stats


LENGTH_SAMPLERS = ("group_by_length", "batch_rebalance")  # --train_sampling_strategy values that read lengths


def with_lengths(dataset, column: str = "length"):
    """Adds each pair's padded length, prompt + the longer answer (TRL pads chosen and rejected together), for
    transformers' length-aware samplers (`--train_sampling_strategy group_by_length / batch_rebalance`)."""
    def lengths(batch):
        return {column: [len(p) + max(len(c), len(r)) for p, c, r in
                         zip(batch["prompt_ids"], batch["chosen_ids"], batch["rejected_ids"])]}

    return dataset.map(lengths, batched=True, desc="pair lengths")

