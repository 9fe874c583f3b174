"""mini_qwen/checkpoint.py: which checkpoint-N folders are complete, which one a run resumes from, and that a
resume ends exactly like an uninterrupted run.

- Checkpoint folders (fast): a half-written newest checkpoint is never picked; explicit resume paths are checked.
- Kill and resume (slow): a run killed with SIGKILL and resumed with `--resume_from_checkpoint auto` ends exactly
  like an uninterrupted run (same optimizer steps, same losses: weights, optimizer, scheduler, RNG and data
  position all restored). The killed stage runs as a subprocess (that is what SIGKILL hits), while the
  uninterrupted reference runs in-process at the same time; the resume also runs in-process. All of them use
  one torch thread (the `one_thread` fixture): the same arithmetic everywhere.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import save_file

from mini_qwen.checkpoint import checkpoint_problem, complete_checkpoints, resume_checkpoint
from mini_qwen.errors import MiniQwenError

MINI = REPO_ROOT / "mini_data"
STEPS, SAVE_EVERY = 6, 3  # optimizer steps; checkpoints at 3 and 6; the run is killed once checkpoint-3 is complete
COMMON = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_steps", str(STEPS),
          "--save_strategy", "steps", "--save_steps", str(SAVE_EVERY), "--logging_steps", "1", "--seed", "0",
          "--report_to", "none"]


# --------------------------------------------------------------------------- checkpoint folders (fast)


def fake_checkpoint(root: Path, step: int, optimizer: bool = True) -> Path:
    """A checkpoint as Trainer writes it: weights, optimizer / scheduler / RNG state, trainer_state.json last."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    if optimizer:
        torch.save({"state": {0: torch.ones(64, 64)}}, folder / "optimizer.pt")
        torch.save({"last_epoch": step}, folder / "scheduler.pt")
        torch.save({"python": 1}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def args(output_dir, wanted="auto"):
    return SimpleNamespace(resume_from_checkpoint=wanted, output_dir=str(output_dir), process_index=0)


HALF_WRITTEN = {
    "no trainer_state.json": lambda f: (f / "trainer_state.json").unlink(),
    "trainer_state.json cut short": lambda f: truncate(f / "trainer_state.json"),
    "model.safetensors cut short": lambda f: truncate(f / "model.safetensors"),
    "optimizer.pt cut short": lambda f: truncate(f / "optimizer.pt"),
    "no weights yet": lambda f: (f / "model.safetensors").unlink(),
}


@pytest.mark.parametrize("damage", list(HALF_WRITTEN))
def test_auto_skips_a_half_written_newest_checkpoint(tmp_path, damage, capsys):
    fake_checkpoint(tmp_path, 2)
    good = fake_checkpoint(tmp_path, 9)
    newest = fake_checkpoint(tmp_path, 10)  # 10 > 9 numerically, though "checkpoint-10" < "checkpoint-9" as text
    assert complete_checkpoints(str(tmp_path))[0] == newest
    HALF_WRITTEN[damage](newest)
    assert checkpoint_problem(newest)
    assert [p.name for p in complete_checkpoints(str(tmp_path))] == ["checkpoint-9", "checkpoint-2"]
    assert resume_checkpoint(args(tmp_path)) == str(good)
    out = capsys.readouterr().out
    assert f"resume: skipping {newest}" in out and f"resume: continuing from {good}" in out


def test_auto_with_no_complete_checkpoint_starts_from_scratch(tmp_path, capsys):
    assert resume_checkpoint(args(tmp_path / "not_yet")) is None
    (fake_checkpoint(tmp_path, 3) / "trainer_state.json").unlink()
    assert resume_checkpoint(args(tmp_path)) is None
    assert "no complete checkpoint" in capsys.readouterr().out


def test_explicit_checkpoint_paths(tmp_path, capsys):
    good = fake_checkpoint(tmp_path, 4)
    assert resume_checkpoint(args(tmp_path, str(good))) == str(good)
    broken = fake_checkpoint(tmp_path, 8)
    truncate(broken / "model.safetensors")
    with pytest.raises(MiniQwenError, match=r"cannot resume from '.*checkpoint-8': truncated files \['model.safetensors"
                                            r"'\] \(the save did not finish.*\)\. Use --resume_from_checkpoint auto"):
        resume_checkpoint(args(tmp_path, str(broken)))
    with pytest.raises(MiniQwenError, match="folder does not exist"):
        resume_checkpoint(args(tmp_path, str(tmp_path / "checkpoint-99")))
    final = tmp_path / "final"  # a stage's output_dir: weights + trainer_state.json, no optimizer
    shutil.copytree(good, final)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (final / name).unlink()
    with pytest.raises(MiniQwenError, match="not a checkpoint-N folder .* use --model_name_or_path instead"):
        resume_checkpoint(args(tmp_path, str(final)))


def test_model_only_checkpoint_resumes_with_a_note(tmp_path, capsys):
    """--save_only_model checkpoints are complete (weights + trainer_state.json) but restart the optimizer."""
    folder = fake_checkpoint(tmp_path, 5, optimizer=False)
    assert resume_checkpoint(args(tmp_path)) == str(folder)
    assert "holds no optimizer state (saved with --save_only_model)" in capsys.readouterr().out


# --------------------------------------------------------------------------- kill and resume (slow)


class KillWhenComplete(threading.Thread):
    """Run a stage as a subprocess; SIGKILL it as soon as `checkpoint` is complete (trainer_state.json readable)."""

    def __init__(self, script: str, argv: list[str], checkpoint: Path, log: Path, timeout: float = 900):
        super().__init__(daemon=True)
        self.cmd = [sys.executable, str(REPO_ROOT / script), *argv]
        self.checkpoint, self.log, self.timeout = checkpoint, log, timeout
        self.proc = self.returncode = self.failure = None
        self.stop = threading.Event()

    def run(self):
        with open(self.log, "w") as log:
            self.proc = proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                                env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        deadline = time.monotonic() + self.timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline and not self.stop.is_set():
                if self.checkpoint.is_dir() and checkpoint_problem(self.checkpoint) is None:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.05)
            else:
                self.failure = (f"{self.cmd[1]} ended (rc {proc.returncode}), timed out or was stopped before "
                                f"{self.checkpoint} was complete:\n{self.log.read_text()[-3000:]}")
        finally:
            if proc.poll() is None and self.failure:
                proc.kill()
            self.returncode = proc.wait()

    def finish(self):
        self.join()
        assert self.failure is None, self.failure
        assert self.returncode == -signal.SIGKILL, self.log.read_text()[-3000:]


