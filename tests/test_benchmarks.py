"""lm-evaluation-harness benchmarks (mini_qwen.benchmarks) and the batch report (mini_qwen.report), offline.

Everything runs on the project's own task, mini_qwen/tasks/mini_ceval (20 questions in C-Eval's shape):
a stub fed the gold answers must score 1.0, a random one near the random-guess level, and the tiny
model the whole path of `mini_qwen_eval.py --benchmarks` (about a minute on 2 CPU cores).
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI_CEVAL = REPO_ROOT / "mini_qwen" / "tasks" / "mini_ceval"

pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")


def _stub_lm(choose):
    """An lm-eval LM whose log-likelihood of each choice is `choose(doc, choice)`; no model behind it."""
    from lm_eval.api.model import LM

    class Stub(LM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return [(choose(r.doc, r.args[1].strip()), False) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

    return Stub()


@pytest.fixture(scope="module")
def suite():
    from mini_qwen.benchmarks import load_suite

    return load_suite(["mini_ceval"])


def test_mini_ceval_data_is_what_the_script_writes(tmp_path):
    """The shipped jsonl files are the generator's output, 20 + 5 questions, gold letters A-D evenly."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_mini_ceval", MINI_CEVAL / "make_mini_ceval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    val, dev = module.rows(module.VAL), module.rows(module.DEV)
    shipped = [json.loads(line) for line in (MINI_CEVAL / "mini_ceval_val.jsonl").read_text("utf-8").splitlines()]
    assert shipped == val and len(val) == 20 and len(dev) == 5
    assert sorted(r["answer"] for r in val) == sorted("ABCD" * 5)
    for r in val:  # the gold option holds the right answer, written first in the generator's table
        assert r[r["answer"]] == module.VAL[r["id"]][1]


def test_gold_stub_scores_one_and_random_stub_scores_chance(suite):
    from mini_qwen.benchmarks import run_suite

    assert suite.chance == {"mini_ceval": 0.25}
    (row,) = run_suite(_stub_lm(lambda doc, choice: 0.0 if choice == doc["answer"] else -5.0), suite)
    assert (row["task"], row["n"], row["acc"], row["acc_stderr"]) == ("mini_ceval", 20, 1.0, 0.0)
    assert row["num_fewshot"] == 0 and row["chance"] == 0.25

    scores = []
    for seed in range(8):
        rng = random.Random(seed)
        (row,) = run_suite(_stub_lm(lambda doc, choice, rng=rng: rng.random()), suite)
        assert 0.0 <= row["acc"] <= 1.0 and row["acc_stderr"] > 0
        scores.append(row["acc"])
    mean = sum(scores) / len(scores)  # 160 guesses: standard error ~0.034
    assert abs(mean - 0.25) < 0.12, scores

    # --limit and --num_fewshot reach lm-eval, and a later run is not stuck with an earlier run's setting
    (row,) = run_suite(_stub_lm(lambda doc, choice: 0.0 if choice == doc["answer"] else -5.0), suite,
                       num_fewshot=2, limit=5)
    assert (row["n"], row["num_fewshot"], row["acc"]) == (5, 2, 1.0)
    (row,) = run_suite(_stub_lm(lambda doc, choice: 0.0), suite)
    assert (row["n"], row["num_fewshot"]) == (20, 0)


def test_chat_text_is_the_training_format(tiny_checkpoint):
    from mini_qwen.benchmarks import make_lm
    from mini_qwen.chat import format_messages as chat_text
    from mini_qwen.chat import format_prompt
    from mini_qwen.generate import load_for_inference

    lm = make_lm(*load_for_inference(tiny_checkpoint, device="cpu"), batch_size=2)
    # lm-eval's HF backend renders chat prompts our way: no "You are Qwen..." system turn the model never saw
    assert lm.apply_chat_template([{"role": "user", "content": "q"}]) == format_prompt("q")
    assert lm.get_model_info()["model_num_parameters"] > 0  # local, no Hub lookup of the model's commit

    assert chat_text([{"role": "user", "content": "李白是谁？"}]) == format_prompt("李白是谁？")
    assert chat_text([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]) == format_prompt("q", "s")
    # the open assistant turn lm-eval asks for when the answer prefix is part of the prompt
    assert chat_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}], False) == \
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nA"


