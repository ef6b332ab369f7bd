#!/usr/bin/env bash
# Engine speed on a bare GPU machine (see bench/gpu_check.py): the real architecture with random
# weights, bf16, LR 320x180 and 480x270, eager and compiled, 1-8 sessions, in a time budget.
# Needs torch/torchvision/transformers; diffusers may come as wheels in .whl/. Writes
# ${OUT:-.}/gpu_check.json. Usage: bash bench/gpu_check.sh [--small] [--budget SECONDS]
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
exec python3 -m bench.gpu_check --out "${OUT:-.}" "$@"
