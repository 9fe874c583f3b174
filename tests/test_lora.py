"""LoRA (mini_qwen/lora.py, --use_peft true) on the tiny preset and mini_data on CPU:

- SFT trains only the adapter and saves it in peft's format with the tokenizer and the absolute base path;
  eval, serve and the benchmarks load the folder as base + adapter.
- utils/merge_lora.py writes a full checkpoint whose logits equal the adapter model's (1e-4, fp32), with the
  tied embeddings still one tensor.
- DPO with an adapter keeps no reference model: the reference is the same model with the adapter disabled.
- SIGTERM saves a complete adapter checkpoint; resuming it ends like an uninterrupted run; a resume with
  another adapter shape is refused (run_config.json); a NaN step leaves the adapter and AdamW untouched.
- Bad input: an adapter where a full checkpoint is needed (and the reverse), LoRA flags without --use_peft,
  an unknown target module, 4-bit without CUDA, an unwritable or taken --out, a missing base: one message
  each, nothing written.
"""

import json
import math
import subprocess
import sys
import threading

import pytest
import torch
from conftest import MINI_DATA as MINI
from conftest import REPO_ROOT, error_lines
from safetensors import safe_open
from test_checkpoint import history
from test_long_run import WeightWatch, _run_and_signal, inject

from mini_qwen.checkpoint import complete_checkpoints
from mini_qwen.errors import MiniQwenError, run_main

MERGE = REPO_ROOT / "utils" / "merge_lora.py"


def sft_lora_argv(base, *extra):
    return ["--model_name_or_path", str(base), "--data_dir", str(MINI / "sft"), "--max_length", "64",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
            "--seed", "0", "--report_to", "none", "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
            "--lora_dropout", "0", "--learning_rate", "0.01", "--warmup_steps", "0", *extra]


