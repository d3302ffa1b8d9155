"""Softmax + cross-entropy loss over the first V of Vp logit columns (llm.c's crossentropy_forward
and the fused crossentropy_softmax_backward), with no probs buffer.

Shapes (row-major): logits, dlogits (B, T, Vp) float32; targets (B, T) int32 with 0 ≤ target < V;
losses, dlosses (B, T) float32. Columns V..Vp−1 are padding: they take no part in the softmax.

    forward:   losses[b,t] = log Σ_{i<V} exp(z_i) − z_target            (z = logits[b,t,:])
    backward:  dlogits[b,t,i] = (softmax(z[:V])_i − [i = target])·dlosses[b,t]   for i < V
               dlogits[b,t,i] = 0                                          for V ≤ i < Vp
               dlogits is WRITTEN (=), not accumulated, and may be the logits buffer itself.
    forward_backward: both, bit for bit, from one read of each row (a training step's forward, whose
               backward follows: llm.c's fused classifier); dlogits may be logits.
    dlogits_bf16=True (backward, forward_backward; --precision bf16): dlogits is written in bf16 rows,
               each row's Vp values rounded to bfloat16 (matmul_bf16.bf16_bits: to nearest even) in the
               first Vp/2 words of its Vp float32 slots, two to a word (the even column in the low
               half), for the LM head's matmul_backward_bf16(..., dout_bf16=True) to read as they lie
               (the rest of the row is scratch, left as it was): the float32 row of
               dlogits_bf16=False, built in a row buffer of the thread's own (in L2), then rounded
               into dlogits, 16 values at a time in vector registers (matmul_bf16._row_to_bf16).
               Vp even.

Both subtract the row max before exp (exp never overflows), with
  - the row max on integer keys (fastmath.max_f32: exact, vectorised);
  - exp as fastmath.exp_nonpos (vectorisable, ≤ 1.01 ulp; its arguments z − max are ≤ 0, its domain);
  - the exps summed in float32 within chunks of _CHUNK (vectorised: every SIMD lane sums ~16 terms)
    and the chunk sums in float64, so the sum is about as accurate as an all-float64 one (the
    float32 rounding does not grow with V) at float32 speed.
fastmath 'reassoc' lets LLVM vectorise those sums (and the max's selects), 'contract' fuses
multiply-adds. Measured (bench/bench_kernels.py) ~4x faster than the libm-exp loops they replace.
"""
import math

import numba
import numpy as np
from numba import njit, prange

from .fastmath import exp_nonpos, max_f32
from .matmul_bf16 import _row_to_bf16

_FASTMATH = {'reassoc', 'contract'}
_CHUNK = 512


@njit(fastmath=_FASTMATH, inline='always')
def _sum_exp(z, n, m):
    """Σ_{i<n} exp(z[i] − m) in float32: only for short runs (n ≤ _CHUNK); z[i] ≤ m."""
    s = np.float32(0.0)
    for i in range(n):
        s += exp_nonpos(z[i] - m)
    return s


@njit(fastmath=_FASTMATH, inline='always')
def _store_sum_exp(d, z, n, m):
    """d[i] = exp(z[i] − m) for i < n, and their float32 sum (n ≤ _CHUNK). Vectorised only if d
    and z do not overlap (else LLVM's runtime check picks the scalar loop)."""
    s = np.float32(0.0)
    for i in range(n):
        e = exp_nonpos(z[i] - m)
        d[i] = e
        s += e
    return s


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def crossentropy_forward(losses, logits, targets, B, T, V, Vp):
    """losses (B,T) = logsumexp(logits[b,t,:V]) − logits[b,t,target]."""
    for bt in prange(B * T):
        # Row views indexed from 0: flat `logits[row + i]` indexing keeps Numba's negative-index
        # wraparound select, which blocks vectorisation.
        z = logits[bt * Vp:bt * Vp + V]
        maxval = max_f32(z, V)
        s = 0.0
        for c0 in range(0, V, _CHUNK):
            n = min(_CHUNK, V - c0)
            s += _sum_exp(z[c0:c0 + n], n, maxval)
        losses[bt] = math.log(s) + maxval - z[targets[bt]]


