"""What a 25-hour run on rented GPUs needs: saves by the clock, save-and-exit on SIGTERM, bad steps skipped,
failed saves reported. One shape for all three stages: the stage's TrainingArguments subclass inherits
`LongRunArguments` (the flags) and its trainer class gets `LongRunMixin` (via `with_long_run(TrainerClass)`).

- **Saves by the clock.** `--save_every_minutes 60`: at the first step end after that many minutes since
  the last save (or the start), a checkpoint is written, on top of `--save_steps` / `--save_strategy epoch`.
  `--save_strategy no` turns these off too. At most about an hour of work is lost to a crash.
- **SIGTERM / SIGINT** (what `kill`, Slurm and spot-instance preemption send first): the current step
  finishes, a complete checkpoint-N is written, and the process exits 0 with the command that resumes
  it. Ctrl-C on `... | tee log` kills tee too: prints to the closed pipe are dropped (`_PipeSafe`), the save
  goes on. A second signal exits at once (the checkpoint being written is then incomplete, and
  `--resume_from_checkpoint auto` skips it). All processes agree on the step (one all-reduce per step).
- **Bad steps.** A step whose loss is not finite, or above `--loss_spike_factor` x the median of the last
  `--loss_spike_window` good steps, is skipped: the optimizer does not step (AdamW's decay and moments
  would move the weights even on zero gradients), the gradients are dropped, the step still counts
  (scheduler and data position stay what resume expects). After `--max_consecutive_bad_steps` bad steps
  in a row the run stops naming the step, the data position and the last good checkpoint. The decision
  uses the loss of the whole optimizer step (all micro-batches of the accumulation, averaged over
  processes, so every process decides alike). Under DeepSpeed the engine steps inside backward, before
  the loss of the step is known: there bad steps are only counted and stop the run; DeepSpeed's fp16
  loss scaler skips overflowing steps itself. What the guard watches is the stage's policy (mini_qwen/stages.py
  `guard`, passed to `with_long_run`): "loss" for PT / SFT / DPO; "kl" for GRPO, whose loss sits near zero or
  below by design: a step is bad when its loss, reward or KL is not finite, or when its KL to the reference
  exceeds the factor x median AND KL_SPIKE_FLOOR (KL starts at 0 and grows as the policy learns, so a ratio alone
  would call normal early growth a spike).
- **A failed save** (disk full, permission denied) stops the run with one message naming the folder and
  the free space, after removing the half-written checkpoint-N so resume never takes it for complete.
- **Several processes / nodes.** Process 0 writes trainer_state.json, the mark of a complete checkpoint, only
  after every process has written its part (DeepSpeed's optimizer shard, its RNG state): a barrier after the
  RNG save. A lost process (killed, out of memory, its node gone) ends the run on every node within
  `--lost_rank_timeout` seconds, with one message naming it (mini_qwen/nodes.py RankWatch).

Written against transformers 5.24 / accelerate 1.15: it overrides Trainer's private `_save_checkpoint` and
`_run_epoch` (no step past max_steps when resumed from the last checkpoint) and
relies on the order of its training loop (callback `on_pre_optimizer_step` before `optimizer.step()`, the
optimizer created before accelerate wraps it); tests/test_long_run.py pins these details.
"""

import math
import os
import shutil
import signal
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from mini_qwen.errors import MiniQwenError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MIN_SPIKE_HISTORY = 10  # good steps before spike detection starts (fewer if --loss_spike_window is smaller)
KL_SPIKE_FLOOR = 0.05  # nats a token: a KL below this is never a spike (healthy GRPO runs stay around 1e-3..1e-2)


