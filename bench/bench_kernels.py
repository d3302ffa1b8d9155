"""Benchmark numbagpt.cpu's attention, crossentropy and matvec kernels against the kernels they
replaced, in the same process: flash attention against the per-head (T, T) kernels (variant 2 of
dev/attention.py; bench/bench_attention.py adds PyTorch's SDPA and longer sequences), crossentropy
against the per-row, libm-exp kernel (variant 1 of dev/crossentropy.py), and a decoding step's LM
head (one row through wte, Vp × C) by matvec_forward against the tiled matmul_forward that ran it
before.

Shapes: tiny (L=4, NH=4, C=128, B=8, T=256) and d12 (NH=12, C=768, B=4, T=64); crossentropy at
B·T rows of Vp=50304 logits (V=50257). Each pair is first run once from the same inputs and the
largest difference of their outputs printed (relative to the base's largest magnitude where that is
above 1; above TOL = 1e-4 the bench stops there, in one line, exit status 1); then both are timed as
every benchmark here times (bench/timing.py: the median of --reps rounds, new and base in turn, each
a block of back-to-back calls of about --block-ms timed as one), and the ms of a call and the
speed-up printed. Within a block the accumulating attention backward keeps adding into its dinp,
and the in-place crossentropy backward takes the last call's dlogits for logits: neither kernel's
time depends on the values.

    python bench/bench_kernels.py [--threads 2] [--reps 5] [--block-ms 25] [--clock cpu] [--shapes tiny,d12]
"""
import argparse
import os
import sys

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, Vp = 50257, 50304
TOL = 1e-4   # the pairs differ by float32 rounding in another order: ~1e-6 where they agree
SHAPES = {"tiny": (8, 256, 128, 4), "d12": (4, 64, 768, 12)}   # B, T, C, NH


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.add_threads(ap)
    timing.add_flags(ap)
    ap.add_argument("--shapes", default="tiny,d12", help="comma list of: tiny, d12")
    args = ap.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    for s in args.shapes:
        if s not in SHAPES:
            ap.error(f"--shapes: unknown shape {s!r} (expected tiny or d12)")
    return args


def race(median_of, reps, label, new, base, outputs):
    """One row: new() and base() once each, the largest difference of their outputs (a pair of arrays,
    named outputs[2]; above TOL the bench stops), then both timed."""
    new()
    base()
    err = timing.checked(f"bench_kernels.py: {label} ({outputs[2]}): new against base", outputs[0], outputs[1], TOL)
    tn, tb = median_of([new, base], reps)
    print(f"{label:32s} {tn * 1e3:9.2f} {tb * 1e3:9.2f} {tb / tn:8.1f}x   {err:.1e} ({outputs[2]})")


def attention_rows(name, B, T, C, NH, median_of, reps):
    """Flash attention's forward and backward against variant 2 of dev/attention.py."""
    import numpy as np
    from attention import bwd_head as base_backward, fwd_head as base_forward

    from numbagpt.cpu import attention_backward, attention_forward
    rng = np.random.default_rng(0)
    N = B * NH * T * T
    qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
    dout = rng.standard_normal(B * T * C).astype(np.float32)
    out, lse = np.zeros(B * T * C, np.float32), np.zeros(B * NH * T, np.float32)
    old = (np.zeros(B * T * C, np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32))  # out, preatt, att
    race(median_of, reps, f"{name} attention_forward", lambda: attention_forward(out, lse, qkv, B, T, C, NH),
         lambda: base_forward(*old, qkv, B, T, C, NH), (out, old[0], "out"))
    # dinp is accumulated into: both start from 0 for the check
    g, g_old = np.zeros(B * T * 3 * C, np.float32), np.zeros(B * T * 3 * C, np.float32)
    dpre, datt = np.zeros(N, np.float32), np.zeros(N, np.float32)
    race(median_of, reps, f"{name} attention_backward",
         lambda: attention_backward(g, dout, qkv, out, lse, B, T, C, NH),
         lambda: base_backward(g_old, dpre, datt, dout, qkv, old[2], B, T, C, NH), (g, g_old, "dinp"))


def crossentropy_rows(name, B, T, median_of, reps):
    """The crossentropy forward and backward (out of place, and in place as the model calls it) against
    variant 1 of dev/crossentropy.py."""
    import numpy as np
    from crossentropy import bwd_base, fwd_base

    from numbagpt.cpu import crossentropy_backward, crossentropy_forward
    rng = np.random.default_rng(0)
    BT = B * T
    logits = (3.0 * rng.standard_normal(BT * Vp)).astype(np.float32)
    targets = rng.integers(0, V, BT).astype(np.int32)
    dl = np.full(BT, 1.0 / BT, np.float32)
    losses = [np.zeros(BT, np.float32) for _ in range(2)]
    race(median_of, reps, f"{name} crossentropy_forward",
         lambda: crossentropy_forward(losses[0], logits, targets, B, T, V, Vp),
         lambda: fwd_base(losses[1], logits, targets, B, T, V, Vp), (*losses, "losses"))
    d = [np.empty_like(logits) for _ in range(2)]
    race(median_of, reps, f"{name} crossentropy_backward",
         lambda: crossentropy_backward(d[0], dl, logits, targets, B, T, V, Vp),
         lambda: bwd_base(d[1], dl, logits, targets, B, T, V, Vp), (*d, "dlogits"))
    for a in d:   # in place (dlogits is logits), as the model calls it
        np.copyto(a, logits)
    race(median_of, reps, f"{name} crossentropy_bwd in place",
         lambda: crossentropy_backward(d[0], dl, d[0], targets, B, T, V, Vp),
         lambda: bwd_base(d[1], dl, d[1], targets, B, T, V, Vp), (*d, "dlogits"))


def matvec_rows(name, C, median_of, reps):
    """A decoding step's LM head, one row of C through wte (Vp, C): matvec_forward against matmul_forward."""
    import numpy as np

    from numbagpt.cpu import matmul_forward, matvec_forward
    rng = np.random.default_rng(0)
    inp = rng.standard_normal(C).astype(np.float32)
    wte = (0.02 * rng.standard_normal(Vp * C)).astype(np.float32)
    out = [np.zeros(Vp, np.float32) for _ in range(2)]
    race(median_of, reps, f"{name} matvec_forward (LM head)", lambda: matvec_forward(out[0], inp, wte, None, 1, C, Vp),
         lambda: matmul_forward(out[1], inp, wte, None, 1, 1, C, Vp), (*out, "logits"))


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "dev"))
    import numba
    numba.set_num_threads(args.threads)
    print(f"threads {args.threads}; {timing.describe(args)}")
    median_of = timing.timers(args)
    print(f"{'kernel':32s} {'new ms':>9s} {'base ms':>9s} {'speed-up':>9s}   max |new − base| (relative)")
    for name in args.shapes:
        B, T, C, NH = SHAPES[name]
        attention_rows(name, B, T, C, NH, median_of, args.reps)
        crossentropy_rows(name, B, T, median_of, args.reps)
        matvec_rows(name, C, median_of, args.reps)


if __name__ == "__main__":
    main()
