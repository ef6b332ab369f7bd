#!/usr/bin/env bash
# Engine speed on a bare GPU machine: the real architecture with random weights (official shapes;
# weights do not change speed), bf16, LR 320x180 (720p out). Prints a table and writes JSON to
# ${OUT:-.}. Needs torch/torchvision/transformers; diffusers may come as wheels in .whl/.
# Usage: bash bench/gpu_check.sh [small]   ("small": a tiny checkpoint on CPU, so it cannot rot)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
if ! python3 -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
cli() { python3 -m server "$@"; }
ckpt=$(mktemp -d)/ckpt
if [ "${1:-}" = small ]; then
  cli random-checkpoint "$ckpt" --size tiny
  args=(--device cpu --dtype fp32 --size 32x32 --frames 4 --warmup 1 --flow-model raft_small)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  cli random-checkpoint "$ckpt" --size full
  args=(--device cuda --dtype bf16 --size 320x180 --frames 30 --warmup 5)
fi
common=(--model "$ckpt" --flow-weights random "${args[@]}")
cli bench "${common[@]}" --flow-resolution hr --sessions 1,2,4 --baseline --json "$out/engine_hr.json"
cli bench "${common[@]}" --flow-resolution lr --sessions 1,4 --json "$out/engine_lr.json"
