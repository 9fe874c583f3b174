"""Data preparation as its own step (mini_qwen/data/prepare.py, utils/prepare_data.py, --prepare_only): parallel
over files, resumable after a kill, split over machines by --shard, the same cache the stages read, and the
bounded wait of a multi-process stage."""

import contextlib
import filecmp
import importlib.util
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT

from mini_qwen.data import pt as pt_data
from mini_qwen.data import sft as sft_data
from mini_qwen.data.checks import find_stage_files
from mini_qwen.data.prepare import parse_shard, prepared_first, wait_for
from mini_qwen.errors import MiniQwenError

MINI = REPO_ROOT / "mini_data"


def corpus(folder: Path, files: int = 6, copies: int = 3) -> list[Path]:
    """`files` parquet files, each the mini_data PT texts `copies` times in another order."""
    texts = [t for batch in pt_data.iter_text_batches(find_stage_files("pt", str(MINI / "pt"))) for t in batch]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(files):
        shifted = (texts[i:] + texts[:i]) * copies
        path = folder / f"part-{i:03d}.parquet"
        pq.write_table(pa.table({"text": shifted}), path, row_group_size=64)
        out.append(path)
    return out


def same_cache(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in ("tokens.u24", "doc_lens.npy"))


def quiet(*_, **__):
    pass


def test_parallel_preparation_equals_one_process_and_is_reused(tmp_path, tokenizer):
    files = corpus(tmp_path / "data")
    one = pt_data.prepare_token_cache(files, tokenizer, tmp_path / "one", log=quiet, progress=False)
    logs = []
    two = pt_data.prepare_token_cache(files, tokenizer, tmp_path / "two", log=logs.append, num_proc=2,
                                      progress=False)
    assert "with 2 process(es)" in logs[0]
    assert same_cache(one, two)  # same tokens in the same order, whatever the process count
    assert not list(tmp_path.glob("two/*.parts")), "the parts are removed once merged"
    logs.clear()
    assert pt_data.prepare_token_cache(files, tokenizer, tmp_path / "two", log=logs.append, num_proc=2) == two
    assert logs == [f"data: reusing token cache {two}"]


def _prepare_slowly(files, cache_root):
    """In a forked child: prepare with a pause after each file, so the parent can kill it half way."""
    from mini_qwen.tokenizer import load_tokenizer

    real = pt_data.encode_file

    def slow(*args, **kwargs):
        out = real(*args, **kwargs)
        time.sleep(0.5)
        return out

    pt_data.encode_file = slow
    pt_data.prepare_token_cache(files, load_tokenizer(), cache_root, log=quiet, progress=False)


def test_a_killed_preparation_redoes_only_the_unfinished_files(tmp_path, tokenizer, monkeypatch):
    files = corpus(tmp_path / "data")
    cache = pt_data.data_cache(files, tokenizer, tmp_path / "cache")
    child = multiprocessing.get_context("fork").Process(target=_prepare_slowly, args=(files, tmp_path / "cache"))
    child.start()
    deadline = time.time() + 120
    while len(cache.done()) < 2 and child.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    done = cache.done()
    assert 2 <= len(done) < len(files), done
    assert not cache.ready()

    encoded = []
    real = pt_data.encode_file
    monkeypatch.setattr(pt_data, "encode_file", lambda path, *a, **k: encoded.append(path) or real(path, *a, **k))
    logs = []
    folder = cache.prepare(1, log=logs.append, progress=False)
    assert sorted(encoded) == sorted(f for i, f in enumerate(files) if i not in done)  # only the unfinished
    assert f"({len(done)} already done by an earlier run)" in logs[0]
    fresh = pt_data.prepare_token_cache(files, tokenizer, tmp_path / "fresh", log=quiet, progress=False)
    assert same_cache(folder, fresh)


def test_shards_split_the_files_and_the_last_one_assembles_the_cache(tmp_path, tokenizer):
    files = corpus(tmp_path / "data", files=5)
    cache = pt_data.data_cache(files, tokenizer, tmp_path / "cache")
    logs = []
    assert cache.prepare(1, "1/2", log=logs.append, progress=False) is None  # machine 1 of 2: files 1, 3
    assert cache.done() == [1, 3] and not cache.ready()
    assert "3 of 5 files still belong to other shards" in logs[-1]
    assert cache.prepare(1, "0/2", log=quiet, progress=False) == cache.folder  # files 0, 2, 4, then the merge
    fresh = pt_data.prepare_token_cache(files, tokenizer, tmp_path / "fresh", log=quiet, progress=False)
    assert same_cache(cache.folder, fresh)


