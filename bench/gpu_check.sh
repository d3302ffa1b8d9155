#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU: the CUDA tests on the device, bin/test_gpt2 --device cuda,
# 20 d12 training steps checked against the CPU, the per-kernel profile and the matmul against cuBLAS,
# all written to one directory (about 5 minutes; what each part does: bench/gpu_check.py).
#   usage: bash bench/gpu_check.sh [OUT_DIR]        (PYTHON=... to pick the interpreter)
# Without a GPU it says so and exits 0.
set -u
cd "$(dirname "$0")/.." || exit 1
exec "${PYTHON:-python3}" bench/gpu_check.py ${1:+--out "$1"}
