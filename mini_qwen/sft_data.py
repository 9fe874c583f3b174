"""Infinity-Instruct parquet files -> a tokenized SFT dataset (input_ids + labels), with counts.

Bad rows (empty conversation, unknown role, no final assistant answer, ...) are skipped and
counted by default, since one odd row in millions should not stop a day-long run;
`on_bad_rows="error"` stops at the first one with its file and row instead.
"""

from collections import Counter

from mini_qwen.chat import BadConversation, encode_conversations, normalize_messages
from mini_qwen.data import check_conversations_column, find_parquet_files, map_rows, parse_rows, read_schema
from mini_qwen.errors import MiniQwenError


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


def build_sft_dataset(data_dir: str, data_glob: str, tokenizer, max_length: int, first_turn_only: bool = False,
                      on_bad_rows: str = "skip", num_proc: int | None = None, log=print):
    files = find_parquet_files(data_dir, data_glob, what="SFT data")
    for f in files:
        check_conversations_column(f, read_schema(f))
    encoded, n_rows = map_rows(files, ["conversations"], _encode_batch, tokenizer, num_proc,
                               "tokenizing conversations", __file__, max_length=max_length,
                               first_turn_only=first_turn_only, on_bad_rows=on_bad_rows)
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
    for problem, count in problems.most_common():
        log(f"  skipped {count}: {problem}")
    if len(dataset) == 0:
        raise MiniQwenError(f"no trainable conversation in '{data_dir}' (see the counts above): check the data "
                            f"or raise --max_length.")
    stats = {"rows": n_rows, "trained": len(dataset), "truncated": truncated, "dropped_no_answer": no_answer_left,
             "skipped": dict(problems)}
    return dataset, stats
