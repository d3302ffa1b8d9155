"""Kernel experiments behind numbagpt/cpu/crossentropy.py: variants timed side by side (round-robin,
best of N) against the baseline (the libm-exp version the kernels started from, kept here).

    python dev/crossentropy_experiments.py [--threads 2] [--rounds 5] [--shapes tiny,d12]

Findings (2 shared cores, load 4-7: absolute ms swing 2-3x between runs, same-run ratios hold):
  * The exp: math.exp on float32 is a call to libm's expf, and a loop around a call does not
    vectorise. fastmath.exp_nonpos (Cephes expf as arithmetic, 1.01 ulp) makes the exp-sum loop
    vectorise: tiny fwd 790 -> 420 ms with the original flat indexing, -> 270 ms with row views.
  * Flat `logits[row + i]` indexing keeps Numba's negative-index wraparound select in the loop;
    a row view `z = logits[row:row + V]` indexed from 0 does not (as found for matmul): 1.6x.
  * The sum: float64 accumulation of float32 exps costs a conversion and narrower vectors:
    fwd 268 ms (f64) vs 161 ms (f32) at tiny. An all-float32 vectorised sum is 6.7e-6 off in the
    loss (each of ~32 lanes sums ~1600 terms); float32 sums of 512-element chunks added in float64
    run at float32 speed with the float64 version's error (1.9e-6, rounding of the result).
  * The row max: `if z > m` is a float select chain LLVM does not vectorise without 'nnan'
    (230 ms); 8 running maxima 134 ms; a 16-lane max in a local array 139 ms; integer max of
    order-preserving keys of the bits (fastmath.max_f32, exact, NaN propagates) 34 ms vs 39 ms
    for 8 maxima in a quieter run. The max pass is the one that streams the row from memory.
  * One pass over memory (online softmax per 512/2048-chunk: chunk max, rescale the running sum
    when the max grows; the backward scales each chunk by exp(m_chunk - m) at the end): no gain
    over max pass + exp pass (the row, 200 KB, is in L2 for the second pass): 73-110 vs 75 ms.
  * Backward: exp + store + sum, then a scaling pass: 353 ms; exp twice (sum pass, then
    exp*scale store pass): 370-410 ms. Kept the first.
  * In place (dlogits is logits, as the model calls it): a loop reading z[i] and writing d[i] of
    the same memory fails LLVM's runtime overlap check and runs the scalar loop: 520 vs 120 ms
    in a training step. The exps go through a thread-local chunk buffer, then are copied.
  Result (bench/bench_kernels.py, 2 threads): tiny fwd ~7x, bwd ~4.5x; d12 ~5.5x both.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
from numba import njit, prange

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from numbagpt.cpu.fastmath import exp_nonpos  # noqa: E402

_FM = {'reassoc', 'contract'}


# ------------------------------------------------------------------ baseline (the original kernels)
@njit(cache=True)
def _row_max8(a, start, n):
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = a[start]
    n8 = n - n % 8
    for i in range(start, start + n8, 8):
        m0 = max(m0, a[i])
        m1 = max(m1, a[i + 1])
        m2 = max(m2, a[i + 2])
        m3 = max(m3, a[i + 3])
        m4 = max(m4, a[i + 4])
        m5 = max(m5, a[i + 5])
        m6 = max(m6, a[i + 6])
        m7 = max(m7, a[i + 7])
    for i in range(start + n8, start + n):
        m0 = max(m0, a[i])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@njit(parallel=True, cache=True)
def fwd_base(losses, logits, targets, B, T, V, Vp):
    for bt in prange(B * T):
        row = bt * Vp
        maxval = _row_max8(logits, row, V)
        s = 0.0
        for i in range(V):
            s += math.exp(logits[row + i] - maxval)
        losses[bt] = math.log(s) + maxval - logits[row + targets[bt]]


@njit(parallel=True, cache=True)
def bwd_base(dlogits, dlosses, logits, targets, B, T, V, Vp):
    for bt in prange(B * T):
        row = bt * Vp
        maxval = _row_max8(logits, row, V)
        s = 0.0
        for i in range(V):
            e = math.exp(logits[row + i] - maxval)
            dlogits[row + i] = e
            s += e
        dloss = dlosses[bt]
        scale = np.float32(dloss / s)
        for i in range(V):
            dlogits[row + i] *= scale
        for i in range(V, Vp):
            dlogits[row + i] = 0.0
        dlogits[row + targets[bt]] -= dloss


# ------------------------------------------------------------------ max variants (on a row view)
@njit(fastmath=_FM)
def _max_if(z, n):
    m = z[0]
    for i in range(n):
        if z[i] > m:
            m = z[i]
    return m


@njit(fastmath=_FM)
def _max_8(z, n):
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = z[0]
    n8 = n - n % 8
    for i in range(0, n8, 8):
        m0 = max(m0, z[i])
        m1 = max(m1, z[i + 1])
        m2 = max(m2, z[i + 2])
        m3 = max(m3, z[i + 3])
        m4 = max(m4, z[i + 4])
        m5 = max(m5, z[i + 5])
        m6 = max(m6, z[i + 6])
        m7 = max(m7, z[i + 7])
    for i in range(n8, n):
        m0 = max(m0, z[i])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@njit(fastmath=_FM)
def _max_blk(z, n):
    """Max of 16-wide blocks in a local array: a lane-wise loop LLVM vectorises (no reduction)."""
    W = 16
    acc = np.empty(W, np.float32)
    for j in range(W):
        acc[j] = z[0]
    nb = n - n % W
    for i in range(0, nb, W):
        for j in range(W):
            v = z[i + j]
            acc[j] = v if v > acc[j] else acc[j]
    m = z[0]
    for j in range(W):
        m = acc[j] if acc[j] > m else m
    for i in range(nb, n):
        m = z[i] if z[i] > m else m
    return m


@njit(inline='always')
def _order_key(k):
    """int32 bits of a float32 -> an int32 with the same order as the floats (NaN above +inf)."""
    return k ^ ((k >> np.int32(31)) & np.int32(0x7fffffff))


@njit
def _max_int(z, n):
    """Max via integer keys: an integer max reduction vectorises without any fastmath flag."""
    zi = z.view(np.int32)
    m = np.int32(-2147483648)
    for i in range(n):
        m = max(m, _order_key(zi[i]))
    return np.array([_order_key(m)], np.int32).view(np.float32)[0]


@njit(parallel=True, fastmath=_FM)
def fwd_max_only(out, logits, B, T, V, Vp, which):
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        if which == 0:
            out[bt] = _max_8(z, V)
        elif which == 1:
            out[bt] = _max_if(z, V)
        elif which == 2:
            out[bt] = _max_blk(z, V)
        else:
            out[bt] = _max_int(z, V)


# ------------------------------------------------------------------ fast-exp variants
@njit(parallel=True, fastmath=_FM)
def fwd_fast_flat(losses, logits, targets, B, T, V, Vp):
    """Baseline structure (flat indices), exp_nonpos, float64 sum."""
    for bt in prange(B * T):
        row = bt * Vp
        maxval = _row_max8(logits, row, V)
        s = 0.0
        for i in range(V):
            s += exp_nonpos(logits[row + i] - maxval)
        losses[bt] = math.log(s) + maxval - logits[row + targets[bt]]


@njit(parallel=True, fastmath=_FM)
def fwd_fast_view(losses, logits, targets, B, T, V, Vp):
    """Row views indexed from 0, blocked max, exp_nonpos, float64 sum."""
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        maxval = _max_blk(z, V)
        s = 0.0
        for i in range(V):
            s += exp_nonpos(z[i] - maxval)
        losses[bt] = math.log(s) + maxval - z[targets[bt]]


@njit(parallel=True, fastmath=_FM)
def fwd_fast_view32(losses, logits, targets, B, T, V, Vp):
    """As fwd_fast_view, float32 sum (vectorised: 16+ partial sums)."""
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        maxval = _max_blk(z, V)
        s = np.float32(0.0)
        for i in range(V):
            s += exp_nonpos(z[i] - maxval)
        losses[bt] = math.log(s) + maxval - z[targets[bt]]


@njit(parallel=True, fastmath=_FM)
def bwd_fast_view(dlogits, dlosses, logits, targets, B, T, V, Vp):
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        d = dlogits[bt * Vp:bt * Vp + Vp]
        maxval = _max_blk(z, V)
        s = 0.0
        for i in range(V):
            e = exp_nonpos(z[i] - maxval)
            d[i] = e
            s += e
        dloss = dlosses[bt]
        scale = np.float32(dloss / s)
        for i in range(V):
            d[i] *= scale
        for i in range(V, Vp):
            d[i] = 0.0
        d[targets[bt]] -= dloss


@njit(parallel=True, fastmath=_FM)
def bwd_fast_2pass(dlogits, dlosses, logits, targets, B, T, V, Vp):
    """Sum first (no store), then exp again and scale into dlogits: two exps, one store pass."""
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        d = dlogits[bt * Vp:bt * Vp + Vp]
        maxval = _max_blk(z, V)
        s = 0.0
        for i in range(V):
            s += exp_nonpos(z[i] - maxval)
        dloss = dlosses[bt]
        scale = np.float32(dloss / s)
        tz = z[targets[bt]]
        for i in range(V):
            d[i] = exp_nonpos(z[i] - maxval) * scale
        for i in range(V, Vp):
            d[i] = 0.0
        d[targets[bt]] = exp_nonpos(tz - maxval) * scale - dloss


# ------------------------------------------------------------------ one pass over DRAM: chunked online softmax
@njit(fastmath=_FM)
def _sum_exp32(z, n, m):
    """Σ exp(z[i] − m) over a short chunk, in float32 (vectorised: each lane sums a few terms)."""
    s = np.float32(0.0)
    for i in range(n):
        s += exp_nonpos(z[i] - m)
    return s


@njit(fastmath=_FM)
def _store_sum_exp32(d, z, n, m):
    s = np.float32(0.0)
    for i in range(n):
        e = exp_nonpos(z[i] - m)
        d[i] = e
        s += e
    return s


@njit(parallel=True, fastmath=_FM)
def fwd_chunk(losses, logits, targets, B, T, V, Vp, CH):
    """Per chunk of CH logits (in L1): its max, rescale the running float64 sum if the max grew,
    then add the chunk's float32 exp-sum. The row is read from memory once."""
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        m = np.float32(-np.inf)
        s = 0.0
        for c0 in range(0, V, CH):
            n = min(CH, V - c0)
            zc = z[c0:c0 + n]
            cm = _max_blk(zc, n)
            if cm > m:
                s *= math.exp(np.float64(m) - np.float64(cm))
                m = cm
            s += _sum_exp32(zc, n, m)
        losses[bt] = math.log(s) + m - z[targets[bt]]


