"""Kernel experiments behind numbagpt/cpu/attention.py: variants timed side by side (round-robin,
best of N) against the baseline (the per-row kernels the production ones replaced, kept here).

    python dev/attention_experiments.py [--threads 2] [--rounds 5] [--shapes tiny,d12] [--only a,b]

Findings (1 thread, CPU time, best of 10, 2 shared cores under load: +-15% noise between runs):
  * The baseline (one prange unit per (b, t, h) row, flat indexing into qkv with stride 3C, dots
    summed in float64): tiny fwd 74-78 ms, bwd 107-122; d12 fwd 12-13, bwd 19-23.
  * Per (b, h) pair with the head's k, v copied into contiguous thread-local (T, hs) arrays and
    row views indexed from 0 (vectorisable), float32 accumulation:
      fwd_dot  (scores as dots over hs, att.v over hs):      tiny  9.4-9.8   d12 1.7-1.9
      fwd_axpy (scores vectorised over t2 against k^T (hs,T), 4 channels per pass; att.v with
               4 keys per pass):                             tiny  7.9-8.0   d12 2.3-2.5
    Dots over hs pay a horizontal sum per key, which dominates at hs = 32; the transposed form
    pays loop entry (runtime alias checks) per channel, which dominates on short rows (d12 T=64).
      fwd_hyb  (per row: dots when n = t+1 < TH, else transposed): TH = hs is as good as the best
               of both on both shapes (tiny 8.1, d12 1.9)  -> production forward.
  * Backward:
      bwd_axpy  (per query: datt, dv^T, dk^T rows vectorised over t2; dq over hs): tiny 14-17,
                d12 4.6-5.5; bwd_axpy4 (4 channels per pass): tiny 13.5-15, d12 4.6-8.
      bwd_cols  (phase 1 per query: datt by dots, softmax backward into the dpreatt scratch, dq;
                phase 2 per key t2: dk, dv as sums over queries t >= t2 into hs buffers):
                tiny 17-20, d12 3.0-3.5.
      bwd_colsh (datt by the hybrid rule, 4 keys per pass for dq, 2 queries per pass in phase 2)
                and bwd_colsh4 (4 queries per pass): tiny 15.4-17.7, d12 3.1-4.9 with TH from 16
                to inf, all within noise of each other; colsh4 with TH = hs -> production
                backward (within ~10% of axpy4 at tiny, 1.5x faster at d12).
  * Accuracy: float32 dots instead of float64: max |out - base| ~6e-7, |dinp - base| ~1e-6
    (|dinp| ~5); the model still matches PyTorch as before (bin/test_gpt2 on tiny T=256 and d12:
    same max abs diffs, 1e-6 logits / 1e-7 grads, as the baseline kernels).
  Result (bench/bench_kernels.py, 2 threads, wall): tiny fwd ~8-10x, bwd ~7-8x; d12 ~6-9x.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
from numba import njit, prange

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from numbagpt.cpu.fastmath import exp_nonpos, max_f32  # noqa: E402

_FM = {'reassoc', 'contract'}


# ------------------------------------------------------------------ baseline (the original kernels)
@njit(parallel=True, cache=True, fastmath=_FM)
def fwd_base(out, preatt, att, inp, B, T, C, NH):
    C3 = C * 3
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    for bth in prange(B * T * NH):
        h = bth % NH
        b = bth // (NH * T)
        p = (bth // NH) % T
        t = p >> 1 if p & 1 == 0 else T - 1 - (p >> 1)
        q = b * T * C3 + t * C3 + h * hs
        row = b * NH * T * T + h * T * T + t * T
        maxval = np.float32(-np.inf)
        for t2 in range(t + 1):
            k = b * T * C3 + t2 * C3 + h * hs + C
            dot = 0.0
            for i in range(hs):
                dot += inp[q + i] * inp[k + i]
            val = np.float32(dot) * scale
            if val > maxval:
                maxval = val
            preatt[row + t2] = val
        expsum = 0.0
        for t2 in range(t + 1):
            e = math.exp(preatt[row + t2] - maxval)
            expsum += e
            att[row + t2] = e
        inv = np.float32(1.0 / expsum)
        for t2 in range(T):
            if t2 <= t:
                att[row + t2] *= inv
            else:
                att[row + t2] = 0.0
        o = b * T * C + t * C + h * hs
        for i in range(hs):
            out[o + i] = 0.0
        for t2 in range(t + 1):
            v = b * T * C3 + t2 * C3 + h * hs + C * 2
            a = att[row + t2]
            for i in range(hs):
                out[o + i] += a * inp[v + i]


@njit(parallel=True, cache=True, fastmath=_FM)
def bwd_base(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    C3 = C * 3
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        for t in range(T):
            row = b * NH * T * T + h * T * T + t * T
            q = b * T * C3 + t * C3 + h * hs
            do = b * T * C + t * C + h * hs
            for t2 in range(t + 1):
                v = b * T * C3 + t2 * C3 + h * hs + C * 2
                a = att[row + t2]
                dot = 0.0
                for i in range(hs):
                    dot += inp[v + i] * dout[do + i]
                    dinp[v + i] += a * dout[do + i]
                datt[row + t2] = dot
            s = 0.0
            for t2 in range(t + 1):
                s += att[row + t2] * datt[row + t2]
            s32 = np.float32(s)
            for t3 in range(t + 1):
                dpreatt[row + t3] = att[row + t3] * (datt[row + t3] - s32)
            for t2 in range(t + 1):
                k = b * T * C3 + t2 * C3 + h * hs + C
                d = dpreatt[row + t2] * scale
                for i in range(hs):
                    dinp[q + i] += inp[k + i] * d
                    dinp[k + i] += inp[q + i] * d


# ------------------------------------------------------------------ shared pieces
@njit(fastmath=_FM, inline='always')
def _softmax_row(a, s, n, T):
    """a[:n] = softmax(s[:n]), a[n:T] = 0. s, a: contiguous rows (may not alias)."""
    m = max_f32(s, n)
    tot = 0.0
    for t2 in range(n):
        e = exp_nonpos(s[t2] - m)
        a[t2] = e
        tot += e
    inv = np.float32(1.0 / tot)
    for t2 in range(n):
        a[t2] *= inv
    for t2 in range(n, T):
        a[t2] = 0.0


# ------------------------------------------------------------------ forward variants
@njit(parallel=True, fastmath=_FM)
def fwd_dot(out, preatt, att, inp, B, T, C, NH):
    """Per (b, h): k, v gathered into (T, hs); scores as dot products over hs (contiguous, float32
    accumulators, 'reassoc' vectorises each dot), att·v into an hs buffer with t2 outside."""
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
        v = np.empty((T, hs), np.float32)
        for t in range(T):
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                k[t, i] = kr[i]
                v[t, i] = vr[i]
        o = np.empty(hs, np.float32)
        for t in range(T):
            q = X[b, t, h * hs:(h + 1) * hs]
            s = P[b, h, t]
            for t2 in range(t + 1):
                kr = k[t2]
                dot = np.float32(0.0)
                for i in range(hs):
                    dot += q[i] * kr[i]
                s[t2] = dot * scale
            a = A[b, h, t]
            _softmax_row(a, s, t + 1, T)
            for i in range(hs):
                o[i] = 0.0
            for t2 in range(t + 1):
                at = a[t2]
                vr = v[t2]
                for i in range(hs):
                    o[i] += at * vr[i]
            orow = O[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                orow[i] = o[i]


@njit(parallel=True, fastmath=_FM)
def fwd_axpy(out, preatt, att, inp, B, T, C, NH):
    """Per (b, h): kᵀ gathered into (hs, T), v into (T, hs); scores vectorised over t2 (4 rows of
    kᵀ per pass), att·v over hs with 4 t2 per pass."""
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    O = out.reshape(B, T, C)
    P = preatt.reshape(B, NH, T, T)
    A = att.reshape(B, NH, T, T)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        kT = np.empty((hs, T), np.float32)
        v = np.empty((T, hs), np.float32)
        for t in range(T):
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                kT[i, t] = kr[i]
                v[t, i] = vr[i]
        o = np.empty(hs, np.float32)
        sb = np.empty(T, np.float32)
        for t in range(T):
            n = t + 1
            q = X[b, t, h * hs:(h + 1) * hs]
            s = sb[:n]
            for t2 in range(n):
                s[t2] = 0.0
            i = 0
            while i + 4 <= hs:
                q0, q1, q2, q3 = q[i], q[i + 1], q[i + 2], q[i + 3]
                k0, k1, k2, k3 = kT[i, :n], kT[i + 1, :n], kT[i + 2, :n], kT[i + 3, :n]
                for t2 in range(n):
                    s[t2] = s[t2] + q0 * k0[t2] + q1 * k1[t2] + q2 * k2[t2] + q3 * k3[t2]
                i += 4
            while i < hs:
                q0 = q[i]
                k0 = kT[i, :n]
                for t2 in range(n):
                    s[t2] += q0 * k0[t2]
                i += 1
            p = P[b, h, t]
            for t2 in range(n):
                p[t2] = s[t2] * scale
            a = A[b, h, t]
            _softmax_row(a, p, n, T)
            for i in range(hs):
                o[i] = 0.0
            t2 = 0
            while t2 + 4 <= n:
                a0, a1, a2, a3 = a[t2], a[t2 + 1], a[t2 + 2], a[t2 + 3]
                v0, v1, v2, v3 = v[t2], v[t2 + 1], v[t2 + 2], v[t2 + 3]
                for i in range(hs):
                    o[i] = o[i] + a0 * v0[i] + a1 * v1[i] + a2 * v2[i] + a3 * v3[i]
                t2 += 4
            while t2 < n:
                a0 = a[t2]
                v0 = v[t2]
                for i in range(hs):
                    o[i] += a0 * v0[i]
                t2 += 1
            orow = O[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                orow[i] = o[i]


# ------------------------------------------------------------------ backward variants
@njit(parallel=True, fastmath=_FM)
def bwd_axpy(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    """Per (b, h), for each query t: datt and dvᵀ, dkᵀ vectorised over t2 (transposed (hs, T)
    scratch), dq over hs. dpreatt/datt scratch unused (thread-local rows instead)."""
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    D = dinp.reshape(B, T, 3 * C)
    DO = dout.reshape(B, T, C)
    A = att.reshape(B, NH, T, T)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        k = np.empty((T, hs), np.float32)
        vT = np.empty((hs, T), np.float32)
        dkT = np.zeros((hs, T), np.float32)
        dvT = np.zeros((hs, T), np.float32)
        for t in range(T):
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                k[t, i] = kr[i]
                vT[i, t] = vr[i]
        da = np.empty(T, np.float32)
        dq = np.empty(hs, np.float32)
        for t in range(T):
            n = t + 1
            q = X[b, t, h * hs:(h + 1) * hs]
            do = DO[b, t, h * hs:(h + 1) * hs]
            a = A[b, h, t, :n]
            d = da[:n]
            for t2 in range(n):
                d[t2] = 0.0
            for i in range(hs):
                doi = do[i]
                vr = vT[i, :n]
                dvr = dvT[i, :n]
                for t2 in range(n):
                    d[t2] += doi * vr[t2]
                    dvr[t2] += doi * a[t2]
            sm = 0.0
            for t2 in range(n):
                sm += a[t2] * d[t2]
            s32 = np.float32(sm)
            for t2 in range(n):
                d[t2] = a[t2] * (d[t2] - s32) * scale
            for i in range(hs):
                qi = q[i]
                dkr = dkT[i, :n]
                for t2 in range(n):
                    dkr[t2] += qi * d[t2]
            for i in range(hs):
                dq[i] = 0.0
            for t2 in range(n):
                dt = d[t2]
                kr = k[t2]
                for i in range(hs):
                    dq[i] += dt * kr[i]
            dqr = D[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                dqr[i] += dq[i]
        for t in range(T):
            dkr = D[b, t, C + h * hs:C + (h + 1) * hs]
            dvr = D[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                dkr[i] += dkT[i, t]
                dvr[i] += dvT[i, t]


@njit(parallel=True, fastmath=_FM)
def bwd_cols(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    """Per (b, h), two phases. 1: for each query t, datt[t, :] by dot products over hs and the
    softmax backward into the dpreatt scratch (rows of the caller's buffer). 2: dq_t = Σ dpre[t,t2]
    k_t2 (rows), dk_t2 = Σ_t dpre[t,t2] q_t and dv_t2 = Σ_t att[t,t2] do_t (columns), each into an
    hs-length buffer with the sum index outside: everything vectorised over hs."""
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    D = dinp.reshape(B, T, 3 * C)
    DO = dout.reshape(B, T, C)
    A = att.reshape(B, NH, T, T)
    DP = dpreatt.reshape(B, NH, T, T)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        q = np.empty((T, hs), np.float32)
        k = np.empty((T, hs), np.float32)
        v = np.empty((T, hs), np.float32)
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
                do[t, i] = dr[i]
        acc = np.empty(hs, np.float32)
        acc2 = np.empty(hs, np.float32)
        for t in range(T):
            n = t + 1
            a = A[b, h, t, :n]
            d = DP[b, h, t, :n]
            dor = do[t]
            for t2 in range(n):
                vr = v[t2]
                dot = np.float32(0.0)
                for i in range(hs):
                    dot += dor[i] * vr[i]
                d[t2] = dot
            sm = 0.0
            for t2 in range(n):
                sm += a[t2] * d[t2]
            s32 = np.float32(sm)
            for t2 in range(n):
                d[t2] = a[t2] * (d[t2] - s32) * scale
            # dq_t
            for i in range(hs):
                acc[i] = 0.0
            for t2 in range(n):
                dt = d[t2]
                kr = k[t2]
                for i in range(hs):
                    acc[i] += dt * kr[i]
            dqr = D[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                dqr[i] += acc[i]
        for t2 in range(T):
            for i in range(hs):
                acc[i] = 0.0
                acc2[i] = 0.0
            for t in range(t2, T):
                dp = DP[b, h, t, t2]
                at = A[b, h, t, t2]
                qr = q[t]
                dr = do[t]
                for i in range(hs):
                    acc[i] += dp * qr[i]
                    acc2[i] += at * dr[i]
            dkr = D[b, t2, C + h * hs:C + (h + 1) * hs]
            dvr = D[b, t2, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                dkr[i] += acc[i]
                dvr[i] += acc2[i]


@njit(parallel=True, fastmath=_FM)
def bwd_axpy4(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    """bwd_axpy with the hs loops unrolled by 4 (fewer passes over the row, fewer loop entries)."""
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    D = dinp.reshape(B, T, 3 * C)
    DO = dout.reshape(B, T, C)
    A = att.reshape(B, NH, T, T)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        k = np.empty((T, hs), np.float32)
        vT = np.empty((hs, T), np.float32)
        dkT = np.zeros((hs, T), np.float32)
        dvT = np.zeros((hs, T), np.float32)
        for t in range(T):
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                k[t, i] = kr[i]
                vT[i, t] = vr[i]
        da = np.empty(T, np.float32)
        dq = np.empty(hs, np.float32)
        for t in range(T):
            n = t + 1
            q = X[b, t, h * hs:(h + 1) * hs]
            do = DO[b, t, h * hs:(h + 1) * hs]
            a = A[b, h, t, :n]
            d = da[:n]
            for t2 in range(n):
                d[t2] = 0.0
            i = 0
            while i + 4 <= hs:
                o0, o1, o2, o3 = do[i], do[i + 1], do[i + 2], do[i + 3]
                v0, v1, v2, v3 = vT[i, :n], vT[i + 1, :n], vT[i + 2, :n], vT[i + 3, :n]
                for t2 in range(n):
                    d[t2] = d[t2] + o0 * v0[t2] + o1 * v1[t2] + o2 * v2[t2] + o3 * v3[t2]
                i += 4
            while i < hs:
                o0 = do[i]
                v0 = vT[i, :n]
                for t2 in range(n):
                    d[t2] += o0 * v0[t2]
                i += 1
            for i in range(hs):
                doi = do[i]
                dvr = dvT[i, :n]
                for t2 in range(n):
                    dvr[t2] += doi * a[t2]
            sm = 0.0
            for t2 in range(n):
                sm += a[t2] * d[t2]
            s32 = np.float32(sm)
            for t2 in range(n):
                d[t2] = a[t2] * (d[t2] - s32) * scale
            for i in range(hs):
                qi = q[i]
                dkr = dkT[i, :n]
                for t2 in range(n):
                    dkr[t2] += qi * d[t2]
            for i in range(hs):
                dq[i] = 0.0
            t2 = 0
            while t2 + 4 <= n:
                d0, d1, d2, d3 = d[t2], d[t2 + 1], d[t2 + 2], d[t2 + 3]
                k0, k1, k2, k3 = k[t2], k[t2 + 1], k[t2 + 2], k[t2 + 3]
                for i in range(hs):
                    dq[i] = dq[i] + d0 * k0[i] + d1 * k1[i] + d2 * k2[i] + d3 * k3[i]
                t2 += 4
            while t2 < n:
                d0 = d[t2]
                k0 = k[t2]
                for i in range(hs):
                    dq[i] += d0 * k0[i]
                t2 += 1
            dqr = D[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                dqr[i] += dq[i]
        for t in range(T):
            dkr = D[b, t, C + h * hs:C + (h + 1) * hs]
            dvr = D[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                dkr[i] += dkT[i, t]
                dvr[i] += dvT[i, t]


# ------------------------------------------------------------------ hybrids: per row, the form that suits its length
@njit(fastmath=_FM, inline='always')
def _scores_dot(s, q, k, n, hs):
    """s[t2] = q · k[t2] for t2 < n: dot products over hs (contiguous)."""
    for t2 in range(n):
        kr = k[t2]
        dot = np.float32(0.0)
        for i in range(hs):
            dot += q[i] * kr[i]
        s[t2] = dot


@njit(fastmath=_FM, inline='always')
def _scores_axpy(s, q, kT, n, hs):
    """s[t2] = Σ_i q[i]·kT[i, t2] for t2 < n: vectorised over t2, 4 rows of kT per pass."""
    for t2 in range(n):
        s[t2] = 0.0
    i = 0
    while i + 4 <= hs:
        q0, q1, q2, q3 = q[i], q[i + 1], q[i + 2], q[i + 3]
        k0, k1, k2, k3 = kT[i, :n], kT[i + 1, :n], kT[i + 2, :n], kT[i + 3, :n]
        for t2 in range(n):
            s[t2] = s[t2] + q0 * k0[t2] + q1 * k1[t2] + q2 * k2[t2] + q3 * k3[t2]
        i += 4
    while i < hs:
        q0 = q[i]
        k0 = kT[i, :n]
        for t2 in range(n):
            s[t2] += q0 * k0[t2]
        i += 1


@njit(fastmath=_FM, inline='always')
def _rows_combo(o, c, rows, n, hs):
    """o[i] = Σ_{t2<n} c[t2]·rows[t2, i]: vectorised over hs, 4 rows per pass."""
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


@njit(parallel=True, fastmath=_FM)
def fwd_hyb(out, preatt, att, inp, B, T, C, NH, TH):
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
        sb = np.empty(T, np.float32)
        for t in range(T):
            n = t + 1
            q = X[b, t, h * hs:(h + 1) * hs]
            s = sb[:n]
            if n < TH:
                _scores_dot(s, q, k, n, hs)
            else:
                _scores_axpy(s, q, kT, n, hs)
            p = P[b, h, t]
            for t2 in range(n):
                p[t2] = s[t2] * scale
            a = A[b, h, t]
            _softmax_row(a, p, n, T)
            _rows_combo(o, a, v, n, hs)
            orow = O[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                orow[i] = o[i]


@njit(parallel=True, fastmath=_FM)
def bwd_colsh(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH, TH):
    """bwd_cols with datt rows in the transposed (axpy) form where n ≥ TH, dq with 4 keys per pass,
    the column phase with 2 queries per pass."""
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    D = dinp.reshape(B, T, 3 * C)
    DO = dout.reshape(B, T, C)
    A = att.reshape(B, NH, T, T)
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
        for t in range(T):
            n = t + 1
            a = A[b, h, t, :n]
            d = DP[b, h, t, :n]
            if n < TH:
                _scores_dot(d, do[t], v, n, hs)
            else:
                _scores_axpy(d, do[t], vT, n, hs)
            sm = 0.0
            for t2 in range(n):
                sm += a[t2] * d[t2]
            s32 = np.float32(sm)
            for t2 in range(n):
                d[t2] = a[t2] * (d[t2] - s32) * scale
            _rows_combo(acc, d, k, n, hs)
            dqr = D[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                dqr[i] += acc[i]
        for t2 in range(T):
            for i in range(hs):
                acc[i] = 0.0
                acc2[i] = 0.0
            t = t2
            while t + 2 <= T:
                dp0, dp1 = DP[b, h, t, t2], DP[b, h, t + 1, t2]
                a0, a1 = A[b, h, t, t2], A[b, h, t + 1, t2]
                q0, q1 = q[t], q[t + 1]
                o0, o1 = do[t], do[t + 1]
                for i in range(hs):
                    acc[i] = acc[i] + dp0 * q0[i] + dp1 * q1[i]
                    acc2[i] = acc2[i] + a0 * o0[i] + a1 * o1[i]
                t += 2
            if t < T:
                dp0 = DP[b, h, t, t2]
                a0 = A[b, h, t, t2]
                q0 = q[t]
                o0 = do[t]
                for i in range(hs):
                    acc[i] += dp0 * q0[i]
                    acc2[i] += a0 * o0[i]
            dkr = D[b, t2, C + h * hs:C + (h + 1) * hs]
            dvr = D[b, t2, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                dkr[i] += acc[i]
                dvr[i] += acc2[i]



@njit(parallel=True, fastmath=_FM)
def bwd_colsh4(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH, TH):
    """bwd_colsh with 4 queries per pass in the column phase; bwd_cols with datt rows in the transposed (axpy) form where n ≥ TH, dq with 4 keys per pass,
    the column phase with 2 queries per pass."""
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    D = dinp.reshape(B, T, 3 * C)
    DO = dout.reshape(B, T, C)
    A = att.reshape(B, NH, T, T)
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
        for t in range(T):
            n = t + 1
            a = A[b, h, t, :n]
            d = DP[b, h, t, :n]
            if n < TH:
                _scores_dot(d, do[t], v, n, hs)
            else:
                _scores_axpy(d, do[t], vT, n, hs)
            sm = 0.0
            for t2 in range(n):
                sm += a[t2] * d[t2]
            s32 = np.float32(sm)
            for t2 in range(n):
                d[t2] = a[t2] * (d[t2] - s32) * scale
            _rows_combo(acc, d, k, n, hs)
            dqr = D[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                dqr[i] += acc[i]
        for t2 in range(T):
            for i in range(hs):
                acc[i] = 0.0
                acc2[i] = 0.0
            t = t2
            while t + 4 <= T:
                dp0, dp1, dp2, dp3 = DP[b, h, t, t2], DP[b, h, t + 1, t2], DP[b, h, t + 2, t2], DP[b, h, t + 3, t2]
                a0, a1, a2, a3 = A[b, h, t, t2], A[b, h, t + 1, t2], A[b, h, t + 2, t2], A[b, h, t + 3, t2]
                q0, q1, q2, q3 = q[t], q[t + 1], q[t + 2], q[t + 3]
                o0, o1, o2, o3 = do[t], do[t + 1], do[t + 2], do[t + 3]
                for i in range(hs):
                    acc[i] = acc[i] + dp0 * q0[i] + dp1 * q1[i] + dp2 * q2[i] + dp3 * q3[i]
                    acc2[i] = acc2[i] + a0 * o0[i] + a1 * o1[i] + a2 * o2[i] + a3 * o3[i]
                t += 4
            while t < T:
                dp0 = DP[b, h, t, t2]
                a0 = A[b, h, t, t2]
                q0 = q[t]
                o0 = do[t]
                for i in range(hs):
                    acc[i] += dp0 * q0[i]
                    acc2[i] += a0 * o0[i]
                t += 1
            dkr = D[b, t2, C + h * hs:C + (h + 1) * hs]
            dvr = D[b, t2, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                dkr[i] += acc[i]
                dvr[i] += acc2[i]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shapes", default="tiny,d12")
    ap.add_argument("--cpu", action="store_true", help="process CPU time (all threads) instead of wall")
    ap.add_argument("--only", default="", help="comma list of substrings of case names")
    args = ap.parse_args()
    import numba
    numba.set_num_threads(args.threads)

    shapes = []
    if "tiny" in args.shapes:
        shapes.append(("tiny", 8, 256, 128, 4))
    if "d12" in args.shapes:
        shapes.append(("d12", 4, 64, 768, 12))
    fwds = [("fwd base", fwd_base), ("fwd dot", fwd_dot), ("fwd axpy", fwd_axpy)]
    for th in (16, 32, 64, 128):
        fwds.append((f"fwd hyb{th}", lambda o, p, a, x, B, T, C, NH, th=th: fwd_hyb(o, p, a, x, B, T, C, NH, th)))
    bwds = [("bwd base", bwd_base), ("bwd axpy", bwd_axpy), ("bwd cols", bwd_cols), ("bwd axpy4", bwd_axpy4)]
    for th in (16, 32, 64, 128, 10000):
        bwds.append((f"bwd colsh{th}", lambda d, dp, da, do, x, a, B, T, C, NH, th=th:
                     bwd_colsh(d, dp, da, do, x, a, B, T, C, NH, th)))
        bwds.append((f"bwd colsh4_{th}", lambda d, dp, da, do, x, a, B, T, C, NH, th=th:
                     bwd_colsh4(d, dp, da, do, x, a, B, T, C, NH, th)))
    if args.only:
        keep = lambda n: "base" in n or any(w in n for w in args.only.split(","))  # noqa: E731
        fwds = [c for c in fwds if keep(c[0])]
        bwds = [c for c in bwds if keep(c[0])]
    clock = time.process_time if args.cpu else time.perf_counter
    for name, B, T, C, NH in shapes:
        rng = np.random.default_rng(0)
        qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
        dout = rng.standard_normal(B * T * C).astype(np.float32)
        N = B * NH * T * T
        res = {}
        best = {}
        bufs = {}
        for n, f in fwds:
            bufs[n] = (np.zeros(B * T * C, np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32))
            f(bufs[n][0], bufs[n][1], bufs[n][2], qkv, B, T, C, NH)
        att = bufs["fwd base"][2]
        for n, f in bwds:
            bufs[n] = (np.zeros(B * T * 3 * C, np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32))
            f(bufs[n][0], bufs[n][1], bufs[n][2], dout, qkv, att, B, T, C, NH)
        for _ in range(args.rounds):
            for n, f in fwds:
                o, p, a = bufs[n]
                t0 = clock()
                f(o, p, a, qkv, B, T, C, NH)
                best[n] = min(best.get(n, 1e9), clock() - t0)
            for n, f in bwds:
                d, dp, da = bufs[n]
                d[:] = 0
                t0 = clock()
                f(d, dp, da, dout, qkv, att, B, T, C, NH)
                best[n] = min(best.get(n, 1e9), clock() - t0)
        print(f"--- {name}: B={B} T={T} C={C} NH={NH}")
        ob, pb, ab = bufs["fwd base"]
        for n, _ in fwds:
            o, p, a = bufs[n]
            res = (np.abs(o - ob).max(), np.abs(a - ab).max())
            print(f"{n:16s} {best[n] * 1e3:8.2f} ms  x{best['fwd base'] / best[n]:5.2f}  "
                  f"max|out-base| {res[0]:.1e} max|att-base| {res[1]:.1e}")
        db = bufs["bwd base"][0]
        for n, _ in bwds:
            d = bufs[n][0]
            print(f"{n:16s} {best[n] * 1e3:8.2f} ms  x{best['bwd base'] / best[n]:5.2f}  "
                  f"max|dinp-base| {np.abs(d - db).max():.1e} (|dinp| max {np.abs(db).max():.1e})")


if __name__ == "__main__":
    main()
