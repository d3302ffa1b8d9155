"""The CPU GELU lab: numbered versions of gelu_forward / gelu_backward, each checked against NumPy
float64 before it is timed, side by side in one process, as the benchmarks time (bench/timing.py).

    python dev/gelu/gelu_cpu.py [--n 8388608] [--threads 2] [--reps 7] [--block-ms 25] [--clock cpu]

Versions:
  1  libm tanhf (math.tanh on float32): the first kernel. A call per element: the loop stays scalar.
  2  numbagpt/cpu/gelu.py (production): tanh_f32 from numbagpt/cpu/fastmath.py, an odd polynomial
     below |u| = 0.625 and (1 − e)/(1 + e) with the vectorised exp above; LLVM vectorises the loop.

Measured on the 2-core AVX-512 machine (loaded by other jobs): tanh alone over 16.7M floats, 2
threads, ~35-45 ms (v2) vs ~680-970 ms (libm), i.e. ~20x; GELU forward/backward themselves then
become memory-bound passes. Accuracy of tanh_f32: <= 1.51 ulp over every float32 in [0, 10]
(exhaustive), exact ±1 beyond, ±0 and NaN kept (tests/test_cpu_gelu.py).
"""
import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]
import timing  # noqa: E402  (bench/timing.py)


def libm_versions():
    import numpy as np
    from numba import njit, prange
    S, K, K3 = np.float32(math.sqrt(2.0 / math.pi)), np.float32(0.044715), np.float32(3 * 0.044715)
    H, ONE = np.float32(0.5), np.float32(1.0)

    @njit(parallel=True)
    def forward(out, inp, N):
        for i in prange(N):
            x = inp[i]
            out[i] = H * x * (ONE + math.tanh(S * (x + K * x * x * x)))

    @njit(parallel=True)
    def backward(dinp, dout, inp, N):
        for i in prange(N):
            x = inp[i]
            t = math.tanh(S * (x + K * x * x * x))
            dinp[i] += (H * (ONE + t) + x * H * (ONE - t * t) * S * (ONE + K3 * x * x)) * dout[i]

    return forward, backward


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=timing.positive_int, default=8 * 1024 * 1024, help="elements (default 8388608)")
    timing.add_threads(ap)
    timing.add_flags(ap, reps=7)
    args = ap.parse_args()
    import numba
    import numpy as np
    numba.set_num_threads(args.threads)
    from numbagpt.cpu import gelu
    versions = {1: libm_versions(), 2: (gelu.gelu_forward, gelu.gelu_backward)}
    rng = np.random.default_rng(0)
    N = args.n
    x = (rng.standard_normal(N) * 3).astype(np.float32)
    dout = rng.standard_normal(N).astype(np.float32)
    x64 = x.astype(np.float64)
    u = math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)
    t = np.tanh(u)
    ref_f = 0.5 * x64 * (1 + t)
    ref_b = (0.5 * (1 + t) + 0.5 * x64 * (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x64 ** 2)) * dout
    fns = {}
    for v, (fwd, bwd) in versions.items():
        out = np.full(N, np.nan, np.float32)   # an element the forward skips fails the check
        dinp = np.zeros(N, np.float32)
        fwd(out, x, N)
        bwd(dinp, dout, x, N)
        ef, eb = np.abs(out - ref_f).max(), np.abs(dinp - ref_b).max()
        if not (ef <= 1e-5 and eb <= 1e-5):   # `ef > 1e-5` is False for a NaN
            sys.exit(f"version {v}: max abs error {ef:.2e} / {eb:.2e} against float64: wrong, not timed")
        print(f"v{v}: max abs error forward {ef:.2e}, backward {eb:.2e}")
        fns[f"v{v} forward"] = lambda fwd=fwd, out=out: fwd(out, x, N)
        fns[f"v{v} backward"] = lambda bwd=bwd, dinp=dinp: bwd(dinp, dout, x, N)
    print(f"{args.threads} threads, N={N}, {timing.describe(args)}")
    for k, t in zip(fns, timing.timers(args)(list(fns.values()), args.reps)):
        print(f"{k:12s} {1e3 * t:8.2f} ms")


if __name__ == "__main__":
    main()
