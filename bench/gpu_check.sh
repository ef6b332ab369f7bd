#!/usr/bin/env bash
# Engine speed on a bare GPU machine (see bench/gpu_check.py): the real architecture with random
# weights, bf16, LR 320x180 and 480x270, eager and compiled, 1-8 sessions, in a time budget.
# Needs torch/torchvision/transformers; diffusers may come as wheels in .whl/. Writes
# ${OUT:-.}/gpu_check.json, then runs the CUDA-only tests when pytest is there.
# Usage: bash bench/gpu_check.sh [--small] [--budget SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
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
python3 -m bench.gpu_check --out "${OUT:-.}" "$@" || status=$?
if [ "${1:-}" != --small ] && python3 -c "import pytest" 2>/dev/null; then
  # The tests that need CUDA (no host syncs in a step, CUDA graphs agree, event timing, pinned
  # transfers); they are skipped on CPU machines.
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_acceleration.py \
    tests/test_timing.py -k "cuda or synchronise or never_waits" || status=$?
fi
exit $status
