"""PT and SFT end to end on mini_data with the tiny preset: loss falls, checkpoints reload and generate."""

import json

import pytest
import torch
from conftest import REPO_ROOT
from transformers import AutoModelForCausalLM, AutoTokenizer

import mini_qwen_pt
import mini_qwen_sft
from mini_qwen.chat import format_prompt
from mini_qwen.errors import MiniQwenError

MINI = REPO_ROOT / "mini_data"
FAST = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
        "--save_strategy", "no", "--seed", "0", "--report_to", "none"]


def losses(output_dir):
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


@pytest.fixture(scope="module")
def pt_run(tmp_path_factory, built_tokenizer_dir):
    out = tmp_path_factory.mktemp("pt")
    mini_qwen_pt.main(["--model_preset", "tiny", "--data_dir", str(MINI / "pt"), "--block_size", "128",
                       "--max_steps", "25", "--learning_rate", "3e-3", "--warmup_steps", "2",
                       "--output_dir", str(out), "--cache_dir", str(out / "cache"),
                       "--tokenizer_path", str(built_tokenizer_dir), *FAST])
    return out


def test_pt_trains_saves_and_generates(pt_run, capsys):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_loss.png"):
        assert (pt_run / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(pt_run)
    tok = AutoTokenizer.from_pretrained(pt_run)
    ids = tok("李白", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5


def test_pt_loss_falls(pt_run):
    history = losses(pt_run)
    assert len(history) == 25
    assert history[-1] < history[0] - 1.0, history


def test_sft_trains_on_answers_and_reloads(pt_run, tmp_path):
    out = tmp_path / "sft"
    mini_qwen_sft.main(["--model_name_or_path", str(pt_run), "--data_dir", str(MINI / "sft"), "--max_length", "128",
                        "--max_steps", "12", "--learning_rate", "1e-3", "--warmup_steps", "1",
                        "--output_dir", str(out), *FAST])
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(format_prompt("李白是谁？"), return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert gen.shape[1] > ids.shape[1]
    assert (out / "training_loss.png").is_file()
    history = losses(out)
    assert len(history) == 12 and sum(history[-4:]) < sum(history[:4])


def test_stage_errors_are_one_message(tmp_path, built_tokenizer_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ["--output_dir", str(tmp_path / "o"), "--tokenizer_path", str(built_tokenizer_dir)]
    with pytest.raises(MiniQwenError, match="no parquet files"):
        mini_qwen_pt.main(["--model_preset", "tiny", "--data_dir", str(empty), *common])
    with pytest.raises(MiniQwenError, match="not divisible by num_attention_heads 15"):
        mini_qwen_pt.main(["--num_attention_heads", "15", "--data_dir", str(MINI / "pt"), *common])
    with pytest.raises(MiniQwenError, match="exceeds the model's max_position_embeddings"):
        mini_qwen_pt.main(["--model_preset", "tiny", "--block_size", "100000", "--data_dir", str(MINI / "pt"),
                           *common])
    with pytest.raises(MiniQwenError, match="is not a model checkpoint: it has no config.json"):
        mini_qwen_sft.main(["--model_name_or_path", str(empty), "--data_dir", str(MINI / "sft"), *common])
    # The parser refuses a typo once, naming the allowed values.
    with pytest.raises(MiniQwenError, match=r"--packing: invalid choice: 'zip' \(choose from .*documents.*concat"):
        mini_qwen_pt.main(["--model_preset", "tiny", "--packing", "zip", "--data_dir", str(MINI / "pt"), *common])
