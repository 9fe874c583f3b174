#!/usr/bin/env bash
# GPU check: PT (1b, bf16, SDPA, block 1024, batch 8; with/without --chunked_loss and
# --gradient_checkpointing; and once through accelerate + DeepSpeed ZeRO-2 on 1 GPU), SFT and DPO
# (max_length 1024, mini_data), a few steps each: tokens/s, MFU and peak GPU memory.
#
# Run as (repository root, on the GPU machine; results and the log go to $OUT, else bench/):
#     bash bench/gpu_check.sh              # ~5-7 minutes on an H100; each sub-run under its own timeout
#     bash bench/gpu_check.sh --dry-run    # print the sub-runs' commands
# Without a CUDA GPU it says so and runs a tiny-model CPU smoke of the same sub-runs (exit 0).
#
# Packages the GPU image lacks travel as wheels in .whl/ (see bench/RESULTS.md for how they were
# made); they are installed with --no-deps into $SITE and put first on PYTHONPATH. The tokenizer
# (models/tokenizer/, git-ignored) travels as .whl/tokenizer/ when the checkout has none.
# Environment: PYTHON (python3), WHEEL_DIR (.whl), SITE (/tmp/site), GPU_CHECK_BUDGET (seconds for all
# sub-runs, 400), GPU_CHECK_WORK (/tmp/mini_qwen_gpu_check).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
exec > >(tee -a "$LOG") 2>&1
PYTHON=${PYTHON:-python3}
WHEEL_DIR=${WHEEL_DIR:-.whl}
SITE=${SITE:-/tmp/site}
DRY=()
[ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) in $ROOT, results in $OUT"

if compgen -G "$WHEEL_DIR/*.whl" > /dev/null; then
    echo "gpu_check: installing $(ls "$WHEEL_DIR"/*.whl | wc -l) carried wheels into $SITE"
    t0=$SECONDS
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEEL_DIR"/*.whl \
        || echo "gpu_check: WARNING: wheel install failed (exit $?); going on with what is installed"
    echo "gpu_check: wheels installed in $((SECONDS - t0)) s"
    export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
if [ ! -f models/tokenizer/tokenizer.json ] && [ -f "$WHEEL_DIR/tokenizer/tokenizer.json" ]; then
    mkdir -p models/tokenizer && cp -r "$WHEEL_DIR"/tokenizer/. models/tokenizer/
    echo "gpu_check: tokenizer copied from $WHEEL_DIR/tokenizer"
fi
export TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PYTHON - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "tokenizers", "pyarrow",
             "huggingface_hub", "pydantic"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')} ({module.__file__})")
    except Exception as err:
        print(f"  {name}: IMPORT FAILED: {type(err).__name__}: {err}")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU")
EOF

$PYTHON bench/gpu_check.py all --out "$OUT" ${DRY[@]+"${DRY[@]}"}
rc=$?
echo "gpu_check: done (exit $rc) in $SECONDS s; $OUT/gpu_results.md"
$PYTHON bench/t4_fit.py --out "$OUT/t4_fit" ${DRY[@]+"${DRY[@]}"} || echo "gpu_check: t4_fit: a demo stage did not fit 15 GiB in fp16 ($OUT/t4_fit/t4_fit.md)"
exit 0
