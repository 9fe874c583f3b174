"""mini_qwen/console_log.py: loss curves from a training run's console log, on the original project's logs
(tests/data/upstream_logs) and on synthetic ones."""

import pytest
from conftest import UPSTREAM_LOGS

from mini_qwen.console_log import parse_training_log
from mini_qwen.plotting import summarize


def test_parse_upstream_logs_reads_steps_from_the_progress_bar():
    steps, losses = parse_training_log(UPSTREAM_LOGS / "output_pt.log")["loss"]
    assert losses[0] == pytest.approx(12.1, abs=0.05) and losses[-1] == pytest.approx(2.83, abs=0.01)
    assert steps[:3] == [20, 40, 60] and steps[-1] == 13520  # logging_steps 20 of 13523
    dpo = parse_training_log(UPSTREAM_LOGS / "output_dpo1.log")
    assert len(dpo["loss"][1]) == 23 and dpo["loss"][0][-1] == 460
    assert dpo["rewards/accuracies"][1][-1] == pytest.approx(0.8945, abs=1e-3)
    assert "train_loss" not in dpo  # the end-of-run summary is not a curve
    # explicit logging_steps: x = entry index x N
    assert parse_training_log(UPSTREAM_LOGS / "output_pt1.log", logging_steps=5)["loss"][0] == [5, 10, 15, 20]


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