@dataclass
class LongRunArguments:
    """Flags for long runs; every stage's training arguments inherit them."""

    save_every_minutes: float = field(default=60, metadata={
        "help": "Also save a checkpoint when this many minutes have passed since the last one (0: off). "
                "Bounds the work lost to a crash; --save_strategy no turns it off as well."})
    loss_spike_factor: float = field(default=3.0, metadata={
        "help": "A step whose loss exceeds this many times the median of recent good steps is skipped "
                "(0: only non-finite losses are skipped)."})
    loss_spike_window: int = field(default=100, metadata={
        "help": "Good steps the median of --loss_spike_factor is taken over."})
    max_consecutive_bad_steps: int = field(default=20, metadata={
        "help": "Stop the run after this many bad (skipped) steps in a row."})
    lost_rank_timeout: float = field(default=300, metadata={
        "help": "Several processes: one whose heartbeat stops for this many seconds counts as lost, and the run "
                "stops on every node with a message naming it (0: off; then only --ddp_timeout ends a hang)."})
    allow_changed_resume: bool = field(default=False, metadata={
        "help": "Resume even when batch size, accumulation, process count or data differ from the run that "
                "wrote the checkpoint (see run_config.json)."})


def check_long_run_args(training_args) -> None:
    """Called by mini_qwen.cli.parse_args (before anything loads) and by LongRunMixin."""
    if getattr(training_args, "enable_jit_checkpoint", False):
        # transformers' own SIGTERM handler saves mid-accumulation and then lets the stage save its "final"
        # model as if the run had ended; two handlers would also fight over the signal.
        raise MiniQwenError("--enable_jit_checkpoint is transformers' SIGTERM handler; the stages have their own "
                            "(finish the step, save a complete checkpoint, exit 0 with the resume command): "
                            "leave --enable_jit_checkpoint off.")


def free_space(folder: str | os.PathLike) -> str:
    """Free space on the disk holding `folder` (or its nearest existing parent), e.g. '1.2 GB free'."""
    path = Path(folder).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 1e9:.2f} GB free of {usage.total / 1e9:.1f} GB"


def is_write_failure(err: BaseException) -> bool:
    """A save that failed on the disk (full, read-only, no permission), however the library reports it."""
    if isinstance(err, OSError):
        return True
    text = str(err)
    # torch.save: RuntimeError("[enforce fail at inline_container.cc] ... PytorchStreamWriter failed writing file
    # ... / open file failed"); safetensors: SafetensorError("Error while serializing: I/O error: ...").
    if isinstance(err, RuntimeError) and ("PytorchStreamWriter" in text or "inline_container" in text):
        return True
    return type(err).__name__ == "SafetensorError" and "I/O error" in text


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = " ".join(str(err).split())
    if "inline_container" in text:  # torch.save's C++ message says "unexpected pos 11840 vs 11732" on a full disk
        return f"torch.save could not write the file (a full disk, usually; torch says: {text[:160]})"
    return text[:300]


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _StopSignals:
    """First SIGTERM/SIGINT: remember it (the step finishes, then save and exit). Second: exit at once."""

    def __init__(self):
        self.received: int | None = None
        self.previous = {}

    def handle(self, signum, frame):
        if self.received is not None:
            print(f"\nlong run: second {signal.Signals(signum).name}: exiting now without a checkpoint "
                  f"(the one being written, if any, is incomplete and resume will skip it).", flush=True)
            os._exit(128 + signum)
        self.received = signum
        print(f"\nlong run: {signal.Signals(signum).name} received: finishing this step, saving a checkpoint, "
              f"then exiting (send it again to exit at once).", flush=True)

    def install(self):
        if not _is_main_thread():  # signal handlers can only be set from the main thread
            return
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self.handle)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class _PipeSafe:
    """sys.stdout / sys.stderr during training: a write to a pipe whose reader is gone (`... | tee log` and Ctrl-C:
    the terminal's SIGINT kills tee too) is dropped instead of raising BrokenPipeError into the step, the save or
    the signal handler, which lost the graceful save. The file descriptor itself is then pointed at /dev/null, so
    every other holder of it (the progress bar, logging handlers, the flush at exit) goes quiet as well."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def _silence(self):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            self._stream.flush()  # what was buffered for the closed pipe goes to /dev/null
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's capture) or a closed stream
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)

    @classmethod
    def install(cls):
        """Wrap sys.stdout and sys.stderr; returns the function that puts the originals back."""
        originals = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = cls(sys.stdout), cls(sys.stderr)

        def restore():
            sys.stdout, sys.stderr = originals
        return restore


class BadStepGuard:
    """Decides, once per optimizer step and alike on every process, whether the step is bad."""

    def __init__(self, factor: float, window: int, max_consecutive: int, what: str = "loss",
                 floor: float = -math.inf):
        self.factor, self.max_consecutive = factor, max_consecutive
        self.what, self.floor = what, floor  # the watched value's name; below `floor` it is never a spike
        self.history = deque(maxlen=window)
        self.min_history = min(MIN_SPIKE_HISTORY, window)
        self.window_loss = 0.0
        self.skip = False
        self.total = self.consecutive = 0
        self.last_reason = ""

    def add_micro_batch(self, loss: torch.Tensor):
        self.window_loss = self.window_loss + loss.detach().float()

    def decide(self, loss: float) -> bool:
        """`loss`: the step's loss, the same number on every process. True when the step is to be skipped."""
        self.window_loss = 0.0
        if not math.isfinite(loss):
            self.last_reason = f"{self.what} {loss}"
        elif self.factor > 0 and len(self.history) >= self.min_history and loss > self.floor and \
                loss > self.factor * (median := statistics.median(self.history)):
            self.last_reason = f"{self.what} {loss:.4g} > {self.factor:g} x median {median:.4g} of the last " \
                               f"{len(self.history)} good steps"
        else:
            self.history.append(loss)
            self.consecutive = 0
            self.skip = False
            return False
        self.total += 1
        self.consecutive += 1
        self.skip = True
        return True


