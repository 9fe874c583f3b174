"""The table of stages: every place that lists, launches, plans, prepares, checks or demos a stage reads it here.

Run as (shell scripts ask this instead of spelling the names):
    python -m mini_qwen.stages names            # pt sft dpo grpo
    python -m mini_qwen.stages script grpo      # mini_qwen_grpo.py  (exit 2 with one error line if unknown)

A stage's own files are the only others that spell its name: its script `mini_qwen_<name>.py`, its data
module `mini_qwen/data/<name>.py`, its demo `demo/demo_<name>.py` + `demo/<name>.yaml` and its tests
`tests/test_<name>.py` (tests/test_architecture.py checks both: the table against those files on disk, and that
no other file holds a list of stage names or switches on one).

Each row names modules by their dotted path and imports them only when asked, so `names` starts in a moment
(run.sh, sbatch) and the table imports neither torch nor a stage script.
"""

import importlib
import sys
from dataclasses import dataclass

from mini_qwen.errors import MiniQwenError, run_main

GUARDS = {
    "loss": "the step's loss: non-finite, or above --loss_spike_factor x the median of recent good steps",
    "kl": "the policy's KL to the reference: non-finite (or a non-finite loss / reward), or above "
          "--loss_spike_factor x the median of recent good steps (the GRPO loss itself sits near zero or below)",
}
# How the planner counts a stage's work (mini_qwen/plan_data.py, mini_qwen/plan.py).
PLAN_KINDS = {
    "tokens": "tokens of the token cache / parquet footers, in blocks",
    "rows": "conversations, their lengths from a sample run through the stage's encoding",
    "pairs": "preference pairs: prompt + chosen and prompt + rejected, forward of the policy and the reference",
    "rollouts": "prompts x --num_generations completions generated, then scored by the policy and the reference",
}


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    starts_from: str | None          # the stage whose model this one trains (None: a new model from a preset)
    prepare_bytes_per_second: float | None  # one process, bytes of the columns read (None: no token cache)
    guard: str                       # what the bad-step guard watches: a key of GUARDS
    plan: str                        # how the planner counts the work: a key of PLAN_KINDS
    demo_picks_preset: bool = False  # the demo picks the model preset (only a stage that builds a new model)
    chat: bool = True                # trains and is evaluated in the chat format (needs a chat template)
    demo_eval: tuple[str, ...] = ()  # flags demo_all adds to the eval for this stage (its own held-out measure)
    mfu_like: str | None = None      # planner: the measured stage whose MFU it borrows until it is measured itself

    @property
    def script(self) -> str:
        """The stage script, a module at the repository root."""
        return f"mini_qwen_{self.name}"

    @property
    def script_file(self) -> str:
        return f"{self.script}.py"

    @property
    def data(self) -> str:
        return f"mini_qwen.data.{self.name}"

    @property
    def demo_recipe(self) -> str:
        return f"demo/{self.name}.yaml"

    @property
    def demo_script(self) -> str:
        return f"demo/demo_{self.name}.py"

    @property
    def output(self) -> str:
        """Where the demo writes the model (results/demo/<name>)."""
        return f"results/demo/{self.name}"

    def module(self):
        return importlib.import_module(self.script)

    def arguments(self) -> dict:
        """The script's argument dataclasses by role (data, model, lora, training, ...), as its main parses them."""
        return dict(self.module().ARGUMENTS)

    def main(self):
        return self.module().main

    def data_module(self):
        return importlib.import_module(self.data)


# The pipeline, in order. Preparation speeds are set well below what one process did on the shared 2-core VM
# (bench/prepare_parallel.py: PT ~3.6 MB/s, SFT ~3.3 MB/s), so that a slow or busy machine still finishes within
# the estimate `prepared_first` makes (can rank 0 prepare the data within the process group's timeout?).
STAGES = (
    Stage("pt", "pretraining: a new model learns the language from raw text", None, 1.0e6, "loss", "tokens",
          demo_picks_preset=True, chat=False),
    Stage("sft", "supervised fine-tuning: the PT model learns to answer in the chat format", "pt", 0.5e6, "loss",
          "rows"),
    Stage("dpo", "direct preference optimisation: prefer the chosen answer of each pair", "sft", 0.5e6, "loss",
          "pairs"),
    Stage("grpo", "reinforcement learning with verifiable rewards: answers scored by Python rewards", "sft", None,
          "kl", "rollouts", demo_eval=("--verifiable", "mini_data/grpo/heldout.jsonl"), mfu_like="dpo"),
)
BY_NAME = {s.name: s for s in STAGES}


def names() -> list[str]:
    return list(BY_NAME)


def stage(name: str, what: str = "stage") -> Stage:
    """The row of `name`; an unknown name is one error line listing the known ones (never a fallback)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise MiniQwenError(f"unknown {what} {name!r}: use one of {', '.join(BY_NAME)}.") from None


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["names"]:
        print(" ".join(names()))
    elif len(argv) == 2 and argv[0] == "script":
        print(stage(argv[1]).script_file)
    else:
        raise MiniQwenError("usage: python -m mini_qwen.stages names | script NAME")


if __name__ == "__main__":
    run_main(main)