@pytest.mark.parametrize("spec", ["3/2", "2/2", "-1/2", "a/b", "1", "1/0", "0/2/4"])
def test_a_bad_shard_spec_is_one_message(spec):
    with pytest.raises(MiniQwenError, match=rf"shard '{spec}' \(--shard / --prepare_shard\) is not a shard spec: "
                                            r"write I/K with 0 <= I < K"):
        parse_shard(spec)
    assert parse_shard("3/4") == (3, 4) and parse_shard(None) == (0, 1)


def _load_prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", REPO_ROOT / "utils" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_data_tool_and_prepare_only(tmp_path, tiny_checkpoint, capsys):
    tool = _load_prepare_data()
    # a bad shard stops at parsing, before the tokenizer or any file is read
    with pytest.raises(MiniQwenError, match=r"shard '3/2'"):
        tool.main(["pt", "--data_dir", str(MINI / "pt"), "--shard", "3/2", "--output_dir", str(tmp_path / "o")])
    import mini_qwen_pt

    with pytest.raises(MiniQwenError, match=r"--prepare_shard 0/2 only applies with --prepare_only true"):
        mini_qwen_pt.main(["--data_dir", str(MINI / "pt"), "--prepare_shard", "0/2", "--output_dir", "x"])
    with pytest.raises(MiniQwenError, match="'ppt' is an unknown stage: use one of pt, sft, dpo "):
        tool.main(["ppt"])
    with pytest.raises(MiniQwenError, match="'grpo' has no token cache to prepare"):  # the table says so
        tool.main(["grpo"])

    # PT with two processes: the cache appears, no model, no run folder
    tool.main(["pt", "--data_dir", str(MINI / "pt"), "--cache_dir", str(tmp_path / "cache"), "--num_proc", "2",
               "--output_dir", str(tmp_path / "pt_out")])
    out = capsys.readouterr().out
    assert "with 2 process(es)" in out and "pt cache ready in" in out
    assert len(list((tmp_path / "cache").glob("pt-*/tokens.u24"))) == 1
    assert not (tmp_path / "pt_out").exists()  # exited before run_config.json, the model and training
    # SFT through the stage's own flag, with the tokenizer of the model it will fine-tune
    import mini_qwen_sft

    mini_qwen_sft.main(["--data_dir", str(MINI / "sft"), "--model_name_or_path", str(tiny_checkpoint),
                        "--max_length", "128", "--cache_dir", str(tmp_path / "cache"), "--prepare_only", "true",
                        "--output_dir", str(tmp_path / "sft_out")])
    assert "sft cache ready in" in capsys.readouterr().out
    assert not (tmp_path / "sft_out").exists()
    # the stage's build then reuses it: not one row encoded again
    files = find_stage_files("sft", str(MINI / "sft"))
    logs = []
    dataset, stats = sft_data.build_dataset(files, tiny_tokenizer(tiny_checkpoint), 128, cache_dir=tmp_path / "cache",
                                            log=logs.append)
    assert logs[0].startswith("data: reusing token cache") and stats["rows"] == 164 and len(dataset) > 0


def tiny_tokenizer(checkpoint):
    from mini_qwen.tokenizer import load_tokenizer

    return load_tokenizer(checkpoint)


def test_sft_rows_are_cached_per_file_and_resumed(tmp_path, tokenizer, monkeypatch):
    files = find_stage_files("sft", str(MINI / "sft"))
    assert len(files) == 3
    cache = sft_data.data_cache(files, tokenizer, tmp_path / "cache", 128)
    assert cache.prepare(1, "0/2", log=quiet, progress=False) is None  # as a killed run would leave it: 2 of 3
    encoded = []
    real = sft_data.encode_file
    monkeypatch.setattr(sft_data, "encode_file", lambda path, *a, **k: encoded.append(path) or real(path, *a, **k))
    dataset, stats = sft_data.build_dataset(files, tokenizer, 128, cache_dir=tmp_path / "cache", log=quiet)
    assert encoded == [files[1]]  # only the file no earlier run finished
    monkeypatch.setattr(sft_data, "encode_file", real)
    two, _ = sft_data.build_dataset(files, tokenizer, 128, cache_dir=tmp_path / "two", num_proc=2, log=quiet)
    assert dataset.to_dict() == two.to_dict() and stats["rows"] == 164
    assert not [p.name for p in cache.folder.iterdir() if ".tmp-" in p.name]


