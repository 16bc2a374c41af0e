#!/usr/bin/env bash
# One script for a GPU session (from the repository root; the GPU image has torch but no pip):
#   cp -r ../shared/data/cifar-mini data/cifar-mini        # here, before the run; data/ is git-ignored
#   run:  OUT=$OUT bash benchmarks/gpu_check.sh data/cifar-mini [FULL_CIFAR10_DIR]
# Writes $OUT/gpu_check.json (correctness of the CUDA path, bf16/fp16, compile, throughput of each
# model, an end-to-end run, fast94 time to 94% when the full data is there) and $OUT/gpu_check.log.
set -euo pipefail
DATA=${1:?usage: gpu_check.sh CIFAR10_DIR [FULL_CIFAR10_DIR]}
FULL=${2:-}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=src
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python3 benchmarks/gpu_check.py --data-dir "$DATA" ${FULL:+--full-data "$FULL"} 2>&1 | tee "$OUT/gpu_check.log"