@njit(parallel=True, fastmath=_FM)
def fwd_view_chunksum(losses, logits, targets, B, T, V, Vp, CH):
    """Max pass, then float32 exp-sums of CH-chunks added in float64."""
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        m = _max_blk(z, V)
        s = 0.0
        for c0 in range(0, V, CH):
            n = min(CH, V - c0)
            s += _sum_exp32(z[c0:c0 + n], n, m)
        losses[bt] = math.log(s) + m - z[targets[bt]]


@njit(parallel=True, fastmath=_FM)
def bwd_chunk(dlogits, dlosses, logits, targets, B, T, V, Vp, CH):
    """Pass 1 per chunk: chunk max, running max m (float64 sum rescaled when it grows), exps
    against the m of the time stored in dlogits; pass 2: each chunk scaled by dloss/s·exp(m_c − m)."""
    nch = (V + CH - 1) // CH
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        d = dlogits[bt * Vp:bt * Vp + Vp]
        mc = np.empty(nch, np.float32)
        tz = z[targets[bt]]
        m = np.float32(-np.inf)
        s = 0.0
        for c in range(nch):
            c0 = c * CH
            n = min(CH, V - c0)
            zc = z[c0:c0 + n]
            cm = _max_blk(zc, n)
            if cm > m:
                s *= math.exp(np.float64(m) - np.float64(cm))
                m = cm
            mc[c] = m
            s += _store_sum_exp32(d[c0:c0 + n], zc, n, m)
        dloss = dlosses[bt]
        scale = np.float64(dloss) / s
        for c in range(nch):
            c0 = c * CH
            n = min(CH, V - c0)
            f = np.float32(scale * math.exp(np.float64(mc[c]) - np.float64(m)))
            dc = d[c0:c0 + n]
            for i in range(n):
                dc[i] *= f
        for i in range(V, Vp):
            d[i] = 0.0
        d[targets[bt]] = np.float32(scale * math.exp(np.float64(tz) - np.float64(m))) - dloss


