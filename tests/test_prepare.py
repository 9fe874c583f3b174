"""prepare.sh and its selection logic (utils/prepare_select.py), all offline.

The remote file list is replaced by MINI_QWEN_PREPARE_LISTING (a JSON file) and the
downloader by MINI_QWEN_DOWNLOADER, so no test touches the network.
"""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mini_qwen.errors import MiniQwenError

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "prepare.sh"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


ps = _load("prepare_select", REPO / "utils" / "prepare_select.py")

RANKS = 5  # rank files per folder in the fake repo
FILE_SIZE = 3  # every fake file is 3 bytes: the fake downloader writes "abc"


def fake_pt_listing(ranks=RANKS):
    """All 10 industries x 2 languages x high/middle, shuffled, plus files that must be ignored."""
    entries = []
    for industry in ps.DEFAULT_INDUSTRIES:
        for language in ps.LANGUAGES:
            for quality in ("high", "middle"):
                for r in range(ranks):
                    entries.append({"path": f"{industry}/{language}/{quality}/rank_{r:05d}.parquet", "size": FILE_SIZE})
            entries.append({"path": f"{industry}/{language}/high/README.md", "size": FILE_SIZE})
    entries.append({"path": "README.md", "size": 10})
    random.Random(0).shuffle(entries)
    return entries


def fake_listing():
    return {
        ps.PT_REPO: fake_pt_listing(),
        ps.SFT_REPO: [{"path": f"{folder}/train-{i:05d}-of-00004.parquet", "size": FILE_SIZE}
                      for folder in ("7M", "Gen", "3M") for i in range(4)],
        ps.DPO_REPO: [{"path": "data/train-00000-of-00001.parquet", "size": FILE_SIZE},
                      {"path": "data/test-00000-of-00001.parquet", "size": FILE_SIZE}],
        ps.MODEL_REPO: [{"path": name, "size": FILE_SIZE} for name in ps.MODEL_FILES + ("model.safetensors",)],
    }


def selected_paths(selection):
    return [f.path for files, _ in selection.values() for f in files]


# --------------------------------------------------------------------------- selection


def test_default_pt_selection_matches_the_original_recipe():
    selection = ps.select_pt(fake_pt_listing())
    assert len(selection) == 20  # 10 industries x 2 languages, only the "high" folders
    for industry in ps.DEFAULT_INDUSTRIES:
        for language in ps.LANGUAGES:
            files, total = selection[f"{industry}/{language}/high"]
            assert total == RANKS
            expected = 3 if (language == "english" and industry in ps.LARGE_ENGLISH_INDUSTRIES) else RANKS
            # the first files in name order, parquet only, never the "middle" folder
            assert [f.path for f in files] == [f"{industry}/{language}/high/rank_{r:05d}.parquet"
                                               for r in range(expected)]
    assert len(selected_paths(selection)) == 5 * 3 + 15 * RANKS
    assert set(ps.LARGE_ENGLISH_INDUSTRIES) <= set(ps.DEFAULT_INDUSTRIES) and len(ps.LARGE_ENGLISH_INDUSTRIES) == 5


def test_pt_selection_narrows_by_industry_language_and_count():
    selection = ps.select_pt(fake_pt_listing(), industries=["news_media", "film_entertainment"], languages=["english"])
    assert sorted(selection) == ["film_entertainment/english/high", "news_media/english/high"]
    assert len(selection["news_media/english/high"][0]) == RANKS
    assert len(selection["film_entertainment/english/high"][0]) == 3

    two = ps.select_pt(fake_pt_listing(), files_per_folder=2)
    assert all(len(files) == 2 for files, _ in two.values())
    four = ps.select_pt(fake_pt_listing(), files_per_folder=4)  # the large English folders stay capped at 3
    assert len(four["film_entertainment/english/high"][0]) == 3
    assert len(four["film_entertainment/chinese/high"][0]) == 4


def test_first_files_use_natural_order():
    listing = [f"news_media/chinese/high/rank_{r}.parquet" for r in (10, 2, 1, 33)]
    selection = ps.select_pt(listing, industries=["news_media"], languages=["chinese"], files_per_folder=2)
    files, total = selection["news_media/chinese/high"]
    assert [f.path.rsplit("/", 1)[1] for f in files] == ["rank_1.parquet", "rank_2.parquet"] and total == 4
    assert files[0].size is None  # plain paths: size unknown