def pt_argv(tmp, tokenizer_dir):
    return ["--model_preset", "tiny", "--data_dir", str(MINI / "pt"), "--block_size", "64",
            "--cache_dir", str(tmp / "cache"), "--tokenizer_path", str(tokenizer_dir), *COMMON]


def sft_argv(model_dir):
    return ["--model_name_or_path", str(model_dir), "--data_dir", str(MINI / "sft"), "--max_length", "128", *COMMON]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, built_tokenizer_dir, tiny_checkpoint):
    """Both stages' to-be-killed subprocesses, started together: the SFT one starts up (imports take
    ~15 s on a busy machine) and reaches its checkpoint while the PT test runs."""
    runs = {}
    for stage, script, argv in (("pt", "mini_qwen_pt.py", pt_argv(tmp_path_factory.mktemp("pt_cache"),
                                                                   built_tokenizer_dir)),
                                ("sft", "mini_qwen_sft.py", sft_argv(tiny_checkpoint))):
        out = tmp_path_factory.mktemp(f"{stage}_killed")
        run = KillWhenComplete(script, [*argv, "--output_dir", str(out / "run")],
                               out / "run" / f"checkpoint-{SAVE_EVERY}", out / "killed.log")
        run.output_dir, run.argv = out / "run", argv
        run.start()
        runs[stage] = run
    yield runs
    for run in runs.values():
        run.stop.set()
        run.join()


def history(output_dir: Path) -> tuple[int, dict[int, dict]]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return state["global_step"], {e["step"]: e for e in state["log_history"] if "loss" in e}


