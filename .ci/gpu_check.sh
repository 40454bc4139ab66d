#!/usr/bin/env bash
# The GPU checks of issue 12 in one call on a CUDA machine (about 5-8 minutes on one H200):
#   1. the model tests on the GPU (MINCONV_TEST_DEVICE=cuda: every tensor and model on CUDA,
#      `auto` = the compiled Triton kernel) and tests/test_triton.py's CUDA tests;
#   2. benchmarks/gpu.py (training step, rollout, kernel vs copy; --repeats 5);
#   3. minconv train (fp32, then bf16) -> rollout -> evaluate on CUDA on the bundled sample, and
#      the bf16 run's best validation RMSE against the fp32 run's (target: within 2%).
# Before, on a machine with PyPI: `bash .ci/gpu_wheels.sh` (packages the GPU image lacks -> .whl/);
# for the official code's rows, a checkout of AdaptiveAILab/minconvrnns in .official/ (ignored).
# On the device: device.run(command="bash .ci/gpu_check.sh", carry=[".whl", ".official"],
# timeout_s=600). Logs and results land in $OUT (gpu.json -> benchmarks/results/gpu.json).
# A CPU smoke run of step 3 (the command lines): WHEELS=none DEVICE=cpu EPOCHS=1 MAX_TIME=30 STEPS=3 \
#   TRAIN_ARGS="--width 4 --layers 1 --set data.stride=40 --set data.val_stride=40" bash .ci/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-6}
MAX_TIME=${MAX_TIME:-80}
TRAIN_ARGS=${TRAIN_ARGS:-}
STEPS=${STEPS:-123}
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
failed=()

if [[ $STEPS == *1* ]]; then
    echo "== 1. tests on CUDA"
    MINCONV_TEST_DEVICE=cuda timeout 200 $PY -m pytest -q -p no:cacheprovider \
        tests/test_triton.py tests/test_models.py tests/test_scan.py >"$OUT/tests.log" 2>&1 ||
        failed+=(tests)
    tail -n 25 "$OUT/tests.log"
fi

if [[ $STEPS == *2* ]]; then
    echo "== 2. benchmark"
    official=()
    [ -d .official ] && official=(--official .official)
    timeout 280 $PY benchmarks/gpu.py --repeats 5 "${official[@]}" --out "$OUT/gpu.json" \
        >"$OUT/bench.log" 2>&1 || failed+=(bench)
    tail -n 60 "$OUT/bench.log"
fi

[[ $STEPS == *3* ]] || { echo "== failed: ${failed[*]:-none}"; [ ${#failed[@]} -eq 0 ]; exit; }
echo "== 3. train -> rollout -> evaluate on $DEVICE, fp32 and bf16"
runs=/tmp/gpu_check_runs
rm -rf "$runs"
for precision in fp32 bf16; do
    timeout 100 $PY -m minconv_cli train --out "$runs/$precision" --device "$DEVICE" --epochs "$EPOCHS" \
        --precision "$precision" --set train.max_time="$MAX_TIME" $TRAIN_ARGS --json --quiet \
        >"$OUT/train_$precision.json" 2>"$OUT/train_$precision.err" || failed+=("train_$precision")
done
timeout 60 $PY -m minconv_cli rollout "$runs/bf16/model.pt" sample_data/navier_stokes_16x16.nc \
    --steps 30 --subset split=test --out "$runs/forecast.zarr" --device "$DEVICE" --precision bf16 --json --quiet \
    >"$OUT/rollout.json" 2>"$OUT/rollout.err" || failed+=(rollout)
timeout 60 $PY -m minconv_cli evaluate "$runs/forecast.zarr" sample_data/navier_stokes_16x16.nc \
    --out "$runs/scores" --json >"$OUT/evaluate.json" 2>"$OUT/evaluate.err" || failed+=(evaluate)
$PY - "$OUT" <<'PY' || failed+=(bf16_rmse)
import json, sys
out = sys.argv[1]
best = {p: json.load(open(f"{out}/train_{p}.json"))["best"]["val_rmse_cl"] for p in ("fp32", "bf16")}
ratio = best["bf16"] / best["fp32"]
print(f"best val_rmse_cl: fp32 {best['fp32']:.5f}, bf16 {best['bf16']:.5f}, ratio {ratio:.4f} (target <= 1.02)")
sys.exit(0 if ratio <= 1.02 else 1)
PY

echo "== failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
