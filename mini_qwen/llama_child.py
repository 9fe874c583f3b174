"""llama.cpp (llama-cpp-python) run in a child process, so that a crash in its native code ends the check, not
the program that asked for it.

Why a child: llama.cpp is C++ loaded into the interpreter. Where it faults (a segmentation fault in a mat-mul
kernel, an abort in an assertion) no Python `try` can catch it: in-process it would end `utils/export_gguf.py`
after a finished export, or the whole pytest run. llama.cpp has known crashes of exactly that kind on CPUs with
AMX (Intel Sapphire Rapids and later; upstream ggml-org/llama.cpp issue 20824), and a user's CPU is not ours.

- `run_llama_cpp(target, gguf, ...)`: runs `target` ("package.module:function" or "path/to/file.py:function")
  with the keyword arguments given, in `python -m mini_qwen.llama_child`, and returns what it returned (JSON;
  numpy arrays travel as .npy files beside it). A crash (killed by a signal), an error, or a run past the timeout
  becomes one `MiniQwenError` naming the signal, the GGUF file and the README section that says what to do.
- `load_llama`: the GGUF in llama-cpp-python's `Llama`, loaded without llama.cpp's "extra buffer types".

Why without the extra buffer types: llama.cpp's CPU backend repacks weights at load time into "extra" buffer
types (the AMX one where the build has AMX, which `GGML_NATIVE` builds on an AMX CPU do, and the generic
CPU_REPACK one), and its AMX mat-mul kernel runs only on weights held in the AMX buffer type
(ggml-cpu/amx/amx.cpp `supports_op`/`get_tensor_traits`). `llama_model_params.use_extra_bufts = false` (what
`llama-cli --no-repack` sets) keeps every weight in the plain CPU buffer, so that kernel is never reached. This
is a load-time switch: the same wheel works on every CPU, no AMX-free rebuild needed (with `GGML_NATIVE` on, the
`GGML_AMX_*` CMake options are not even read: `-march=native` turns AMX on). The check compares numbers, so
the plain kernels (slower on large models, same results to the check's tolerance) are the right choice here.
"""

from __future__ import annotations

import faulthandler
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from mini_qwen.errors import MiniQwenError

INSTALL_EXPORT = "pip install -r requirements-export.txt"
README_AMX = "README.md, 'Run it elsewhere' (a crash in llama.cpp on CPUs with AMX)"
# Far above what the checks here take (the tiny model: seconds; a 1b-class f16 model: about a minute on 2 cores):
# only a hung runtime reaches it.
DEFAULT_TIMEOUT_S = 1800
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_ARRAY_KEY = "__npy__"