class _LongRunCallback(TrainerCallback):
    """The per-step hooks of LongRunMixin (callbacks see args/state/control; the trainer does the collectives)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._last_save_time = time.monotonic()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._check_step_loss()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._step_end(control)

    def on_save(self, args, state, control, **kwargs):
        self.trainer._last_save_time = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        guard = self.trainer._bad_steps
        if logs is not None and "loss" in logs:  # 0 too: a tracker plots the count from the first step
            logs["bad_steps_skipped"] = guard.total
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1]["bad_steps_skipped"] = guard.total


def _step_kl(trainer, loss: torch.Tensor) -> torch.Tensor:
    """GRPO's guard value of one micro-batch: its KL to the reference (0 with --beta 0, where TRL computes none),
    or NaN when the loss or the latest mean reward is not finite. Read from TRL's GRPOTrainer `_metrics`, where its
    training step has just appended them (trl 1.16; tests/test_grpo.py pins the names)."""
    metrics = trainer._metrics["train"]
    reward = metrics["reward"][-1] if metrics.get("reward") else 0.0
    if not (torch.isfinite(loss.detach()).all() and math.isfinite(reward)):
        return torch.tensor(math.nan)
    return torch.tensor(float(metrics["kl"][-1]) if metrics.get("kl") else 0.0)


# The bad-step guard's policies (mini_qwen/stages.py GUARDS says what each watches):
# name -> (the value a micro-batch adds, its name in messages, the floor below which it is never a spike).
GUARD_POLICIES = {
    "loss": (lambda trainer, loss: loss, "loss", -math.inf),
    "kl": (_step_kl, "KL", KL_SPIKE_FLOOR),
}


class LongRunMixin:
    """Mixed into a transformers / TRL trainer class before it: `class T(LongRunMixin, SFTTrainer)`."""

    guard = "loss"  # the stage's bad-step policy, a key of GUARD_POLICIES (set by with_long_run)

    def __init__(self, *args, **kwargs):
        check_long_run_args(kwargs.get("args"))
        super().__init__(*args, **kwargs)
        a = self.args
        _, what, floor = GUARD_POLICIES[self.guard]
        self._bad_steps = BadStepGuard(getattr(a, "loss_spike_factor", 3.0), getattr(a, "loss_spike_window", 100),
                                       getattr(a, "max_consecutive_bad_steps", 20), what, floor)
        self._signals = _StopSignals()
        self._last_save_time = time.monotonic()
        self.stopped_by_signal: int | None = None
        # First, so its count is in the logs before the trackers and the console printer read them.
        self.callback_handler.callbacks.insert(0, _LongRunCallback(self))

    # -- bad steps ------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if not self.is_deepspeed_enabled and not getattr(optimizer, "_long_run_guarded", False):
            # Wrapped before accelerate wraps it, so its fp16 GradScaler path calls this too.
            original = optimizer.step

            def step(*step_args, **step_kwargs):
                if self._bad_steps.skip:
                    return None
                return original(*step_args, **step_kwargs)

            optimizer.step = step
            optimizer._long_run_guarded = True
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._bad_steps.add_micro_batch(GUARD_POLICIES[self.guard][0](self, loss))
        return loss

    def _check_step_loss(self):
        guard = self._bad_steps
        loss = torch.as_tensor(guard.window_loss, dtype=torch.float32, device=self.args.device).reshape(1)
        if self.args.world_size > 1:
            loss = self.accelerator.reduce(loss, reduction="mean")  # NaN anywhere -> NaN everywhere
        if not guard.decide(loss.item()):
            return
        step = self.state.global_step + 1
        a = self.args
        per_step = a.gradient_accumulation_steps
        first, last = self.state.global_step * per_step + 1, step * per_step
        position = (f"epoch {self.state.epoch or 0:.3f}, micro-batches {first}-{last} of the run "
                    f"({a.per_device_train_batch_size} rows each x {a.world_size} process(es), data order of "
                    f"seed {a.data_seed if a.data_seed is not None else a.seed})")
        how = "counted (DeepSpeed steps inside backward)" if self.is_deepspeed_enabled else \
            "skipped: weights and optimizer untouched"
        if self.is_world_process_zero():
            print(f"long run: bad step {step} ({guard.last_reason}) at {position}: {how}; "
                  f"{guard.consecutive} in a row, {guard.total} in all", flush=True)
        if guard.consecutive >= guard.max_consecutive:
            from mini_qwen.checkpoint import complete_checkpoints

            found = complete_checkpoints(a.output_dir)
            last_good = str(found[0]) if found else "none yet (the run starts from scratch)"
            raise MiniQwenError(
                f"{guard.consecutive} bad steps in a row (--max_consecutive_bad_steps {guard.max_consecutive}); "
                f"the last, step {step}, had {guard.last_reason}, at {position}. Last good checkpoint: {last_good}. "
                f"Check the data at that position, lower --learning_rate, or raise --max_consecutive_bad_steps / "
                f"--loss_spike_factor; then --resume_from_checkpoint auto.")

    # -- clock saves and signals ----------------------------------------------------------------------------
    def _step_end(self, control):
        self._bad_steps.skip = False
        minutes = getattr(self.args, "save_every_minutes", 0) or 0
        due = (minutes > 0 and self.args.save_strategy != "no"
               and time.monotonic() - self._last_save_time >= minutes * 60)
        received = self._signals.received or 0
        if self.args.world_size > 1 and torch.distributed.is_initialized():  # every process decides alike
            flags = torch.tensor([float(due), float(received)], device=self.args.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            due, received = bool(flags[0].item()), int(flags[1].item())
        if due or received:
            control.should_save = True
        if received:
            control.should_training_stop = True
            self.stopped_by_signal = received

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the run's last checkpoint (its final save failed, or never came): Trainer's loop checks
        # max_steps only after a step, so it would train one step past the end and save checkpoint-<max+1>.
        # Nothing to train; the stage then saves the final model from the restored weights.
        if self.state.global_step >= self.state.max_steps > 0:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def train(self, *args, **kwargs):
        restore_streams = _PipeSafe.install()  # before super().train() creates the progress bar on sys.stderr
        try:
            return self._train_until_done_or_signalled(*args, **kwargs)
        finally:
            restore_streams()

    def _train_until_done_or_signalled(self, *args, **kwargs):
        from mini_qwen.nodes import RankWatch

        self._signals.install()
        watch = RankWatch(getattr(self.args, "lost_rank_timeout", 0) if self.args.world_size > 1 else 0,
                          output_dir=self.args.output_dir)
        watch.start()
        try:
            result = super().train(*args, **kwargs)
        except Exception as err:
            lost = None if isinstance(err, MiniQwenError) else watch.lost_message_after(err)
            if lost:  # a collective failed because a process is gone: say which, not gloo's / NCCL's words
                raise MiniQwenError(lost) from None
            raise
        finally:
            watch.stop()
            self._signals.restore()
        if self.stopped_by_signal:
            name = signal.Signals(self.stopped_by_signal).name
            if self.is_world_process_zero():
                folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                print(f"\nlong run: stopped by {name} at step {self.state.global_step}/{self.state.max_steps}; "
                      f"checkpoint saved in {folder}. Resume with the same command (python or accelerate launch) "
                      f"plus --resume_from_checkpoint auto:\n    {resume_command()}", flush=True)
            raise SystemExit(0)
        if self._bad_steps.total and self.is_world_process_zero():
            print(f"long run: {self._bad_steps.total} bad step(s) skipped in this run")
        return result

    # -- checkpoints of several processes ---------------------------------------------------------------------
    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        # Trainer writes trainer_state.json on process 0 next: wait until every process has written its files,
        # so that on a shared disk the mark of a complete checkpoint never precedes another node's part.
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    # -- failed saves ---------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            return super()._save_checkpoint(model, trial)
        except Exception as err:  # noqa: BLE001 (only disk failures are handled; the rest is re-raised)
            if not is_write_failure(err):
                raise
            free_then = free_space(folder)
            # trainer_state.json is written last; without it the folder is never resumed from. Remove the rest.
            try:
                (folder / "trainer_state.json").unlink(missing_ok=True)
            except OSError:
                pass
            shutil.rmtree(folder, ignore_errors=True)
            left = ("could not remove it, but it lacks trainer_state.json, so resume skips it" if folder.exists()
                    else "the partial folder was removed")
            raise MiniQwenError(
                f"saving checkpoint {folder} failed: {_reason(err)} ({left}). When it failed the disk had "
                f"{free_then}. Free space (--save_total_limit keeps fewer checkpoints) or fix the folder's "
                f"permissions, then rerun with --resume_from_checkpoint auto.") from None

    def save_model(self, output_dir=None, _internal_call=False):
        try:
            return super().save_model(output_dir, _internal_call=_internal_call)
        except Exception as err:  # noqa: BLE001 (only disk failures are handled; the rest is re-raised)
            if _internal_call or not is_write_failure(err):
                raise  # inside _save_checkpoint, which cleans up and reports
            folder = output_dir or self.args.output_dir
            raise MiniQwenError(
                f"saving the final model to {folder} failed: {_reason(err)}. "
                f"{free_space(folder)} on that disk. The newest checkpoint-N in {self.args.output_dir} holds the "
                f"trained weights: free space or fix permissions, then rerun with --resume_from_checkpoint auto "
                f"(it finishes at once and saves).") from None


def resume_command(argv: list[str] | None = None) -> str:
    """This process's command line with `--resume_from_checkpoint auto` (replacing any earlier value)."""
    argv = list(sys.argv if argv is None else argv)
    out, i = [], 1
    while i < len(argv):
        if argv[i] == "--resume_from_checkpoint":
            i += 2
            continue
        if not argv[i].startswith("--resume_from_checkpoint="):
            out.append(argv[i])
        i += 1
    return " ".join(["python", argv[0] if argv else "<stage script>", *out, "--resume_from_checkpoint", "auto"])


_CLASSES: dict[tuple[type, str], type] = {}


def with_long_run(trainer_class: type, guard: str = "loss") -> type:
    """`trainer_class` with LongRunMixin in front (one class per base and guard policy, so isinstance checks stay
    simple). `guard`: what the bad-step guard watches, the stage's `guard` in mini_qwen/stages.py."""
    if issubclass(trainer_class, LongRunMixin):
        return trainer_class
    if (trainer_class, guard) not in _CLASSES:
        _CLASSES[trainer_class, guard] = type(f"LongRun{trainer_class.__name__}", (LongRunMixin, trainer_class),
                                              {"__doc__": trainer_class.__doc__, "guard": guard})
    return _CLASSES[trainer_class, guard]
