"""The GRPO stage (mini_qwen_grpo.py): one step on CPU, resume after SIGTERM equal to an uninterrupted run, the
difficulty filter's counts, the KL bad-step guard, and every bad input as one line naming the flag or row."""

import json
import math
import shutil
import sys
import threading
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT
from test_checkpoint import history
from test_long_run import _run_and_signal

import mini_qwen_grpo
from mini_qwen.checkpoint import complete_checkpoints
from mini_qwen.errors import MiniQwenError
from mini_qwen.long_run import GUARD_POLICIES, KL_SPIKE_FLOOR, BadStepGuard

PROMPTS = REPO_ROOT / "mini_data" / "grpo" / "train.jsonl"


@pytest.fixture(scope="module")
def grpo_base(tiny_checkpoint):
    """A few tokens from the tiny model: two prompts, groups of two answers of four tokens."""
    return ["--model_name_or_path", str(tiny_checkpoint), "--data_dir", str(PROMPTS), "--max_prompts", "2",
            "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "4",
            "--max_prompt_length", "64", "--logging_steps", "1", "--difficulty_filter", "false", "--seed", "0",
            "--report_to", "none", "--reward_funcs", "math", "format", "length"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_one_step_on_cpu_logs_rewards_and_kl(grpo_base, tmp_path, one_thread, lora):
    out = tmp_path / "grpo"
    mini_qwen_grpo.main([*grpo_base, "--max_steps", "1", "--output_dir", str(out), "--save_strategy", "no",
                         *(["--use_peft", "true"] if lora else [])])
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"][0]
    # what TRL 1.16 logs and the KL guard / demo / report read (long_run._step_kl reads "kl" and "reward")
    for key in ("loss", "reward", "reward_std", "kl", "rewards/math/mean", "rewards/format/mean",
                "rewards/length/mean", "bad_steps_skipped"):
        assert key in logged, (key, sorted(logged))
    assert logged["rewards/length/mean"] == -1.0  # every 4-token answer hit the 4-token limit
    weights = "adapter_model.safetensors" if lora else "model.safetensors"  # LoRA: the KL reference is the base
    assert (out / weights).is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "run_config.json").read_text())["stage"] == "grpo"


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(grpo_base, tmp_path, capsys, one_thread):
    steps = 5
    argv = [*grpo_base, "--max_prompts", "4", "--max_steps", str(steps), "--save_steps", "1000",
            "--learning_rate", "0.01"]  # large enough for the answers, and so the rewards, to move
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    result = {}
    runner = threading.Thread(target=_run_and_signal, daemon=True, args=(
        [sys.executable, str(REPO_ROOT / "mini_qwen_grpo.py"), *argv, "--output_dir", str(killed)],
        tmp_path / "killed.log", 2, result))
    runner.start()
    mini_qwen_grpo.main([*argv, "--output_dir", str(reference), "--save_strategy", "no"])
    runner.join()
    log = (tmp_path / "killed.log").read_text(errors="replace")
    assert result.get("signalled") and result["returncode"] == 0, log[-3000:]
    saved = complete_checkpoints(str(killed))
    assert len(saved) == 1 and not (killed / "model.safetensors").exists(), log[-3000:]
    step = int(saved[0].name.split("-")[1])
    assert 2 <= step < steps
    capsys.readouterr()
    mini_qwen_grpo.main([*argv, "--output_dir", str(killed), "--resume_from_checkpoint", "auto"])
    assert f"resume: continuing from {saved[0]}" in capsys.readouterr().out
    (ref_steps, ref), (res_steps, res) = history(reference), history(killed)
    assert ref_steps == res_steps == steps
    for n in range(step + 1, steps + 1):  # sampled answers, rewards, KL and loss: the same run
        for key in ("reward", "kl", "loss", "completions/mean_length"):
            assert ref[n][key] == pytest.approx(res[n][key], abs=1e-5), (n, key, ref[n], res[n])


