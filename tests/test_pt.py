"""The PT stage (mini_qwen_pt.py) end to end on mini_data with the tiny preset: loss falls, the output reloads and
generates; bad data, shapes and flags end in one message. The run itself is conftest's `pt_run` (SFT starts from it).
"""

import pytest
from conftest import MINI_DATA, logged_losses
from transformers import AutoModelForCausalLM, AutoTokenizer

import mini_qwen_pt
import mini_qwen_sft
from mini_qwen.errors import MiniQwenError


def test_pt_trains_saves_and_generates(pt_run, capsys):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_loss.png"):
        assert (pt_run / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(pt_run)
    tok = AutoTokenizer.from_pretrained(pt_run)
    ids = tok("李白", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5


def test_pt_loss_falls(pt_run):
    history = logged_losses(pt_run)
    assert len(history) == 25
    assert history[-1] < history[0] - 1.0, history


def test_stage_errors_are_one_message(tmp_path, built_tokenizer_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ["--output_dir", str(tmp_path / "o"), "--tokenizer_path", str(built_tokenizer_dir)]
    with pytest.raises(MiniQwenError, match="no data files"):
        mini_qwen_pt.main(["--model_preset", "tiny", "--data_dir", str(empty), *common])
    with pytest.raises(MiniQwenError, match="not divisible by num_attention_heads 15"):
        mini_qwen_pt.main(["--num_attention_heads", "15", "--data_dir", str(MINI_DATA / "pt"), *common])
    with pytest.raises(MiniQwenError, match="exceeds the model's max_position_embeddings"):
        mini_qwen_pt.main(["--model_preset", "tiny", "--block_size", "100000", "--data_dir", str(MINI_DATA / "pt"),
                           *common])
    with pytest.raises(MiniQwenError, match="is not a model checkpoint: it has no config.json"):
        mini_qwen_sft.main(["--model_name_or_path", str(empty), "--data_dir", str(MINI_DATA / "sft"), *common])
    # The parser refuses a typo once, naming the allowed values.
    with pytest.raises(MiniQwenError, match=r"--packing: invalid choice: 'zip' \(choose from .*documents.*concat"):
        mini_qwen_pt.main(["--model_preset", "tiny", "--packing", "zip", "--data_dir", str(MINI_DATA / "pt"), *common])
