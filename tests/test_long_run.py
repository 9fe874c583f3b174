"""mini_qwen/long_run.py (the trainer mixin for long runs), on the tiny preset and mini_data on CPU:

- SIGTERM mid-run: a complete checkpoint at the current step, exit 0 with the resume command; the resumed
  run ends with the same losses as an uninterrupted one. A second signal exits at once.
- A NaN batch and a loss spike are skipped without touching weights or optimizer state, and counted; too
  many bad steps in a row stop the run with the step, the data position and the last good checkpoint.
- A checkpoint save that fails leaves no folder resume would take, and one message with the free space.

The bad batches are injected by wrapping Trainer.compute_loss here, in the test; the stages carry no hook.
"""

import contextlib
import errno
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, error_lines
from test_checkpoint import MINI, history
from transformers import Trainer, TrainerCallback

from mini_qwen.checkpoint import complete_checkpoints
from mini_qwen.errors import run_main

STEPS = 16


@pytest.fixture(scope="module")
def pt_base(tmp_path_factory, built_tokenizer_dir):
    """PT flags shared by these tests (one token cache for all of them)."""
    cache = tmp_path_factory.mktemp("long_run_cache")
    return ["--model_preset", "tiny", "--data_dir", str(MINI / "pt"), "--block_size", "64", "--cache_dir", str(cache),
            "--tokenizer_path", str(built_tokenizer_dir), "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--seed", "0", "--report_to", "none"]


# --------------------------------------------------------------------------- SIGTERM: save, exit 0, resume


