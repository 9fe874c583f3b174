"""mini_qwen/pip_fetch.py: a pip download that cannot succeed ends in one message with pip's reason and the fix."""

import pytest

from mini_qwen.errors import MiniQwenError
from mini_qwen.pip_fetch import pip_download


def test_a_failed_download_names_the_command_the_purpose_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no index at all: fails at once, offline, without asking PyPI
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(MiniQwenError) as err:
        pip_download("llama-cpp-python==0.3.36", tmp_path, source=True, pattern="*.tar.gz",
                     what="llama.cpp's GGUF converter", fix="Fix: allow this machine to reach PyPI.")
    message = str(err.value)
    assert "pip download --no-deps --disable-pip-version-check --no-binary=:all: llama-cpp-python==0.3.36" in message
    assert "failed (exit 1) while fetching llama.cpp's GGUF converter" in message
    assert "No matching distribution found for llama-cpp-python==0.3.36" in message
    assert message.endswith("Fix: allow this machine to reach PyPI.")
    assert list(tmp_path.iterdir()) == []
