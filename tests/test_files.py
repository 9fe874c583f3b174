"""Your own data (mini_qwen/data/files.py and each stage's SCHEMAS): every accepted file format reads the same rows,
every chat schema becomes the same conversations, the same documents give the same token ids whatever the format,
bad lines are named (file, line, byte offset) or skipped and counted, and each stage trains one step on each schema
family. Every file is written by the test itself."""

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mini_qwen.chat import normalize_messages
from mini_qwen.data import dpo, files, pt, sft
from mini_qwen.data.checks import check_stage_files, find_stage_files
from mini_qwen.data.common import read_schema
from mini_qwen.errors import MiniQwenError

# Texts that break naive readers: a quoted comma, a double quote, newlines (also a blank line), a tab, Chinese.
DOCS = ["Plain first document.", 'A "quoted" word, a comma, and\na second line.',
        "李白是唐代诗人。\n\n他写了很多诗。", "tab\there and the end"]


def write_jsonl(path: Path, rows: list[dict], opener=open) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_zst(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.CompressedOutputStream(str(path), "zstd") as out:
        out.write(data)
    return path


def write_all_formats(folder: Path, rows: list[dict]) -> dict[str, Path]:
    """The same records as every accepted format but txt; {format: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    out = {"parquet": folder / "a.parquet", "jsonl": write_jsonl(folder / "b.jsonl", rows),
           "json": folder / "c.json", "csv": write_csv(folder / "d.csv", rows),
           "tsv": write_csv(folder / "e.tsv", rows, "\t"), "jsonl.gz": folder / "f.jsonl.gz",
           "jsonl.zst": write_zst(folder / "g.jsonl.zst", jsonl)}
    pq.write_table(pa.Table.from_pylist(rows), out["parquet"])
    out["json"].write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    out["jsonl.gz"].write_bytes(gzip.compress(jsonl))
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "saved"))
    out["arrow"] = next((folder / "saved").glob("*.arrow"))
    return out


# --------------------------------------------------------------------------- the reader layer

def test_every_format_reads_the_same_rows_schema_counts_and_bytes(tmp_path):
    rows = [{"text": doc, "n": i} for i, doc in enumerate(DOCS)]
    paths = write_all_formats(tmp_path / "data", rows)
    for fmt, path in paths.items():
        batches = list(files.iter_batches(path, ["text"], batch_rows=3))
        assert [len(b["text"]) for b in batches] == [3, 1], fmt
        assert [t for b in batches for t in b["text"]] == DOCS, fmt  # quotes, commas, newlines, tabs intact
        assert read_schema(path).names[:2] == ["text", "n"], fmt
        assert files.count_rows(path) == len(DOCS), fmt
        text_bytes = sum(len(d.encode()) for d in DOCS)
        # text files measure the text itself; parquet footers and Arrow buffers add page headers / offsets
        assert text_bytes <= files.column_bytes(path, ["text"]) <= text_bytes + (200 if fmt == "parquet" else 20), fmt
    # find_data_files takes them all (the datasets folder's state.json / dataset_info.json are no data)
    found = {p.name for p in files.find_data_files(str(tmp_path / "data"))}
    assert found == {p.name for p in paths.values()}


def test_txt_is_one_document_per_file_or_per_blank_line_block(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first block\nstill first\n\n\nsecond block\n", encoding="utf-8")
    whole = [t for b in files.iter_batches(path, ["text"]) for t in b["text"]]
    assert whole == ["first block\nstill first\n\n\nsecond block\n"]
    blocks = [t for b in files.iter_batches(path, ["text"], options={"txt_split": "blank_lines"}) for t in b["text"]]
    assert blocks == ["first block\nstill first", "second block"]


def test_bad_lines_are_named_or_skipped_and_counted(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": "cut\n' + '{"text": "caf\u00e9"}\n'.encode("latin-1")
                     + b'\n["not a record"]\n{"text": "two"}\n')  # broken, non-UTF-8, blank, not a record
    with pytest.raises(MiniQwenError, match=r"a\.jsonl: line 2: not valid JSON .*--on_bad_rows skip"):
        list(files.iter_batches(path, ["text"]))
    stats = {}
    texts = [t for b in files.iter_batches(path, ["text"], on_bad_rows="skip", stats=stats) for t in b["text"]]
    assert texts == ["one", "two"] and stats["unreadable"] == 3
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n' + '{"text": "caf\u00e9"}\n'.encode("latin-1"))  # 15 bytes, then 13
    with pytest.raises(MiniQwenError, match=r"latin\.jsonl: line 2, byte offset 28: not UTF-8 .*iconv"):
        list(files.iter_batches(latin, ["text"]))
    broken = tmp_path / "b.csv"
    broken.write_text('text,n\n"one, quoted",1\ntwo,2,extra\n', encoding="utf-8")
    with pytest.raises(MiniQwenError, match=r"b\.csv: row 2 \(line 3\): 3 fields where the header has 2"):
        list(files.iter_batches(broken, ["text"]))


def test_unaccepted_formats_and_empty_files_say_what_is_read(tmp_path):
    with pytest.raises(MiniQwenError, match=r"'.*a\.xlsx' is not a data format .*use parquet, jsonl"):
        files.file_format(tmp_path / "a.xlsx")
    with pytest.raises(MiniQwenError, match="not a data format"):
        files.file_format(tmp_path / "a.parquet.gz")  # parquet compresses itself
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(MiniQwenError, match=r"empty\.jsonl' holds no records"):
        read_schema(tmp_path / "empty.jsonl")
    (tmp_path / "notes.md").write_text("# my data")
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "x"}])
    assert [p.name for p in files.find_data_files(str(tmp_path))] == ["empty.jsonl", "rows.jsonl"]


# --------------------------------------------------------------------------- the same tokens from every format

def test_token_ids_of_the_same_documents_are_identical_from_parquet_jsonl_csv_and_txt(tmp_path, tokenizer):
    rows = [{"text": doc} for doc in DOCS]
    sources = {"parquet": tmp_path / "pq", "jsonl": tmp_path / "jl", "csv": tmp_path / "csv", "txt": tmp_path / "txt"}
    sources["parquet"].mkdir()
    pq.write_table(pa.Table.from_pylist(rows), sources["parquet"] / "a.parquet")
    write_jsonl(sources["jsonl"] / "a.jsonl", rows)
    write_csv(sources["csv"] / "a.csv", rows)
    sources["txt"].mkdir()
    for i, doc in enumerate(DOCS):  # one document per file, as written
        (sources["txt"] / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    tokens = {}
    for fmt, folder in sources.items():
        data_files = find_stage_files("pt", str(folder), log=lambda *_: None)
        cache = pt.prepare_token_cache(data_files, tokenizer, tmp_path / "cache", log=lambda *_: None, progress=False)
        tokens[fmt] = ((cache / "tokens.u24").read_bytes(), np.load(cache / "doc_lens.npy").tolist())
    assert len(tokens["parquet"][1]) == len(DOCS)
    assert tokens["jsonl"] == tokens["parquet"] and tokens["csv"] == tokens["parquet"]
    assert tokens["txt"] == tokens["parquet"]


# --------------------------------------------------------------------------- schemas per stage

def _layout(module, path, options=None):
    return module.check_schema(path, read_schema(path, options), options)


def _rows(module, path, options=None) -> dict:
    layout = _layout(module, path, options)
    values = {}
    for batch in layout.batches(path, 100, options):
        for name, column in batch.items():
            values.setdefault(name, []).extend(column)
    return layout.schema, values


def test_pt_text_column_is_found_asked_for_or_mapped(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"raw_content": "doc", "url": "u"}])
    assert _rows(pt, path) == ("text", {"text": ["doc"]})
    both = write_jsonl(tmp_path / "b.jsonl", [{"text": "t", "content": "c"}])
    with pytest.raises(MiniQwenError, match=r"several columns could hold the text: \['text', 'content'\]"):
        _layout(pt, both)
    assert _rows(pt, both, {"text_column": "content"})[1] == {"text": ["c"]}
    other = write_jsonl(tmp_path / "c.jsonl", [{"body": "x"}])
    with pytest.raises(MiniQwenError, match=r"missing column 'text' .*it has \['body'\].*PT data reads text"):
        _layout(pt, other)
    assert _rows(pt, other, {"columns": "text=body"})[1] == {"text": ["x"]}


QUESTION, ANSWER, SYSTEM = "Who wrote Hamlet?", "Shakespeare.", "Be brief."
EXPECTED_SFT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": ANSWER}]

SFT_CASES = {  # schema name, one row, options
    "baai / sharegpt": ("sharegpt/openai turns", {"conversations": [
        {"from": "system", "value": SYSTEM}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]}, None),
    "sharegpt with a system column": ("sharegpt/openai turns", {"system": SYSTEM, "conversations": [
        {"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello!"},
        {"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]}, None),
    "openai messages": ("sharegpt/openai turns", {"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER}]}, None),
    "openai under another column": ("sharegpt/openai turns", {"dialog": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER}]}, {"messages_column": "dialog"}),
    "alpaca with history": ("alpaca", {"instruction": "Who wrote", "input": "Hamlet?", "output": ANSWER,
                                       "system": SYSTEM, "history": [["Hi", "Hello!"]]}, None),
    "prompt / response": ("prompt/response", {"prompt": QUESTION, "response": ANSWER}, None),
}


@pytest.mark.parametrize("case", list(SFT_CASES))
def test_sft_schemas_become_the_same_conversation(case, tmp_path):
    schema, row, options = SFT_CASES[case]
    path = write_jsonl(tmp_path / "a.jsonl", [row])
    name, values = _rows(sft, path, options)
    assert name == schema
    got = normalize_messages(values["conversations"][0])
    if case == "alpaca with history":
        assert got == EXPECTED_SFT[:3] + [{"role": "user", "content": "Who wrote\nHamlet?"}, EXPECTED_SFT[4]]
    elif case == "prompt / response":
        assert got == EXPECTED_SFT[3:]
    else:
        assert got == EXPECTED_SFT


def test_tool_turns_are_user_turns_wrapped_as_qwen_renders_them():
    got = normalize_messages([{"role": "user", "content": "weather?"},
                              {"from": "function_call", "value": '{"name": "weather"}'},
                              {"from": "observation", "value": "sunny"}, {"role": "tool", "content": "20C"},
                              {"role": "assistant", "content": "Sunny, 20C."}])
    assert [m["role"] for m in got] == ["user", "assistant", "user", "assistant"]
    assert got[2]["content"] == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\n20C\n</tool_response>"


DPO_CASES = {
    "baai (prompt text, chosen / rejected conversations)": ("conversational (BAAI / TRL)", {
        "prompt": QUESTION, "chosen": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}],
        "rejected": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Dickens."}]}),
    "trl conversational": ("conversational (BAAI / TRL)", {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "chosen": [{"role": "assistant", "content": ANSWER}],
        "rejected": [{"role": "assistant", "content": "Dickens."}]}),
    "plain strings": ("plain strings", {"system": SYSTEM, "prompt": QUESTION, "chosen": ANSWER,
                                        "rejected": "Dickens."}),
    "sharegpt pairs": ("sharegpt pairs", {
        "conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": QUESTION}],
        "chosen": {"from": "gpt", "value": ANSWER}, "rejected": {"from": "gpt", "value": "Dickens."}}),
}


@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_schemas_become_the_same_pair(case, tmp_path):
    schema, row = DPO_CASES[case]
    path = write_jsonl(tmp_path / "a.jsonl", [row])
    name, values = _rows(dpo, path)
    assert name == schema
    system, prompt, chosen, rejected = dpo.parse_pair(*(values[c][0] for c in dpo.COLUMNS))
    assert (prompt, chosen, rejected) == (QUESTION, ANSWER, "Dickens.")
    assert system == (None if case.startswith("baai") else SYSTEM)


def test_no_schema_names_the_columns_schemas_and_flag(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "good": "a", "bad": "b"}])
    with pytest.raises(MiniQwenError, match=r"a\.jsonl: missing column 'prompt' .*it has \['question', 'good', "
                                            r"'bad'\].*DPO data reads conversational .*plain strings .*sharegpt pairs"
                                            r".*--columns NAME=COLUMN"):
        _layout(dpo, path)
    assert _layout(dpo, path, {"columns": "prompt=question,chosen=good,rejected=bad"}).schema == "plain strings"


def test_mixed_schemas_in_one_folder_name_both_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [SFT_CASES["openai messages"][1]])
    b = write_jsonl(tmp_path / "b.jsonl", [SFT_CASES["prompt / response"][1]])
    with pytest.raises(MiniQwenError, match=r"a\.jsonl is sharegpt/openai turns but .*b\.jsonl is prompt/response"):
        check_stage_files("sft", [a, b])


# --------------------------------------------------------------------------- each stage, one step per schema family

FAST = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_steps", "1",
        "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--seed", "0"]


STAGE_RUNS = {  # stage, folder builder, extra flags, the schema the stage must print
    "pt: jsonl.gz + csv + txt blocks": ("pt", lambda d: (
        write_jsonl(d / "a.jsonl.gz", [{"text": doc} for doc in DOCS], gzip.open),
        write_csv(d / "b.csv", [{"content": doc} for doc in DOCS]),
        (d / "c.txt").write_text("\n\n".join(DOCS * 3), encoding="utf-8")),
        ["--txt_split", "blank_lines", "--block_size", "32"], "text"),
    "sft: alpaca csv": ("sft", lambda d: write_csv(d / "a.csv", [
        {k: v for k, v in SFT_CASES["alpaca with history"][1].items() if k != "history"}] * 4), [], "alpaca"),
    "dpo: plain strings tsv": ("dpo", lambda d: write_csv(d / "a.tsv", [DPO_CASES["plain strings"][1]] * 4, "\t"),
                               [], "plain strings"),
}


@pytest.mark.parametrize("run", list(STAGE_RUNS))
def test_each_stage_trains_a_step_on_each_schema_family(run, tmp_path, tiny_checkpoint, built_tokenizer_dir, capsys):
    import mini_qwen_dpo
    import mini_qwen_pt
    import mini_qwen_sft

    stage, build, extra, schema = STAGE_RUNS[run]
    data = tmp_path / "data"
    data.mkdir()
    build(data)
    common = ["--data_dir", str(data), "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
              *FAST, *extra]
    if stage == "pt":
        mini_qwen_pt.main(["--model_preset", "tiny", "--tokenizer_path", str(built_tokenizer_dir), *common])
    elif stage == "sft":
        mini_qwen_sft.main(["--model_name_or_path", str(tiny_checkpoint), "--max_length", "64", *common])
    else:
        mini_qwen_dpo.main(["--model_name_or_path", str(tiny_checkpoint), "--max_length", "64",
                            "--max_prompt_length", "32", *common])
    out = capsys.readouterr().out
    assert f"schema '{schema}'" in out, out
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert state["global_step"] == 1 and losses and math.isfinite(losses[0])


def _encoded(module, build, folder: Path, tokenizer, options=None, *lengths):
    data_files = find_stage_files(module.NAME, str(folder), options=options, log=lambda *_: None)
    dataset, _ = build(data_files, tokenizer, *lengths, cache_dir=str(folder.parent / "cache"), options=options,
                       log=lambda *_: None)
    return dataset.to_dict()


def test_every_sft_schema_trains_on_the_same_tokens(tmp_path, tokenizer):
    """The stages above train on SFT's own rows; every schema of the same conversation gives the same ids and labels
    (the formats vary too: jsonl.zst, a json array, parquet)."""
    same = [c for c in SFT_CASES if SFT_CASES[c][0] == "sharegpt/openai turns"]
    got = {}
    for i, case in enumerate(same):
        folder = tmp_path / f"d{i}"
        folder.mkdir()
        rows = [SFT_CASES[case][1]] * 2
        if i % 3 == 0:
            write_zst(folder / "a.jsonl.zst", "".join(json.dumps(r) + "\n" for r in rows).encode())
        elif i % 3 == 1:
            (folder / "a.json").write_text(json.dumps(rows))
        else:
            pq.write_table(pa.Table.from_pylist(rows), folder / "a.parquet")
        got[case] = _encoded(sft, sft.build_dataset, folder, tokenizer, SFT_CASES[case][2], 128)
    first = got[same[0]]
    assert len(first["input_ids"]) == 2 and all(got[case] == first for case in same), list(got)


def test_every_dpo_schema_trains_on_the_same_tokens(tmp_path, tokenizer):
    got = {}
    for i, case in enumerate(c for c in DPO_CASES if not c.startswith("baai")):
        folder = tmp_path / f"d{i}"
        write_jsonl(folder / "a.jsonl", [DPO_CASES[case][1]] * 2)
        got[case] = _encoded(dpo, dpo.build_dataset, folder, tokenizer, None, 64, 32)
    first = next(iter(got.values()))
    assert len(first["chosen_ids"]) == 2 and all(value == first for value in got.values()), list(got)


def test_the_planner_sizes_every_format_through_the_reader_layer(tmp_path, tokenizer):
    """Rows counted and PT tokens estimated (text bytes / bytes per token) for jsonl.gz, csv and txt as for parquet;
    SFT rows from a jsonl."""
    from types import SimpleNamespace

    from mini_qwen import plan_data

    docs = [doc * 20 for doc in DOCS]  # long enough that the bytes-per-token estimate means something
    folder = tmp_path / "pt"
    write_jsonl(folder / "a.jsonl.gz", [{"text": d} for d in docs], gzip.open)
    write_csv(folder / "b.csv", [{"text": d} for d in docs])
    args = SimpleNamespace(data_dir=str(folder), data_glob="**/*", text_column=None, cache_dir=str(tmp_path / "c"),
                           block_size=16)
    plan = plan_data.pt_data(args, tokenizer, None)
    assert plan["documents"]["value"] == 2 * len(docs) and plan["files"]["value"] == 2
    true_tokens = 2 * sum(len(tokenizer(d)["input_ids"]) + 1 for d in docs)
    assert 0.5 < plan["tokens"]["value"] / true_tokens < 2, (plan["tokens"], true_tokens)
    write_jsonl(tmp_path / "sft" / "a.jsonl", [SFT_CASES["openai messages"][1]] * 5)
    sft_args = SimpleNamespace(data_dir=str(tmp_path / "sft"), data_glob="**/*", first_turn_only=False,
                               messages_column=None)
    sft_plan = plan_data.sft_data(sft_args, SimpleNamespace(max_length=128, packing=False), tokenizer, 10)
    assert sft_plan["rows"]["value"] == 5 and sft_plan["conversations"]["value"] == 5