def cpu_has_amx() -> bool:
    """Whether this (Linux) CPU reports AMX: the CPUs where llama.cpp's AMX kernels run."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_int8" in flags or "amx_bf16" in flags


def _signal_name(returncode: int) -> str:
    try:
        return f"{signal.Signals(-returncode).name} (signal {-returncode})"
    except ValueError:
        return f"signal {-returncode}"


def _output_tail(text: str, lines: int = 8) -> str:
    """The end of the child's output; from a crash, faulthandler's report: its first line and the innermost frames
    (the frames are printed most recent first)."""
    kept = [line for line in text.splitlines() if line.strip()]
    crash = next((i for i, line in enumerate(kept) if line.startswith("Fatal Python error")), None)
    return "\n".join(kept[crash:crash + lines] if crash is not None else kept[-lines:])


def run_llama_cpp(target: str, gguf: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT_S, **kwargs):
    """`target(gguf=..., **kwargs)` run in a child process; its return value (JSON-able, numpy arrays allowed)."""
    what = target.rsplit(":", 1)[-1].lstrip("_").replace("_", " ")
    with tempfile.TemporaryDirectory(prefix="llama_cpp_child_") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"target": target, "kwargs": {"gguf": str(gguf), **kwargs}}))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run([sys.executable, "-m", "mini_qwen.llama_child", str(request), str(result)],
                                  capture_output=True, text=True, errors="replace", env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MiniQwenError(f"llama.cpp did not finish {what} on {gguf} within {timeout:g} s; it was stopped "
                                f"(nothing else was affected). A hung llama.cpp: try again, or see "
                                f"{README_AMX}.") from None
        if proc.returncode < 0:
            amx = (" This CPU has AMX (amx_int8/amx_bf16 in /proc/cpuinfo): llama.cpp has known crashes there "
                   "(upstream issue 20824)." if cpu_has_amx() else "")
            raise MiniQwenError(
                f"llama.cpp crashed with {_signal_name(proc.returncode)} while running {what} on {gguf}; it ran in a "
                f"child process, so only this check was lost (the GGUF file itself is kept).{amx} What to do: "
                f"{README_AMX}. Its last output:\n{_output_tail(proc.stderr)}")
        if proc.returncode != 0:
            _, said, message = proc.stderr.partition("\nerror: ")  # a MiniQwenError in the child
            if proc.returncode == 2 and said:
                raise MiniQwenError(message.strip())
            raise MiniQwenError(f"llama.cpp failed while running {what} on {gguf} (exit {proc.returncode}):\n"
                                f"{_output_tail(proc.stderr)}")
        return json.loads(result.read_text(), object_hook=lambda d: _load_array(d, Path(tmp)))


def _load_array(obj: dict, folder: Path):
    if set(obj) == {_ARRAY_KEY}:
        import numpy as np

        return np.load(folder / obj[_ARRAY_KEY])
    return obj


def load_llama(gguf: str | os.PathLike, n_ctx: int = 512, logits_all: bool = True):
    """The GGUF in llama-cpp-python's `Llama`, weights not repacked (see the module docstring); `logits_all` keeps
    every position's logits (the check's log-probabilities; n_ctx x vocabulary floats). Call .close() on it. The
    checks call it in the child process: in-process, a llama.cpp crash ends the caller."""
    try:
        import llama_cpp
        from llama_cpp import llama_cpp as c_api
    except ImportError:
        raise MiniQwenError(f"running a GGUF here needs llama-cpp-python: {INSTALL_EXPORT} (builds llama.cpp "
                            f"from source, a few minutes).") from None
    # Llama(...) has no argument for use_extra_bufts: it builds its llama_model_params from
    # llama_model_default_params() and hands them to llama_model_load_from_file, so the switch goes in there.
    default_params = c_api.llama_model_default_params

    def params_without_extra_bufts():
        params = default_params()
        params.use_extra_bufts = False
        return params

    c_api.llama_model_default_params = params_without_extra_bufts
    try:
        llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, logits_all=logits_all, n_threads=os.cpu_count() or 1,
                              seed=0, verbose=False)
    finally:
        c_api.llama_model_default_params = default_params
    if llm.model_params.use_extra_bufts:  # a llama-cpp-python that builds its parameters another way
        llm.close()
        raise MiniQwenError(f"llama-cpp-python {llama_cpp.__version__} loaded {gguf} with repacked weights: "
                            f"use the version {INSTALL_EXPORT} pins.")
    return llm


def greedy_and_logits(gguf: str, prompts: list[list[int]], new_tokens: int) -> dict:
    """For each prompt: llama.cpp's logits at every prompt position and its greedy continuation of `new_tokens`."""
    import numpy as np

    llm = load_llama(gguf)
    try:
        logits, greedy = [], []
        for prompt in prompts:
            llm.reset()
            llm.eval(prompt)
            logits.append(np.array(llm.scores[:len(prompt)], dtype=np.float32))
            llm.reset()  # generate from a clean state, not from the cache the line above left
            ids = []
            for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0):  # temp 0: llama.cpp's greedy sampler
                ids.append(int(token))
                if len(ids) == new_tokens:
                    break
            greedy.append(ids)
    finally:
        llm.close()  # before interpreter exit: its destructor then raises a harmless TypeError
    return {"logits": logits, "greedy": greedy}


# --------------------------------------------------------------------------- the child's side


def _import_target(target: str):
    module_name, _, function = target.rpartition(":")
    if module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, function)


def _encoder(folder: Path):
    arrays = []

    def encode(obj):
        import numpy as np

        if isinstance(obj, np.ndarray):
            name = f"array{len(arrays)}.npy"
            np.save(folder / name, obj)
            arrays.append(name)
            return {_ARRAY_KEY: name}
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"cannot pass a {type(obj).__name__} back from the llama.cpp child")

    return encode


def main(argv=None) -> int:
    request_file, result_file = map(Path, argv if argv is not None else sys.argv[1:])
    faulthandler.enable()  # a crash prints the Python line it happened under: the parent shows it
    request = json.loads(request_file.read_text())
    try:
        value = _import_target(request["target"])(**request["kwargs"])
    except MiniQwenError as err:
        print(f"\nerror: {err}", file=sys.stderr, flush=True)
        return 2
    result_file.write_text(json.dumps(value, default=_encoder(result_file.parent)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
