#!/usr/bin/env bash
# Builds .whl/ (git-ignored): everything bench/gpu_check.sh needs on a lent GPU machine that its image lacks,
# so that a GPU session spends its device minutes measuring, not packing.
#
#     bash bench/pack_gpu_carry.sh          # here, with the network to PyPI; then, on the GPU machine:
#     bash bench/gpu_check.sh               # carrying .whl (see bench/RESULTS.md, 4.3)
#
# What goes in (about 40 MB; the device tool carries at most 64 MiB with the working tree):
# - wheels for CPython 3.12 / manylinux x86-64 (the GPU image's python): transformers, trl, datasets at
#   requirements.txt's pins, liger-kernel at pyproject.toml's `gpu` extra pin, and the dependencies the image
#   lacks or has too old (listed below); DeepSpeed is built here as a pure-Python wheel (no ops prebuilt:
#   ZeRO-2 with Trainer's torch AdamW needs none).
# - tokenizer/: models/tokenizer (git-ignored; `python -m mini_qwen.tokenizer` builds it).
# Environment: PYTHON (.venv/bin/python, else python3), WHEEL_DIR (.whl), CARRY_PYTHON_VERSION (3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
DEST=${WHEEL_DIR:-.whl}
PYVER=${CARRY_PYTHON_VERSION:-3.12}

pin() {  # the version requirements.txt pins for a package: the one list of pins
    local version
    version=$(sed -n "s/^$1==\([^ #]*\).*/\1/p" requirements.txt)
    [ -n "$version" ] || { echo "pack_gpu_carry: requirements.txt pins no $1" >&2; exit 2; }
    echo "$version"
}
liger=$(sed -n 's/.*"liger-kernel==\([^"]*\)".*/\1/p' pyproject.toml)
[ -n "$liger" ] || { echo "pack_gpu_carry: pyproject.toml's gpu extra pins no liger-kernel" >&2; exit 2; }

# The GPU image (2026-11) has torch 2.11, accelerate 1.15, transformers 5.17, tokenizers, pyarrow, pandas,
# numpy, safetensors, huggingface_hub 1.33, typing-extensions, xxhash, triton. What it lacks, or has too old:
WHEELS=(
    "transformers==$(pin transformers)" "trl==$(pin trl)" "datasets==$(pin datasets)" "liger-kernel==$liger"
    "torch-optimi==$(pin torch-optimi)"
    dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0            # datasets
    hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5         # deepspeed
    annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0   # pydantic (needs >= 4.16)
    huggingface_hub==1.33.0   # transformers 5.24 wants >= 1.31 (the image's 5.17 did not); 2.x would need httpx2
)
mkdir -p "$DEST"
echo "pack_gpu_carry: ${#WHEELS[@]} wheels for CPython $PYVER into $DEST"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${WHEELS[@]}"

deepspeed=$(pin deepspeed)
if ! compgen -G "$DEST/deepspeed-$deepspeed-*.whl" > /dev/null; then
    echo "pack_gpu_carry: building deepspeed $deepspeed as a pure-Python wheel (DS_BUILD_OPS=0)"
    build=$(mktemp -d)
    "$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$build" "deepspeed==$deepspeed"
    DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$build"/deepspeed-*.tar.gz
    rm -rf "$build"
fi

# One version of each package: two make `pip install --no-index` on the GPU machine refuse the lot.
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr A-Z a-z | sort | uniq -d)
[ -z "$dupes" ] || { echo "pack_gpu_carry: more than one wheel of: $dupes (remove the old ones from $DEST)" >&2; exit 2; }

if [ -f models/tokenizer/tokenizer.json ]; then
    mkdir -p "$DEST/tokenizer"
    cp models/tokenizer/{tokenizer.json,tokenizer_config.json,chat_template.jinja} "$DEST/tokenizer/"
else
    echo "pack_gpu_carry: no models/tokenizer: build it first (python -m mini_qwen.tokenizer)" >&2; exit 2
fi
ls "$DEST"/*.whl | xargs -n1 basename
size=$(du -sm "$DEST" | cut -f1)
echo "pack_gpu_carry: $DEST holds $size MiB (the device tool carries at most 64 MiB with the working tree)"
[ "$size" -lt 60 ] || { echo "pack_gpu_carry: $DEST is too big to carry" >&2; exit 2; }
