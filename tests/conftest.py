"""Shared pytest fixtures and the paths of the files the tests read (keep this file small).

mini_qwen and the stage scripts are installed (setup.sh: `pip install -e .`); pytest puts this folder on the
import path itself, which is how test files import the names below (`from conftest import REPO_ROOT`).
"""

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI_DATA = REPO_ROOT / "mini_data"
# Real files from the datasets and the original run, in the repository (sources and licences: tests/data/README.md).
TEST_DATA = REPO_ROOT / "tests" / "data"
BAAI_SAMPLES = TEST_DATA / "baai"  # pt/ (IndustryCorpus2), sft/{7M,Gen} (Infinity-Instruct), dpo/ (Infinity-Preference)
OFFICIAL_TOKENIZER = TEST_DATA / "qwen2.5_tokenizer"  # Qwen2.5's vocab.json / merges.txt / tokenizer_config.json
UPSTREAM_LOGS = TEST_DATA / "upstream_logs"  # console logs of the original project's runs


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


def tiny_causal_lm(seed: int = 0):
    """A random tiny-preset model in fp32 with sdpa attention, for loss and gradient comparisons."""
    import torch
    from transformers import AutoModelForCausalLM

    from mini_qwen.model import PresetArguments, build_config

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_config(PresetArguments(model_preset="tiny")),
                                             attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    return model


def error_lines(capsys) -> list[str]:
    """run_main's one error line (stderr also carries the progress bar)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err


@pytest.fixture
def one_thread():
    """One torch thread: the same arithmetic in every run of a comparison, and on a busy 2-core machine about
    twice as fast as two threads fighting over the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- a short PT run (test_pt, test_sft)

FAST_TRAIN_FLAGS = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
                    "--save_strategy", "no", "--seed", "0", "--report_to", "none"]


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


@pytest.fixture(scope="session")
def pt_run(tmp_path_factory, built_tokenizer_dir):
    """25 PT steps of the tiny preset on mini_data: the PT tests' run and the SFT tests' starting point."""
    import mini_qwen_pt

    out = tmp_path_factory.mktemp("pt")
    mini_qwen_pt.main(["--model_preset", "tiny", "--data_dir", str(MINI_DATA / "pt"), "--block_size", "128",
                       "--max_steps", "25", "--learning_rate", "3e-3", "--warmup_steps", "2",
                       "--output_dir", str(out), "--cache_dir", str(out / "cache"),
                       "--tokenizer_path", str(built_tokenizer_dir), *FAST_TRAIN_FLAGS])
    return out


# --------------------------------------------------------------------------- GPUs on CPU (test_hardware, test_demo)

GIB = 2**30
# name, compute capability, memory as torch reports it, expected default precision
GPUS = {
    "T4": ("Tesla T4", (7, 5), 15.1 * GIB, "fp16"),
    "V100": ("Tesla V100-SXM2-16GB", (7, 0), 15.8 * GIB, "fp16"),
    "A100": ("NVIDIA A100-SXM4-40GB", (8, 0), 39.4 * GIB, "bf16"),
    "H100": ("NVIDIA H100 80GB HBM3", (9, 0), 79.1 * GIB, "bf16"),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """`fake_gpu("T4")`: torch.cuda answers as on that GPU (name, compute capability, memory)."""
    import torch

    def install(key):
        name, capability, memory, _ = GPUS[key]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says on a T4
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
        props = type("Props", (), {"name": name, "total_memory": int(memory),
                                   "major": capability[0], "minor": capability[1]})()
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a, **k: props)

    return install


# --------------------------------------------------------------------------- command-line tools (utils/, bench/)

def load_script(relative_path: str):
    """Import a script of utils/ or bench/ (not part of the package) as a module named after its file."""
    import importlib.util
    import sys

    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def cli_error(main, argv, capsys) -> str:
    """Run a CLI main the way its script does; return the stderr of the exit-2 error."""
    from mini_qwen.errors import run_main

    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: ") and "Traceback" not in err
    return err


def png_ok(path: Path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_trainer_state(folder: Path, step: int, losses, eval_loss=None) -> Path:
    """A trainer_state.json as Trainer writes it: losses every 10 steps, an optional eval, the end-of-run summary."""
    history = [{"loss": loss, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": i / 10, "step": (i + 1) * 10}
               for i, loss in enumerate(losses)]
    if eval_loss is not None:
        history.append({"eval_loss": eval_loss, "eval_runtime": 1.5, "epoch": 0.5, "step": len(losses) * 10})
    history.append({"train_runtime": 12.0, "train_loss": 9.9, "total_flos": 1e12, "epoch": 1.0,
                    "step": len(losses) * 10})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return folder / "trainer_state.json"
