"""Benchmarks through EleutherAI's lm-evaluation-harness (C-Eval, CMMLU, MMLU, HellaSwag, ARC, ...).

- `load_suite` finds the tasks by the names lm-eval gives them (`ceval-valid`, `cmmlu`, `mmlu`,
  `hellaswag`, `arc_easy`), plus the project's own tasks in mini_qwen/tasks/ (`mini_ceval`, offline)
  and any folder of the user's YAML tasks (lm-eval's `include_path`). Every dataset is loaded once,
  before any model: a typo or a dataset that cannot be downloaded ends in one message naming the task.
- `MiniQwenLM` is lm-eval's Hugging Face backend (`HFLM`) around a model that is already loaded, with
  the chat format the SFT / DPO stages trained on (no default system prompt; the official Qwen
  template would add "You are Qwen, created by Alibaba Cloud ..." that our models never saw). It renders with
  chat.format_messages, the same text as the tokenizer's own template (chat.CHATML_TEMPLATE, tests/test_chat.py),
  so it stays right for a tokenizer folder that still carries the official one.
- `run_suite` scores one model on the suite and returns one row per requested name: accuracy and
  its standard error (and acc_norm where the task has it), the number of questions, and the
  random-guess level of those questions (mean of 1 / number of choices).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

from mini_qwen.chat import format_messages
from mini_qwen.errors import MiniQwenError

LOCAL_TASKS = Path(__file__).resolve().parent / "tasks"
METRICS = ("acc", "acc_norm")


@dataclass
class Suite:
    """The requested benchmarks, loaded: what `run_suite` scores every checkpoint on."""
    names: list[str]
    manager: object  # lm_eval.tasks.TaskManager
    objects: dict[str, object]  # name -> Task, Group, or list of Tasks (a tag)
    chance: dict[str, float | None] = field(default_factory=dict)  # name -> random-guess accuracy
    # Each leaf task's own num_fewshot: lm-eval writes the value of a run into the task's config (and then
    # treats a written 0 as "this task is zero-shot only"), so it is put back before every run.
    shots: dict[str, int | None] = field(default_factory=dict)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def parse_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MiniQwenError(f"--benchmarks '{text}' names no task: give lm-eval task names separated by commas, "
                            f"e.g. --benchmarks ceval-valid,cmmlu,mmlu,hellaswag,arc_easy (or mini_ceval, offline).")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MiniQwenError(f"--benchmarks names {', '.join(duplicates)} twice: name each task once.")
    return names


def task_manager(tasks_dirs: list[str] | None = None):
    """lm-eval's TaskManager over its own tasks, the project's (mini_qwen/tasks) and the user's folders."""
    for folder in tasks_dirs or []:
        path = Path(folder)
        if not path.is_dir():
            raise MiniQwenError(f"--tasks_dir '{folder}' is not a folder: give a folder that holds lm-eval task "
                                f"YAML files (e.g. my_tasks/ with my_task.yaml inside).")
        if not any(path.rglob("*.yaml")) and not any(path.rglob("*.yml")):
            raise MiniQwenError(f"--tasks_dir '{folder}' holds no .yaml task file: write one lm-eval task YAML "
                                f"there (see mini_qwen/tasks/mini_ceval/mini_ceval.yaml).")
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(LOCAL_TASKS), *map(str, tasks_dirs or [])])


def _leaves(obj) -> list:
    """The leaf Tasks of a Task, a Group or a tag's list of Tasks."""
    from lm_eval.api.group import Group

    if isinstance(obj, list):
        return obj
    if isinstance(obj, Group):
        return list(obj.get_all_tasks())
    return [obj]


def chance_level(obj, limit: int | None = None) -> float | None:
    """Accuracy of guessing uniformly among each question's choices, over the questions that are scored
    (the first `limit` of each leaf task); None when a task is not multiple choice."""
    total, count = 0.0, 0
    for task in _leaves(obj):
        if task.get_config("output_type") != "multiple_choice":
            return None
        docs = task.eval_docs
        n = len(docs) if limit is None else min(limit, len(docs))
        for i in range(n):
            choices = task.doc_to_choice(docs[i])
            total += 1.0 / max(1, len(choices))
        count += n
    return total / count if count else None


