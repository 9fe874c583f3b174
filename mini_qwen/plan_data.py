"""The data a run plan counts (mini_qwen/plan.py): PT documents and tokens from the token cache when it exists, else
from the text column's bytes (parquet footers; a text file's head, scaled) at PT_BYTES_PER_TOKEN; SFT / DPO rows
(parquet footers; text files counted), and
their lengths (after the stage's own truncation and, for SFT, packing) from a sample of rows run through the
stage's own encoding. Every figure says whether it is measured, estimated or given (a flag).
"""

import json
import math
from pathlib import Path

from mini_qwen.errors import MiniQwenError

# Bytes of the `text` column (uncompressed, from the parquet footer) per Qwen token, `<|im_end|>` included.
# Measured on the real IndustryCorpus2 samples (tests/data/baai/pt: 100 Chinese documents,
# 136,575 tokens; 100 English, 150,989 tokens). Whole files are 2.9 bytes a token there (compressed, with the
# other 8-12 columns); mini_data/pt (written by this project) gives 4.67.
PT_BYTES_PER_TOKEN = {"chinese": 4.08, "english": 4.69, None: 4.40}
PT_BYTES_SOURCE = "text bytes per token measured on 200 real IndustryCorpus2 documents (zh 4.08, en 4.69)"

def figure(value, unit: str, basis: str, source: str = "") -> dict:
    """A number with its unit and where it comes from: basis is "measured", "estimated" or "given" (a flag)."""
    return {"value": value, "unit": unit, "basis": basis, "source": source}


def _rows(data_files, options: dict | None = None) -> int:
    from mini_qwen.data.files import count_rows

    return sum(count_rows(f, options) for f in data_files)


def _layouts(stage: str, data_files, options: dict | None) -> dict:
    """{file: Layout} of files the stage found and checked (schemas are read once per process)."""
    from mini_qwen.data.checks import stage_data
    from mini_qwen.data.common import read_schema

    module = stage_data(stage)
    return {f: module.check_schema(f, read_schema(f, options), options) for f in data_files}


def pt_data(data_args, tokenizer, dataset_tokens: int | None) -> dict:
    """PT documents and tokens: the token cache's counts, else the files' text bytes at PT_BYTES_PER_TOKEN."""
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.common import data_options
    from mini_qwen.data.files import column_bytes
    from mini_qwen.data.packing import BYTES_PER_TOKEN
    from mini_qwen.data.pt import data_cache

    out = {"block_size": data_args.block_size}
    if dataset_tokens:
        out["tokens"] = figure(dataset_tokens, "tokens", "given", "--dataset_tokens")
        out["files"] = None
    else:
        if not Path(data_args.data_dir).exists():
            raise MiniQwenError(f"PT data folder '{data_args.data_dir}' does not exist: run `bash prepare.sh` to "
                                f"download it, point --data_dir at it, or plan without it: --dataset_tokens N.")
        options = data_options(data_args)
        files = find_stage_files("pt", data_args.data_dir, data_args.data_glob, options, log=lambda *_: None)
        out["files"] = figure(len(files), "files", "measured", data_args.data_dir)
        out["file bytes"] = figure(sum(f.stat().st_size for f in files), "bytes", "measured", "file sizes")
        token_cache = data_cache(files, tokenizer, data_args.cache_dir, options)
        cache = token_cache.folder
        if token_cache.ready():
            meta = json.loads((cache / "meta.json").read_text())
            out["documents"] = figure(meta["documents"], "documents", "measured", f"token cache {cache}")
            out["tokens"] = figure(meta["tokens"], "tokens", "measured", f"token cache {cache}")
        else:
            out["documents"] = figure(_rows(files, options), "rows", "measured",
                                      "parquet footers, text files counted (empty texts included)")
            tokens = 0.0
            for f, layout in _layouts("pt", files, options).items():
                language = next((p for p in f.parts if p in PT_BYTES_PER_TOKEN), None)
                tokens += column_bytes(f, layout.columns, options) / PT_BYTES_PER_TOKEN[language]
            out["tokens"] = figure(round(tokens), "tokens", "estimated",
                                   f"text bytes (parquet footers; text files' heads, scaled) / {PT_BYTES_SOURCE} "
                                   f"(no token cache yet)")
    tokens = out["tokens"]["value"]
    out["units"] = tokens // data_args.block_size
    out["unit"] = f"blocks of {data_args.block_size} tokens"
    out["tokens per unit"] = data_args.block_size
    documents = out.get("documents", {}).get("value", 0) if out.get("documents") else 0
    out["cache bytes"] = figure(tokens * BYTES_PER_TOKEN + 4 * documents, "bytes", "estimated",
                                "token cache: 3 bytes a token + 4 a document")
    if out["tokens"]["source"].startswith("token cache"):
        cache = Path(out["tokens"]["source"].removeprefix("token cache "))
        out["cache bytes"] = figure(sum(f.stat().st_size for f in cache.iterdir()), "bytes", "measured", str(cache))
    out["trained share"] = 1.0
    return out


