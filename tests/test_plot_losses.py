"""utils/plot_losses.py and mini_qwen/plotting.py: loss PNGs from console logs (the original project's, in
tests/data/upstream_logs) and from trainer_state.json, one run or several overlaid; bad input ends in one message."""

import subprocess
import sys

from conftest import REPO_ROOT, UPSTREAM_LOGS, cli_error, load_script, png_ok, write_trainer_state

from mini_qwen.plotting import plot_loss_curves

plot_losses = load_script("utils/plot_losses.py")


def test_plot_losses_cli_on_the_upstream_pt_log(tmp_path):
    out = tmp_path / "pt.png"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "utils" / "plot_losses.py"), str(UPSTREAM_LOGS / "output_pt.log"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "676 points" in proc.stdout and "first 12.12" in proc.stdout and "last 2.831" in proc.stdout
    png_ok(out)


def test_default_out_falls_back_to_cwd_for_a_read_only_folder(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "output_pt1.log").write_bytes((UPSTREAM_LOGS / "output_pt1.log").read_bytes())
    ro.chmod(0o555)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        assert plot_losses.main([str(ro / "output_pt1.log")]) == 0
        assert not (ro / "output_pt1_loss.png").exists()
        png_ok(work / "output_pt1_loss.png")
    finally:
        ro.chmod(0o755)


def test_overlay_of_two_runs(tmp_path, capsys):
    state = write_trainer_state(tmp_path / "a", 30, [6.0, 5.0, 4.0])
    log = tmp_path / "b.log"
    log.write_text("".join(f"{{'loss': {v}, 'epoch': 0.1}}\n" for v in (7.0, 6.5, 6.0, 5.5)))
    out = tmp_path / "cmp.png"
    argv = [str(state), str(log), "--labels", "run-a", "run-b", "--out", str(out), "--logging-steps", "10"]
    assert plot_losses.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run-a: 3 points") and "first 6, last 4, min 4" in lines[0]
    assert lines[1].startswith("run-b: 4 points") and "steps 10..40" in lines[1]
    png_ok(out)


def test_plot_loss_curves_smooths_long_curves(tmp_path):
    xs = list(range(100))
    curves = {"a": (xs, [10 / (1 + x) for x in xs]), "b": ([1, 2], [3.0, 2.0])}
    out = plot_loss_curves(curves, tmp_path / "sub" / "x.png", title="t")
    assert out == tmp_path / "sub" / "x.png"
    png_ok(out)


def test_plot_losses_errors(tmp_path, capsys):
    state = write_trainer_state(tmp_path / "a", 30, [6.0, 5.0])
    no_eval = [str(state), "--metric", "eval_loss", "--out", str(tmp_path / "x.png")]
    assert "no 'eval_loss' values" in cli_error(plot_losses.main, no_eval, capsys)
    assert "--labels has 1 names for 2 runs" in cli_error(plot_losses.main, [str(state), str(state), "--labels", "x"],
                                                          capsys)
    assert "does not exist" in cli_error(plot_losses.main, [str(tmp_path / "missing.log")], capsys)
    empty = tmp_path / "empty.log"
    empty.write_text("just text\n")
    assert "no logged metrics" in cli_error(plot_losses.main, [str(empty)], capsys)
    assert "no trainer_state.json" in cli_error(plot_losses.main, [str(tmp_path)], capsys)