def load_suite(names: list[str], tasks_dirs: list[str] | None = None, limit: int | None = None) -> Suite:
    manager = task_manager(tasks_dirs)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise MiniQwenError(f"unknown benchmark '{name}': lm-eval has no task, group or tag of that name.{hint} "
                                f"Use lm-eval's spelling (ceval-valid, cmmlu, mmlu, hellaswag, arc_easy, ...; "
                                f"`lm-eval ls tasks` lists them) or put your own YAML task in a folder passed "
                                f"with --tasks_dir.")
    objects = {}
    for name in names:
        print(f"benchmark {name}: loading its dataset", flush=True)
        try:
            loaded = manager.load([name])
        except Exception as err:  # noqa: BLE001 - datasets, hub and YAML errors all land here
            raise MiniQwenError(_load_error(name, err)) from None
        if name in loaded.get("groups", {}):
            objects[name] = loaded["groups"][name]
        elif name in loaded["tasks"]:
            objects[name] = loaded["tasks"][name]
        else:  # a tag: its tasks, scored one by one
            objects[name] = list(loaded["tasks"].values())
    suite = Suite(names, manager, objects)
    suite.shots = {t.task_name: t.get_config("num_fewshot") for obj in objects.values() for t in _leaves(obj)}
    suite.chance = {name: chance_level(obj, limit) for name, obj in objects.items()}
    return suite


def _load_error(name: str, err: Exception) -> str:
    text = _first_line(err)
    network = isinstance(err, (ConnectionError, TimeoutError)) or any(
        word in text for word in ("Hub", "offline", "Offline", "resolve", "Connection", "reach"))
    if network:
        return (f"benchmark '{name}': its dataset cannot be loaded ({text}). lm-eval downloads each benchmark's "
                f"data from the Hugging Face Hub on first use: run once with network access (the datasets cache "
                f"then serves it offline), set HF_ENDPOINT to a reachable mirror, or drop '{name}' from "
                f"--benchmarks (mini_ceval runs offline).")
    return (f"benchmark '{name}': lm-eval cannot load the task ({text}). Check its YAML (and the data it "
            f"points at), or drop '{name}' from --benchmarks.")


# --------------------------------------------------------------------------- the model


def make_lm(model, tokenizer, batch_size: int | str = "auto", max_batch_size: int = 64):
    """lm-eval's HF backend around a loaded model (see the module docstring)."""
    from lm_eval.models.huggingface import HFLM

    class MiniQwenLM(HFLM):
        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            return format_messages(chat_history, add_generation_prompt)  # the training format, no default system turn

        def get_model_info(self) -> dict:
            # HFLM's asks the Hub for the model's commit (a network call that stalls offline).
            return {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                    "model_dtype": str(self._model.dtype)}

    return MiniQwenLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_batch_size=max_batch_size)


# --------------------------------------------------------------------------- scoring


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _row(name: str, results: dict, n_samples: dict, obj, chance: float | None) -> dict:
    scores = results.get(name, {})
    row = {"task": name, "chance": chance,
           "n": sum(n_samples.get(t.task_name, {}).get("effective", 0) for t in _leaves(obj)),
           "subtasks": len(_leaves(obj))}
    for metric in METRICS:
        row[metric] = _number(scores.get(f"{metric},none"))
        row[f"{metric}_stderr"] = _number(scores.get(f"{metric}_stderr,none"))
    return row


def run_suite(lm, suite: Suite, num_fewshot: int | None = None, limit: int | None = None,
              apply_chat_template: bool = False) -> list[dict]:
    """One row per requested benchmark (a tag gives one row per task) for one model."""
    import lm_eval

    tasks = []
    for obj in suite.objects.values():
        tasks += obj if isinstance(obj, list) else [obj]
        for task in _leaves(obj):
            task.set_config(key="num_fewshot", value=suite.shots[task.task_name])
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=suite.manager, num_fewshot=num_fewshot,
                                  limit=limit, apply_chat_template=apply_chat_template, log_samples=False,
                                  bootstrap_iters=1000)
    results, n_samples = out["results"], out.get("n-samples", {})
    rows = []
    for name in suite.names:
        obj = suite.objects[name]
        if isinstance(obj, list):  # tag: no aggregate in lm-eval, one row per member task
            rows += [_row(t.task_name, results, n_samples, t, chance_level(t, limit)) for t in obj]
        else:
            rows.append(_row(name, results, n_samples, obj, suite.chance[name]))
    shots = out.get("n-shot", {})
    for row in rows:  # a group has no n-shot entry of its own: its tasks share the setting
        leaf = next((t.task_name for t in _leaves(suite.objects.get(row["task"], [])) if t.task_name in shots), None)
        row["num_fewshot"] = shots.get(row["task"], shots.get(leaf))
    return rows