def merge(argv):
    """utils/merge_lora.py's main, in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_lora", MERGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, tiny_checkpoint):
    """An adapter trained 4 SFT steps on the tiny checkpoint (only the q_proj and v_proj layers)."""
    import mini_qwen_sft

    out = tmp_path_factory.mktemp("sft_lora") / "adapter"
    mini_qwen_sft.main(sft_lora_argv(tiny_checkpoint, "--max_steps", "4", "--save_strategy", "no",
                                     "--lora_target_modules", "q_proj", "v_proj", "--output_dir", str(out)))
    return out


def logits_of(model, tokenizer):
    ids = tokenizer("<|im_start|>user\n李白是谁？<|im_end|>\n<|im_start|>assistant\n李白", return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=ids["input_ids"]).logits.float()


# --------------------------------------------------------------------------- train, save, load, merge


def test_sft_saves_a_peft_adapter_with_tokenizer_and_base_path(sft_adapter, tiny_checkpoint):
    names = {p.name for p in sft_adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "trainer_state.json",
            "run_config.json"} <= names
    assert "model.safetensors" not in names and "config.json" not in names  # the base is not copied
    config = json.loads((sft_adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_checkpoint.resolve())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 4
    with safe_open(str(sft_adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        lora_b = [f.get_tensor(k) for k in keys if "lora_B" in k]
    assert keys and all("lora_" in k for k in keys)  # adapter weights only
    assert len(lora_b) == 2 * 4 and all(b.abs().max() > 0 for b in lora_b)  # B starts at 0: it trained
    run = json.loads((sft_adapter / "run_config.json").read_text())
    assert run["arguments"]["use_peft"] is True and run["arguments"]["lora_r"] == 4


def test_merge_gives_the_adapter_logits_and_keeps_embeddings_tied(sft_adapter, tiny_checkpoint, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mini_qwen.generate import load_for_inference
    from mini_qwen.tokenizer import load_tokenizer

    out = tmp_path / "merged"
    merge([str(sft_adapter), "--out", str(out)])
    assert "tied embeddings kept tied" in capsys.readouterr().out
    tokenizer = load_tokenizer(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    base_logits = logits_of(base, tokenizer)
    adapter = PeftModel.from_pretrained(base, str(sft_adapter)).eval()  # unmerged: base + B @ A at run time
    adapter_logits = logits_of(adapter, tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    merged_logits = logits_of(merged, tokenizer)
    assert (adapter_logits - base_logits).abs().max() > 1e-2  # the adapter changes the answer...
    assert (merged_logits - adapter_logits).abs().max() < 1e-4  # ...and the merged model gives the same logits
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # one tensor on disk, as in the base
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert (out / "tokenizer.json").is_file() and (out / "trainer_state.json").is_file()

    # eval / serve / benchmarks: the adapter folder loads as base + adapter, the same model
    model, _ = load_for_inference(sft_adapter, device="cpu")
    assert (logits_of(model, tokenizer) - adapter_logits).abs().max() < 1e-4


def test_serve_and_eval_take_an_adapter_folder(sft_adapter, tmp_path, capsys):
    import mini_qwen_eval
    from mini_qwen.serve.engine import load_slots

    slots = load_slots([f"lora={sft_adapter}"], log=lambda *a: None)
    assert slots["lora"].template == "chat" and slots["lora"].context == 4096
    out = tmp_path / "eval"
    mini_qwen_eval.main([str(sft_adapter), "--prompts", "你好", "--max_new_tokens", "4", "--heldout_docs", "1",
                         "--ppl_max_length", "16", "--benchmarks", "mini_ceval", "--limit", "2",
                         "--bench_batch_size", "2", "--report_dir", str(out)])
    report = json.loads((out / "report.json").read_text())
    row = report["checkpoints"][0]
    assert row["path"] == str(sft_adapter) and row["training"]["global_step"] == 4  # the adapter's own history
    assert row["benchmarks"][0]["task"] == "mini_ceval" and row["benchmarks"][0]["n"] == 2  # lm-eval scored it


def test_dpo_reference_is_the_adapter_disabled_model(tiny_checkpoint, tmp_path):
    from accelerate.utils import is_peft_model
    from transformers import AutoModelForCausalLM

    import mini_qwen_dpo
    from mini_qwen.tokenizer import load_tokenizer

    out = tmp_path / "dpo_lora"
    trainer = mini_qwen_dpo.main([
        "--model_name_or_path", str(tiny_checkpoint), "--data_dir", str(MINI / "dpo"), "--output_dir", str(out),
        "--max_length", "64", "--max_prompt_length", "32", "--max_pairs", "2", "--max_steps", "2",
        "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--learning_rate", "0.01", "--warmup_steps", "0",
        "--pad_to_multiple_of", "none", "--use_peft", "true", "--lora_r", "4", "--seed", "0"])
    assert trainer.ref_model is None and is_peft_model(trainer.model)  # no second model in memory
    steps = [e for e in trainer.state.log_history if "loss" in e]
    assert abs(steps[0]["loss"] - math.log(2)) < 1e-4  # step 1: a zero adapter scores like its reference
    tokenizer = load_tokenizer(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    trained = trainer.model.eval()
    with trained.disable_adapter():  # what TRL scores the reference with (use_adapter(model, None))
        assert (logits_of(trained, tokenizer) - logits_of(base, tokenizer)).abs().max() == 0
    assert (logits_of(trained, tokenizer) - logits_of(base, tokenizer)).abs().max() > 0  # the adapter moved
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()


# --------------------------------------------------------------------------- long runs with adapters


def test_a_nan_step_leaves_the_adapter_untouched(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import mini_qwen_sft
    from mini_qwen.long_run import LongRunMixin

    inject(monkeypatch, {3: (float("nan"), 0)})
    watch = WeightWatch.on_every(monkeypatch, LongRunMixin)
    out = tmp_path / "run"
    mini_qwen_sft.main(sft_lora_argv(tiny_checkpoint, "--max_steps", "4", "--save_strategy", "no",
                                     "--output_dir", str(out)))
    printed = capsys.readouterr().out
    assert "long run: bad step 3 (loss nan)" in printed and "weights and optimizer untouched" in printed
    assert watch.changed[3] == (False, 0), watch.changed  # adapter weights and AdamW moments untouched
    assert all(watch.changed[s] == (True, 1) for s in (1, 2, 4)), watch.changed
    last = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e][-1]
    assert last["bad_steps_skipped"] == 1 and math.isfinite(last["loss"])


@pytest.mark.slow
def test_sigterm_saves_an_adapter_checkpoint_and_resume_matches(tiny_checkpoint, tmp_path, capsys, one_thread):  # noqa: F811
    import mini_qwen_sft

    steps = 8
    argv = sft_lora_argv(tiny_checkpoint, "--max_steps", str(steps), "--save_steps", "1000")
    killed, log, result = tmp_path / "killed", tmp_path / "killed.log", {}
    runner = threading.Thread(target=_run_and_signal, daemon=True, args=(
        [sys.executable, str(REPO_ROOT / "mini_qwen_sft.py"), *argv, "--output_dir", str(killed)], log, 3, result))
    runner.start()
    reference = tmp_path / "reference"  # the uninterrupted run, in this process meanwhile
    mini_qwen_sft.main([*argv, "--output_dir", str(reference), "--save_strategy", "no"])
    runner.join()
    text = log.read_text(errors="replace")
    assert result.get("signalled") and result["returncode"] == 0, text[-3000:]
    saved = complete_checkpoints(str(killed))
    assert len(saved) == 1, text[-3000:]
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "trainer_state.json"} <= \
        {p.name for p in saved[0].iterdir()}
    assert not (killed / "adapter_model.safetensors").exists(), "a stopped run must not look finished"
    step = int(saved[0].name.split("-")[1])

    # Another adapter shape is another run: refused before any model loads.
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(mini_qwen_sft.main, [*argv, "--output_dir", str(killed), "--resume_from_checkpoint", "auto",
                                      "--lora_r", "8"])
    assert "lora_r: 4 -> 8" in error_lines(capsys)[0]

    mini_qwen_sft.main([*argv, "--output_dir", str(killed), "--resume_from_checkpoint", "auto"])
    assert f"resume: continuing from {saved[0]}" in capsys.readouterr().out
    assert (killed / "adapter_model.safetensors").is_file()
    ref_steps, ref = history(reference)
    res_steps, res = history(killed)
    assert ref_steps == res_steps == steps and sorted(res) == list(range(1, steps + 1))
    for n in range(step + 1, steps + 1):  # the steps the resumed process computed
        assert abs(ref[n]["loss"] - res[n]["loss"]) < 1e-4, (n, ref[n], res[n])
        assert ref[n]["grad_norm"] == pytest.approx(res[n]["grad_norm"], rel=1e-3)


# --------------------------------------------------------------------------- bad input


def test_an_adapter_is_refused_where_a_full_checkpoint_is_needed(sft_adapter, tmp_path, capsys):
    import mini_qwen_pt
    import mini_qwen_sft

    for main, extra in ((mini_qwen_pt.main, ["--data_dir", str(MINI / "pt")]),
                        (mini_qwen_sft.main, ["--data_dir", str(MINI / "sft")])):
        out = tmp_path / "never"
        with pytest.raises(SystemExit) as exc:
            run_main(main, ["--model_name_or_path", str(sft_adapter), "--output_dir", str(out), *extra])
        assert exc.value.code == 2
        err = error_lines(capsys)[0]
        assert f"'{sft_adapter}' is a LoRA adapter (adapter_config.json), not a full checkpoint" in err
        assert f"python utils/merge_lora.py {sft_adapter} --out {sft_adapter}_merged" in err
        assert not out.exists()  # refused before anything is written


def test_merge_refuses_a_full_checkpoint_a_taken_or_unwritable_out(sft_adapter, tiny_checkpoint, tmp_path):
    with pytest.raises(MiniQwenError, match="is a full checkpoint .* not a LoRA adapter .* nothing to merge"):
        merge([str(tiny_checkpoint), "--out", str(tmp_path / "m")])
    with pytest.raises(MiniQwenError, match="already exists and is not an empty folder"):
        merge([str(sft_adapter), "--out", str(tiny_checkpoint)])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(MiniQwenError, match=r"cannot write the merged checkpoint to '.*a_file/merged': Not a "
                                            r"directory .* Choose a writable --out"):
        merge([str(sft_adapter), "--out", str(blocker / "merged")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing half-written


def test_the_script_reports_one_line(sft_adapter, tiny_checkpoint):
    done = subprocess.run([sys.executable, str(MERGE), str(tiny_checkpoint), "--out", "x"], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_missing_base_is_one_message(sft_adapter, tmp_path):
    import shutil

    from mini_qwen.checkpoint import check_checkpoint
    from mini_qwen.generate import load_for_inference

    moved = tmp_path / "adapter"
    shutil.copytree(sft_adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    for check in (lambda: check_checkpoint(moved, adapter_ok=True), lambda: load_for_inference(moved)):
        with pytest.raises(MiniQwenError, match=r"trained on the base checkpoint '.*gone' \(base_model_name_or_path "
                                                r"in .*adapter_config.json\), which is not a folder here"):
            check()


@pytest.mark.parametrize("flags, message", [
    (["--lora_r", "8"], "--lora_r only applies to LoRA training: add --use_peft true"),
    (["--lora_target_modules", "q_proj", "--lora_dropout", "0.1"],
     "--lora_dropout, --lora_target_modules only apply to LoRA training"),
    (["--use_peft", "true", "--lora_r", "0"], "--lora_r 0 is out of range: allowed at least 1"),
    (["--use_peft", "true", "--lora_dropout", "1"], "--lora_dropout 1 is out of range"),
    (["--use_peft", "true", "--load_in_4bit", "true"], "--load_in_4bit (QLoRA) needs a CUDA GPU"),
])
def test_lora_flag_mistakes(flags, message, tiny_checkpoint, tmp_path):
    from mini_qwen_sft import main

    if "--load_in_4bit" in flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: 4-bit is allowed here")
    out = tmp_path / "never"
    with pytest.raises(MiniQwenError) as err:
        main(["--model_name_or_path", str(tiny_checkpoint), "--data_dir", str(MINI / "sft"),
              "--output_dir", str(out), *flags])
    assert message in str(err.value)
    assert not out.exists()


def test_an_unknown_target_module_names_the_real_ones(tiny_checkpoint, tmp_path):
    from mini_qwen_dpo import main

    out = tmp_path / "never"
    with pytest.raises(MiniQwenError) as err:
        main(["--model_name_or_path", str(tiny_checkpoint), "--data_dir", str(MINI / "dpo"), "--output_dir", str(out),
              "--use_peft", "true", "--lora_target_modules", "q_proj", "qkv_proj"])
    assert str(err.value).startswith("--lora_target_modules: 'qkv_proj' is not a linear layer of the model's blocks")
    assert "Choose among down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in str(err.value)
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA (bitsandbytes 4-bit) needs a CUDA GPU")
def test_qlora_trains_on_a_gpu(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("bitsandbytes", reason="pip install -e .[qlora]")
    import mini_qwen_sft

    out = tmp_path / "qlora"
    mini_qwen_sft.main([a for a in sft_lora_argv(tiny_checkpoint, "--max_steps", "2", "--save_strategy", "no",
                                                 "--load_in_4bit", "true", "--output_dir", str(out))])
    assert "fp32 adapter; learning rate 0.01 (--learning_rate)" in capsys.readouterr().out  # TRL's bf16 cast undone
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(tiny_checkpoint.resolve())


def test_every_lora_number_is_range_checked():
    import dataclasses
    import typing

    from mini_qwen.lora import LoraArguments
    from mini_qwen.ranges import RANGES

    hints = typing.get_type_hints(LoraArguments)
    numeric = [f.name for f in dataclasses.fields(LoraArguments)
               if {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],))]
    assert numeric == ["lora_r", "lora_alpha", "lora_dropout"]
    assert all(name in RANGES for name in numeric)


def test_an_unwritable_output_dir_is_one_message(tiny_checkpoint, tmp_path):
    from mini_qwen_sft import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(MiniQwenError, match=r"cannot write .*a_file/out/run_config.json: Not a directory .* Fix the "
                                            r"output folder \(--output_dir\)"):
        main(sft_lora_argv(tiny_checkpoint, "--output_dir", str(blocker / "out")))
    assert blocker.read_text() == "x"