def test_unknown_industry_is_one_clear_error():
    with pytest.raises(MiniQwenError, match=r"no \.parquet files under news_mdia/chinese/high/.*--industries"):
        ps.select_pt(fake_pt_listing(), industries=["news_mdia"], languages=["chinese"])


def test_sft_dpo_and_model_selection():
    listing = fake_listing()
    sft = ps.select_sft(listing[ps.SFT_REPO])
    assert sorted(sft) == ["7M", "Gen"] and all(len(files) == 4 for files, _ in sft.values())
    assert all(len(files) == 1 for files, _ in ps.select_sft(listing[ps.SFT_REPO], files_per_folder=1).values())
    assert len(selected_paths(ps.select_dpo(listing[ps.DPO_REPO]))) == 2
    model = selected_paths(ps.select_model(listing[ps.MODEL_REPO]))
    assert model == list(ps.MODEL_FILES) and "model.safetensors" not in model
    assert selected_paths(ps.select_model(None)) == list(ps.MODEL_FILES)
    with pytest.raises(MiniQwenError, match="does not list merges.txt"):
        ps.select_model([{"path": n, "size": 1} for n in ps.MODEL_FILES if n != "merges.txt"])


def test_validation_names_the_flag():
    for kwargs, flag in (
        ({"what": ["pt", "weights"]}, "--what"),
        ({"languages": ["french"]}, "--languages"),
        ({"industries": ["News Media"]}, "--industries"),
        ({"files_per_folder": 0}, "--files-per-folder"),
    ):
        with pytest.raises(MiniQwenError, match=flag):
            ps.build_plan(lister=lambda *a: [], **kwargs)


def test_complete_local_files_are_skipped(tmp_path):
    local = tmp_path / "pt"
    items = [ps.Item("pt", "dataset", ps.PT_REPO, f"a/high/rank_{r}.parquet", str(local), FILE_SIZE) for r in range(4)]
    (local / "a/high").mkdir(parents=True)
    (local / "a/high/rank_0.parquet").write_bytes(b"abc")  # right size: complete, even without a marker
    (local / "a/high/rank_1.parquet").write_bytes(b"ab")  # truncated
    (local / "a/high/rank_2.parquet").write_bytes(b"abc")  # marked, then deleted: a marker alone is not enough
    ps.mark_done(local, "a/high/rank_2.parquet", FILE_SIZE)
    (local / "a/high/rank_2.parquet").unlink()
    assert [i.path for i in ps.pending(items)] == [f"a/high/rank_{r}.parquet" for r in (1, 2, 3)]

    # size unknown (plain listing / model files): only the .done marker proves completeness
    unknown = ps.Item("model", "model", ps.MODEL_REPO, "config.json", str(tmp_path / "m"), None)
    (tmp_path / "m").mkdir()
    (tmp_path / "m/config.json").write_text("{}")
    assert not ps.is_complete(unknown)
    marker = ps.mark_done(tmp_path / "m", "config.json")
    assert marker == tmp_path / "m" / ps.DONE_DIR / "config.json.done"
    assert ps.is_complete(unknown)


def test_mark_done_rejects_missing_or_truncated_files(tmp_path):
    with pytest.raises(MiniQwenError, match="does not exist"):
        ps.mark_done(tmp_path, "x.parquet", 3)
    (tmp_path / "x.parquet").write_bytes(b"ab")
    with pytest.raises(MiniQwenError, match="has 2 bytes but the listing says 3"):
        ps.mark_done(tmp_path, "x.parquet", 3)


def test_build_plan_routes_items_to_their_folders(tmp_path):
    groups = ps.build_plan(dest=tmp_path / "data", model_dest=tmp_path / "model",
                           lister=ps.JsonLister(_write_listing(tmp_path)))
    items = [i for g in groups for i in g.items]
    assert len(items) == 6 + (5 * 3 + 15 * RANKS) + 8 + 2
    by_what = {i.what: i.local_dir for i in items}
    assert by_what == {
        "model": str(tmp_path / "model"),
        "pt": str(tmp_path / "data" / "pt"),
        "sft": str(tmp_path / "data" / "sft"),
        "dpo": str(tmp_path / "data" / "dpo"),
    }
    text, todo = ps.describe(groups)
    assert "3 of 5 files" in text and f"{len(items)} to fetch" in text and len(todo) == len(items)


# --------------------------------------------------------------------------- prepare.sh


