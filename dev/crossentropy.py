"""The crossentropy lab (numbagpt/cpu/crossentropy.py): numbered variants of crossentropy_forward and
crossentropy_backward, each checked against the float64 reference, then timed side by side (dev/lab.py).

    python dev/crossentropy.py [crossentropy_forward|crossentropy_backward] [N ...] [--shapes tiny,d12]

    crossentropy_forward   1 base  2 fast flat  3 fast view  4 fast view f32 sum  5 chunk 512  6 chunk 2048
                           7 production (max_f32, float32 sums of 512-chunks added in float64)
    crossentropy_backward  1 base  2 chunk 512  3 chunk 2048  4 fast 2 passes
                           5 production (exp + store + sum over a row view, float32 sums of 512-chunks
                             added in float64, through a chunk buffer so that in place vectorises)

The row-max variants (if-select, 8 running maxima, 16-lane blocks, integer keys) are recorded below;
the winner is numbagpt.cpu.fastmath.max_f32, which the production kernels use.

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
import math
import sys

import numpy as np
from numba import njit, prange

import lab
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


# ------------------------------------------------------------------ the variants
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
# the float32 exp-sums of a chunk (and with the exps stored) are the production kernels' own
from numbagpt.cpu.crossentropy import _store_sum_exp, _sum_exp  # noqa: E402


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
            s += _sum_exp(zc, n, m)
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
            s += _store_sum_exp(d[c0:c0 + n], zc, n, m)
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


# ------------------------------------------------------------------ the lab
from numbagpt.cpu.crossentropy import crossentropy_backward, crossentropy_forward  # noqa: E402

V, Vp = 50257, 50304
SHAPES = {"tiny": (8, 256), "d12": (4, 64)}   # (B, T) rows of GPT-2's padded vocabulary


def _forward_args(shape, rng):
    B, T = shape
    return dict(losses=B * T, logits=(3 * rng.standard_normal(B * T * Vp)).astype(np.float32),
                targets=rng.integers(0, V, B * T).astype(np.int32), B=B, T=T, V=V, Vp=Vp)


def _backward_args(shape, rng):
    B, T = shape
    args = _forward_args(shape, rng)
    del args["losses"]
    return dict(dlogits=B * T * Vp, dlosses=np.full(B * T, 1.0 / (B * T), np.float32), **args)


F, D = crossentropy_forward, crossentropy_backward
KERNELS = [
    lab.Kernel("crossentropy_forward", [
        ("base (libm exp)", fwd_base), ("fast flat", fwd_fast_flat), ("fast view", fwd_fast_view),
        ("fast view f32 sum", fwd_fast_view32), ("chunk 512", lab.bind(fwd_chunk, F, 512)),
        ("chunk 2048", lab.bind(fwd_chunk, F, 2048)), ("production", F)], _forward_args),
    lab.Kernel("crossentropy_backward", [
        ("base (libm exp)", bwd_base), ("chunk 512", lab.bind(bwd_chunk, D, 512)),
        ("chunk 2048", lab.bind(bwd_chunk, D, 2048)), ("fast 2 passes", bwd_fast_2pass), ("production", D)],
        _backward_args),
]

if __name__ == "__main__":
    sys.exit(lab.main(__doc__, KERNELS, SHAPES))