@njit(parallel=True, fastmath=_FM)
def bwd_view_chunksum(dlogits, dlosses, logits, targets, B, T, V, Vp, CH):
    for bt in prange(B * T):
        z = logits[bt * Vp:bt * Vp + V]
        d = dlogits[bt * Vp:bt * Vp + Vp]
        m = _max_blk(z, V)
        s = 0.0
        for c0 in range(0, V, CH):
            n = min(CH, V - c0)
            s += _store_sum_exp32(d[c0:c0 + n], z[c0:c0 + n], n, m)
        dloss = dlosses[bt]
        scale = np.float32(dloss / s)
        for i in range(V):
            d[i] *= scale
        for i in range(V, Vp):
            d[i] = 0.0
        d[targets[bt]] -= dloss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shapes", default="tiny,d12")
    ap.add_argument("--only", default="", help="comma list of substrings of case names")
    args = ap.parse_args()
    import numba
    numba.set_num_threads(args.threads)

    shapes = []
    if "tiny" in args.shapes:
        shapes.append(("tiny", 8, 256))
    if "d12" in args.shapes:
        shapes.append(("d12", 4, 64))
    V, Vp = 50257, 50304
    for name, B, T in shapes:
        rng = np.random.default_rng(0)
        logits = (3 * rng.standard_normal(B * T * Vp)).astype(np.float32)
        targets = rng.integers(0, V, B * T).astype(np.int32)
        dl = np.full(B * T, 1.0 / (B * T), np.float32)
        ref = np.zeros(B * T, np.float32)
        fwd_base(ref, logits, targets, B, T, V, Vp)
        dref = np.empty_like(logits)
        bwd_base(dref, dl, logits, targets, B, T, V, Vp)
        mx = np.zeros(B * T, np.float32)

        cases = [
            ("fwd base", lambda o: fwd_base(o, logits, targets, B, T, V, Vp)),
            ("fwd fast flat", lambda o: fwd_fast_flat(o, logits, targets, B, T, V, Vp)),
            ("fwd fast view", lambda o: fwd_fast_view(o, logits, targets, B, T, V, Vp)),
            ("fwd fast view f32sum", lambda o: fwd_fast_view32(o, logits, targets, B, T, V, Vp)),
            ("fwd chunk 512", lambda o: fwd_chunk(o, logits, targets, B, T, V, Vp, 512)),
            ("fwd chunk 2048", lambda o: fwd_chunk(o, logits, targets, B, T, V, Vp, 2048)),
            ("fwd view chunksum 512", lambda o: fwd_view_chunksum(o, logits, targets, B, T, V, Vp, 512)),
            ("max 8acc", lambda o: fwd_max_only(mx, logits, B, T, V, Vp, 0)),
            ("max if", lambda o: fwd_max_only(mx, logits, B, T, V, Vp, 1)),
            ("max blk16", lambda o: fwd_max_only(mx, logits, B, T, V, Vp, 2)),
            ("max int", lambda o: fwd_max_only(mx, logits, B, T, V, Vp, 3)),
        ]
        bcases = [
            ("bwd base", lambda d: bwd_base(d, dl, logits, targets, B, T, V, Vp)),
            ("bwd fast view", lambda d: bwd_fast_view(d, dl, logits, targets, B, T, V, Vp)),
            ("bwd chunk 512", lambda d: bwd_chunk(d, dl, logits, targets, B, T, V, Vp, 512)),
            ("bwd chunk 2048", lambda d: bwd_chunk(d, dl, logits, targets, B, T, V, Vp, 2048)),
            ("bwd view chunksum 512", lambda d: bwd_view_chunksum(d, dl, logits, targets, B, T, V, Vp, 512)),
            ("bwd fast 2pass", lambda d: bwd_fast_2pass(d, dl, logits, targets, B, T, V, Vp)),
        ]
        if args.only:
            keep = lambda n: any(w in n for w in args.only.split(","))  # noqa: E731
            cases = [c for c in cases if keep(c[0])]
            bcases = [c for c in bcases if keep(c[0])]
        outs = {n: np.zeros(B * T, np.float32) for n, _ in cases}
        douts = {n: np.empty_like(logits) for n, _ in bcases}
        best = {n: float("inf") for n, _ in cases + bcases}
        for n, f in cases:
            f(outs[n])
        for n, f in bcases:
            f(douts[n])
        for _ in range(args.rounds):
            for n, f in cases:
                t0 = time.perf_counter()
                f(outs[n])
                best[n] = min(best[n], time.perf_counter() - t0)
            for n, f in bcases:
                t0 = time.perf_counter()
                f(douts[n])
                best[n] = min(best[n], time.perf_counter() - t0)
        print(f"--- {name}: B*T={B * T}, V={V}")
        for n, _ in cases:
            err = np.abs(outs[n] - ref).max() if n.startswith("fwd") else float("nan")
            print(f"{n:24s} {best[n] * 1e3:8.1f} ms   max|loss - base| {err:.2e}")
        for n, _ in bcases:
            err = np.abs(douts[n] - dref).max()
            print(f"{n:24s} {best[n] * 1e3:8.1f} ms   max|dlogits - base| {err:.2e}")


if __name__ == "__main__":
    main()
