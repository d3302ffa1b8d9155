#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU: d12 training checked against the CPU (the headline, first),
# every CUDA test on the device, bin/test_gpt2 --device cuda, the per-kernel profile and the matmul
# against cuBLAS, all written to one directory within a 360 s budget (--budget; what each part does:
# bash bench/gpu_check.sh --help, or bench/gpu_check.py).
#   usage: bash bench/gpu_check.sh [OUT_DIR] [--budget S] [--parts KEY,...] [...]   (PYTHON=... picks the interpreter)
# Every argument goes to bench/gpu_check.py (a relative OUT_DIR is relative to the current directory).
# Without a GPU it says so and exits 0; a missing Python module exits 2, naming it.
set -u
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
