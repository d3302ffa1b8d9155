"""The float32 FMA peak of this CPU as Numba reaches it: every thread runs 12 independent chains of
vector fused multiply-adds on numbagpt/cpu/simd.py's widest vectors (16 lanes: zmm with AVX-512), with
no loads or stores in the loop. It is the ceiling of any fp32 kernel here, GEMM or attention:

    python bench/bench_fma_peak.py [--threads 2] [--seconds 2]

GFLOP/s = 2 · lanes · 12 · iterations · threads / seconds (best of 3). Compare a kernel's GFLOP/s
(bench/bench_matmul.py, bench/bench_attention.py, bin/profile_gpt2) with it; measured on the 2-core
AMD EPYC (Zen 4) VM: 231-233 GFLOP/s at 2 threads, 116 at 1.
"""
import argparse
import time

import numba
import numpy as np
from numba import njit, prange

from numbagpt.cpu.matmul import cpu_features
from numbagpt.cpu.simd import vector_ops

import timing

LANES = 16 if "avx512f" in cpu_features() else 8
_ops = vector_ops(LANES)
load, store, fma, add = _ops.load, _ops.store, _ops.fma, _ops.add


@njit(parallel=True)
def _chains(a, n, threads):
    """12 independent FMA chains of n steps per thread (more than latency x throughput: the FMA units
    never wait); the sums are stored so that nothing is optimised away."""
    for u in prange(threads):
        c0, c1, c2, c3 = load(a, 0), load(a, LANES), load(a, 2 * LANES), load(a, 3 * LANES)
        c4, c5, c6, c7 = c0, c1, c2, c3
        c8, c9, c10, c11 = c0, c1, c2, c3
        x, y = load(a, 4 * LANES), load(a, 5 * LANES)
        for _ in range(n):
            c0, c1, c2, c3 = fma(x, y, c0), fma(x, y, c1), fma(x, y, c2), fma(x, y, c3)
            c4, c5, c6, c7 = fma(x, y, c4), fma(x, y, c5), fma(x, y, c6), fma(x, y, c7)
            c8, c9, c10, c11 = fma(x, y, c8), fma(x, y, c9), fma(x, y, c10), fma(x, y, c11)
        s = add(add(add(c0, c1), add(c2, c3)), add(add(c4, c5), add(c6, c7)))
        store(a, (6 + u) * LANES, add(s, add(add(c8, c9), add(c10, c11))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.add_threads(p)
    p.add_argument("--seconds", type=float, default=2.0, help="about how long each of the 3 runs lasts")
    args = p.parse_args(argv)
    numba.set_num_threads(args.threads)
    a = np.full((6 + args.threads) * LANES, 1e-8, np.float32)
    _chains(a, 10, args.threads)                      # compile
    n = 1_000_000
    t = time.perf_counter()
    _chains(a, n, args.threads)
    n = max(n, int(n * args.seconds / (time.perf_counter() - t)))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        _chains(a, n, args.threads)
        best = min(best, time.perf_counter() - t)
    gflops = 2 * LANES * 12 * n * args.threads / best / 1e9
    print(f"fp32 FMA peak: {gflops:.1f} GFLOP/s ({args.threads} threads, {LANES}-lane vectors, best of 3)")


if __name__ == "__main__":
    main()
