"""utils/plot_losses.py, utils/view_data.py and mini_qwen/plotting.py.

Tests on the real upstream logs and data samples read ../shared/reference and skip when
it is absent; the rest use synthetic files.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mini_qwen.console_log import parse_training_log
from mini_qwen.errors import run_main
from mini_qwen.plotting import plot_loss_curves, summarize
from mini_qwen.trainlog import curves_from_trainer_state, metric_series

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
LOGS = SHARED / "reference" / "upstream_logs"
DATA = SHARED / "reference" / "mini_data_baai"
needs_logs = pytest.mark.skipif(not (LOGS / "output_pt.log").is_file(), reason="needs ../shared/reference/upstream_logs")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/reference/mini_data_baai")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "utils" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


plot_losses = _load("plot_losses")
view_data = _load("view_data")


def _error(main, argv, capsys):
    """Run a CLI main the way its script does; return the stderr of the exit-2 error."""
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: ") and "Traceback" not in err
    return err


def _png_ok(path: Path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _trainer_state(folder: Path, step: int, losses, eval_loss=None):
    history = [{"loss": loss, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": i / 10, "step": (i + 1) * 10}
               for i, loss in enumerate(losses)]
    if eval_loss is not None:
        history.append({"eval_loss": eval_loss, "eval_runtime": 1.5, "epoch": 0.5, "step": len(losses) * 10})
    history.append({"train_runtime": 12.0, "train_loss": 9.9, "total_flos": 1e12, "epoch": 1.0, "step": len(losses) * 10})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return folder / "trainer_state.json"


# --------------------------------------------------------------------------- upstream logs


@needs_logs
def test_plot_losses_cli_on_the_upstream_pt_log(tmp_path):
    out = tmp_path / "pt.png"
    proc = subprocess.run(
        [sys.executable, str(REPO / "utils" / "plot_losses.py"), str(LOGS / "output_pt.log"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "676 points" in proc.stdout and "first 12.12" in proc.stdout and "last 2.831" in proc.stdout
    _png_ok(out)


@needs_logs
def test_parse_upstream_logs_reads_steps_from_the_progress_bar():
    steps, losses = parse_training_log(LOGS / "output_pt.log")["loss"]
    assert losses[0] == pytest.approx(12.1, abs=0.05) and losses[-1] == pytest.approx(2.83, abs=0.01)
    assert steps[:3] == [20, 40, 60] and steps[-1] == 13520  # logging_steps 20 of 13523
    dpo = parse_training_log(LOGS / "output_dpo1.log")
    assert len(dpo["loss"][1]) == 23 and dpo["loss"][0][-1] == 460
    assert dpo["rewards/accuracies"][1][-1] == pytest.approx(0.8945, abs=1e-3)
    assert "train_loss" not in dpo  # the end-of-run summary is not a curve
    # explicit logging_steps: x = entry index x N
    assert parse_training_log(LOGS / "output_pt1.log", logging_steps=5)["loss"][0] == [5, 10, 15, 20]


@needs_logs
def test_default_out_falls_back_to_cwd_for_a_read_only_folder(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "output_pt1.log").write_bytes((LOGS / "output_pt1.log").read_bytes())
    ro.chmod(0o555)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        assert plot_losses.main([str(ro / "output_pt1.log")]) == 0
        assert not (ro / "output_pt1_loss.png").exists()
        _png_ok(work / "output_pt1_loss.png")
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------- synthetic runs


def test_read_trainer_state_picks_the_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    _trainer_state(run / "checkpoint-20", 20, [5.0, 4.0])
    _trainer_state(run / "checkpoint-100", 100, ["5.0", 4.0, 3.5, 3.0, 2.5], eval_loss=2.7)  # strings too
    series = curves_from_trainer_state(run)
    assert series["loss"] == ([10, 20, 30, 40, 50], [5.0, 4.0, 3.5, 3.0, 2.5])
    assert series["eval_loss"] == ([50], [2.7])
    assert "train_loss" not in series and "epoch" not in series and "total_flos" not in series
    assert curves_from_trainer_state(run / "checkpoint-20" / "trainer_state.json")["loss"][1] == [5.0, 4.0]


def test_plot_from_an_in_memory_log_history(tmp_path):
    """What LossPlotCallback does at the end of training: the live log_history, the summary dict left out."""
    history = [{"loss": 3.0, "step": 5}, {"loss": 2.0, "step": 10}, {"train_runtime": 1.0, "train_loss": 2.5, "step": 10}]
    series = metric_series(history)
    assert series["loss"] == ([5, 10], [3.0, 2.0]) and "train_loss" not in series and "eval_loss" not in series
    _png_ok(plot_loss_curves({"loss": series["loss"]}, tmp_path / "loss.png"))


def test_parse_training_log_formats(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "{'block_size': 1048576, 'queue_depth': 8}\n"  # a DeepSpeed dict, not a metric
        "{'loss': '3.5', 'grad_norm': 1.2, 'learning_rate': 1e-4, 'epoch': 0.1}\n"
        '{"loss": 3.0, "grad_norm": 1.1, "epoch": 0.2}\n'
        "{'loss': nan, 'grad_norm': inf, 'epoch': 0.3}\n"
        "{'eval_loss': 2.9, 'eval_runtime': 1.0, 'epoch': 0.3}\n"
        "{'train_runtime': 10.0, 'train_loss': 3.1, 'epoch': 0.3}\n"
    )
    series = parse_training_log(log, logging_steps=10)
    steps, losses = series["loss"]
    assert steps == [10, 20, 30] and losses[:2] == [3.5, 3.0] and losses[2] != losses[2]  # nan kept as a gap
    assert series["eval_loss"] == ([30], [2.9])
    stats = summarize(steps, losses)  # non-finite values are skipped
    assert (stats["points"], stats["first"], stats["last"], stats["min"], stats["max"]) == (3, 3.5, 3.0, 3.0, 3.5)
    assert parse_training_log(log)["loss"][0] == [1, 2, 3]  # no progress bar: entry index


def test_parse_training_log_fills_steps_missing_from_the_bar(tmp_path):
    log = tmp_path / "bar.log"
    log.write_text(
        "{'loss': 4.0, 'epoch': 0.1}\nnoise\n"  # no bar after the first entry
        "{'loss': 3.0, 'epoch': 0.2}\r  2%| | 10/500 [00:01<00:10, 9.9it/s]\r  3%| | 11/500 [00:01<00:10]\n"
        "{'loss': 2.0, 'epoch': 0.3}\r  3%| | 15/500 [00:02<00:10]\n"
    )
    assert parse_training_log(log)["loss"][0] == [5, 10, 15]


def test_overlay_of_two_runs(tmp_path, capsys):
    state = _trainer_state(tmp_path / "a", 30, [6.0, 5.0, 4.0])
    log = tmp_path / "b.log"
    log.write_text("".join(f"{{'loss': {v}, 'epoch': 0.1}}\n" for v in (7.0, 6.5, 6.0, 5.5)))
    out = tmp_path / "cmp.png"
    assert plot_losses.main([str(state), str(log), "--labels", "run-a", "run-b", "--out", str(out), "--logging-steps", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run-a: 3 points") and "first 6, last 4, min 4" in lines[0]
    assert lines[1].startswith("run-b: 4 points") and "steps 10..40" in lines[1]
    _png_ok(out)


def test_plot_loss_curves_smooths_long_curves(tmp_path):
    xs = list(range(100))
    out = plot_loss_curves({"a": (xs, [10 / (1 + x) for x in xs]), "b": ([1, 2], [3.0, 2.0])}, tmp_path / "sub" / "x.png", title="t")
    assert out == tmp_path / "sub" / "x.png"
    _png_ok(out)


def test_plot_losses_errors(tmp_path, capsys):
    state = _trainer_state(tmp_path / "a", 30, [6.0, 5.0])
    assert "no 'eval_loss' values" in _error(plot_losses.main, [str(state), "--metric", "eval_loss", "--out", str(tmp_path / "x.png")], capsys)
    assert "--labels has 1 names for 2 runs" in _error(plot_losses.main, [str(state), str(state), "--labels", "x"], capsys)
    assert "does not exist" in _error(plot_losses.main, [str(tmp_path / "missing.log")], capsys)
    empty = tmp_path / "empty.log"
    empty.write_text("just text\n")
    assert "no logged metrics" in _error(plot_losses.main, [str(empty)], capsys)
    assert "no trainer_state.json" in _error(plot_losses.main, [str(tmp_path)], capsys)


# --------------------------------------------------------------------------- view_data


@needs_data
def test_view_data_on_the_reference_samples(capsys):
    assert view_data.main([str(DATA / "pt"), "--rows", "2", "--max-chars", "40"]) == 0
    out = capsys.readouterr().out
    assert "2 parquet file(s), 200 rows" in out and "text: string" in out and "PT text corpus" in out
    assert "住宿_餐饮_酒店" in out  # ensure_ascii=False
    assert out.count("-- row ") == 2 and "chars]" in out

    assert view_data.main([str(DATA / "sft"), "--rows", "1", "--columns", "id,conversations"]) == 0
    out = capsys.readouterr().out
    assert '"conversations"' in out and '"label"' not in out and "SFT chat data" in out

    assert view_data.main([str(DATA / "dpo" / "train-00000-of-00001.parquet"), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert '"chosen"' in out and '"rejected"' in out and "DPO preference data" in out


def test_view_data_reads_across_files_and_truncates(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d" / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["x" * 1000, "short"], "n": [1, 2]}), tmp_path / "d" / "a.parquet")
    pq.write_table(pa.table({"text": ["third"], "n": [3]}), tmp_path / "d" / "sub" / "b.parquet")
    assert view_data.main([str(tmp_path / "d"), "--rows", "3", "--max-chars", "10"]) == 0
    out = capsys.readouterr().out
    assert '"xxxxxxxxxx… [+990 chars]"' in out and '"third"' in out and "schema: same as above" in out


def test_view_data_errors(tmp_path, capsys):
    assert "does not exist" in _error(view_data.main, [str(tmp_path / "nope")], capsys)
    assert "no .parquet files under" in _error(view_data.main, [str(tmp_path)], capsys)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert "cannot read" in _error(view_data.main, [str(bad)], capsys)
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["a"]}), good)
    err = _error(view_data.main, [str(good), "--columns", "text,prompt"], capsys)
    assert "no column 'prompt'" in err and "its columns are: text" in err
    assert "--rows must be at least 1" in _error(view_data.main, [str(good), "--rows", "0"], capsys)


def test_view_data_cli_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "utils" / "view_data.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
