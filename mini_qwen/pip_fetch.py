"""Files taken out of packages on PyPI with pip's own `pip download` (never installed).

The offline tokenizer reads Qwen's BPE ranks from the `dashscope` wheel; the GGUF export runs
llama.cpp's converter from the `llama-cpp-python` source distribution. Both go through
`pip_download`, so a mirror set in PIP_INDEX_URL (or pip.conf) is used, and a failure reads as
one message with pip's last lines and the fix.
"""

import subprocess
import sys
from pathlib import Path

from mini_qwen.errors import MiniQwenError

REACH_PYPI = "allow this machine to reach PyPI (or set PIP_INDEX_URL to a mirror)"


def pip_download(requirement: str, dest: Path, *, source: bool, pattern: str, what: str, fix: str) -> Path:
    """Download `requirement` (no dependencies) into `dest` and return the one file matching `pattern`.

    source: the source distribution (`--no-binary :all:`) rather than a wheel. `what` says what the file is
    for and `fix` what the user can do instead; both go into the message when pip fails."""
    kind = ["--no-binary=:all:"] if source else ["--only-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", *kind,
           requirement, "-d", str(dest)]
    shown = " ".join(cmd)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise MiniQwenError(f"`{shown}` did not finish within 15 minutes ({what}). {fix}") from None
    except OSError as err:
        raise MiniQwenError(f"could not run `{shown}`: {err}. {fix}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
        if "No module named pip" in tail:
            fix = "Fix: install pip into this environment (`python -m ensurepip`). " + fix.removeprefix("Fix: ")
        raise MiniQwenError(f"`{shown}` failed (exit {proc.returncode}) while fetching {what}:\n{tail}\n{fix}")
    found = sorted(Path(dest).glob(pattern))
    if not found:
        raise MiniQwenError(f"`{shown}` succeeded but left no {pattern} in {dest}. {fix}")
    return found[0]
