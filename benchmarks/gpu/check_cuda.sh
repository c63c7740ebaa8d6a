#!/usr/bin/env bash
# One prepared GPU check, sized for a single device call (about 7 minutes, at most ~10):
#   setup      hnswlib from .whl/ into /tmp/site (the sdist in .whl/sdist/ is built if the wheel
#              does not import), twotower built from this checkout and installed (a prebuilt wheel
#              in .whl/fallback/ is used if the build fails), nvidia-smi, versions
#   infonce    pytest tests/kernels/test_infonce.py (compiled Triton kernels on CUDA)   } run side
#   trainer    pytest tests/training tests/model tests/test_losses.py                   } by side
#              tests/test_evaluate.py tests/retrieval/test_hnsw.py tests/retrieval/test_exact_torch.py
#              tests/kernels/test_device_samplers.py tests/kernels/test_frequency_device.py (trainer device "auto" = CUDA)
#   train-cuda python -m benchmarks.gpu.train_cuda (AMP vs fp32 vs CPU training; alone on the GPU)
#   extras     python -m benchmarks.gpu.profile_train (where a CUDA training step's time goes), then
#              the C++ scorer's tests on the device's CPU (its SIMD dispatch; the paths listed)
# Every step runs under `timeout` and logs to $OUT/<step>.log; $OUT/summary.log closes the run.
# From the repository root:  bash benchmarks/gpu/check_cuda.sh   (carry .whl on the device call)
# Dry run without a GPU (in a throwaway environment: it pip-installs twotower into python3's):
#   TRAIN_CUDA_ARGS="--device cpu --tiny" PROFILE_TRAIN_ARGS="--device cpu --tiny --steps 5" \
#     OUT=/tmp/dry bash benchmarks/gpu/check_cuda.sh
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-/tmp/check_cuda_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

if [[ ${1:-} == setup ]]; then
  # -- the setup step itself (run by the main script below under `timeout`) --------------------
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton, numpy, numba; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| numpy', numpy.__version__, '| numba', numba.__version__, '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
  echo "--- hnswlib"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  if ! python3 -c "import hnswlib" 2>&1; then
    echo "hnswlib wheel does not import: building it from .whl/sdist"
    HNSWLIB_NO_NATIVE=1 python3 -m pip install -q --no-build-isolation --no-index --no-deps --no-cache-dir --upgrade \
      --target /tmp/site .whl/sdist/hnswlib-*.tar.gz
  fi
  python3 -c "import hnswlib; print('hnswlib', hnswlib.__file__)" || echo "SETUP: hnswlib missing (tests/retrieval/test_hnsw.py will fail or skip)"
  echo "--- twotower build (pip install --no-build-isolation --no-deps --no-index .)"
  b0=$(date +%s)
  if python3 -m pip install -q --no-build-isolation --no-deps --no-index . ; then
    echo "twotower built from source in $(( $(date +%s) - b0 )) s"
  else
    echo "SETUP: building twotower from source FAILED after $(( $(date +%s) - b0 )) s; installing .whl/fallback (built elsewhere)"
    python3 -m pip install -q --no-deps --no-index --force-reinstall .whl/fallback/twotower-*.whl || exit 3
  fi
  (cd /tmp && python3 -c "import twotower, twotower._C; print('twotower', twotower.__version__, 'from', twotower.__file__)") || exit 4
  echo "--- imported from the repository root (what pytest sees):"
  python3 -c "import twotower, twotower.kernels, hnswlib; print(twotower.__file__, twotower.kernels.__file__)"
  exit 0
fi

RCDIR=$(mktemp -d)
T0=$(date +%s)

# -- helpers -------------------------------------------------------------------------------------
# run_step NAME LIMIT_S QUIET CMD...: runs CMD under timeout, logs to $OUT/NAME.log (also to stdout
# unless QUIET=1), records exit status and seconds.
run_step() {
  local name=$1 limit=$2 quiet=$3; shift 3
  local s0 rc
  s0=$(date +%s)
  echo "=== $name (limit ${limit} s): $*"
  if [[ $quiet == 1 ]]; then
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
  else
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
  fi
  echo "$rc $(( $(date +%s) - s0 ))" > "$RCDIR/$name"
  echo "=== $name: exit $rc after $(( $(date +%s) - s0 )) s$([[ $rc == 124 || $rc == 137 ]] && echo ' (TIMED OUT)')"
  return "$rc"
}

PYTEST=(python3 -m pytest -q -p no:cacheprovider --durations=5)
if python3 -c "import pytest_timeout" 2>/dev/null; then PYTEST+=(--timeout=150); fi

# -- 1. setup ------------------------------------------------------------------------------------
if ! run_step setup 150 0 bash "$0" setup; then
  echo "setup failed: no tests run"
fi

if [[ $(cut -d' ' -f1 "$RCDIR/setup") == 0 ]]; then
  # -- 2 + 3. the two test runs side by side (correctness only; nothing here is timed) ------------
  run_step infonce-tests 180 1 "${PYTEST[@]}" tests/kernels/test_infonce.py &
  pid=$!
  run_step trainer-tests 180 1 "${PYTEST[@]}" tests/training tests/model tests/test_losses.py \
    tests/test_evaluate.py tests/retrieval/test_hnsw.py tests/retrieval/test_exact_torch.py \
    tests/kernels/test_device_samplers.py tests/kernels/test_frequency_device.py
  wait "$pid"
  for name in infonce-tests trainer-tests; do
    echo "--- $name: last lines"
    tail -n 25 "$OUT/$name.log"
  done
  # -- 4. training comparison, alone on the GPU ----------------------------------------------------
  run_step train-cuda 200 0 python3 -m benchmarks.gpu.train_cuda --budget-s 150 --out "$OUT" ${TRAIN_CUDA_ARGS:-}
  # -- 5. where a CUDA training step's time goes (host-bound in the first run), then the C++ scorer's
  #       tests on this machine's CPU (another CPU model: its SIMD dispatch). One log: $OUT returns at
  #       most 8 files.
  run_step extras 210 0 bash -c "python3 -m benchmarks.gpu.profile_train ${PROFILE_TRAIN_ARGS:-}; \
    python3 -c \"import twotower; print('scorer SIMD paths on this CPU:', twotower.available_simd())\"; \
    ${PYTEST[*]} tests/retrieval/test_exact.py tests/retrieval/test_exact_screening.py tests/retrieval/test_exact_errors.py tests/retrieval/test_exact_build.py"
fi

# -- summary -------------------------------------------------------------------------------------
{
  echo "=== summary ($(( $(date +%s) - T0 )) s in all)"
  for name in setup infonce-tests trainer-tests train-cuda extras; do
    if [[ -f $RCDIR/$name ]]; then
      read -r rc secs < "$RCDIR/$name"
      line=""
      if [[ $name == *tests || $name == extras ]]; then
        line=$(grep -E "^=*.*[0-9]+ (passed|failed|error)" "$OUT/$name.log" | tail -n 1)
      fi
      echo "$name: exit $rc, ${secs} s $([[ $rc == 124 || $rc == 137 ]] && echo '(TIMED OUT) ')$line"
      if [[ $name == *tests || $name == extras ]]; then
        grep -E "^(FAILED|ERROR) " "$OUT/$name.log" | head -n 40
      fi
    else
      echo "$name: not run"
    fi
  done
} | tee "$OUT/summary.log"
rm -rf "$RCDIR"
