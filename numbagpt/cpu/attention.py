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
"""
import math

import numpy as np
from numba import njit, prange

# Lets LLVM vectorise the head-size dot products (float64 sums) and fuse multiply-adds:
# ~15% faster here, and no approximate maths.
_FASTMATH = {'reassoc', 'contract'}


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def attention_forward(out, preatt, att, inp, B, T, C, NH):
    C3 = C * 3
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    for bth in prange(B * T * NH):
        h = bth % NH
        b = bth // (NH * T)
        # Row t costs O(t) and prange hands each thread a contiguous range of iterations, so
        # interleave short and long rows (0, T−1, 1, T−2, ...) to balance the threads.
        p = (bth // NH) % T
        t = p >> 1 if p & 1 == 0 else T - 1 - (p >> 1)
        q = b * T * C3 + t * C3 + h * hs
        row = b * NH * T * T + h * T * T + t * T

        # pass 1: scores q·k and their max
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

        # pass 2: exp, subtracting the max so exp never overflows
        expsum = 0.0
        for t2 in range(t + 1):
            e = math.exp(preatt[row + t2] - maxval)  # float32: expf
            expsum += e
            att[row + t2] = e
        # t2 = t is always present, so expsum ≥ exp(0) = 1
        inv = np.float32(1.0 / expsum)

        # pass 3: normalise; the masked part is written as 0 so att is a full causal matrix
        for t2 in range(T):
            if t2 <= t:
                att[row + t2] *= inv
            else:
                att[row + t2] = 0.0

        # pass 4: weighted sum of the values
        o = b * T * C + t * C + h * hs
        for i in range(hs):
            out[o + i] = 0.0
        for t2 in range(t + 1):
            v = b * T * C3 + t2 * C3 + h * hs + C * 2
            a = att[row + t2]
            for i in range(hs):
                out[o + i] += a * inp[v + i]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def attention_backward(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    # dk and dv at position t2 receive contributions from every query t ≥ t2, so a parallel unit
    # must own whole (b, h) pairs: each writes a disjoint set of channels of dinp.
    # datt and dpreatt rows t2 ≤ t are overwritten here (contents on entry don't matter).
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

            # out = att·v: datt = dout·v, dv += att·dout
            for t2 in range(t + 1):
                v = b * T * C3 + t2 * C3 + h * hs + C * 2
                a = att[row + t2]
                dot = 0.0
                for i in range(hs):
                    dot += inp[v + i] * dout[do + i]
                    dinp[v + i] += a * dout[do + i]
                datt[row + t2] = dot

            # softmax backward in its O(T) form: Σ_t2 att_t2·(δ_t2t3 − att_t3)·datt_t2
            # = att_t3·(datt_t3 − Σ_t2 att_t2·datt_t2); llm.c's double loop computes the same sum.
            s = 0.0
            for t2 in range(t + 1):
                s += att[row + t2] * datt[row + t2]
            s32 = np.float32(s)
            for t3 in range(t + 1):
                dpreatt[row + t3] = att[row + t3] * (datt[row + t3] - s32)

            # preatt = q·k·scale: dq += dpreatt·k·scale, dk += dpreatt·q·scale
            for t2 in range(t + 1):
                k = b * T * C3 + t2 * C3 + h * hs + C
                d = dpreatt[row + t2] * scale
                for i in range(hs):
                    dinp[q + i] += inp[k + i] * d
                    dinp[k + i] += inp[q + i] * d
