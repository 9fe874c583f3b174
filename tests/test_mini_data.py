"""mini_data/ (written by utils/make_mini_data.py from mini_data/source/*.yaml) and utils/save_mini_data.py.

Schema tests compare against the real BAAI samples in tests/data/baai (the same layout as the full data);
utils/save_mini_data.py cuts those samples.
"""

import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BAAI_SAMPLES

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "mini_data"

DEMO_PROMPTS = ["李白是谁？", "绿豆糕", "who are you?", "tell me a story"]
# The real layout and file-name patterns, relative to the data root.
LAYOUT = {
    "pt_zh": re.compile(r"^pt/[a-z_]+/chinese/high/rank_\d{5}\.parquet$"),
    "pt_en": re.compile(r"^pt/[a-z_]+/english/high/rank_\d{5}\.parquet$"),
    "sft_7m": re.compile(r"^sft/7M/train-\d{5}-of-\d{5}\.parquet$"),
    "sft_gen": re.compile(r"^sft/Gen/train-\d{5}-of-\d{5}\.parquet$"),
    "dpo_train": re.compile(r"^dpo/train-\d{5}-of-\d{5}\.parquet$"),
    "dpo_test": re.compile(r"^dpo/test-\d{5}-of-\d{5}\.parquet$"),
}