def _rows(n):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"p{i}" for i in range(n)], "answer": ["3"] * n,
                              "row": [f"f.jsonl: row {i}" for i in range(n)]})


def test_difficulty_filter_keeps_prompts_sometimes_right(tmp_path, monkeypatch, capsys):
    assert mini_qwen_grpo.difficulty_counts([[1, 1], [0, 0], [1, 0], [0.5, 1], [0, 0]]) == \
        {"keep": [2, 3], "all right": 1, "all wrong": 2}
    # prompt i's sampled answers: p0 always right, p1 never, p2 and p3 sometimes
    answers = {"p0": ["答案：3"] * 3, "p1": ["答案：4"] * 3, "p2": ["3", "4", "5"], "p3": ["答案：2", "Answer: 3", "x"]}
    monkeypatch.setattr(mini_qwen_grpo, "sample_answers", lambda m, t, prompts, *a: [answers[p] for p in prompts])
    data = SimpleNamespace(filter_samples=3, filter_reward="math")
    training = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=None, max_completion_length=8,
                               process_index=0, world_size=1, seed=0, temperature=1.0)
    kept = mini_qwen_grpo.difficulty_filter(_rows(4), None, None, data, training)
    assert kept["prompt"] == ["p2", "p3"]
    assert "difficulty filter: kept 2 of 4 prompts (1 all right, 1 all wrong in 3 samples by 'math')" in \
        capsys.readouterr().out
    kept_rows = json.loads((tmp_path / mini_qwen_grpo.FILTER_FILE).read_text())["rows"]
    assert kept_rows == ["f.jsonl: row 2", "f.jsonl: row 3"]
    # a resumed run keeps the same prompts without sampling again
    monkeypatch.setattr(mini_qwen_grpo, "sample_answers", None)
    training.resume_from_checkpoint = "auto"
    assert mini_qwen_grpo.difficulty_filter(_rows(4), None, None, data, training)["prompt"] == ["p2", "p3"]
    # none kept: one message saying why and what to do
    training.resume_from_checkpoint, training.output_dir = None, str(tmp_path / "other")
    monkeypatch.setattr(mini_qwen_grpo, "sample_answers", lambda m, t, prompts, *a: [["x"] * 3 for _ in prompts])
    too_few = SimpleNamespace(generation_batch_size=8, num_generations=2, per_device_train_batch_size=4, world_size=2,
                              steps_per_generation=1)
    mini_qwen_grpo.check_enough_prompts(4, too_few)
    with pytest.raises(MiniQwenError, match=r"^only 3 prompt\(s\) to train on, fewer than the 4 distinct prompts"):
        mini_qwen_grpo.check_enough_prompts(3, too_few)  # TRL would train 0 steps and save the start as a result
    with pytest.raises(MiniQwenError, match=r"^difficulty filter: no prompt kept: the starting model never answers "
                                            r"them right by 'math' in 3 samples.*--difficulty_filter false"):
        mini_qwen_grpo.difficulty_filter(_rows(4), None, None, data, training)


def test_the_kl_guard_skips_non_finite_steps_and_kl_blowups_not_early_growth():
    step_kl = GUARD_POLICIES["kl"][0]
    trainer = SimpleNamespace(_metrics={"train": {"reward": [0.5], "kl": [0.02]}})
    assert step_kl(trainer, torch.tensor(-0.3)).item() == pytest.approx(0.02)  # a negative loss is fine
    trainer._metrics["train"]["reward"].append(math.nan)
    assert math.isnan(step_kl(trainer, torch.tensor(0.1)).item())
    assert math.isnan(step_kl(SimpleNamespace(_metrics={"train": {}}), torch.tensor(math.inf)).item())
    guard = BadStepGuard(3.0, 100, 20, "KL", KL_SPIKE_FLOOR)
    for kl in [1e-5 * (i + 1) for i in range(10)]:
        assert not guard.decide(kl)
    assert not guard.decide(0.01)  # 200 x the median, but KL grows as the policy learns: below the floor
    assert guard.decide(0.5) and guard.last_reason.startswith("KL 0.5 > 3 x median")
    assert guard.decide(math.nan) and guard.last_reason == "KL nan"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", ["no answer in a row", "no answer column", "unknown reward", "one generation",
                                  "longer than the context", "pt model", "no chat template", "reward raises"])