@njit(fastmath=_FASTMATH, inline='always')
def _softmax_grad_row(d, z, target, dloss, buf, V, Vp, bf16):
    """d[:V] = (softmax(z[:V]) − onehot(target))·dloss, d[V:Vp] = 0 (d may be z), in bf16 rows if
    bf16 (see the module docstring); returns (max z, Σ exp(z − max)) for the loss. `buf` is the
    thread's own row of Vp floats (_rows). Parks exp(z_i − max) in a float32 row while summing:
    one exp per element; the row (Vp·4 bytes) stays in L2 for the scaling pass. In float32 that row
    is d itself, the exps going through buf a chunk at a time (with d = z, the model's in-place call,
    a loop that reads z and writes d fails LLVM's runtime overlap check and runs its scalar version,
    ~5x slower); in bf16 it is buf, and only the rounded row is written to d: the second half of d's
    row is never written, so its cache lines are not written back to memory (at B·T = 16384, 1.6 GB
    a call less: 1.16x at B·T = 4096 and 16384, the same bits)."""
    maxval = max_f32(z, V)
    s = 0.0
    for c0 in range(0, V, _CHUNK):
        n = min(_CHUNK, V - c0)
        e = buf[c0:c0 + n] if bf16 else buf[:n]
        s += _store_sum_exp(e, z[c0:c0 + n], n, maxval)
        if not bf16:
            dc = d[c0:c0 + n]
            for i in range(n):
                dc[i] = e[i]
    r = buf if bf16 else d
    scale = np.float32(dloss / s)
    for i in range(V):
        r[i] *= scale
    for i in range(V, Vp):
        r[i] = 0.0
    r[target] -= dloss
    if bf16:
        _row_to_bf16(d, r, Vp)
    return maxval, s


def _rows(Vp):
    """A row of Vp float32 for every thread of the kernel's parallel loop (the thread's own:
    numba.get_thread_id(), below numba.get_num_threads()). Counted here, at run time: read inside the
    kernel, NUMBA_NUM_THREADS was frozen into the cached machine code, and a cache filled by a process
    with fewer threads gave a later one too few rows, which its other threads wrote past."""
    return np.empty(numba.get_num_threads() * Vp, np.float32)


def crossentropy_backward(dlogits, dlosses, logits, targets, B, T, V, Vp, dlogits_bf16=False):
    """dlogits (B,T,Vp) = (softmax − onehot)·dlosses over the first V columns, 0 in the padding
    (dlogits_bf16: rounded to bf16, in bf16 rows; Vp even). Writes (=); dlogits may be logits (in
    place). Rows in parallel."""
    _backward(dlogits, dlosses, logits, targets, B * T, V, Vp, dlogits_bf16, _rows(Vp))


def crossentropy_forward_backward(losses, dlogits, dlosses, logits, targets, B, T, V, Vp, dlogits_bf16=False):
    """losses (B,T) and dlogits (B,T,Vp) from one read of each row (dlogits may be logits)."""
    _forward_backward(losses, dlogits, dlosses, logits, targets, B * T, V, Vp, dlogits_bf16, _rows(Vp))


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward(dlogits, dlosses, logits, targets, BT, V, Vp, bf16, rows):
    for bt in prange(BT):
        tid = numba.get_thread_id()
        buf = rows[tid * Vp:(tid + 1) * Vp]
        _softmax_grad_row(dlogits[bt * Vp:bt * Vp + Vp], logits[bt * Vp:bt * Vp + V], targets[bt], dlosses[bt],
                          buf, V, Vp, bf16)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward_backward(losses, dlogits, dlosses, logits, targets, BT, V, Vp, bf16, rows):
    for bt in prange(BT):
        # the forward and the backward from one read of the row (llm.c's fused_classifier): the
        # target's logit is read before the row is overwritten (dlogits may be logits)
        z = logits[bt * Vp:bt * Vp + V]
        zt = z[targets[bt]]
        tid = numba.get_thread_id()
        buf = rows[tid * Vp:(tid + 1) * Vp]
        maxval, s = _softmax_grad_row(dlogits[bt * Vp:bt * Vp + Vp], z, targets[bt], dlosses[bt], buf, V, Vp, bf16)
        losses[bt] = math.log(s) + maxval - zt