def sample_values(stage: str, data_files, rows: int, options: dict | None = None) -> dict[str, list]:
    """The first rows of every file (rows / files of each, at least one) in the stage's own columns."""
    from mini_qwen.data.checks import stage_data

    each = max(1, math.ceil(rows / len(data_files)))
    values = {c: [] for c in stage_data(stage).columns(options)}
    for f, layout in _layouts(stage, data_files, options).items():
        for batch in layout.batches(f, each, options, "skip"):
            for c in values:
                values[c] += batch[c]
            break
    return values


def sft_data(data_args, training_args, tokenizer, sample_rows: int) -> dict:
    """SFT conversations from the footers; lengths, kept share and packing from a sample of them."""
    from datasets import Dataset, disable_progress_bars

    from mini_qwen.chat import encode_conversations, normalize_messages
    from mini_qwen.data import sft
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.common import data_options
    from mini_qwen.data.packing import pack_conversations

    options = data_options(data_args)
    files = find_stage_files("sft", data_args.data_dir, data_args.data_glob, options, log=lambda *_: None)
    values = sample_values("sft", files, sample_rows, options)
    good = [conv for conv, problem in zip(values["conversations"], sft.row_problems(values)) if problem is None]
    convs = [normalize_messages(conv, data_args.first_turn_only) for conv in good]
    max_length = training_args.max_length
    encoded = encode_conversations(tokenizer, convs, max_length)
    kept = [(ids, labels) for ids, labels in zip(encoded["input_ids"], encoded["labels"])
            if any(t != -100 for t in labels)]
    sampled = len(values["conversations"])
    if not kept:
        raise MiniQwenError(f"no trainable conversation among the first {sampled} rows of the files in "
                            f"'{data_args.data_dir}': check them with `python utils/check_data.py sft "
                            f"{data_args.data_dir}`.")
    lengths = [len(ids) for ids, _ in kept]
    trained = sum(sum(t != -100 for t in labels) for _, labels in kept)
    rows = _rows(files, options)
    conversations = rows * len(kept) / sampled
    source = f"a sample of {sampled} rows (the first of each file), the stage's own encoding at max_length {max_length}"
    out = {"files": figure(len(files), "files", "measured", data_args.data_dir),
           "file bytes": figure(sum(f.stat().st_size for f in files), "bytes", "measured", "file sizes"),
           "rows": figure(rows, "conversations", "measured", "parquet footers, text files counted"),
           "conversations": figure(round(conversations), "conversations", "estimated",
                                   f"rows x the share kept in {source}"),
           "mean length": figure(round(sum(lengths) / len(kept), 1), "tokens", "estimated", source)}
    if training_args.packing:
        disable_progress_bars()  # a plan prints its table only
        packed = pack_conversations(Dataset.from_dict({"input_ids": [k[0] for k in kept],
                                                       "labels": [k[1] for k in kept]}), max_length).num_rows
        per_row = len(kept) / packed
        out["conversations per row"] = figure(round(per_row, 2), "conversations", "estimated",
                                              f"packing the sample into rows of {max_length}")
        out["units"] = conversations / per_row
        out["unit"] = f"packed rows of {max_length} tokens"
        out["trained share"] = trained / (packed * max_length)
    else:
        out["units"] = conversations
        out["unit"] = "conversations"
        out["trained share"] = trained / sum(lengths)
    out["longest"] = figure(max(lengths), "tokens", "estimated", f"the longest conversation of {source}")
    out["tokens per unit"] = sum(lengths) / len(kept) * conversations / out["units"]
    out["tokens"] = figure(round(conversations * sum(lengths) / len(kept)), "tokens", "estimated",
                           "conversations x mean length")
    out["cache bytes"] = figure(out["tokens"]["value"] * 16, "bytes", "estimated",
                                "datasets cache: int64 input_ids + labels, 16 bytes a token")
    return out