def test_bad_input_is_one_line_naming_the_flag_or_row(case, grpo_base, tiny_checkpoint, tmp_path):
    argv = [*grpo_base, "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--save_strategy", "no"]
    if case == "no answer in a row":
        data = _jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?", "answer": ""}])
        argv += ["--data_dir", str(data), "--on_bad_rows", "error"]
        expected = rf"^{data}: row 1: no reference answer\. Fix or remove the row"
    elif case == "no answer column":
        data = _jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1?", "solution": "2"}])
        argv += ["--data_dir", str(data)]
        expected = rf"^{data}: missing column 'answer' .*map a column with --columns NAME=COLUMN"
    elif case == "unknown reward":
        argv += ["--reward_funcs", "math", "corect"]
        expected = r"^--reward_funcs: unknown reward 'corect'; known: format, length, math"
    elif case == "one generation":
        argv += ["--num_generations", "1"]
        expected = r"^--num_generations 1 is out of range: allowed at least 2\."
    elif case == "longer than the context":
        argv += ["--max_completion_length", "40000"]
        expected = r"^--max_prompt_length \+ --max_completion_length = 40064 tokens is longer than the model's context"
    elif case in ("pt model", "no chat template"):
        start = tmp_path / "start"
        shutil.copytree(tiny_checkpoint, start)
        if case == "pt model":
            (start / "run_config.json").write_text(json.dumps({"stage": "pt"}))
            expected = rf"^--model_name_or_path {start} is a PT model \(its run_config.json says stage 'pt'\)"
        else:
            (start / "chat_template.jinja").unlink()
            config = json.loads((start / "tokenizer_config.json").read_text())
            config.pop("chat_template", None)
            (start / "tokenizer_config.json").write_text(json.dumps(config))
            expected = rf"^--model_name_or_path {start}: its tokenizer has no chat template"
        argv += ["--model_name_or_path", str(start)]
    else:
        from mini_qwen.rewards import REWARDS, reward

        @reward("test_raises")
        def raises(completion, answer, **_):
            return int(answer) / 0
        argv += ["--reward_funcs", "test_raises"]
        expected = rf"^reward 'test_raises' failed on row {PROMPTS}: row 0 \(ZeroDivisionError: division by zero\)"
    try:
        with pytest.raises(MiniQwenError, match=expected):
            mini_qwen_grpo.main(argv)
    finally:
        if case == "reward raises":
            REWARDS.pop("test_raises")


def test_the_eval_report_shows_held_out_verifiable_accuracy(tiny_checkpoint, tmp_path, one_thread):
    import mini_qwen_eval
    from mini_qwen.rewards.evaluate import load_verifiable

    heldout = _jsonl(tmp_path / "heldout.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?", "answer": ""},
                                                  {"prompt": "三加四？", "answer": "七"}])
    rows = [r["row"] for r in load_verifiable(str(heldout))]
    assert rows == [f"{heldout}: row 0", f"{heldout}: row 2"]  # the row without an answer is left out
    report = mini_qwen_eval.main([f"sft={tiny_checkpoint}", "--prompts", "hi", "--max_new_tokens", "2",
                                  "--heldout", "none", "--verifiable", str(heldout), "--report_dir", str(tmp_path)])
    scores = report["checkpoints"][0]["verifiable"]
    assert scores["n"] == 2 and 0 <= scores["accuracy"] <= 1 and set(scores["rewards"]) == {"math", "format"}
    markdown = (tmp_path / "report.md").read_text()
    assert "## Verifiable prompts" in markdown and "| sft | " in markdown.split("## Verifiable prompts")[1]
