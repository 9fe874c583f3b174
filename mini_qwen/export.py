"""Export a checkpoint to GGUF (the file llama.cpp, Ollama and LM Studio run), and check it against transformers.

- `fetch_converter`: llama.cpp's own `convert_hf_to_gguf.py`, with the `conversion/` package and the `gguf-py`
  it ships with, taken out of the pinned llama-cpp-python source distribution (PyPI has no other package that
  holds the converter; the `gguf` package alone only reads and writes the file format). Cached in .cache/.
- `export_gguf`: runs that converter on the checkpoint, with the tokenizer and the training chat format
  (`mini_qwen.chat.CHATML_TEMPLATE`) embedded, writes to a temporary file and renames it, so a failed or
  interrupted export leaves nothing behind; then writes an Ollama Modelfile beside it.
- `compare_gguf`: the GGUF run by llama.cpp (llama-cpp-python, in a child process: mini_qwen/llama_child.py) against
  the checkpoint run by transformers on the same prompts: greedy token ids and the NMSE of next-token
  log-probabilities (llama.cpp's own measure in examples/model-conversion: mean squared error over the
  reference's variance).

Why the template is written even though every checkpoint saved now carries it (mini_qwen/tokenizer.py sets it on
every tokenizer it loads): a checkpoint saved before, or a tokenizer folder given with --tokenizer_path, may carry
the official Qwen2.5 one, which adds a default system prompt ("You are Qwen, ...") when a conversation has none.
SFT here trains conversations as the data has them (mini_qwen/chat.py), so a runtime using that template would
prompt the model with a turn it never saw. Peers' "merged model -> GGUF -> Ollama answers garbage" reports mostly
come from that kind of mismatch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mini_qwen.chat import CHATML_TEMPLATE
from mini_qwen.checkpoint import check_checkpoint
from mini_qwen.errors import MiniQwenError
from mini_qwen.llama_child import DEFAULT_TIMEOUT_S, INSTALL_EXPORT, run_llama_cpp
from mini_qwen.pip_fetch import REACH_PYPI, pip_download
from mini_qwen.tokenizer import DEFAULT_CACHE, has_tokenizer_files

# The llama.cpp release the converter comes from, and the runtime the tests load the GGUF with: the same pin
# as requirements-export.txt (tests/test_export_gguf.py checks that they agree).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
GGUF_TYPES = ("f16", "q8_0")
STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")
# llama.cpp's examples/model-conversion calls a next-token NMSE below 1e-2 a good match (below 1e-4 is typical of
# a good f16 conversion): the verdict of `--verify` and of the q8_0 test.
GOOD_NMSE = 1e-2

# What the converter needs from vendor/llama.cpp/ of the source distribution (~2 MB of its ~76 MB).
_SDIST_ROOT = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
_CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
# Files of a checkpoint the converter reads (weights, config, tokenizer); the rest (optimizer state, logs) not.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")


# --------------------------------------------------------------------------- the converter


def fetch_converter(cache_dir: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py (+ conversion/, gguf-py/), fetched once."""
    target = Path(cache_dir) / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    requirement = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    print(f"fetching llama.cpp's converter: the {requirement} source distribution (~76 MB, once; cached in "
          f"{target})", flush=True)
    with tempfile.TemporaryDirectory(prefix="llama_cpp_sdist_", dir=target.parent) as tmp:
        sdist = pip_download(requirement, Path(tmp), source=True, pattern="llama_cpp_python-*.tar.gz",
                             what="llama.cpp's GGUF converter", fix=f"Fix: {REACH_PYPI}.")
        unpacked = Path(tmp) / "unpacked"
        try:
            with tarfile.open(sdist) as archive:
                members = [m for m in archive.getmembers() if m.name.startswith(_SDIST_ROOT)
                           and m.name[len(_SDIST_ROOT):].startswith(_CONVERTER_MEMBERS)]
                archive.extractall(unpacked, members=members, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise MiniQwenError(f"cannot unpack {sdist.name}: {err}. Delete {tmp} and try again.") from None
        found = unpacked / _SDIST_ROOT
        if not (found / "convert_hf_to_gguf.py").is_file():
            raise MiniQwenError(f"{sdist.name} holds no {_SDIST_ROOT}convert_hf_to_gguf.py: not the source "
                                f"distribution this project pins ({requirement}).")
        try:
            os.replace(found, target)  # whole or not at all; another process may have won the race
        except OSError:
            if not (target / "convert_hf_to_gguf.py").is_file():
                raise
    return target


# --------------------------------------------------------------------------- checks before the slow part


def check_export_source(checkpoint: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> Path:
    """The checkpoint folder if it can be exported: full weights (not a LoRA adapter), a Qwen2 config and a
    tokenizer (its own, or `tokenizer_path`); else one message with the fix."""
    folder = Path(checkpoint)
    if (folder / "adapter_config.json").is_file():
        raise MiniQwenError(f"'{checkpoint}' is a LoRA adapter (adapter_config.json), not a full model: merge it "
                            f"first with `python utils/merge_lora.py {checkpoint} --out <merged dir>` and export "
                            f"the merged folder.")
    folder = check_checkpoint(folder, tokenizer_path)
    if tokenizer_path is not None and not has_tokenizer_files(tokenizer_path):
        raise MiniQwenError(f"--tokenizer_path '{tokenizer_path}' holds no tokenizer (tokenizer.json): point at "
                            f"the tokenizer the model was trained with, e.g. models/tokenizer.")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MiniQwenError(f"cannot read {folder / 'config.json'}: {err}") from None
    if "Qwen2ForCausalLM" not in (config.get("architectures") or []):
        raise MiniQwenError(f"{folder / 'config.json'} says architectures {config.get('architectures')}: this "
                            f"export writes the Qwen2 chat format and handles Qwen2ForCausalLM checkpoints only.")
    return folder


def check_output(out: str | os.PathLike, flag: str = "--out") -> Path:
    """The output path, once we know a file can be created there (its folder is made when missing)."""
    out = Path(out)
    if out.is_dir():
        raise MiniQwenError(f"{flag} '{out}' is a folder: give the file to write, e.g. {out / 'model.gguf'}.")
    blocking = next((p for p in out.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise MiniQwenError(f"cannot write {flag} '{out}': '{blocking}' is a file, not a folder.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise MiniQwenError(f"cannot write {flag} '{out}': {err.strerror or err} ({err.filename or out.parent}). "
                            f"Pick a folder you can write to.") from None
    return out


# --------------------------------------------------------------------------- export


def modelfile_text(gguf_path: Path, modelfile_path: Path) -> str:
    """An Ollama Modelfile for the GGUF: the training chat format as a Go template, stopping at <|im_end|>."""
    source = os.path.relpath(gguf_path.resolve(), modelfile_path.resolve().parent)
    source = source if os.path.isabs(source) or source.startswith(".") else f"./{source}"
    stops = "".join(f'PARAMETER stop "{s}"\n' for s in STOP_STRINGS)
    return (f"# Ollama: ollama create <name> -f {modelfile_path.name}  then  ollama run <name>\n"
            f"# Written by utils/export_gguf.py: the chat format SFT trained on (mini_qwen/chat.py), no default "
            f"system prompt.\n"
            f"FROM {source}\n"
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
            '{{ .Content }}<|im_end|>\n'
            '{{ end }}<|im_start|>assistant\n'
            '"""\n'
            f"{stops}")


def _stage_source(folder: Path, tokenizer_path: Path | None, stage: Path) -> None:
    """A folder the converter reads as the checkpoint: links to the weights, config and tokenizer files (no
    copy of the weights), with the training chat template in place of the tokenizer's own."""
    tok_dir = tokenizer_path or folder
    wanted = [folder / n for n in _MODEL_FILES] + [tok_dir / n for n in _TOKENIZER_FILES]
    wanted += list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin"))
    for path in wanted:
        if path.is_file():
            (stage / path.name).symlink_to(path.resolve())
    config_file = tok_dir / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tok_config.pop("chat_template", None)  # the converter prefers this key over chat_template.jinja
    (stage / "tokenizer_config.json").write_text(json.dumps(tok_config, ensure_ascii=False, indent=2))
    (stage / "chat_template.jinja").write_text(CHATML_TEMPLATE)


def _converter_env(converter: Path) -> dict:
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # use the gguf-py shipped with this converter, not another `gguf` install
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; a blocked hub lookup would only wait and time out
    paths = [str(converter), str(converter / "gguf-py"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def export_gguf(checkpoint: str | os.PathLike, out: str | os.PathLike, gguf_type: str = "f16",
                tokenizer_path: str | os.PathLike | None = None, modelfile: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike = DEFAULT_CACHE) -> tuple[Path, Path]:
    """Convert `checkpoint` to a GGUF at `out` and write an Ollama Modelfile (default: `Modelfile` beside it).
    Returns (gguf path, Modelfile path). Nothing is left at either path when it fails."""
    if gguf_type not in GGUF_TYPES:
        raise MiniQwenError(f"--type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}.")
    folder = check_export_source(checkpoint, tokenizer_path)
    out = check_output(out)
    modelfile = check_output(modelfile, "--modelfile") if modelfile else out.parent / "Modelfile"
    if importlib.util.find_spec("sentencepiece") is None:  # the converter imports it for every Qwen2 vocabulary
        raise MiniQwenError(f"llama.cpp's converter needs the sentencepiece package: {INSTALL_EXPORT}.")
    converter = fetch_converter(cache_dir)

    print(f"converting {folder} to {gguf_type} with llama.cpp's convert_hf_to_gguf.py (it prints nothing until done)",
          flush=True)
    start = time.perf_counter()
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")  # renamed to `out` only once complete
    partial_modelfile = modelfile.with_name(f".{modelfile.name}.{os.getpid()}.partial")
    try:
        with tempfile.TemporaryDirectory(prefix="gguf_source_") as stage:
            _stage_source(folder, Path(tokenizer_path) if tokenizer_path else None, Path(stage))
            cmd = [sys.executable, str(converter / "convert_hf_to_gguf.py"), stage, "--outfile", str(partial),
                   "--outtype", gguf_type, "--model-name", folder.resolve().name]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_converter_env(converter))
        if proc.returncode != 0:
            # its last log line (the step it was in) and the exception, without the traceback's frames
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()
                     and not line.startswith((" ", "Traceback", "During handling", "The above exception"))]
            logged = [line for line in lines if line.startswith(("INFO:", "WARNING:", "ERROR:"))]
            tail = "\n".join(dict.fromkeys(logged[-1:] + lines[-1:]))  # once when the error was logged
            hint = f" ({INSTALL_EXPORT})" if "No module named" in tail else ""
            raise MiniQwenError(f"llama.cpp's convert_hf_to_gguf.py failed on '{checkpoint}' (exit "
                                f"{proc.returncode}){hint}:\n{tail}")
        partial_modelfile.write_text(modelfile_text(out, modelfile))
        os.replace(partial, out)
        os.replace(partial_modelfile, modelfile)
    finally:
        for leftover in (partial, partial_modelfile):
            leftover.unlink(missing_ok=True)
    print(f"wrote {out} ({gguf_type}, {out.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f}s "
          f"with llama.cpp's convert_hf_to_gguf.py (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sources)")
    print(f"wrote {modelfile} (Ollama: ChatML template, stop at <|im_end|>)")
    return out, modelfile


# --------------------------------------------------------------------------- comparison with transformers


def nmse(reference, test) -> float:
    """llama.cpp's conversion measure (examples/model-conversion check-nmse.py): MSE / variance of the reference."""
    import numpy as np

    reference, test = np.asarray(reference, dtype=np.float64), np.asarray(test, dtype=np.float64)
    return float(np.mean((test - reference) ** 2) / np.var(reference))


def log_softmax(logits):
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class PromptComparison:
    prompt_ids: list[int]
    transformers_ids: list[int]  # greedy continuation
    llama_cpp_ids: list[int]
    logprob_nmse: float  # next-token log-probabilities at every prompt position

    @property
    def same_prefix(self) -> int:
        """How many generated tokens agree before the first difference."""
        n = 0
        for a, b in zip(self.transformers_ids, self.llama_cpp_ids):
            if a != b:
                break
            n += 1
        return n


def compare_gguf(model, gguf: str | os.PathLike, prompts: list[list[int]], new_tokens: int = 16,
                 timeout: float = DEFAULT_TIMEOUT_S) -> list[PromptComparison]:
    """Run each prompt (token ids) through the transformers `model` and the GGUF in llama.cpp: greedy
    continuations of `new_tokens` tokens (not stopped at <|im_end|>, so both always give that many) and
    next-token log-probabilities at every prompt position. llama.cpp runs in a child process
    (mini_qwen/llama_child.py): a crash there is a MiniQwenError here, never the end of the caller."""
    import torch

    llama = run_llama_cpp("mini_qwen.llama_child:greedy_and_logits", gguf, timeout=timeout,
                          prompts=[list(map(int, p)) for p in prompts], new_tokens=new_tokens)
    results = []
    for prompt, llama_logits, llama_new in zip(prompts, llama["logits"], llama["greedy"]):
        ids = list(prompt)
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].float().numpy()
            for _ in range(new_tokens):  # greedy, one full forward per token: short prompts, exact argmax
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        results.append(PromptComparison(list(prompt), ids[len(prompt):], llama_new,
                                        nmse(log_softmax(reference), log_softmax(llama_logits))))
    return results