def assert_same_run(reference: Path, resumed: Path, resumed_from: int):
    ref_steps, ref = history(reference)
    res_steps, res = history(resumed)
    assert ref_steps == res_steps == STEPS
    assert sorted(ref) == sorted(res) == list(range(1, STEPS + 1))
    assert abs(ref[STEPS]["loss"] - res[STEPS]["loss"]) < 1e-4, (ref[STEPS], res[STEPS])
    for step in range(resumed_from + 1, STEPS + 1):  # steps the resumed process computed itself
        assert abs(ref[step]["loss"] - res[step]["loss"]) < 1e-4, (step, ref[step], res[step])  # data position
        assert ref[step]["learning_rate"] == pytest.approx(res[step]["learning_rate"], rel=1e-6)  # scheduler
        assert ref[step]["grad_norm"] == pytest.approx(res[step]["grad_norm"], rel=1e-3)  # weights + optimizer


def reference_then_resume(main, run: KillWhenComplete, tmp_path, capsys, damage):
    # The uninterrupted run, in this process while the killed one runs (saving no checkpoint changes no number).
    reference = tmp_path / "reference"
    main([*run.argv, "--output_dir", str(reference), "--save_strategy", "no"])
    run.finish()
    killed = run.output_dir
    assert not (killed / "model.safetensors").exists(), "the killed run got to its final save"

    # The newest complete checkpoint is checkpoint-3 (or, after a very slow poll, a later one); a newer
    # half-written folder, as a kill during a save leaves, must be skipped.
    newest = complete_checkpoints(str(killed))[0]
    step = int(newest.name.split("-")[1])
    assert SAVE_EVERY <= step < STEPS
    half = killed / f"checkpoint-{step + 1}"
    shutil.copytree(newest, half)
    damage(half)

    capsys.readouterr()
    main([*run.argv, "--output_dir", str(killed), "--resume_from_checkpoint", "auto"])
    out = capsys.readouterr().out
    assert f"resume: skipping {half}" in out and f"resume: continuing from {newest}" in out, out
    assert_same_run(reference, killed, step)


@pytest.mark.slow
def test_pt_killed_and_resumed_ends_like_an_uninterrupted_run(killed_runs, tmp_path, capsys, one_thread):
    import mini_qwen_pt

    reference_then_resume(mini_qwen_pt.main, killed_runs["pt"], tmp_path, capsys,
                          damage=lambda f: (f / "trainer_state.json").unlink())


@pytest.mark.slow
def test_sft_killed_and_resumed_ends_like_an_uninterrupted_run(killed_runs, tmp_path, capsys, one_thread):
    import mini_qwen_sft

    reference_then_resume(mini_qwen_sft.main, killed_runs["sft"], tmp_path, capsys,
                          damage=lambda f: truncate(f / "model.safetensors"))


# --------------------------------------------------------------------------- a finished run, resumed again


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pt", "sft"])
def test_resuming_a_finished_run_trains_and_writes_nothing(stage, tmp_path, built_tokenizer_dir, tiny_checkpoint,
                                                           capsys, one_thread):
    """Rerunning a finished run with --resume_from_checkpoint auto says so in one line and exits 0, every file in
    its output folder byte for byte as it was (Trainer alone trains one step past the end and overwrites the final
    model). Without the final model (its save failed) the resume trains no step either, and saves it."""
    import mini_qwen_pt
    import mini_qwen_sft

    main = {"pt": mini_qwen_pt.main, "sft": mini_qwen_sft.main}[stage]
    steps = "2"
    argv = {"pt": pt_argv(tmp_path, built_tokenizer_dir), "sft": sft_argv(tiny_checkpoint)}[stage]
    argv = [*argv, "--max_steps", steps, "--save_steps", steps, "--output_dir", str(tmp_path / "run")]
    out = tmp_path / "run"
    main(argv)
    assert (out / f"checkpoint-{steps}").is_dir() and (out / "model.safetensors").is_file()
    before = folder_bytes(out)
    capsys.readouterr()

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--resume_from_checkpoint", "auto"])
    assert exc.value.code == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resume:")]
    assert printed == [f"resume: {out} holds a finished run (step {steps} of {steps}, final model saved): nothing to "
                       f"train. Raise --max_steps to train further, or pass a new --output_dir."]
    assert folder_bytes(out) == before

    (out / "model.safetensors").unlink()  # the final save failed: the last checkpoint holds the trained weights
    main([*argv, "--resume_from_checkpoint", "auto"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == int(steps)
    assert (out / "model.safetensors").read_bytes() == before["model.safetensors"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{steps}"]
