"""Benchmark numbagpt.cpu's attention and crossentropy kernels against the kernels they replaced, in
the same process: flash attention against the per-head (T, T) kernels (variant 2 of dev/attention.py;
bench/bench_attention.py adds PyTorch's SDPA and longer sequences), crossentropy against the per-row,
libm-exp kernel (variant 1 of dev/crossentropy.py).

Shapes: tiny (L=4, NH=4, C=128, B=8, T=256) and d12 (NH=12, C=768, B=4, T=64); crossentropy at
B·T rows of Vp=50304 logits (V=50257). Prints ms (best of --reps, taken round-robin: new, base,
new, ... so that load from other processes hits both alike), the speed-up and the largest
difference of the outputs.

    python bench/bench_kernels.py [--threads 2] [--reps 5] [--shapes tiny,d12] [--cpu]

--cpu times process CPU time (all threads summed) instead of wall time: steadier on shared cores, but
with more than one thread it also counts the pool's threads spinning after a parallel loop.
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
    ap.add_argument("--cpu", action="store_true",
                    help="CPU time of the process instead of wall time ("
                         "exact with one thread; with more it also counts threads spinning after a parallel loop)")
    args = ap.parse_args()

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    sys.path.insert(0, os.path.join(root, "dev"))
    import numba
    import numpy as np

    numba.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from numbagpt.cpu import (attention_backward, attention_forward, crossentropy_backward,
                              crossentropy_forward)
    from attention import bwd_head as att_bwd_base, fwd_head as att_fwd_base
    from crossentropy import bwd_base as ce_bwd_base, fwd_base as ce_fwd_base
    print(f"imports: {time.perf_counter() - t0:.2f} s; threads {args.threads}; "
          f"{'CPU' if args.cpu else 'wall'} time, best of {args.reps}")
    clock = time.process_time if args.cpu else time.perf_counter

    def race(fns, reps):
        """fns: list of (setup, call); returns the best time of each, round-robin."""
        best = [float("inf")] * len(fns)
        for setup, call in fns:  # warm-up / compile
            setup()
            call()
        for _ in range(reps):
            for j, (setup, call) in enumerate(fns):
                setup()
                t = clock()
                call()
                best[j] = min(best[j], clock() - t)
        return best

    def nothing():
        pass

    V, Vp = 50257, 50304
    shapes = []
    if "tiny" in args.shapes:
        shapes.append(("tiny", 8, 256, 128, 4))
    if "d12" in args.shapes:
        shapes.append(("d12", 4, 64, 768, 12))
    print(f"{'kernel':32s} {'new ms':>9s} {'base ms':>9s} {'speed-up':>9s}   max |new − base|")
    for name, B, T, C, NH in shapes:
        rng = np.random.default_rng(0)
        N = B * NH * T * T
        qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
        dout = rng.standard_normal(B * T * C).astype(np.float32)
        new_out = (np.zeros(B * T * C, np.float32), np.zeros(B * NH * T, np.float32))
        old_out = (np.zeros(B * T * C, np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32))
        (tn, tb) = race([(nothing, lambda: attention_forward(*new_out, qkv, B, T, C, NH)),
                         (nothing, lambda: att_fwd_base(*old_out, qkv, B, T, C, NH))], args.reps)
        err = np.abs(new_out[0] - old_out[0]).max()
        print(f"{name + ' attention_forward':32s} {tn * 1e3:9.2f} {tb * 1e3:9.2f} {tb / tn:8.1f}x   {err:.1e} (out)")
        att = old_out[2]
        g_new = np.zeros(B * T * 3 * C, np.float32)
        g_old = (np.zeros(B * T * 3 * C, np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32))
        (tn, tb) = race([(lambda: g_new.fill(0), lambda: attention_backward(g_new, dout, qkv, *new_out, B, T, C, NH)),
                         (lambda: g_old[0].fill(0), lambda: att_bwd_base(*g_old, dout, qkv, att, B, T, C, NH))],
                        args.reps)
        err = np.abs(g_new - g_old[0]).max()
        print(f"{name + ' attention_backward':32s} {tn * 1e3:9.2f} {tb * 1e3:9.2f} {tb / tn:8.1f}x   {err:.1e} (dinp)")

        BT = B * T
        logits = (3.0 * rng.standard_normal(BT * Vp)).astype(np.float32)
        targets = rng.integers(0, V, BT).astype(np.int32)
        dl = np.full(BT, 1.0 / BT, np.float32)
        losses = [np.zeros(BT, np.float32) for _ in range(2)]
        (tn, tb) = race([(nothing, lambda: crossentropy_forward(losses[0], logits, targets, B, T, V, Vp)),
                         (nothing, lambda: ce_fwd_base(losses[1], logits, targets, B, T, V, Vp))], args.reps)
        err = np.abs(losses[0] - losses[1]).max()
        print(f"{name + ' crossentropy_forward':32s} {tn * 1e3:9.2f} {tb * 1e3:9.2f} {tb / tn:8.1f}x   "
              f"{err:.1e} (losses)")
        d = [np.empty_like(logits) for _ in range(2)]
        (tn, tb) = race([(nothing, lambda: crossentropy_backward(d[0], dl, logits, targets, B, T, V, Vp)),
                         (nothing, lambda: ce_bwd_base(d[1], dl, logits, targets, B, T, V, Vp))], args.reps)
        err = np.abs(d[0] - d[1]).max()
        print(f"{name + ' crossentropy_backward':32s} {tn * 1e3:9.2f} {tb * 1e3:9.2f} {tb / tn:8.1f}x   "
              f"{err:.1e} (dlogits)")
        # in place (dlogits is logits), as the model calls it
        (tn, tb) = race([(lambda: np.copyto(d[0], logits),
                          lambda: crossentropy_backward(d[0], dl, d[0], targets, B, T, V, Vp)),
                         (lambda: np.copyto(d[1], logits),
                          lambda: ce_bwd_base(d[1], dl, d[1], targets, B, T, V, Vp))], args.reps)
        err = np.abs(d[0] - d[1]).max()
        print(f"{name + ' crossentropy_bwd in place':32s} {tn * 1e3:9.2f} {tb * 1e3:9.2f} {tb / tn:8.1f}x   "
              f"{err:.1e} (dlogits)")


if __name__ == "__main__":
    main()
