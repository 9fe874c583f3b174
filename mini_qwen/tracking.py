"""Experiment trackers on every stage: `--report_to tensorboard` (a pinned dependency), `wandb` or `swanlab`
(optional extras, offline by default).

transformers' own tracker callbacks do the logging. Every loss line they receive already carries
`tokens_per_second` (and `mfu` on a known GPU) from mini_qwen/callbacks.py and `bad_steps_skipped` from
the long-run guard (mini_qwen/long_run.py), both put into the logs before the trackers see them, so the
trackers plot train/loss, train/tokens_per_second, train/mfu and train/bad_steps_skipped per step.

What this module adds (`track_run`, called by each stage once its trainer exists):
- **One tracker run per output_dir, continued on resume.** TensorBoard writes to `<output_dir>/tensorboard`
  (transformers' default is a new runs/<date>_<host> folder at each start, so a resumed run would show up
  as another run) with `purge_step` = the step training starts from: the steps a killed process logged
  after its last checkpoint are hidden, and the resumed process logs them again. wandb and swanlab get
  one run id, kept in `<output_dir>/tracker_run.json` and reused when the run resumes.
- **The run config** (run_config.json: every argument, versions, data files) as a TensorBoard text
  summary and in the wandb / swanlab run config.
- **Offline by default**: WANDB_MODE=offline and SWANLAB_MODE=offline unless already set (sync later with
  `wandb sync` / `swanlab sync`), their files under the output_dir (wandb/, swanlog/).
- `check_report_to` (in mini_qwen.cli.parse_args): an unknown tracker name, or one whose package is not
  installed, ends in one message before anything loads.
"""

import importlib.util
import json
import os
import uuid
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from mini_qwen.errors import MiniQwenError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}  # --report_to name -> package
EXTRAS = {"tensorboard": "pip install tensorboard==2.21.0 (requirements.txt pins it)",
          "wandb": "pip install -e .[wandb]", "swanlab": "pip install -e .[swanlab]"}
TENSORBOARD_DIR = "tensorboard"
RUN_ID_FILE = "tracker_run.json"


def check_report_to(training_args) -> None:
    """--report_to names transformers knows, each one installed."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in training_args.report_to or []:
        if name not in INTEGRATION_TO_CALLBACK:
            others = ", ".join(sorted(set(INTEGRATION_TO_CALLBACK) - set(TRACKERS)))
            raise MiniQwenError(f"--report_to {name}: no such tracker. Use tensorboard, wandb or swanlab (or none); "
                                f"transformers also knows {others}.")
        if name in TRACKERS and importlib.util.find_spec(TRACKERS[name]) is None:
            raise MiniQwenError(f"--report_to {name}: {TRACKERS[name]} is not installed: {EXTRAS[name]}, or drop it.")


class RunTensorBoardCallback(TensorBoardCallback):
    """transformers' TensorBoard callback writing to one fixed folder, resumable, with the run config."""

    def __init__(self, log_dir: Path, run_config: dict | None):
        super().__init__()
        self.logging_dir = os.getenv("TENSORBOARD_LOGGING_DIR") or str(log_dir)
        self.run_config = run_config
        self.purge_step = None

    def _init_summary_writer(self, args):
        # purge_step: TensorBoard hides the events of earlier files in this folder at or after that step.
        self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)

    def on_train_begin(self, args, state, control, **kwargs):
        self.purge_step = state.global_step + 1  # the first step this process logs (a resume restores global_step)
        super().on_train_begin(args, state, control, **kwargs)
        if self.tb_writer is not None and self.run_config is not None:
            self.tb_writer.add_text("run_config", f"```\n{json.dumps(self.run_config, indent=1, default=str)}\n```")


class WandbRunConfig(TrainerCallback):
    """Adds run_config.json to the wandb run config (transformers' callback logs TrainingArguments only)."""

    def __init__(self, run_config: dict):
        self.run_config = run_config

    def on_train_begin(self, args, state, control, **kwargs):
        import wandb

        if state.is_world_process_zero and wandb.run is not None:
            wandb.config.update({"run_config": self.run_config}, allow_val_change=True)


class SwanLabRun(TrainerCallback):
    """Starts the swanlab run before transformers' SwanLabCallback sets up (it must come first in the list).

    transformers 5.24's callback asks `swanlab.get_run() is None` to decide whether to start a run, but
    swanlab 0.10 raises when there is none; with the run started here it only logs into it."""

    def __init__(self, run_id: str, name: str, log_dir: Path, run_config: dict | None):
        self.run_id, self.name, self.log_dir, self.run_config = run_id, name, log_dir, run_config

    def on_train_begin(self, args, state, control, **kwargs):
        import swanlab

        if not state.is_world_process_zero or swanlab.has_run():
            return
        swanlab.init(project=os.getenv("SWANLAB_PROJECT", "mini_qwen"), name=self.name, id=self.run_id,
                     resume="allow", mode=os.getenv("SWANLAB_MODE", "offline"),
                     log_dir=os.getenv("SWANLAB_LOG_DIR", str(self.log_dir)),
                     config={"run_config": self.run_config} if self.run_config is not None else None)


def tracker_run_id(output_dir: str, resuming: bool) -> str:
    """The wandb / swanlab run id of this output_dir: the stored one when resuming, else a new one (stored)."""
    path = Path(output_dir) / RUN_ID_FILE
    if resuming:
        try:
            return json.loads(path.read_text())["id"]
        except (OSError, ValueError, KeyError):
            pass  # an older run without trackers: start one now
    run_id = uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"id": run_id}))
    return run_id


def track_run(trainer, run_config: dict | None, resume_from: str | None) -> None:
    """Set the trackers of --report_to up for this stage's trainer (see the module docstring).
    `resume_from`: the checkpoint training resumes from (None: a new run)."""
    args = trainer.args
    names = list(args.report_to or [])
    if "tensorboard" in names:
        trainer.remove_callback(TensorBoardCallback)
        trainer.add_callback(RunTensorBoardCallback(Path(args.output_dir) / TENSORBOARD_DIR, run_config))
    if not args.process_index == 0 or not {"wandb", "swanlab"} & set(names):
        return
    run_id = tracker_run_id(args.output_dir, resume_from is not None)
    name = args.run_name or Path(args.output_dir).name
    if "wandb" in names:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(args.output_dir))
        os.environ.setdefault("WANDB_PROJECT", "mini_qwen")
        os.environ["WANDB_RUN_ID"], os.environ["WANDB_RESUME"] = run_id, "allow"
        if run_config is not None:
            trainer.add_callback(WandbRunConfig(run_config))
    if "swanlab" in names:
        trainer.callback_handler.callbacks.insert(0, SwanLabRun(run_id, name, Path(args.output_dir) / "swanlog",
                                                                run_config))
    if args.run_name is None:
        args.run_name = name  # the tracker's display name: the output folder's, not a random one