def dpo_data(data_args, training_args, tokenizer, sample_rows: int) -> dict:
    """DPO pairs from the footers; lengths and kept share (after the stage's truncation) from a sample."""
    from mini_qwen.data import dpo
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.common import data_options

    options = data_options(data_args)
    files = find_stage_files("dpo", data_args.data_dir, data_args.data_glob, options, log=lambda *_: None)
    values = sample_values("dpo", files, sample_rows, options)
    rows_good = [row for row, problem in zip(zip(*(values[c] for c in dpo.COLUMNS)), dpo.row_problems(values))
                 if problem is None]
    pairs = [dpo.parse_pair(*row) for row in rows_good]
    encoded = [p for p in dpo.encode_pairs(tokenizer, pairs, training_args.max_length, data_args.max_prompt_length)
               if not p["dropped"]]
    sampled = len(values["prompt"])
    if not encoded:
        raise MiniQwenError(f"no trainable preference pair among the first {sampled} rows of the files in "
                            f"'{data_args.data_dir}': check them with `python utils/check_data.py dpo "
                            f"{data_args.data_dir}`.")
    rows = _rows(files, options)
    usable = rows * len(encoded) / sampled
    if data_args.max_pairs:
        usable = min(usable, data_args.max_pairs)
    prompt = sum(len(p["prompt_ids"]) for p in encoded) / len(encoded)
    answers = sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in encoded) / len(encoded)
    source = (f"a sample of {sampled} rows (the first of each file), the stage's own truncation at max_length "
              f"{training_args.max_length}, prompt {data_args.max_prompt_length}")
    per_pair = 2 * prompt + answers  # the policy reads the prompt twice: before the chosen and the rejected answer
    longest = max(len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in encoded)
    return {"files": figure(len(files), "files", "measured", data_args.data_dir),
            "file bytes": figure(sum(f.stat().st_size for f in files), "bytes", "measured", "file sizes"),
            "rows": figure(rows, "pairs", "measured", "parquet footers, text files counted"),
            "pairs": figure(round(usable), "pairs", "estimated", f"rows x the share kept in {source}"
                            + (f", at most --max_pairs {data_args.max_pairs}" if data_args.max_pairs else "")),
            "mean length": figure(round(per_pair, 1), "tokens", "estimated",
                                  f"prompt twice + both answers, {source}"),
            "longest": figure(longest, "tokens", "estimated", f"the longest prompt + answer of {source}"),
            "units": usable, "unit": "pairs", "tokens per unit": per_pair, "trained share": answers / per_pair,
            "tokens": figure(round(usable * per_pair), "tokens", "estimated", "pairs x mean length"),
            "cache bytes": figure(round(usable * (prompt + answers) * 8), "bytes", "estimated",
                                  "datasets cache: int64 ids, 8 bytes a token")}


