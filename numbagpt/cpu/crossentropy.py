"""Softmax + cross-entropy loss over the first V of Vp logit columns (llm.c's crossentropy_forward
and the fused crossentropy_softmax_backward), with no probs buffer.

Shapes (row-major): logits, dlogits (B, T, Vp) float32; targets (B, T) int32 with 0 ≤ target < V;
losses, dlosses (B, T) float32. Columns V..Vp−1 are padding: they take no part in the softmax.

    forward:   losses[b,t] = log Σ_{i<V} exp(z_i) − z_target            (z = logits[b,t,:])
    backward:  dlogits[b,t,i] = (softmax(z[:V])_i − [i = target])·dlosses[b,t]   for i < V
               dlogits[b,t,i] = 0                                          for V ≤ i < Vp
               dlogits is WRITTEN (=), not accumulated, and may be the logits buffer itself.

Both subtract the row max before exp (exp never overflows) and sum the exps in float64.
"""
import math

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _row_max(a, start, n):
    """max(a[start : start + n]), n ≥ 1. Eight independent running maxima instead of one: the
    single compare-and-select chain is latency-bound (max is exact, so the order is free)."""
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
def crossentropy_forward(losses, logits, targets, B, T, V, Vp):
    for bt in prange(B * T):
        row = bt * Vp
        maxval = _row_max(logits, row, V)
        s = 0.0
        for i in range(V):
            s += math.exp(logits[row + i] - maxval)  # float32 argument: expf
        losses[bt] = math.log(s) + maxval - logits[row + targets[bt]]


@njit(parallel=True, cache=True)
def crossentropy_backward(dlogits, dlosses, logits, targets, B, T, V, Vp):
    for bt in prange(B * T):
        row = bt * Vp
        maxval = _row_max(logits, row, V)
        # Park exp(z_i − max) in dlogits while summing: one exp per element, and safe in place
        # because element i of logits is read before element i of dlogits is written.
        # The row (Vp·4 bytes) stays in cache for the scaling pass.
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