def _write_listing(tmp_path):
    path = tmp_path / "listing.json"
    path.write_text(json.dumps(fake_listing()))
    return path


def _fake_downloader(tmp_path, payload="abc"):
    """A stand-in for `modelscope download`: writes payload at <local_dir>/<file> and logs the call."""
    script = tmp_path / "fake_modelscope.sh"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "set -eu\n"
        '[ "$1" = download ] && [ "$2" = --repo-type ] && [ "$4" = --local-dir ] '
        '|| { echo "bad args: $*" >&2; exit 9; }\n'
        f'echo "$3 $6 $7" >> "{tmp_path}/calls.log"\n'
        'mkdir -p "$(dirname "$5/$7")"\n'
        f'printf %s "{payload}" > "$5/$7"\n'
    )
    script.chmod(0o755)
    return script


def _run(args, tmp_path, downloader=None):
    env = dict(os.environ, MINI_QWEN_PREPARE_LISTING=str(_write_listing(tmp_path)), PYTHON=sys.executable)
    if downloader is not None:
        env["MINI_QWEN_DOWNLOADER"] = str(downloader)
    base = ["--dest", str(tmp_path / "data"), "--model-dest", str(tmp_path / "model")]
    return subprocess.run(["bash", str(PREPARE), *args, *base], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


def test_help_documents_every_flag():
    out = subprocess.run(["bash", str(PREPARE), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for flag in ("--what", "--industries", "--languages", "--files-per-folder", "--dest", "--model-dest", "--dry-run",
                 "--help"):
        assert flag in out.stdout, flag
    for name in ("BAAI/IndustryCorpus2", "BAAI/Infinity-Instruct", "BAAI/Infinity-Preference",
                 "Qwen/Qwen2.5-0.5B-Instruct",
                 "MINI_QWEN_PREPARE_LISTING", "MINI_QWEN_DOWNLOADER"):
        assert name in out.stdout, name


def test_prepare_sh_uses_strict_mode():
    assert "set -euo pipefail" in PREPARE.read_text()


def test_dry_run_prints_the_plan_and_downloads_nothing(tmp_path):
    out = _run(["--dry-run"], tmp_path, downloader=_fake_downloader(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "dry run" in out.stdout
    assert "BAAI/IndustryCorpus2/film_entertainment/english/high" in out.stdout and "3 of 5 files" in out.stdout
    assert "BAAI/Infinity-Instruct/7M" in out.stdout and "Qwen/Qwen2.5-0.5B-Instruct" in out.stdout
    assert f"total: {6 + 90 + 8 + 2} files" in out.stdout
    assert not (tmp_path / "calls.log").exists() and not (tmp_path / "data").exists()


def test_download_then_rerun_skips_complete_files(tmp_path):
    downloader = _fake_downloader(tmp_path)
    args = ["--what", "model,pt", "--industries", "news_media,film_entertainment", "--languages", "english"]
    out = _run(args, tmp_path, downloader)
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 6 + RANKS + 3
    assert "dataset BAAI/IndustryCorpus2 film_entertainment/english/high/rank_00002.parquet" in calls
    assert (tmp_path / "data/pt/news_media/english/high/rank_00004.parquet").read_text() == "abc"
    assert (tmp_path / "model/tokenizer.json").is_file()

    again = _run(args, tmp_path, downloader)
    assert again.returncode == 0, again.stderr
    assert "nothing to download" in again.stdout
    assert len((tmp_path / "calls.log").read_text().splitlines()) == len(calls)


def test_failed_download_names_the_item_and_exits_nonzero(tmp_path):
    out = _run(["--what", "sft", "--files-per-folder", "1"], tmp_path, downloader="false")
    assert out.returncode != 0
    assert "download failed" in out.stderr and "7M/train-00000-of-00004.parquet" in out.stderr
    assert "Traceback" not in out.stderr


def test_truncated_download_is_caught(tmp_path):
    out = _run(["--what", "dpo"], tmp_path, downloader=_fake_downloader(tmp_path, payload="ab"))
    assert out.returncode != 0
    assert "has 2 bytes but the listing says 3" in out.stderr and "Traceback" not in out.stderr


def test_bad_flags_give_one_error_line(tmp_path):
    for args, needle in (
        (["--bogus"], "unknown option '--bogus'"),
        (["--dry-run", "--languages", "french"], "--languages"),
        (["--dry-run", "--files-per-folder", "x"], "--files-per-folder"),
    ):
        out = _run(args, tmp_path)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
