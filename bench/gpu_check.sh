#!/usr/bin/env bash
# Engine speed on a bare GPU machine (see bench/gpu_check.py): the real architecture with random
# weights, bf16, LR 320x180 and 480x270, eager and compiled, 1-8 sessions, in a time budget.
# Needs torch/torchvision/transformers; diffusers may come as wheels in .whl/. First runs the
# CUDA-only tests when pytest is there (they compile with inductor: TEST_BUDGET seconds, default
# 240), then the benchmark in what is left of TOTAL_BUDGET (default 540 s, under 9 minutes in all);
# writes ${OUT:-.}/gpu_check.json. --small: the benchmark's plan on the CPU only (for the tests).
# Usage: bash bench/gpu_check.sh [--small] [--budget SECONDS (the benchmark's)]
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL_BUDGET=${TOTAL_BUDGET:-540}
TEST_BUDGET=${TEST_BUDGET:-240}
if ! python3 -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "${1:-}" != --small ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
status=0
problems=()  # repeated at the end, where they are not lost above the benchmark's output
report() { echo "gpu_check: $1" >&2; problems+=("$1"); }
if [ "${1:-}" != --small ] && python3 -c "import pytest" 2>/dev/null; then
  # The tests that need CUDA (no host syncs in a step, CUDA graphs agree, event timing, pinned
  # transfers, RAFT); they are skipped on CPU machines. No -x: one failure must not hide the rest.
  tests=(tests/engine/test_acceleration.py tests/engine/test_timing.py)
  for optional in tests/engine/test_raft.py tests/engine/test_host_syncs.py; do
    if [ -f "$optional" ]; then tests+=("$optional"); fi
  done
  echo "CUDA tests (${TEST_BUDGET} s at most): ${tests[*]}"
  test_status=0
  timeout -k 10 "$TEST_BUDGET" python3 -m pytest -q -p no:cacheprovider --durations=10 "${tests[@]}" \
    -k "cuda or synchronise or never_waits or test_raft or test_host_syncs" || test_status=$?
  if [ "$test_status" -eq 124 ] || [ "$test_status" -eq 137 ]; then
    report "TIMEOUT: the CUDA tests step was stopped after ${TEST_BUDGET} s"
  elif [ "$test_status" -ne 0 ]; then
    report "the CUDA tests step failed (pytest exit code $test_status)"
  fi
  [ "$test_status" -eq 0 ] || status=$test_status
fi
bench_budget=$((TOTAL_BUDGET - SECONDS - 10))  # 10 s for the script's own start and the summary
if [ "$bench_budget" -lt 60 ]; then bench_budget=60; fi
echo "benchmark budget: ${bench_budget} s"
bench_status=0
python3 -m streamvsr.bench.gpu_check --out "${OUT:-.}" --budget "$bench_budget" "$@" || bench_status=$?
if [ "$bench_status" -ne 0 ]; then
  report "the benchmark step failed (exit code $bench_status)"
  status=$bench_status
fi
for problem in ${problems[@]+"${problems[@]}"}; do echo "gpu_check: $problem" >&2; done
exit $status