def test_unknown_benchmark_is_one_clear_error():
    from mini_qwen.benchmarks import load_suite, parse_names
    from mini_qwen.errors import MiniQwenError

    with pytest.raises(MiniQwenError, match=r"unknown benchmark 'mini_cevl'.*Did you mean mini_ceval"):
        load_suite(["mini_cevl"])
    with pytest.raises(MiniQwenError, match="names mmlu twice"):
        parse_names("mmlu, mmlu")
    with pytest.raises(MiniQwenError, match="is not a folder"):
        load_suite(["mini_ceval"], ["/nonexistent/tasks"])


def _quiz_task(folder: Path) -> Path:
    """A user's own lm-eval task (for --tasks_dir): 8 yes/no questions in a jsonl next to its YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"q": f"{a} 大于 {b} 吗？", "label": int(a > b)} for a, b in
            [(3, 1), (1, 3), (7, 2), (2, 9), (5, 4), (4, 5), (9, 8), (0, 6)]]
    data = folder / "quiz.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    (folder / "my_quiz.yaml").write_text(f"""task: my_quiz
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}\\n答案："
doc_to_choice: ["否", "是"]
doc_to_target: label
metric_list:
  - metric: acc
""", encoding="utf-8")
    return folder


def test_benchmark_report_end_to_end(tiny_checkpoint, tmp_path, capsys):
    """pt (raw text) and sft (chat template) on mini_ceval and a --tasks_dir task: numbers, table, plot,
    degeneration under greedy and sampled decoding."""
    import shutil

    import mini_qwen_eval

    shutil.copytree(tiny_checkpoint, tmp_path / "pt")
    shutil.copytree(tiny_checkpoint, tmp_path / "sft")
    tasks = _quiz_task(tmp_path / "my_tasks")
    report_dir = tmp_path / "eval"
    mini_qwen_eval.main([str(tmp_path / "pt"), str(tmp_path / "sft"), "--benchmarks", "mini_ceval,my_quiz",
                         "--tasks_dir", str(tasks), "--prompts", "李白是谁？", "who are you?", "--max_new_tokens", "6",
                         "--heldout", "none", "--bench_batch_size", "4", "--report_dir", str(report_dir)])
    out = capsys.readouterr().out
    assert "[sft] mini_ceval: acc" in out and "random guess 0.250" in out

    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert report["benchmarks"]["tasks"] == ["mini_ceval", "my_quiz"]
    assert report["benchmarks"]["chance"] == {"mini_ceval": 0.25, "my_quiz": 0.5}
    by_label = {c["label"]: c for c in report["checkpoints"]}
    for label in ("pt", "sft"):
        rows = {r["task"]: r for r in by_label[label]["benchmarks"]}
        assert rows["mini_ceval"]["n"] == 20 and rows["my_quiz"]["n"] == 8
        for r in rows.values():
            assert 0.0 <= r["acc"] <= 1.0 and r["acc_stderr"] is not None
        assert set(by_label[label]["degeneration"]) == {"greedy", "sampled"}
        for stats in by_label[label]["degeneration"].values():
            assert stats["answers"] == 2 and stats["stop_rate"] + stats["max_tokens_rate"] == pytest.approx(1.0)
            assert 0 <= stats["mean_tokens"] <= 6 and 0.0 <= stats["repetition_rate"] <= 1.0
    assert by_label["pt"]["degeneration"]["greedy"]["stop_rate"] == by_label["pt"]["stop_rate"]  # greedy = primary
    assert by_label["pt"]["template"] == "pt" and by_label["sft"]["template"] == "chat"

    md = (report_dir / "report.md").read_text(encoding="utf-8")
    assert "## Benchmarks (lm-evaluation-harness)" in md and "pt: raw text, no chat template" in md
    assert "sft: with the chat template" in md
    assert "| mini_ceval | 20 | 0.250 |" in md and "| my_quiz | 8 | 0.500 |" in md
    assert "## Degeneration" in md and "| greedy | ended with" in md and "| sampled | distinct-2 |" in md
    png = report_dir / "report.png"
    assert report["plot"] == "report.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_dataset_offline_names_the_task(tiny_checkpoint, tmp_path):
    """A task whose dataset is on the Hub, with no network: one line naming the task, exit 2, no traceback."""
    folder = tmp_path / "hub_tasks"
    folder.mkdir()
    (folder / "hub_quiz.yaml").write_text("""task: hub_quiz