def _load_module(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "utils" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kind(rel):
    kinds = [k for k, pattern in LAYOUT.items() if pattern.match(rel)]
    assert len(kinds) == 1, f"{rel} matches no real file-name pattern (or several): {kinds}"
    return kinds[0]


def _files(root):
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*.parquet"))}


def _by_kind(root):
    out = {}
    for rel, path in _files(root).items():
        out.setdefault(_kind(rel), []).append(path)
    return out


def _schema_facts(schema):
    """Names, order, types (with list item names) and nullability; not the pandas metadata."""
    return [(f.name, str(f.type), f.nullable) for f in schema]


@pytest.fixture(scope="module")
def mini_tables():
    files = _files(MINI)
    assert files, "mini_data/ is empty: run python utils/make_mini_data.py"
    return {rel: pq.read_table(path) for rel, path in files.items()}


def _rows(mini_tables, kind):
    return [row for rel, t in mini_tables.items() if _kind(rel) == kind for row in t.to_pylist()]


# --- (a) layout and schemas ---------------------------------------------------------------------
def test_layout_has_every_kind_of_file(mini_tables):
    kinds = {_kind(rel) for rel in mini_tables}
    assert kinds == set(LAYOUT)
    # PT: several industries, each with both languages, as the demo trains on all of them
    industries = {rel.split("/")[1] for rel in mini_tables if rel.startswith("pt/")}
    assert len(industries) >= 2
    for industry in industries:
        assert any(rel.startswith(f"pt/{industry}/chinese/") for rel in mini_tables)
        assert any(rel.startswith(f"pt/{industry}/english/") for rel in mini_tables)


def test_schemas_equal_the_real_files():
    real = {kind: {str(_schema_facts(pq.read_schema(p))) for p in paths}
            for kind, paths in _by_kind(BAAI_SAMPLES).items()}
    assert set(real) == set(LAYOUT), "the reference samples no longer cover every kind of file"
    for kind, paths in _by_kind(MINI).items():
        assert len(real[kind]) == 1, f"real {kind} files disagree among themselves"
        want = next(iter(real[kind]))
        for path in paths:
            got = str(_schema_facts(pq.read_schema(path)))
            assert got == want, f"{path.relative_to(MINI)} schema differs from the real {kind} files"


def test_industry_type_values_are_chinese_labels_like_the_real_ones(mini_tables):
    real = pq.read_table(next(iter(_by_kind(BAAI_SAMPLES)["pt_zh"])), columns=["industry_type"])
    assert set(real.column("industry_type").to_pylist()) == {"住宿_餐饮_酒店"}
    for rel, table in mini_tables.items():
        if rel.startswith("pt/"):
            values = set(table.column("industry_type").to_pylist())
            assert len(values) == 1 and re.fullmatch(r"[\u4e00-\u9fff_]+", values.pop()), rel
            if rel.startswith("pt/accommodation_catering_hotel/"):
                assert set(table.column("industry_type").to_pylist()) == {"住宿_餐饮_酒店"}


# --- (b) determinism: the generator and its sources reproduce the committed files -----------------
def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generator_reproduces_the_committed_files_byte_for_byte(tmp_path):
    out = tmp_path / "mini"
    res = subprocess.run([sys.executable, str(REPO / "utils" / "make_mini_data.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    committed, fresh = _files(MINI), _files(out)
    assert committed, "mini_data/ is empty: run python utils/make_mini_data.py"
    assert not set(committed) - set(fresh), f"the generator no longer writes {sorted(set(committed) - set(fresh))}"
    assert not set(fresh) - set(committed), f"uncommitted files written: {sorted(set(fresh) - set(committed))}"
    for rel, path in committed.items():
        assert _sha256(fresh[rel]) == _sha256(path), (
            f"{rel} differs from the committed file: re-run python utils/make_mini_data.py and commit mini_data/")


@pytest.fixture()
def source_copy(tmp_path):
    """A writable copy of mini_data/source/ for breaking one file."""
    return Path(shutil.copytree(MINI / "source", tmp_path / "source"))


def test_a_missing_field_in_the_sources_names_the_file_and_line(source_copy, tmp_path):
    make = _load_module("make_mini_data")
    travel = source_copy / "pt_travel.yaml"
    lines = travel.read_text(encoding="utf-8").splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if line.strip().startswith("foods:"))  # the first city's foods
    travel.write_text("".join(lines[:n] + lines[n + 1:]), encoding="utf-8")
    city_line = next(i for i in range(n, -1, -1) if lines[i].lstrip().startswith("- name:")) + 1
    with pytest.raises(make.MiniQwenError, match=rf"^{re.escape(str(travel))}:{city_line}: this entry has no 'foods'"):
        make.build_all(source_copy)


def test_broken_yaml_is_a_one_line_error(source_copy, tmp_path):
    (source_copy / "dpo.yaml").write_text("off_topic:\n  zh: [unclosed\n", encoding="utf-8")
    res = subprocess.run([sys.executable, str(REPO / "utils" / "make_mini_data.py"), "--out", str(tmp_path / "out"),
                          "--source", str(source_copy)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith(f"error: {source_copy / 'dpo.yaml'}:") and "not valid YAML" in res.stderr
    assert not (tmp_path / "out").exists(), "nothing is written when a source is broken"


# --- (c) content the demo relies on -------------------------------------------------------------
def test_sft_contains_the_demo_prompts_several_times(mini_tables):
    first_prompts = []
    for kind in ("sft_7m", "sft_gen"):
        for row in _rows(mini_tables, kind):
            humans = [m["value"] for m in row["conversations"] if m["from"] == "human"]
            first_prompts.append(humans[0])
    for prompt in DEMO_PROMPTS:
        assert first_prompts.count(prompt) >= 3, prompt


def test_sft_conversations_are_well_formed(mini_tables):
    rows_7m, rows_gen = _rows(mini_tables, "sft_7m"), _rows(mini_tables, "sft_gen")
    rows = rows_7m + rows_gen
    assert 150 <= len(rows) <= 250
    assert len({r["id"] for r in rows_7m}) == len(rows_7m)
    assert all(re.fullmatch(r"[0-9a-f]{32}", r["id"]) for r in rows_gen)
    assert len({r["id"] for r in rows_gen}) == len(rows_gen)
    multi = system = 0
    for r in rows:
        roles = [m["from"] for m in r["conversations"]]
        if roles[0] == "system":
            system += 1
            roles = roles[1:]
        assert roles == ["human", "gpt"] * (len(roles) // 2) and roles, roles
        assert all(m["value"].strip() for m in r["conversations"])
        multi += len(roles) >= 4
        assert r["langdetect"] in {"en", "zh-cn"}
        assert all(r["label"][k] for k in ("ability_en", "ability_zh", "cate_ability_en", "cate_ability_zh"))
    assert 0.05 <= multi / len(rows) <= 0.2
    assert system >= 3


def test_dpo_prompt_is_the_first_user_message(mini_tables):
    for kind in ("dpo_train", "dpo_test"):
        rows = _rows(mini_tables, kind)
        assert rows
        for r in rows:
            for side in ("chosen", "rejected"):
                assert [m["role"] for m in r[side]] == ["user", "assistant"]
                assert r[side][0]["content"] == r["prompt"]
            assert r["chosen"][1]["content"] != r["rejected"][1]["content"]
            assert r["chosen"][1]["content"].rstrip()[-1] in "。！？.!?”\"", r["chosen"][1]["content"]
    ids = [r["id"] for kind in ("dpo_train", "dpo_test") for r in _rows(mini_tables, kind)]
    assert len(set(ids)) == len(ids)
    assert 80 <= len(ids) <= 120
    prompts = {r["prompt"] for kind in ("dpo_train", "dpo_test") for r in _rows(mini_tables, kind)}
    assert set(DEMO_PROMPTS) <= prompts


def test_pt_teaches_what_later_stages_ask(mini_tables):
    zh = "\n".join(r["text"] for kind in ("pt_zh",) for r in _rows(mini_tables, kind))
    en = "\n".join(r["text"] for r in _rows(mini_tables, "pt_en"))
    for fact, least in (("诗仙", 5), ("静夜思", 5), ("将进酒", 3), ("绿豆糕", 10), ("端午", 5), ("我是mini_qwen", 2),
                        ("从前", 20)):
        assert zh.count(fact) >= least, fact
    for fact, least in (("Li Bai", 10), ("Immortal of Poetry", 5), ("mung bean cake", 5),
                        ("I am mini_qwen, a small language model trained from scratch", 2), ("Once upon a time", 20)):
        assert en.count(fact) >= least, fact


def test_pt_quality_columns_are_computed_from_the_text(mini_tables):
    ids = []
    for kind in ("pt_zh", "pt_en"):
        for r in _rows(mini_tables, kind):
            lines = r["text"].split("\n")
            assert r["max_line_length"] == max(len(line) for line in lines)
            assert r["avg_line_length"] == pytest.approx(len(r["text"]) / len(lines))
            assert r["alnum_ratio"] == pytest.approx(sum(c.isalnum() for c in r["text"]) / len(r["text"]))
            assert 0 <= r["special_char_ratio"] <= 1 and 0 <= r["char_rep_ratio"] <= 1
            assert r["num_words"] > 0 and 4.0 <= r["quality_score"] < 4.5
            if kind == "pt_zh":
                ids.append(r["_id"])
                assert r["flagged_words_ratio"] == 0.0 and r["perplexity"] > 0
    assert sorted(ids) == list(range(len(ids)))


def test_no_text_is_copied_from_the_real_samples(mini_tables):
    ours = []
    for t in mini_tables.values():
        for col in ("text", "prompt"):
            if col in t.column_names:
                ours += t.column(col).to_pylist()
        if "conversations" in t.column_names:
            ours += [m["value"] for conv in t.column("conversations").to_pylist() for m in conv]
    ours = "\n".join(ours)
    for path in BAAI_SAMPLES.rglob("*.parquet"):
        table = pq.read_table(path)
        col = "text" if "text" in table.column_names else "prompt" if "prompt" in table.column_names else None
        texts = table.column(col).to_pylist() if col else [
            conv[0]["value"] for conv in table.column("conversations").to_pylist()]
        for text in texts:
            snippet = text.strip()[:40]
            assert len(snippet) < 20 or snippet not in ours, snippet


@pytest.fixture(scope="module")
def n_tokens(built_tokenizer_dir):
    # the bare `tokenizers` object: same ids as the transformers wrapper, without its slow import
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(built_tokenizer_dir) / "tokenizer.json"))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def test_token_budget(mini_tables, n_tokens):
    """PT fits the demo's one-minute CPU epoch; most SFT / DPO rows fit the demo's 128-token length."""
    n = n_tokens

    pt = sum(n(r["text"]) for kind in ("pt_zh", "pt_en") for r in _rows(mini_tables, kind))
    assert 35_000 <= pt <= 60_000, pt
    sft = [sum(n(m["value"]) for m in r["conversations"]) for k in ("sft_7m", "sft_gen") for r in _rows(mini_tables, k)]
    assert sum(x <= 100 for x in sft) / len(sft) >= 0.85
    assert sum(x > 128 for x in sft) >= 3, "a few long conversations must exercise truncation"
    dpo = [n(r["prompt"]) + max(n(r["chosen"][1]["content"]), n(r["rejected"][1]["content"]))
           for k in ("dpo_train", "dpo_test") for r in _rows(mini_tables, k)]
    assert sum(x <= 100 for x in dpo) / len(dpo) >= 0.85


# --- (d) save_mini_data.py ----------------------------------------------------------------------
def test_save_mini_data_cuts_rows_and_keeps_schemas(tmp_path):
    out = tmp_path / "cut"
    res = subprocess.run([sys.executable, str(REPO / "utils" / "save_mini_data.py"), "--src", str(BAAI_SAMPLES),
                          "--out", str(out), "--rows", "5"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    src, cut = _files(BAAI_SAMPLES), _files(out)
    assert set(cut) == set(src)
    for rel, path in cut.items():
        got, want = pq.read_schema(path), pq.read_schema(src[rel])
        assert got.equals(want, check_metadata=True), rel
        table = pq.read_table(path)
        assert table.num_rows == 5
        assert table.equals(pq.read_table(src[rel]).slice(0, 5)), rel


def test_save_mini_data_max_files_per_folder_keeps_train_and_test(tmp_path):
    save = _load_module("save_mini_data")
    written = save.save_mini(BAAI_SAMPLES, tmp_path / "cut", rows=3, max_files_per_folder=1, log=lambda *_: None)
    rels = {rel.as_posix() for rel, _ in written}
    assert {"dpo/train-00000-of-00001.parquet", "dpo/test-00000-of-00001.parquet"} <= rels


def test_save_mini_data_reads_only_the_first_row_groups(tmp_path):
    save = _load_module("save_mini_data")
    path = tmp_path / "src" / "sft" / "7M" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    table = pa.table({"id": pa.array(range(100), pa.int64()), "text": [f"row {i}" for i in range(100)]})
    pq.write_table(table, path, row_group_size=10)
    assert save.head_table(path, 15).equals(table.slice(0, 15))
    assert save.head_table(path, 500).equals(table)
    save.save_mini(tmp_path / "src", tmp_path / "out", rows=15, log=lambda *_: None)
    assert pq.read_table(tmp_path / "out" / "sft" / "7M" / "train-00000-of-00001.parquet").equals(table.slice(0, 15))


def test_save_mini_data_without_parquet_files_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    res = subprocess.run([sys.executable, str(REPO / "utils" / "save_mini_data.py"), "--src", str(tmp_path / "empty"),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.strip()] == [
        line for line in res.stderr.splitlines() if line.startswith("error: no *.parquet files under")]
