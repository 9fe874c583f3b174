"""Tracked runs (mini_qwen/tracking.py, --report_to) on the tiny preset and mini_data on CPU.

The TensorBoard event files a stage writes are read back with TensorBoard's own EventAccumulator: the loss,
tokens/s and bad-step scalars are there for each stage, with the run config as text; a resumed run writes
into the same folder and TensorBoard shows each step once. wandb and swanlab (optional extras) are tested
offline where installed.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import MINI_DATA as MINI
from conftest import error_lines

from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.tracking import RUN_ID_FILE, TENSORBOARD_DIR, tracker_run_id

pytest.importorskip("tensorboard")


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def texts(log_dir: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag.split("/")[0]: events.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
            for tag in events.Tags()["tensors"]}


def pt_argv(tmp_path, tokenizer_dir, *extra):
    return ["--model_preset", "tiny", "--data_dir", str(MINI / "pt"), "--block_size", "64",
            "--cache_dir", str(tmp_path / "cache"), "--tokenizer_path", str(tokenizer_dir),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
            "--seed", "0", *extra]


def test_pt_logs_loss_and_tokens_per_second_and_a_resume_continues_the_same_run(tmp_path, built_tokenizer_dir):
    import mini_qwen_pt

    out = tmp_path / "pt"
    argv = pt_argv(tmp_path, built_tokenizer_dir, "--report_to", "tensorboard", "--save_steps", "2",
                   "--output_dir", str(out))
    mini_qwen_pt.main([*argv, "--max_steps", "3"])  # checkpoint-2, then step 3 logged and the run ends
    log_dir = out / TENSORBOARD_DIR
    first = scalars(log_dir)
    assert [s for s, _ in first["train/loss"]] == [1, 2, 3]
    mini_qwen_pt.main([*argv, "--max_steps", "5", "--resume_from_checkpoint", str(out / "checkpoint-2")])

    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2  # two processes, one folder: one tracker run
    assert not (out / "runs").exists()  # transformers' per-start folder is not used
    found = scalars(log_dir)
    assert [s for s, _ in found["train/loss"]] == [1, 2, 3, 4, 5]  # each step once: step 3 of the first run purged
    assert found["train/loss"][:2] == first["train/loss"][:2]
    state = json.loads((out / "trainer_state.json").read_text())
    losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    assert all(abs(value - losses[step]) < 1e-5 for step, value in found["train/loss"])
    assert [s for s, _ in found["train/tokens_per_second"]] == [1, 2, 3, 4, 5]
    assert all(value > 0 for _, value in found["train/tokens_per_second"])
    assert found["train/bad_steps_skipped"] == [(s, 0.0) for s in range(1, 6)]
    assert [s for s, _ in found["train/train_runtime"]] == [5]  # the first run's end summary (step 3) is hidden
    config = texts(log_dir)["run_config"]
    assert '"stage": "pt"' in config and '"block_size": 64' in config and '"report_to"' in config


def test_sft_lora_and_dpo_log_to_tensorboard(tmp_path, tiny_checkpoint):
    import mini_qwen_dpo
    import mini_qwen_sft

    common = ["--model_name_or_path", str(tiny_checkpoint), "--max_length", "64", "--per_device_train_batch_size",
              "1", "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--max_steps", "2",
              "--save_strategy", "no", "--report_to", "tensorboard", "--seed", "0"]
    sft = tmp_path / "sft"
    mini_qwen_sft.main([*common, "--data_dir", str(MINI / "sft"), "--output_dir", str(sft), "--use_peft", "true"])
    dpo = tmp_path / "dpo"
    mini_qwen_dpo.main([*common, "--data_dir", str(MINI / "dpo"), "--output_dir", str(dpo), "--max_pairs", "2",
                        "--max_prompt_length", "32", "--pad_to_multiple_of", "none"])
    for out, stage, extra in ((sft, "sft", ()), (dpo, "dpo", ("train/rewards/accuracies",))):
        found = scalars(out / TENSORBOARD_DIR)
        for tag in ("train/loss", "train/tokens_per_second", "train/bad_steps_skipped", *extra):
            assert [s for s, _ in found[tag]] == [1, 2], (stage, tag, found.get(tag))
        assert all(v > 0 for _, v in found["train/tokens_per_second"])
        config = texts(out / TENSORBOARD_DIR)["run_config"]
        assert f'"stage": "{stage}"' in config
    assert '"use_peft": true' in texts(sft / TENSORBOARD_DIR)["run_config"]


def test_tracker_run_id_is_kept_for_a_resume_only(tmp_path):
    first = tracker_run_id(str(tmp_path), resuming=False)
    assert json.loads((tmp_path / RUN_ID_FILE).read_text()) == {"id": first}
    assert tracker_run_id(str(tmp_path), resuming=True) == first
    assert tracker_run_id(str(tmp_path), resuming=False) != first  # a new run in the same folder: a new id


def test_bad_report_to(tmp_path, built_tokenizer_dir, capsys):
    import mini_qwen_pt

    out = tmp_path / "never"
    with pytest.raises(SystemExit):
        run_main(mini_qwen_pt.main, pt_argv(tmp_path, built_tokenizer_dir, "--report_to", "tensorbord",
                                            "--output_dir", str(out)))
    assert "--report_to tensorbord: no such tracker. Use tensorboard, wandb or swanlab" in error_lines(capsys)[0]
    for name in ("wandb", "swanlab"):
        if importlib.util.find_spec(name) is not None:
            continue
        with pytest.raises(MiniQwenError, match=rf"--report_to {name}: {name} is not installed: "
                                                rf"pip install -e \.\[{name}\], or drop it"):
            mini_qwen_pt.main(pt_argv(tmp_path, built_tokenizer_dir, "--report_to", name, "--output_dir", str(out)))
    assert not out.exists()


@pytest.mark.parametrize("name", ["wandb", "swanlab"])
def test_offline_trackers_continue_the_same_run(name, tmp_path, built_tokenizer_dir, monkeypatch):
    pytest.importorskip(name, reason=f"optional: pip install -e .[{name}]")
    import mini_qwen_pt

    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "SWANLAB_MODE",
                "SWANLAB_LOG_DIR", "SWANLAB_PROJECT", "SWANLAB_RUN_ID", "SWANLAB_RESUME"):
        monkeypatch.setenv(var, "")  # recorded, so what track_run sets is undone after the test
        monkeypatch.delenv(var)
    out = tmp_path / "pt"
    argv = pt_argv(tmp_path, built_tokenizer_dir, "--report_to", name, "--save_steps", "2", "--output_dir", str(out))
    mini_qwen_pt.main([*argv, "--max_steps", "2"])
    run_id = json.loads((out / RUN_ID_FILE).read_text())["id"]
    mini_qwen_pt.main([*argv, "--max_steps", "3", "--resume_from_checkpoint", "auto"])
    assert json.loads((out / RUN_ID_FILE).read_text())["id"] == run_id
    files = [p for p in out.rglob("*") if run_id in p.name]
    assert files, f"no offline {name} files named after run {run_id} under {out}"
