#!/usr/bin/env bash
# One command from a fresh clone to a trained demo (or a passing test suite):
#   bash setup.sh          # = bash setup.sh demo: install, build the tokenizer, run the whole demo pipeline
#   bash setup.sh test     # install (+ requirements-test.txt: llama.cpp for the GGUF export, trackers), run the tests
#   bash setup.sh install  # only install
# It creates .venv/ (Python >= 3.10), installs requirements.txt (torch 2.13.0 first: the CPU build
# on a machine without CUDA, the CUDA build on a GPU machine), then builds the Qwen2.5 tokenizer
# offline into models/tokenizer unless models/qwen2.5-0.5b-instruct already has the official one.
# Re-running skips the install when requirements.txt has not changed. mini_qwen itself is installed
# editable (`pip install -e . --no-deps`, see pyproject.toml), so demo/utils/bench scripts can import it.
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-demo}"
case "$what" in demo|test|install) ;; *) echo "usage: bash setup.sh [demo|test|install]" >&2; exit 2 ;; esac

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing requirements (a few minutes the first time)"
  "$VPY" -m pip install -q --disable-pip-version-check "$(grep -E '^torch==' requirements.txt)"
  "$VPY" -m pip install -q --disable-pip-version-check -r requirements.txt
  "$VPY" -m pip check
  echo "$want" > "$stamp"
fi
# mini_qwen itself, editable (its dependencies are the pins above): demo/, utils/ and bench/ scripts import it.
# Redone when pyproject.toml or the checkout's path changes (the install records both).
pkg_stamp=.venv/.mini_qwen.sha256
pkg_want="$( (cat pyproject.toml; pwd) | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ]; then
  echo "== installing mini_qwen (pip install -e .)"
  isolation=""; "$VPY" -c "import setuptools" 2>/dev/null && isolation="--no-build-isolation"  # works offline
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps $isolation -e .
  echo "$pkg_want" > "$pkg_stamp"
fi

# What only the tests need (requirements-test.txt: the GGUF export's llama.cpp, built from source in minutes on
# 2 cores, and the optional trackers), so the demo's install stays as fast as it is. A failed build stops here
# with pip's error: the export tests never run silently without it.
if [ "$what" = test ]; then
  test_stamp=.venv/.requirements-test.sha256
  test_want="$(cat requirements.txt requirements-test.txt requirements-export.txt | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$test_stamp" 2>/dev/null)" != "$test_want" ]; then
    echo "== installing requirements-test.txt (builds llama.cpp from source the first time: ~4 min on 2 cores)"
    "$VPY" -m pip install -q --disable-pip-version-check -r requirements-test.txt
    "$VPY" -m pip check
    echo "$test_want" > "$test_stamp"
  fi
fi

echo "== tokenizer"
"$VPY" -m mini_qwen.tokenizer

case "$what" in
  demo) echo "== demo pipeline: PT -> SFT -> DPO -> GRPO -> eval report"; "$VPY" demo/demo_all.py ;;
  test) echo "== tests"; "$VPY" -m pytest -q ;;
  install) echo "== installed; activate with: source .venv/bin/activate" ;;
esac
