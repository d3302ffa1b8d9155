"""Benchmark numbagpt.cpu.matmul against np.dot (OpenBLAS sgemm) in the same process.

For each shape: forward (out = inp·Wᵀ), dinp (dout·W) and dweight (doutᵀ·inp), each 2·BT·C·OC FLOP;
prints ms, GFLOP/s of ours and of BLAS, and the ratio ours/BLAS. Timings are the best of >= --reps runs
(more for fast ops), taken round-robin (ours, BLAS, ours, ...) so that load from other processes
hits both alike; on a shared machine compare the ratio column rather than absolute numbers.

    python bench/bench_matmul.py [--threads 2] [--reps 5] [--shapes tiny,d12] [--quick] [--clock cpu]

The machine's OpenBLAS may be pinned by OPENBLAS_CORETYPE; unset it for this command only if you
want BLAS's best kernel. OPENBLAS_NUM_THREADS is set to --threads before NumPy loads.
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", default="tiny,d12", help="comma list of: tiny, d12")
    ap.add_argument("--quick", action="store_true", help="LM-head shapes only")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time divided by --threads; steadier than wall time "
                         "when other jobs share the cores, exact with --threads 1 (with more threads "
                         "it also counts threads spinning at the end of a parallel loop)")
    args = ap.parse_args()

    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # before numpy is imported
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numba
    import numpy as np

    numba.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from numbagpt.cpu.matmul import matmul_backward, matmul_forward
    print(f"import numbagpt.cpu.matmul: {time.perf_counter() - t0:.2f} s; threads {args.threads}; "
          f"clock {args.clock}")

    # (name, BT, C, OC)
    shapes = []
    if "tiny" in args.shapes:
        shapes += [("tiny lm_head", 2048, 128, 50304), ("tiny qkv", 2048, 128, 384),
                   ("tiny attproj", 2048, 128, 128), ("tiny fc", 2048, 128, 512),
                   ("tiny fcproj", 2048, 512, 128)]
    if "d12" in args.shapes:
        shapes += [("d12 qkv", 256, 768, 2304), ("d12 attproj", 256, 768, 768),
                   ("d12 fc", 256, 768, 3072), ("d12 fcproj", 256, 3072, 768),
                   ("d12 lm_head", 256, 768, 50304)]
    if args.quick:
        shapes = [s for s in shapes if "lm_head" in s[0]]

    # warm-up compile on a small problem (cached after the first run)
    t0 = time.perf_counter()
    x = np.ones(6 * 5, np.float32)
    w = np.ones(7 * 5, np.float32)
    o = np.zeros(6 * 7, np.float32)
    matmul_forward(o, x, w, np.ones(7, np.float32), 2, 3, 5, 7)
    matmul_forward(o, x, w, None, 2, 3, 5, 7)
    matmul_backward(np.zeros_like(x), np.zeros_like(w), np.zeros(7, np.float32), o, x, w, 2, 3, 5, 7)
    print(f"first calls (compile or cache load): {time.perf_counter() - t0:.2f} s")

    if args.clock == "cpu":
        def clock():
            return time.process_time() / args.threads
    else:
        clock = time.perf_counter

    def best_of(fns, reps, budget=0.4):
        """Best wall time of each of fns, run round-robin; at least `reps` rounds, more (up to 100)
        for fast ops, until about `budget` seconds per function (minima need samples)."""
        best = [float("inf")] * len(fns)
        for n, f in enumerate(fns):
            f()  # warm-up (and, for np.dot, thread start-up)
            t = clock()
            f()
            best[n] = clock() - t
        rounds = max(reps, min(100, int(budget / max(best))))
        for _ in range(rounds):
            for n, f in enumerate(fns):
                t = clock()
                f()
                best[n] = min(best[n], clock() - t)
        return best

    rng = np.random.default_rng(0)
    hdr = (f"{'shape':14s} {'BT':>5s} {'C':>5s} {'OC':>6s} {'op':8s} {'ours ms':>9s} {'GF/s':>6s} "
           f"{'BLAS ms':>9s} {'GF/s':>6s} {'ratio':>6s}")
    print(hdr)
    print("-" * len(hdr))
    totals = [0.0, 0.0]
    for name, BT, C, OC in shapes:
        inp = rng.standard_normal(BT * C, dtype=np.float32)
        weight = rng.standard_normal(OC * C, dtype=np.float32) * 0.02
        bias = rng.standard_normal(OC, dtype=np.float32) if "lm_head" not in name else None
        out = np.empty(BT * OC, np.float32)
        dout = rng.standard_normal(BT * OC, dtype=np.float32)
        dinp = np.zeros(BT * C, np.float32)
        dweight = np.zeros(OC * C, np.float32)
        X, W, D = inp.reshape(BT, C), weight.reshape(OC, C), dout.reshape(BT, OC)
        Y, DX, DW = out.reshape(BT, OC), dinp.reshape(BT, C), dweight.reshape(OC, C)
        # the three products separately; matmul_backward does dinp and dweight in one call, so
        # ours for "dinp"/"dweight" is timed through its two halves, _backward_dinp/_backward_dweight
        from numbagpt.cpu import matmul as mm
        ours = {
            "forward": lambda: matmul_forward(out, inp, weight, bias, 1, BT, C, OC),
            "dinp": lambda: mm._backward_dinp(dinp, dout, weight, BT, C, OC),
            "dweight": lambda: mm._backward_dweight(dweight, dout, inp, BT, C, OC),
        }
        blas = {
            "forward": lambda: np.dot(X, W.T, out=Y),
            "dinp": lambda: np.dot(D, W, out=DX),
            "dweight": lambda: np.dot(D.T, X, out=DW),
        }
        flop = 2.0 * BT * C * OC
        for op in ("forward", "dinp", "dweight"):
            t_ours, t_blas = best_of([ours[op], blas[op]], args.reps)
            totals[0] += t_ours
            totals[1] += t_blas
            print(f"{name:14s} {BT:5d} {C:5d} {OC:6d} {op:8s} {t_ours*1e3:9.2f} {flop/t_ours/1e9:6.1f} "
                  f"{t_blas*1e3:9.2f} {flop/t_blas/1e9:6.1f} {t_blas/t_ours:6.2f}", flush=True)
    print(f"total: ours {totals[0]*1e3:.1f} ms, BLAS {totals[1]*1e3:.1f} ms, ratio {totals[1]/totals[0]:.2f}"
          " (ratio = BLAS time / our time = our GFLOP/s / BLAS GFLOP/s)")


if __name__ == "__main__":
    main()
