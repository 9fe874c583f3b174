#!/usr/bin/env bash
# GPU check of mini_qwen's three stages on one GPU: a bare PyTorch loop (bf16 weights, and fp32 master weights +
# bf16 autocast) as the reference; PT 1b (block 1024, batch 8) in the default recipe (fp32 master + bf16
# autocast), --pure_bf16, accelerate + DeepSpeed ZeRO-2 on 1 GPU and each speed lever (Liger, --chunked_loss,
# torch.compile, batch 16, gradient checkpointing); SFT packed rows (default) / padding-free / padded / bucketed
# and DPO at max_length 1024.
# Each: tokens/s, MFU, peak GPU memory and the ratio to the bare fp32-master loop; the throughput targets last.
# The rows and their flags: bench/gpu_check_lib/plan.py; the report: bench/gpu_check_lib/report.py.
#
# Run as (repository root, on the GPU machine; results and the log go to $OUT, else bench/):
#     bash bench/gpu_check.sh              # at most 8 minutes, installs included; sub-runs in order of
#                                          # importance, the ones past the budget are listed as skipped
#     GPU_CHECK_ONLY=pt_liger,pt_compile bash bench/gpu_check.sh   # a second call for the rest
#     bash bench/gpu_check.sh --dry-run    # print the sub-runs' commands
# Without a CUDA GPU it says so and runs a tiny-model CPU smoke of the same sub-runs.
# Exit status: that of bench/gpu_check.py (0: every sub-run that ran is ok; 1: one failed or timed out, the
# report still written; 2: a bad GPU_CHECK_ONLY), else that of bench/t4_fit.py when it ran and failed.
#
# Packages the GPU image lacks travel as wheels in .whl/ (see bench/RESULTS.md for how they were
# made); they are installed with --no-deps into $SITE and put first on PYTHONPATH. The tokenizer
# (models/tokenizer/, git-ignored) travels as .whl/tokenizer/ when the checkout has none.
# Environment: PYTHON (python3), WHEEL_DIR (.whl), SITE (/tmp/site), GPU_CHECK_TOTAL (seconds for the whole
# script, 480), GPU_CHECK_BUDGET (seconds for the sub-runs; default: what TOTAL leaves), GPU_CHECK_ONLY (comma-
# separated sub-run names), GPU_CHECK_SFT_DATA / GPU_CHECK_DPO_DATA (real-length rows; default mini_data/),
# GPU_CHECK_T4_FIT=1 (also run bench/t4_fit.py afterwards), GPU_CHECK_PYTEST=1 (also run the gpu-marked tests
# afterwards, GPU_CHECK_PYTEST_SECONDS 300), GPU_CHECK_WORK (/tmp/mini_qwen_gpu_check).
# liger-kernel (the `gpu` extra of pyproject.toml) travels as a wheel in .whl/ too; without it the Liger rows
# fail with one line saying so, the others run, and the check exits 1.
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
import importlib, importlib.metadata, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "tokenizers", "pyarrow",
             "huggingface_hub", "pydantic", "triton", "liger_kernel", "optimi", "flash_attn"):
    try:
        module = importlib.import_module(name)
        try:  # liger_kernel has no __version__: its installed metadata says which wheel was loaded
            version = getattr(module, "__version__", None) or importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        print(f"  {name} {version} ({module.__file__})")
    except Exception as err:
        print(f"  {name}: IMPORT FAILED: {type(err).__name__}: {err}")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU")
EOF

# The whole script must end inside GPU_CHECK_TOTAL seconds (480: 8 minutes), installs included: the sub-runs
# get what is left after the installs, less 40 s for the report and the process exits.
TOTAL=${GPU_CHECK_TOTAL:-480}
export GPU_CHECK_BUDGET=${GPU_CHECK_BUDGET:-$((TOTAL - SECONDS - 40))}
echo "gpu_check: $GPU_CHECK_BUDGET s for the sub-runs${GPU_CHECK_ONLY:+ (only: $GPU_CHECK_ONLY)}"
$PYTHON bench/gpu_check.py all --out "$OUT" ${DRY[@]+"${DRY[@]}"}
rc=$?
echo "gpu_check: done (exit $rc) in $SECONDS s; $OUT/gpu_results.md"
if [ "${GPU_CHECK_T4_FIT:-0}" = 1 ]; then  # a separate question (does the demo fit a 16 GB T4?); not in the 8 minutes
    $PYTHON bench/t4_fit.py --out "$OUT/t4_fit" ${DRY[@]+"${DRY[@]}"}
    t4_rc=$?
    if [ "$t4_rc" -ne 0 ]; then
        echo "gpu_check: t4_fit: exit $t4_rc: a demo stage failed or did not fit 15 GiB in fp16 ($OUT/t4_fit/t4_fit.md)"
        [ "$rc" -ne 0 ] || rc=$t4_rc
    fi
fi
# The gpu-marked tests (real flash-attn varlen kernel on packed rows, the QLoRA fp32 adapter, ...): skipped on CPU
# machines, so a GPU session runs them here. Not in the 8 minutes either; their exit status joins the check's.
if [ "${GPU_CHECK_PYTEST:-0}" = 1 ]; then
    timeout "${GPU_CHECK_PYTEST_SECONDS:-300}" $PYTHON -m pytest -q -rs -m gpu -p no:cacheprovider \
        tests/test_flash_varlen.py tests/test_lora.py tests/test_hardware.py tests/test_speed.py ${DRY[@]+--collect-only} \
        > "$OUT/gpu_pytest.log" 2>&1
    py_rc=$?
    echo "gpu_check: gpu-marked tests: exit $py_rc ($OUT/gpu_pytest.log): $(tail -n 1 "$OUT/gpu_pytest.log")"
    [ "$py_rc" -eq 0 ] || [ "$rc" -ne 0 ] || rc=$py_rc
fi
exit "$rc"
