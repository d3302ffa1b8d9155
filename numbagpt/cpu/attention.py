"""Causal multi-head self-attention (llm.c's attention_forward / attention_backward).

Shapes (row-major, flat float32 buffers), hs = C / NH:
    inp, dinp       (B, T, 3C)  each row is [q | k | v], head h owning channels h·hs .. (h+1)·hs−1 of each
    preatt, att     (B, NH, T, T)
    dpreatt, datt   (B, NH, T, T)  scratch for the backward
    out, dout       (B, T, C)   heads concatenated along C

    forward, for each b, h and query position t (only keys t2 ≤ t are seen):
        preatt[t, t2] = q_t · k_t2 / sqrt(hs)
        att[t, t2]    = softmax_t2(preatt[t, :t+1])     (att[t, t2] = 0 for t2 > t)
        out_t         = Σ_t2 att[t, t2]·v_t2
    backward:
        datt[t, t2]    = dout_t · v_t2;                 dv_t2 += att[t, t2]·dout_t
        dpreatt[t, t2] = att[t, t2]·(datt[t, t2] − Σ_t3 att[t, t3]·datt[t, t3])
        dq_t  += Σ_t2 dpreatt[t, t2]·k_t2 / sqrt(hs);   dk_t2 += dpreatt[t, t2]·q_t / sqrt(hs)

How it is made fast (dev/attention.py has the variants and timings; ~7-10x the per-row
kernels these replaced, bench/bench_kernels.py):
  - One parallel unit per (b, h) pair. It copies its head's q, k, v (and dout) into contiguous
    thread-local (T, hs) arrays, plus kᵀ / vᵀ as (hs, T), so that every inner loop runs over
    contiguous memory from index 0 (flat `base + i` indexing keeps Numba's negative-index
    wraparound select, which stops LLVM vectorising). In the backward the pair owns all the
    channels of dinp its head touches, so no two units write the same cell.
  - Every product is an inner loop LLVM vectorises, in the form that suits the row length n = t+1:
    q·k scores as dot products over hs (rows with n < hs) or vectorised over the n keys against
    kᵀ, 4 channels per pass (longer rows); att·v, dq, dk, dv accumulate into an hs-length buffer
    with the key / query loop outside, 4 of them per pass.
  - exp is fastmath.exp_nonpos (vectorisable; its argument preatt − rowmax is ≤ 0), the row max is
    fastmath.max_f32, the softmax sums are float64.
  - fastmath 'reassoc' (vectorised reductions) and 'contract' (FMA) only. Dot products and
    accumulations are float32, as in llm.c (the kernels this replaced summed dots in float64);
    differences to them are ~1e-7 relative.
"""
import math

import numpy as np
from numba import njit, prange

from .fastmath import exp_nonpos, max_f32

_FASTMATH = {'reassoc', 'contract'}


@njit(fastmath=_FASTMATH, inline='always')
def _dots(s, x, rows, n, hs):
    """s[t2] = x · rows[t2] for t2 < n (rows: (≥n, hs)); dot products over hs."""
    for t2 in range(n):
        r = rows[t2]
        dot = np.float32(0.0)
        for i in range(hs):
            dot += x[i] * r[i]
        s[t2] = dot


@njit(fastmath=_FASTMATH, inline='always')
def _dots_t(s, x, colsT, n, hs):
    """The same as _dots from the transposed operand colsT (hs, ≥n): s[t2] = Σ_i x[i]·colsT[i, t2],
    vectorised over t2, 4 rows of colsT per pass over s."""
    for t2 in range(n):
        s[t2] = 0.0
    i = 0
    while i + 4 <= hs:
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        c0, c1, c2, c3 = colsT[i, :n], colsT[i + 1, :n], colsT[i + 2, :n], colsT[i + 3, :n]
        for t2 in range(n):
            s[t2] = s[t2] + x0 * c0[t2] + x1 * c1[t2] + x2 * c2[t2] + x3 * c3[t2]
        i += 4
    while i < hs:
        x0 = x[i]
        c0 = colsT[i, :n]
        for t2 in range(n):
            s[t2] += x0 * c0[t2]
        i += 1


