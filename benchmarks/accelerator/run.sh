#!/usr/bin/env bash
# The HRNet-W48 figures only an accelerator gives, in one call of the device tool (< 10 min).
# Steps, in order of priority (the default runs them all):
#   train_bf16_none train_f32_none train_bf16_trunk train_f32_trunk
#       train step time, peak memory and MFU at 1024x2048, batch 1, the recipe's RMI loss
#       (benchmarks/train_throughput.py --full, one process per variant: its own peak memory)
#   vs_reference   the float32 train step (CE) and 3-scale inference against the PyTorch
#                  reference on the same GPU (benchmarks/vs_reference.py --device cuda)
#   inference      latency of 1 scale and 4 scales {0.25,0.5,1,2}, bfloat16 (benchmarks/inference.py)
#   data_vs_step   the Grain data pipeline against the step (benchmarks/data_vs_step.py --full)
# Each step runs under its own time limit and is skipped when less than 45 s of the overall
# budget (BUDGET_S, default 560 s) is left; results land in $OUT as soon as they exist (at most
# 8 files come back: train_throughput.json merges the variants; log.txt has the environment).
#
#   bash benchmarks/accelerator/run.sh prepare              # here: wheels for the GPU machine -> .whl/
#   bash benchmarks/accelerator/run.sh [STEP ...]           # there (carry .whl): install, run
#   bash benchmarks/accelerator/run.sh --dry-run [STEP ...] # here, CPU: the same steps, tiny model
#
# The device tool's call: run(command="bash benchmarks/accelerator/run.sh", carry=[".whl"],
# timeout_s=600); a second call can name the steps the first one skipped.
# The GPU image has jax (CUDA), flax, optax, orbax, torch, absl, etils, tqdm and PyYAML; the
# project's other imports (grain, ml-collections and their needs) travel as wheels.
set -u -o pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ALL_STEPS="train_bf16_none train_f32_none train_bf16_trunk train_f32_trunk vs_reference inference data_vs_step"
# name==version, Python 3.12 manylinux x86-64: the versions this checkout's tests run with.
WHEELS="grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 portpicker==1.6.0 importlib-resources==7.1.0"

prepare() {
  mkdir -p .whl .git/info
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # shellcheck disable=SC2086
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS || exit 1
  ls -l .whl && du -sh .whl
}
if [ "${1:-}" = prepare ]; then prepare; exit; fi

DRY=0
if [ "${1:-}" = --dry-run ]; then DRY=1; shift; fi
STEPS=${*:-$ALL_STEPS}
OUT=${OUT:-/tmp/accelerator_out}
TMP=$(mktemp -d)
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$(date +%s)
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
  BUDGET_S=${BUDGET_S:-7200}; LIMIT=900
  MODEL=hrnet_tiny_ocr_mscale; REF=hrnet_tiny; SIZE=64x128; REPS=1; JAXFLAGS="--opt0 on"; TORCH_DEVICE=cpu
  DATA="--image-size 128x256 --crop 64x128 --dtype float32 --workers 0 --steps 2"
else
  BUDGET_S=${BUDGET_S:-560}; LIMIT=180
  MODEL=hrnet48_ocr_mscale; REF=hrnet48; SIZE=1024x2048; REPS=5; JAXFLAGS=""; TORCH_DEVICE=cuda
  DATA="--workers 8 --steps 10"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
    export PYTHONPATH=/tmp/site
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

{
  date; uname -m; echo "cores $(nproc)"; python3 --version; echo "steps: $STEPS"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices()); print('flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
  python3 -c "import grain, ml_collections; print('grain and ml_collections import')"
} >> "$LOG" 2>&1
cat "$LOG"

# run_step NAME LIMIT_S COMMAND...: COMMAND under `timeout`, if enough of the budget is left.
run_step() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if [ "$left" -lt 45 ]; then echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, $(date +%T)): $*" | tee -a "$LOG"
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v "slow_operation_alarm\|^\*\*\*\|Very slow compile" | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} after $(($(date +%s) - t0))s" | tee -a "$LOG"
}

cd "$ROOT/benchmarks" || exit 1
for name in $STEPS; do
  case $name in
    train_*)
      dtype=${name#train_}; dtype=${dtype%_*}; remat=${name##*_}
      [ "$dtype" = f32 ] && dtype=float32; [ "$dtype" = bf16 ] && dtype=bfloat16
      # $JAXFLAGS is a list of words
      # shellcheck disable=SC2086
      run_step "$name" "$LIMIT" python3 train_throughput.py --full --model "$MODEL" --size "$SIZE" --batch 1 \
        --variants "$dtype:$remat" --repeats "$REPS" $JAXFLAGS --out-dir "$TMP" --name "$name"
      # shellcheck disable=SC2046
      python3 "$ROOT/benchmarks/accelerator/merge.py" "$OUT/train_throughput.json" \
        $(for v in $ALL_STEPS; do echo "$TMP/$v.json"; done) | tee -a "$LOG" ;;
    vs_reference)  # torch and JAX in one process: no JAX preallocation, so that torch finds memory
      # shellcheck disable=SC2086
      run_step "$name" "$LIMIT" env XLA_PYTHON_CLIENT_PREALLOCATE=false python3 vs_reference.py --model "$REF" \
        --size "$SIZE" --batch 1 --reps "$REPS" --device "$TORCH_DEVICE" --threads 2 $JAXFLAGS \
        --out-dir "$OUT" --name vs_reference ;;
    inference)
      # shellcheck disable=SC2086
      run_step "$name" "$LIMIT" python3 inference.py --full --model "$MODEL" --size "$SIZE" \
        --scale-sets 1.0 0.25,0.5,1.0,2.0 --outputs logits --repeats "$REPS" $JAXFLAGS --out-dir "$OUT" --name inference ;;
    data_vs_step)
      # shellcheck disable=SC2086
      run_step "$name" "$LIMIT" python3 data_vs_step.py --full --model "$MODEL" $DATA $JAXFLAGS \
        --data-dir "$TMP/fake_cityscapes" --out-dir "$OUT" --name data_vs_step ;;
    *) echo "unknown step $name; expected some of: $ALL_STEPS" | tee -a "$LOG"; exit 2 ;;
  esac
done
echo "== done after $(($(date +%s) - START))s; results in $OUT:" | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
rm -rf "$TMP"