def test_a_bad_row_in_a_worker_names_its_file_and_row(tmp_path, tokenizer):
    files = corpus(tmp_path / "data", files=2, copies=1)
    bad = tmp_path / "data" / "part-009.parquet"
    pq.write_table(pa.table({"text": ["fine", "also fine", "  ", "last"]}), bad)
    with pytest.raises(MiniQwenError, match=r"part-009\.parquet: row 2 has an empty 'text'"):
        pt_data.prepare_token_cache([*files, bad], tokenizer, tmp_path / "cache", on_bad_rows="error", num_proc=2,
                                    log=quiet, progress=False)


class FakeRun(SimpleNamespace):
    """The few TrainingArguments fields prepared_first reads, for a world of several processes."""

    def main_process_first(self, desc=""):
        return contextlib.nullcontext()


def test_a_multi_process_stage_refuses_data_too_large_to_prepare_within_the_timeout(tmp_path, tokenizer,
                                                                                     monkeypatch):
    big = tmp_path / "big" / "a.parquet"
    big.parent.mkdir()
    pq.write_table(pa.table({"text": [f"{i} 长文本 and more words. " * 2000 for i in range(60)]}), big)  # ~3.5 MB
    cache = pt_data.data_cache([big], tokenizer, tmp_path / "cache")
    assert cache.estimate_seconds() > 2
    monkeypatch.setattr(sys, "argv", ["mini_qwen_pt.py", "--data_dir", str(big.parent)])
    rank1 = FakeRun(world_size=2, ddp_timeout=3, local_process_index=1)
    with pytest.raises(MiniQwenError) as err:
        with prepared_first(rank1, cache, "tokenizing"):
            pass
    message = str(err.value)
    assert "the pt data is not prepared" in message and "(--ddp_timeout 3 s)" in message
    assert f"python utils/prepare_data.py pt --data_dir {big.parent} --num_proc" in message
    # within the timeout: the other ranks poll, bounded, with their own message
    with pytest.raises(MiniQwenError, match=r"waited 0 s \(--ddp_timeout\) for this node's first process"):
        wait_for(cache, 0.2, poll=0.05)
    # once prepared, every rank goes straight through; one process never waits
    cache.prepare(1, log=quiet, progress=False)
    with prepared_first(rank1, cache, "tokenizing"):
        pass
    with prepared_first(FakeRun(world_size=1, ddp_timeout=1, local_process_index=0),
                        pt_data.data_cache([big], tokenizer, tmp_path / "other"), "tokenizing"):
        pass


def test_a_cache_prepared_with_skip_still_stops_on_bad_rows_under_error(tmp_path, tokenizer):
    """One cache serves both --on_bad_rows values (the choice changes no token): with `error`, a cache that kept
    bad rows as skipped stops at the first one, named by file and row, as tokenizing from scratch would."""
    from mini_qwen.data import dpo as dpo_data

    good = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    pt_dir, sft_dir, dpo_dir = tmp_path / "pt", tmp_path / "sft", tmp_path / "dpo"
    for folder in (pt_dir, sft_dir, dpo_dir):
        folder.mkdir()
    pq.write_table(pa.table({"text": ["a first document", "another one", "   ", "the last"]}), pt_dir / "a.parquet")
    pq.write_table(pa.table({"conversations": [good, good, [{"from": "robot", "value": "beep"}]]}),
                   sft_dir / "a.parquet")
    pair = {"prompt": "hi", "chosen": [{"content": "hi", "role": "user"}, {"content": "hello", "role": "assistant"}],
            "rejected": [{"content": "hi", "role": "user"}, {"content": "go away", "role": "assistant"}]}
    same = dict(pair, rejected=pair["chosen"])
    pq.write_table(pa.Table.from_pylist([pair, same]), dpo_dir / "a.parquet")
    cache = str(tmp_path / "cache")
    quiet = {"log": lambda *_: None}
    runs = [
        (lambda bad: pt_data.build_dataset(find_stage_files("pt", str(pt_dir)), tokenizer, 4, cache_dir=cache,
                                           on_bad_rows=bad, **quiet), r"a\.parquet: row 2 has an empty 'text'"),
        (lambda bad: sft_data.build_dataset(find_stage_files("sft", str(sft_dir)), tokenizer, 64, on_bad_rows=bad,
                                            cache_dir=cache, **quiet), r"a\.parquet: row 2: .*unknown role 'robot'"),
        (lambda bad: dpo_data.build_dataset(find_stage_files("dpo", str(dpo_dir)), tokenizer, 64, 32,
                                            on_bad_rows=bad, cache_dir=cache, **quiet),
         r"a\.parquet: row 1: chosen and rejected answers are identical"),
    ]
    for build, message in runs:
        build("skip")  # prepares the cache, the bad row kept as a skipped reason
        with pytest.raises(MiniQwenError, match=message):
            build("error")