@njit(fastmath=_FASTMATH, inline='always')
def _combo(o, c, rows, n, hs):
    """o[i] = Σ_{t2<n} c[t2]·rows[t2, i] (o: hs floats, overwritten): vectorised over hs, 4 rows
    per pass."""
    for i in range(hs):
        o[i] = 0.0
    t2 = 0
    while t2 + 4 <= n:
        c0, c1, c2, c3 = c[t2], c[t2 + 1], c[t2 + 2], c[t2 + 3]
        r0, r1, r2, r3 = rows[t2], rows[t2 + 1], rows[t2 + 2], rows[t2 + 3]
        for i in range(hs):
            o[i] = o[i] + c0 * r0[i] + c1 * r1[i] + c2 * r2[i] + c3 * r3[i]
        t2 += 4
    while t2 < n:
        c0 = c[t2]
        r0 = rows[t2]
        for i in range(hs):
            o[i] += c0 * r0[i]
        t2 += 1


@njit(fastmath=_FASTMATH, inline='always')
def _causal_softmax(a, p, scale, n, width):
    """p[:n] *= scale (the scores, kept as preatt), then a[:n] = softmax(p[:n]) and a[n:width] = 0
    (a may be p). The max is subtracted so exp never overflows; the row's own key t2 = t is always
    among the n, so the sum is ≥ exp(0) = 1. The zeros make att a full causal matrix."""
    for t2 in range(n):
        p[t2] *= scale
    m = max_f32(p, n)
    expsum = 0.0
    for t2 in range(n):
        e = exp_nonpos(p[t2] - m)
        a[t2] = e
        expsum += e
    inv = np.float32(1.0 / expsum)
    for t2 in range(n):
        a[t2] *= inv
    for t2 in range(n, width):
        a[t2] = 0.0


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def attention_forward(out, preatt, att, inp, B, T, C, NH):
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    O = out.reshape(B, T, C)
    P = preatt.reshape(B, NH, T, T)
    A = att.reshape(B, NH, T, T)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        k = np.empty((T, hs), np.float32)
        kT = np.empty((hs, T), np.float32)
        v = np.empty((T, hs), np.float32)
        for t in range(T):
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                k[t, i] = kr[i]
                kT[i, t] = kr[i]
                v[t, i] = vr[i]
        o = np.empty(hs, np.float32)
        for t in range(T):
            n = t + 1
            q = X[b, t, h * hs:(h + 1) * hs]
            p = P[b, h, t]
            # scores q·k (the dot form has a horizontal sum per key, the transposed form a pass
            # over the row per channel: the first wins on short rows, the second on long ones)
            if n < hs:
                _dots(p, q, k, n, hs)
            else:
                _dots_t(p, q, kT, n, hs)
            a = A[b, h, t]
            _causal_softmax(a, p, scale, n, T)
            # weighted sum of the values
            _combo(o, a, v, n, hs)
            orow = O[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                orow[i] = o[i]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def attention_backward(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    # dk and dv at position t2 receive contributions from every query t ≥ t2, so a parallel unit
    # must own whole (b, h) pairs: each writes a disjoint set of channels of dinp.
    # datt and dpreatt rows t2 ≤ t are overwritten here (contents on entry don't matter);
    # dpreatt's are read back by the second phase.
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    D = dinp.reshape(B, T, 3 * C)
    DO = dout.reshape(B, T, C)
    A = att.reshape(B, NH, T, T)
    DA = datt.reshape(B, NH, T, T)
    DP = dpreatt.reshape(B, NH, T, T)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        q = np.empty((T, hs), np.float32)
        k = np.empty((T, hs), np.float32)
        v = np.empty((T, hs), np.float32)
        vT = np.empty((hs, T), np.float32)
        do = np.empty((T, hs), np.float32)
        for t in range(T):
            qr = X[b, t, h * hs:(h + 1) * hs]
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            dr = DO[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                q[t, i] = qr[i]
                k[t, i] = kr[i]
                v[t, i] = vr[i]
                vT[i, t] = vr[i]
                do[t, i] = dr[i]
        acc = np.empty(hs, np.float32)
        acc2 = np.empty(hs, np.float32)

        # phase 1, by query row t: datt = dout·v, the softmax backward, dq
        for t in range(T):
            n = t + 1
            a = A[b, h, t, :n]
            da = DA[b, h, t, :n]
            dp = DP[b, h, t, :n]
            if n < hs:
                _dots(da, do[t], v, n, hs)
            else:
                _dots_t(da, do[t], vT, n, hs)
            # softmax backward in its O(T) form: Σ_t2 att_t2·(δ_t2t3 − att_t3)·datt_t2
            # = att_t3·(datt_t3 − Σ_t2 att_t2·datt_t2); llm.c's double loop computes the same sum.
            s = 0.0
            for t2 in range(n):
                s += a[t2] * da[t2]
            s32 = np.float32(s)
            for t2 in range(n):
                dp[t2] = a[t2] * (da[t2] - s32)
            # preatt = q·k·scale: dq_t += scale·Σ_t2 dpreatt[t, t2]·k_t2
            _combo(acc, dp, k, n, hs)
            dqr = D[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                dqr[i] += acc[i] * scale
        # phase 2, by key column t2: dk_t2 += scale·Σ_t dpreatt[t, t2]·q_t, dv_t2 += Σ_t att[t, t2]·dout_t
        for t2 in range(T):
            for i in range(hs):
                acc[i] = 0.0
                acc2[i] = 0.0
            t = t2
            while t + 4 <= T:
                p0, p1, p2, p3 = DP[b, h, t, t2], DP[b, h, t + 1, t2], DP[b, h, t + 2, t2], DP[b, h, t + 3, t2]
                a0, a1, a2, a3 = A[b, h, t, t2], A[b, h, t + 1, t2], A[b, h, t + 2, t2], A[b, h, t + 3, t2]
                q0, q1, q2, q3 = q[t], q[t + 1], q[t + 2], q[t + 3]
                o0, o1, o2, o3 = do[t], do[t + 1], do[t + 2], do[t + 3]
                for i in range(hs):
                    acc[i] = acc[i] + p0 * q0[i] + p1 * q1[i] + p2 * q2[i] + p3 * q3[i]
                    acc2[i] = acc2[i] + a0 * o0[i] + a1 * o1[i] + a2 * o2[i] + a3 * o3[i]
                t += 4
            while t < T:
                p0 = DP[b, h, t, t2]
                a0 = A[b, h, t, t2]
                q0 = q[t]
                o0 = do[t]
                for i in range(hs):
                    acc[i] += p0 * q0[i]
                    acc2[i] += a0 * o0[i]
                t += 1
            dkr = D[b, t2, C + h * hs:C + (h + 1) * hs]
            dvr = D[b, t2, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                dkr[i] += acc[i] * scale
                dvr[i] += acc2[i]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def attention_forward_cached(out, att, kcache, vcache, inp, B, T, t0, C, NH, maxT):
    """Attention of T new positions t0 .. t0+T−1 against a key/value cache (generation).

        inp            (B, T, 3C)         q, k, v of the new positions
        kcache, vcache (B, NH, maxT, hs)  rows t0 .. t0+T−1 written here from inp; rows < t0 hold
                                          the earlier positions' keys and values
        att            (B, NH, T, maxT)   softmax weights of query t over cache rows ≤ t0+t, 0 beyond
        out            (B, T, C)

    It computes what attention_forward computes for those rows of a sequence of t0+T positions, with
    the keys and values of the earlier positions read from the cache instead of recomputed. T = 1 is
    the one-query-row step of decoding; t0 = 0 with the whole prompt fills the cache (prefill).
    """
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    O = out.reshape(B, T, C)
    A = att.reshape(B, NH, T, maxT)
    K = kcache.reshape(B, NH, maxT, hs)
    V = vcache.reshape(B, NH, maxT, hs)
    # the cache rows first (a query of this call may attend to a key of an earlier new position)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        for t in range(T):
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            krow = K[b, h, t0 + t]
            vrow = V[b, h, t0 + t]
            for i in range(hs):
                krow[i] = kr[i]
                vrow[i] = vr[i]
    # then one parallel unit per query row (b, h, t): scores, softmax and the weighted sum as in
    # attention_forward, over the n = t0+t+1 cached rows
    for bht in prange(B * NH * T):
        t = bht % T
        h = (bht // T) % NH
        b = bht // (T * NH)
        n = t0 + t + 1
        q = X[b, t, h * hs:(h + 1) * hs]
        a = A[b, h, t]
        _dots(a, q, K[b, h], n, hs)
        _causal_softmax(a, a, scale, n, maxT)
        o = np.empty(hs, np.float32)
        _combo(o, a, V[b, h], n, hs)
        orow = O[b, t, h * hs:(h + 1) * hs]
        for i in range(hs):
            orow[i] = o[i]
