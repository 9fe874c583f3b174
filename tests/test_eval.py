"""mini_qwen.generate and mini_qwen_eval.py on a tiny random checkpoint (CPU, a minute at most)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, built_tokenizer_dir):
    """results/pt and results/sft look-alikes (the same tiny random model) and one without a tokenizer."""
    from transformers import AutoModelForCausalLM

    from mini_qwen.model import PresetArguments, build_config
    from mini_qwen.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("results")
    tokenizer = load_tokenizer(built_tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset="tiny")))
    for name in ("pt", "sft"):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    model.save_pretrained(root / "no_tokenizer")
    state = {"log_history": [{"step": 1, "loss": 12.0}, {"step": 2, "loss": 9.5, "rewards/accuracies": 0.75,
                                                         "rewards/margins": 0.4}]}
    (root / "sft" / "trainer_state.json").write_text(json.dumps(state))
    return root


@pytest.fixture(scope="module")
def loaded(checkpoints):
    from mini_qwen.generate import load_for_inference

    return load_for_inference(checkpoints / "sft")


def test_repetition_rate_and_distinct():
    from mini_qwen.generate import distinct_n, repetition_rate

    assert repetition_rate(list(range(50)), 4) == 0.0
    assert distinct_n(list(range(50)), 2) == 1.0
    loop = [7, 8, 9] * 40  # "甜品,甜品,甜品,..."
    assert repetition_rate(loop, 4) > 0.95
    assert distinct_n(loop, 2) < 0.05
    assert repetition_rate([1, 2, 3], 4) == 0.0 and distinct_n([], 2) == 0.0
    # one repeated 4-gram out of five: 1 2 3 4 | 1 2 3 4
    assert repetition_rate([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(1 / 5)


def test_perplexity_is_exp_of_mean_loss(loaded):
    from mini_qwen.generate import perplexity

    model, tokenizer = loaded
    texts = ["李白是唐代著名的浪漫主义诗人，被后人誉为诗仙。", "Mung bean cake is a sweet pastry eaten in summer.",
             "短句。"]
    total = count = 0
    for text in texts:  # each text alone, no padding: the reference
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        total += loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    ppl = perplexity(model, tokenizer, texts, max_length=512, batch_size=2)  # batched with padding
    assert math.isfinite(ppl)
    # fp32 on CPU; on a GPU the model runs in bf16, where batching changes the rounding
    assert ppl == pytest.approx(math.exp(total / count), rel=1e-4 if model.dtype == torch.float32 else 2e-2)


def test_generate_stops_and_strips(loaded):
    from mini_qwen.generate import build_input, generate, generate_tokens

    model, tokenizer = loaded
    assert build_input("李白是谁？", "pt") == "李白是谁？"
    assert build_input("李白是谁？", "chat") == "<|im_start|>user\n李白是谁？<|im_end|>\n<|im_start|>assistant\n"
    ids, stopped = generate_tokens(model, tokenizer, build_input("绿豆糕", "chat"), max_new_tokens=8)
    assert len(ids) <= 8 and 151645 not in ids
    assert len(ids) == 8 or stopped
    text = generate(model, tokenizer, "hello", max_new_tokens=4)
    assert "<|im_end|>" not in text and isinstance(text, str)


def test_batch_report(checkpoints, tmp_path, capsys):
    import mini_qwen_eval

    heldout = tmp_path / "heldout.txt"
    heldout.write_text("李白是唐代诗人。\n\nThe hotel serves breakfast from seven.\n", encoding="utf-8")
    report_dir = tmp_path / "eval"
    prompts = ["李白是谁？", "who are you?"]
    mini_qwen_eval.main([f"pt={checkpoints / 'pt'}", str(checkpoints / "sft"), "--prompts", *prompts,
                         "--max_new_tokens", "8", "--heldout", str(heldout), "--report_dir", str(report_dir)])
    out = capsys.readouterr().out
    assert "=== 用户：李白是谁？" in out and "[pt | pt]" in out and "[sft | chat]" in out

    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert report["prompts"] == prompts and report["generation"]["do_sample"] is False
    by_label = {c["label"]: c for c in report["checkpoints"]}
    assert set(by_label) == {"pt", "sft"}
    assert by_label["pt"]["template"] == "pt" and by_label["sft"]["template"] == "chat"
    for c in by_label.values():
        assert len(c["answers"]) == len(prompts)
        assert math.isfinite(c["perplexity"]) and c["heldout_tokens"] > 0
        assert 0.0 <= c["mean_repetition_rate"] <= 1.0 and 0.0 <= c["mean_distinct_2"] <= 1.0
    assert by_label["pt"]["perplexity"] == by_label["sft"]["perplexity"]  # same weights, same text
    training = by_label["sft"]["training"]
    assert (training["first_loss"], training["last_loss"]) == (12.0, 9.5)
    assert training["rewards/accuracies"] == 0.75 and training["rewards/margins"] == 0.4
    assert by_label["pt"]["training"] is None

    md = (report_dir / "report.md").read_text(encoding="utf-8")
    for prompt in prompts:
        assert prompt in md
    assert "| pt |" in md and "| sft |" in md and "12.000 → 9.500" in md
    assert md.count("**pt**") == len(prompts) and md.count("**sft**") == len(prompts)


def test_checkpoint_names_pick_templates():
    from mini_qwen.cli import parse_args
    from mini_qwen.generate import is_pt_name, named_checkpoints
    from mini_qwen_eval import EvalArguments

    def parse_arguments(argv):
        return parse_args((EvalArguments,), argv, positional="checkpoints")[0]

    assert is_pt_name("pt") and is_pt_name("pt3") and is_pt_name("mini_qwen_pt")
    assert not any(is_pt_name(n) for n in ("sft", "dpo", "adapter", "script", "checkpoint-7730"))
    specs = named_checkpoints(["results/pt/checkpoint-100", "b=results/sft"], "auto")
    assert [(c.label, c.template) for c in specs] == [("pt/checkpoint-100", "pt"), ("b", "chat")]
    # positional checkpoints between flags and after --checkpoints all count, in order
    args = parse_arguments(["a", "--max_new_tokens", "8", "b", "--prompts", "x", "y", "--checkpoints", "c"])
    assert args.checkpoints == ["a", "b", "c"] and args.prompts == ["x", "y"] and args.max_new_tokens == 8
    assert parse_arguments(["a", "--do_sample"]).do_sample is True
    assert parse_arguments(["a", "--do_sample", "false", "--temperature", "-0"]).do_sample is False
    assert parse_arguments(["a", "--tasks_dir", "x", "--tasks_dir", "y"]).tasks_dir == ["x", "y"]


@pytest.mark.parametrize("argv, message", [
    (["a", "--mode", "chatty"],
     "argument --mode: invalid choice: 'chatty' (choose from 'auto', 'interactive', 'batch')"),
    (["a", "--template", "raw"], "invalid choice: 'raw'"),
    (["a", "--degeneration", "all"], "invalid choice: 'all'"),
    (["a", "--max_new_token", "8"], "did you mean '--max_new_tokens'"),
    (["a", "--max_new_tokens", "eight"], "argument --max_new_tokens: invalid int value: 'eight'"),
    (["a", "--do_sample", "maybe"], "argument --do_sample"),
])
def test_bad_flags_are_refused_once(argv, message, capsys):
    """A typo'd flag or value: one `error:` line naming the flag and the allowed values, exit 2, no usage dump."""
    from mini_qwen.errors import run_main
    from mini_qwen_eval import main

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0]
    assert "usage:" not in captured.err + captured.out