dataset_path: mini-qwen-tests/no-such-dataset
test_split: test
output_type: multiple_choice
doc_to_text: "{{q}}"
doc_to_choice: ["A", "B"]
doc_to_target: 0
metric_list:
  - metric: acc
""", encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONIOENCODING="utf-8",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "mini_qwen_eval.py"), str(tiny_checkpoint),
                           "--benchmarks", "hub_quiz", "--tasks_dir", str(folder), "--heldout", "none"],
                          capture_output=True, text=True, encoding="utf-8", cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: benchmark 'hub_quiz': its dataset cannot be loaded")
    assert "network access" in errors[0] and "--benchmarks" in errors[0]
    assert "loading" not in proc.stdout.split("benchmark hub_quiz: loading its dataset")[-1]  # no model was loaded


def test_degeneration_flags_a_later_stage_that_is_worse():
    from mini_qwen.report import degeneration_stats, regressions, render_markdown

    def answers(stopped, rep, d2, tokens):
        return [{"stopped": s, "repetition_rate": rep, "distinct_2": d2, "tokens": tokens, "text": "x"}
                for s in stopped]

    pt = degeneration_stats(answers([True, True, False, False], 0.1, 0.9, 10))
    sft = degeneration_stats(answers([True, True, True, False], 0.5, 0.9, 30))  # stops more, repeats more
    assert pt["stop_rate"] == 0.5 and sft["stop_rate"] == 0.75 and sft["mean_tokens"] == 30
    ckpts = [{"label": "pt", "degeneration": {"greedy": pt}}, {"label": "sft", "degeneration": {"greedy": sft}}]
    flags = regressions(ckpts)
    assert [(f["checkpoint"], f["metric"], f["decoding"]) for f in flags] == [("sft", "repetition_rate", "greedy")]
    assert regressions(ckpts[::-1])[0]["metric"] == "stop_rate"  # the other way round: stopping less is worse

    report = {"created": "now", "heldout": "none", "prompts": ["q"], "benchmarks": None, "regressions": flags,
              "decodings": {"greedy": {}}, "plot": None,
              "generation": {"max_new_tokens": 8, "do_sample": False, "temperature": 0.7, "top_p": 0.9,
                             "repetition_penalty": 1.0, "seed": 42},
              "checkpoints": [{**c, "path": c["label"], "template": "chat", "perplexity": None, "training": None,
                               "mean_repetition_rate": 0.1, "mean_distinct_2": 0.9, "stop_rate": 0.5,
                               "answers": [{"text": "x", "tokens": 1, "stopped": True, "repetition_rate": 0.0}]}
                              for c in ckpts]}
    md = render_markdown(report)
    assert "| greedy | 4-gram repetition rate | 0.100 | 0.500 ▼ |" in md
    assert "| greedy | ended with &lt;\\|im_end\\|&gt; | 50% | 75% |" in md


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_batch_size_on_gpu(tiny_checkpoint, tmp_path):
    """On a GPU the benchmark batch size is lm-eval's automatic search, with the model in bf16."""
    import mini_qwen_eval

    report = mini_qwen_eval.main([f"sft={tiny_checkpoint}", "--benchmarks", "mini_ceval", "--prompts", "李白是谁？",
                                  "--max_new_tokens", "4", "--heldout", "none", "--report_dir", str(tmp_path)])
    (row,) = report["checkpoints"][0]["benchmarks"]
    assert report["benchmarks"]["batch_size"] == "auto" and row["n"] == 20 and 0.0 <= row["acc"] <= 1.0