def _run_and_signal(cmd, log: Path, after_logs: int, result: dict, timeout: float = 600):
    """Start `cmd`; send SIGTERM once `after_logs` loss lines were printed; record the exit code."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                     "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if log.read_text(errors="replace").count("'loss'") >= after_logs:
                proc.send_signal(signal.SIGTERM)
                result["signalled"] = True
                break
            time.sleep(0.05)
        result["returncode"] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_0_and_resume_matches(pt_base, tmp_path, capsys, one_thread):
    import mini_qwen_pt

    argv = [*pt_base, "--max_steps", str(STEPS), "--save_steps", "1000"]  # no step-based save before the signal
    killed = tmp_path / "killed"
    result = {}
    runner = threading.Thread(target=_run_and_signal, daemon=True, args=(
        [sys.executable, str(REPO_ROOT / "mini_qwen_pt.py"), *argv, "--output_dir", str(killed)],
        tmp_path / "killed.log", 3, result))
    runner.start()
    reference = tmp_path / "reference"  # the uninterrupted run, in this process meanwhile
    mini_qwen_pt.main([*argv, "--output_dir", str(reference), "--save_strategy", "no"])
    runner.join()
    log = (tmp_path / "killed.log").read_text(errors="replace")
    assert result.get("signalled"), log[-3000:]
    assert result["returncode"] == 0, log[-3000:]
    assert "long run: SIGTERM received" in log and "--resume_from_checkpoint auto" in log
    assert not (killed / "model.safetensors").exists(), "a stopped run must not look finished"
    saved = complete_checkpoints(str(killed))
    assert len(saved) == 1, log[-3000:]
    step = int(saved[0].name.split("-")[1])
    assert 3 <= step < STEPS
    assert f"stopped by SIGTERM at step {step}/{STEPS}; checkpoint saved in {saved[0]}" in log

    capsys.readouterr()
    mini_qwen_pt.main([*argv, "--output_dir", str(killed), "--resume_from_checkpoint", "auto"])
    assert f"resume: continuing from {saved[0]}" in capsys.readouterr().out
    ref_steps, ref = history(reference)
    res_steps, res = history(killed)
    assert ref_steps == res_steps == STEPS
    for n in range(step + 1, STEPS + 1):  # the steps the resumed process computed
        assert abs(ref[n]["loss"] - res[n]["loss"]) < 1e-4, (n, ref[n], res[n])
        assert ref[n]["learning_rate"] == pytest.approx(res[n]["learning_rate"], rel=1e-6)


@pytest.mark.slow
def test_ctrl_c_through_tee_still_saves(pt_base, tmp_path):
    """`python mini_qwen_pt.py ... | tee log` and Ctrl-C: the terminal sends SIGINT to the whole pipeline, tee dies,
    and every later print of the stage hits a closed pipe (BrokenPipeError): the step still finishes, the checkpoint
    is written completely and the stage exits 0. Here a shell runs the pipeline in its own process group, which gets
    the SIGINT as a terminal's foreground job does; stderr goes to a file, as it stays on the terminal."""
    run, log = tmp_path / "run", tmp_path / "tee.log"
    stage = " ".join(map(shlex.quote, [sys.executable, str(REPO_ROOT / "mini_qwen_pt.py"), *pt_base,
                                       "--max_steps", "1000", "--save_steps", "1000", "--output_dir", str(run)]))
    script = f"({stage} 2> {tmp_path / 'stderr.log'}; echo $? > {tmp_path / 'rc'}) | tee {log} > /dev/null"
    shell = subprocess.Popen(["bash", "-c", script], cwd=REPO_ROOT, start_new_session=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                  "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 600
    try:
        while shell.poll() is None and time.monotonic() < deadline:
            if log.is_file() and "'loss'" in log.read_text(errors="replace"):  # training has begun
                os.killpg(shell.pid, signal.SIGINT)
                break
            time.sleep(0.05)
        shell.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    printed = (tmp_path / "stderr.log").read_text(errors="replace")[-3000:]
    assert (tmp_path / "rc").read_text().strip() == "0", printed
    saved = complete_checkpoints(str(run))
    assert len(saved) == 1 and 1 <= int(saved[0].name.split("-")[1]) < 1000, printed
    assert not (run / "model.safetensors").exists()


def test_a_second_signal_exits_at_once(tmp_path):
    script = ("import os, signal, time\n"
              "from mini_qwen.long_run import _StopSignals\n"
              "s = _StopSignals(); s.install()\n"
              "os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
              "print('first handled', s.received, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)\n"
              "print('still running')\n")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGINT, done.stdout + done.stderr
    assert f"first handled {int(signal.SIGTERM)}" in done.stdout and "still running" not in done.stdout
    assert "second SIGINT: exiting now" in done.stdout
    assert time.monotonic() - t0 < 29


# --------------------------------------------------------------------------- bad steps


def inject(monkeypatch, bad: dict[int, tuple[float, int]]):
    """bad[n] = (factor, i): multiply the loss of micro-batch i of optimizer step n (1-based) by factor."""
    original = Trainer.compute_loss
    seen = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = original(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        step = self.state.global_step + 1
        index = seen[step] = seen.get(step, -1) + 1
        if step in bad and index == bad[step][1]:
            loss = loss * bad[step][0]
        return loss

    monkeypatch.setattr(Trainer, "compute_loss", compute_loss)


class WeightWatch(TrainerCallback):
    """Trainable weights (all of them, or a LoRA adapter's) and their AdamW step count before and after each
    optimizer step."""

    def __init__(self):
        self.before, self.changed = None, {}

    @classmethod
    def on_every(cls, monkeypatch, trainer_class=Trainer) -> "WeightWatch":
        """A watch that every `trainer_class` built during the test adds as a callback."""
        watch = cls()
        original_init = trainer_class.__init__

        def init(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            self.add_callback(watch)

        monkeypatch.setattr(trainer_class, "__init__", init)
        return watch

    @staticmethod
    def snapshot(model, optimizer):
        trainable = [p for p in model.parameters() if p.requires_grad]
        state = optimizer.state.get(trainable[0], {})
        return [p.detach().clone() for p in trainable], int(state["step"]) if "step" in state else 0

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.before = self.snapshot(model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        weights, adam_steps = self.snapshot(model, optimizer)
        same = all(torch.equal(a, b) for a, b in zip(self.before[0], weights))
        self.changed[state.global_step] = (not same, adam_steps - self.before[1])


def test_nan_batch_and_spike_are_skipped_without_touching_the_weights(pt_base, tmp_path, monkeypatch, capsys):
    import mini_qwen_pt

    # Step 3: a NaN in the second micro-batch of the accumulation; step 8: a x100 loss (first micro-batch).
    inject(monkeypatch, {3: (float("nan"), 1), 8: (100.0, 0)})
    watch = WeightWatch.on_every(monkeypatch)
    out = tmp_path / "run"
    mini_qwen_pt.main([*pt_base, "--max_steps", "9", "--gradient_accumulation_steps", "2", "--save_strategy", "no",
                       "--warmup_steps", "0", "--loss_spike_window", "4", "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert "long run: bad step 3 (loss nan)" in printed and "weights and optimizer untouched" in printed
    assert "long run: bad step 8 (loss " in printed and "x median" in printed
    assert "2 bad step(s) skipped in this run" in printed
    for step in (3, 8):
        assert watch.changed[step] == (False, 0), (step, watch.changed)  # weights and AdamW moments untouched
    for step in (1, 2, 4, 5, 6, 7, 9):
        assert watch.changed[step] == (True, 1), (step, watch.changed)  # the good steps did train
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 9
    last = [e for e in state["log_history"] if "loss" in e][-1]
    assert last["bad_steps_skipped"] == 2 and math.isfinite(last["loss"])


def test_too_many_bad_steps_in_a_row_stop_the_run(pt_base, tmp_path, monkeypatch, capsys):
    import mini_qwen_pt

    inject(monkeypatch, {n: (float("nan"), 0) for n in range(4, 20)})
    out = tmp_path / "run"
    argv = [*pt_base, "--max_steps", "12", "--save_steps", "2", "--max_consecutive_bad_steps", "3",
            "--output_dir", str(out)]
    with pytest.raises(SystemExit) as exc:
        run_main(mini_qwen_pt.main, argv)
    assert exc.value.code == 2
    err = error_lines(capsys)
    # Steps 4, 5, 6 bad; checkpoint-4 and -6 hold untouched weights (skipped steps), so -4 is the last whole save.
    assert "3 bad steps in a row (--max_consecutive_bad_steps 3); the last, step 6, had loss nan" in err[0]
    assert "micro-batches 6-6 of the run (2 rows each x 1 process(es)" in err[0]
    assert f"Last good checkpoint: {out / 'checkpoint-4'}" in err[0]


# --------------------------------------------------------------------------- a failed save


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "60M"):
    """A `size` tmpfs at `folder` when this process may mount one (root with CAP_SYS_ADMIN), else None."""
    folder.mkdir(parents=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                   str(folder)], capture_output=True).returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_failed_checkpoint_save_stops_with_one_message_and_no_half_folder(pt_base, tmp_path, monkeypatch, capsys):
    """A real full disk where a 60 MB tmpfs can be mounted: the tiny model's weights (40 MB) fit, its AdamW state
    (80 MB) does not, and torch.save fails mid-file. Elsewhere the disk-full error is raised after the weights,
    optimizer and scheduler were written."""
    import mini_qwen_pt

    with small_disk(tmp_path / "disk") as disk:
        if disk is None:
            def disk_full(self, output_dir):
                (Path(output_dir) / "rng_state.pth").write_bytes(b"PK\x03\x04 cut")
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(Trainer, "_save_rng_state", disk_full)
        out = (disk or tmp_path) / "run"
        with pytest.raises(SystemExit) as exc:
            run_main(mini_qwen_pt.main, [*pt_base, "--max_steps", "4", "--save_steps", "2", "--output_dir", str(out)])
        assert exc.value.code == 2
        err = error_lines(capsys)
        reason = "torch.save could not write the file (a full disk, usually" if disk else "No space left on device"
        assert f"saving checkpoint {out / 'checkpoint-2'} failed: {reason}" in err[0], err
        assert "(the partial folder was removed). When it failed the disk had " in err[0]
        assert (" 0.00 GB free of 0.1 GB" if disk else " GB free of ") in err[0]
        assert "--resume_from_checkpoint auto" in err[0]
        assert not (out / "checkpoint-2").exists() and complete_checkpoints(str(out)) == []


def test_clock_saves_then_a_failed_final_save_names_the_folder(pt_base, tmp_path, monkeypatch, capsys):
    """--save_every_minutes saves without any step-based save; a failing final save says where the weights are."""
    import mini_qwen_pt

    original = Trainer._save
    out = tmp_path / "run"

    def read_only_final(self, output_dir=None, state_dict=None):
        if Path(output_dir) == out:  # checkpoints save fine, the final model does not
            raise PermissionError(errno.EACCES, "Permission denied")
        return original(self, output_dir, state_dict)

    monkeypatch.setattr(Trainer, "_save", read_only_final)
    with pytest.raises(SystemExit) as exc:
        run_main(mini_qwen_pt.main, [*pt_base, "--max_steps", "3", "--save_steps", "1000",
                                     "--save_every_minutes", "0.0001", "--output_dir", str(out)])
    assert exc.value.code == 2
    err = error_lines(capsys)
    assert f"saving the final model to {out} failed: Permission denied. " in err[0] and " GB free of " in err[0]
    assert [p.name for p in complete_checkpoints(str(out))] == ["checkpoint-3", "checkpoint-2", "checkpoint-1"]


def test_bad_step_guard_decisions():
    from mini_qwen.long_run import BadStepGuard

    guard = BadStepGuard(factor=3.0, window=4, max_consecutive=2)
    assert [guard.decide(x) for x in (10.0, 40.0, 9.0, 8.0)] == [False] * 4  # no median yet: 40 is not a spike
    assert guard.decide(float("inf")) and guard.last_reason == "loss inf" and guard.consecutive == 1
    assert guard.decide(30.0) and guard.last_reason.endswith("> 3 x median 9.5 of the last 4 good steps")
    assert guard.consecutive == 2
    assert not guard.decide(20.0) and guard.consecutive == 0 and guard.total == 2  # 20 < 3 x 9.5
    assert list(guard.history) == [40.0, 9.0, 8.0, 20.0]  # the window keeps the last 4 good steps
    off = BadStepGuard(factor=0, window=4, max_consecutive=2)
    assert [off.decide(x) for x in (1.0, 1.0, 1.0, 1.0, 1e6)] == [False] * 5 and off.decide(float("nan"))


# --------------------------------------------------------------------------- library internals long_run.py relies on


def test_trainer_internals_long_run_relies_on():
    """LongRunMixin overrides / calls private Trainer details of transformers 5.24 and accelerate 1.15; when this
    fails after an upgrade, re-read the library and fix mini_qwen/long_run.py before changing the test."""
    import inspect

    import accelerate
    import transformers
    from accelerate.optimizer import AcceleratedOptimizer

    from mini_qwen.long_run import LongRunMixin

    pins = {line.split("==")[0]: line.split("==")[1].strip()
            for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    assert transformers.__version__ == pins["transformers"] and accelerate.__version__ == pins["accelerate"]
    for name in ("_save_checkpoint", "save_model", "create_optimizer", "training_step"):
        ours, theirs = inspect.signature(getattr(LongRunMixin, name)), inspect.signature(getattr(Trainer, name))
        assert list(ours.parameters) == list(theirs.parameters), name
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert "trial" in inspect.signature(Trainer._get_output_dir).parameters
    # trainer_state.json is written last in a checkpoint: without it resume skips the folder.
    save = inspect.getsource(Trainer._save_checkpoint)
    assert save.index("self._save_rng_state(") < save.index("TRAINER_STATE_NAME")
    # The pre-optimizer-step callback comes before the optimizer step, and the step count moves even when we skip.
    loop = inspect.getsource(Trainer._run_epoch)
    assert loop.index("on_pre_optimizer_step") < loop.index("self.optimizer.step()") < loop.index("global_step += 1")
    assert loop.index("self.training_step(") < loop.index("on_pre_optimizer_step")
    # Resumed at max_steps, LongRunMixin._run_epoch returns at once with should_training_stop set: the epoch loop
    # calls _run_epoch(...) by keyword and stops on that flag right after.
    outer = inspect.getsource(Trainer._inner_training_loop)
    assert outer.index("self._run_epoch(") < outer.index("if self.control.should_training_stop:")
    # The optimizer is created before accelerate wraps it; the fp16 scaler path calls the step method it found then.
    prepare = inspect.getsource(Trainer._prepare_for_training)
    assert prepare.index("self.create_optimizer()") < prepare.index("self.accelerator.prepare(")
    assert "_optimizer_original_step_method = self.optimizer.step" in inspect.getsource(AcceleratedOptimizer.__init__)