def _start(*args):
    env = dict(os.environ, PYTHONIOENCODING="utf-8", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "mini_qwen_eval.py"), *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", cwd=REPO_ROOT, env=env)


@pytest.fixture(scope="module")
def cli_runs(checkpoints):
    """Both terminal runs at once (most of their time is importing torch): {name: (exit code, stdout, stderr)}."""
    runs = {
        # An answer, an empty line (a hint, no answer), a typed backslash-n (a real newline), exit.
        "interactive": (_start(checkpoints / "sft", "--max_new_tokens", "8", "--seed", "0"),
                        "李白是谁？\n\nline one\\nline two\nexit\n"),
        "unknown": (_start(checkpoints / "nope", "--max_new_tokens", "8"), ""),
    }
    results = {}
    for name, (proc, stdin) in runs.items():
        out, err = proc.communicate(stdin, timeout=300)
        results[name] = (proc.returncode, out, err)
    return results


def test_interactive_session(cli_runs):
    code, out, err = cli_runs["interactive"]
    assert code == 0, err
    assert "Traceback" not in err
    assert out.count("助手：") == 2  # two questions answered, the empty line was not
    assert out.count("请输入问题") == 1
    assert "line one\nline two" in out  # echoed as read: the typed \n became a newline
    assert out.count("用户：") == 4


def test_unknown_checkpoint_is_one_clear_error(cli_runs):
    code, _, err = cli_runs["unknown"]
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and "warning" not in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown checkpoint path")
    assert "sft/" in lines[0]  # lists what is there


@pytest.mark.parametrize("args, message", [
    (["no_tokenizer"], "has no tokenizer files"),
    (["pt", "--prompts", " ", "--heldout", "none"], "no non-empty prompt"),
])
def test_cli_errors_exit_2(checkpoints, capsys, args, message):
    from mini_qwen.errors import run_main
    from mini_qwen_eval import main

    argv = [str(checkpoints / args[0]) if i == 0 else a for i, a in enumerate(args)]
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv + ["--max_new_tokens", "8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if message == "has no tokenizer files":
        assert "--tokenizer_path models/tokenizer" in err
