#!/usr/bin/env bash
# bf16 distillation steps on a CUDA GPU: tokens/s and peak device memory for none / mse_proj / cka at
# bert-base (12L d768 -> 4L d384, batch 16 x 256) and bart-large (12+12 d1024 -> 3+3 d512, batch 8,
# source 512, target 128) shapes, random weights. Needs a CUDA build of torch; about 3 minutes on an H200.
#
#     benchmarks/gpu_check.sh              # with .venv/bin/python, or PYTHON=... benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs a GPU')"
timeout 300 "$PYTHON" benchmarks/bench_step.py --shapes bert-base bart-large --variants none mse_proj cka \
    --bf16 --warmup 3 --steps 10
