"""Shared pytest fixtures (keep this file small)."""

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `pytest` run from anywhere can import mini_qwen
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def built_tokenizer_dir(tmp_path_factory):
    """A folder with the tokenizer built by mini_qwen.tokenizer (models/tokenizer if already built)."""
    from mini_qwen.errors import MiniQwenError
    from mini_qwen.tokenizer import BUILT_DIR, DEFAULT_CACHE, build_tokenizer, fetch_qwen_tiktoken

    if (BUILT_DIR / "tokenizer.json").is_file() and (BUILT_DIR / "tokenizer_config.json").is_file():
        return BUILT_DIR
    try:
        tiktoken_path = fetch_qwen_tiktoken(DEFAULT_CACHE)
    except MiniQwenError as err:
        pytest.skip(f"cannot fetch qwen.tiktoken to build the tokenizer: {err}")
    return build_tokenizer(tiktoken_path, tmp_path_factory.mktemp("tokenizer"))


SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"
BAAI_SAMPLES = SHARED_REFERENCE / "mini_data_baai"
needs_samples = pytest.mark.skipif(not BAAI_SAMPLES.is_dir(), reason="../shared/reference/mini_data_baai absent")


@pytest.fixture(scope="session")
def tokenizer(built_tokenizer_dir):
    from mini_qwen.tokenizer import load_tokenizer

    return load_tokenizer(built_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer):
    """A randomly initialised tiny model saved with the tokenizer: a stand-in for a PT output."""
    import torch
    from transformers import AutoModelForCausalLM

    from mini_qwen.model import PresetArguments, build_config

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_ckpt")
    AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset="tiny"))).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# Gradient comparison for the tests that check a lever (chunked loss, padding-free SFT, ...) against the plain path.
def grads_of(model, loss) -> dict:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)
