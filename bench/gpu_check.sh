#!/usr/bin/env bash
# GPU check (<= 5 minutes): the fused and the per-op reference supernet agree on CUDA, and their step times.
#
#   bash bench/gpu_check.sh            # needs a CUDA torch; falls back to the CPU (said in the output) without one
#
# 1. agreement: tests/test_search_fused.py's float64 comparison (outputs, weight and control gradients, BatchNorm
#    statistics, every sampler) run on the device -- HWNAS_TEST_DEVICE=cuda;
# 2. step times: bench/bench_search.py --supernet-only --torch-device cuda (CUDA events), reference vs fused vs
#    the largest single network, and samples/s per preset.
# 3. 1 vs 2 processes: bench/bench_distributed.py --torch-device cuda --nproc 2 (NCCL) where the machine has two
#    GPUs; with one GPU (NCCL wants one per rank) the same comparison on the CPU (gloo), said in the output.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HWNAS_CACHE=${HWNAS_CACHE:-$PWD/.hwnas-cache}
DEV=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
if [ "$DEV" = cpu ]; then
  echo "gpu_check: torch.cuda.is_available() is False -- running the same checks on the CPU (short)"
  STEPS=3
else
  "$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
  STEPS=20
fi
HWNAS_TEST_DEVICE=$DEV timeout 150 "$PY" -m pytest -q tests/test_search_fused.py -k "equals_reference"
timeout 150 "$PY" bench/bench_search.py --supernet-only --steps "$STEPS" --threads 1 --torch-device "$DEV" \
  --tables-dir "${TMPDIR:-/tmp}/hwnas-gpu-check"
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [ "$DEV" = cuda ] && [ "$NGPU" -ge 2 ]; then
  timeout 150 "$PY" bench/bench_distributed.py --torch-device cuda --nproc 2 --epochs 3
else
  echo "gpu_check: 1 vs 2 processes on the CPU (gloo): $NGPU CUDA device(s), NCCL needs one per rank"
  timeout 150 "$PY" bench/bench_distributed.py --nproc 2 --epochs 3 --train-limit 128
fi
