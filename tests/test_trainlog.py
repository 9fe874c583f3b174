"""mini_qwen/trainlog.py: curves from trainer_state.json and from a live log_history."""

from conftest import png_ok, write_trainer_state

from mini_qwen.plotting import plot_loss_curves
from mini_qwen.trainlog import curves_from_trainer_state, metric_series


def test_read_trainer_state_picks_the_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    write_trainer_state(run / "checkpoint-20", 20, [5.0, 4.0])
    write_trainer_state(run / "checkpoint-100", 100, ["5.0", 4.0, 3.5, 3.0, 2.5], eval_loss=2.7)  # strings too
    series = curves_from_trainer_state(run)
    assert series["loss"] == ([10, 20, 30, 40, 50], [5.0, 4.0, 3.5, 3.0, 2.5])
    assert series["eval_loss"] == ([50], [2.7])
    assert "train_loss" not in series and "epoch" not in series and "total_flos" not in series
    assert curves_from_trainer_state(run / "checkpoint-20" / "trainer_state.json")["loss"][1] == [5.0, 4.0]


def test_plot_from_an_in_memory_log_history(tmp_path):
    """What LossPlotCallback does at the end of training: the live log_history, the summary dict left out."""
    history = [{"loss": 3.0, "step": 5}, {"loss": 2.0, "step": 10},
               {"train_runtime": 1.0, "train_loss": 2.5, "step": 10}]
    series = metric_series(history)
    assert series["loss"] == ([5, 10], [3.0, 2.0]) and "train_loss" not in series and "eval_loss" not in series
    png_ok(plot_loss_curves({"loss": series["loss"]}, tmp_path / "loss.png"))
