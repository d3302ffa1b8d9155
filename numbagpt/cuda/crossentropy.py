"""Softmax + cross-entropy over the first V of Vp logit columns, fused, without a probs buffer.

Shapes (row-major, flat): logits, dlogits (B, T, Vp) float32; targets (B, T) int32; losses, dlosses (B, T).

Both kernels: one block of 256 threads per (b, t) row, grid B·T. Each thread makes one pass over its
strided share of the row (coalesced) keeping an *online* max m and rescaled sum s = Σ exp(z − m)
(one exp per element); the 8 warps' (m, s) pairs are combined with warp shuffles and then through
shared memory in a fixed order, so every thread holds the row's max M and S = Σ_{i<V} exp(z_i − M).
    forward:  losses[b,t] = log S + M − z_target.      Reads 4·B·T·V bytes, ~B·T·V exps.
    backward: dlogits[b,t,i] = (exp(z_i − M)/S − [i = target])·dlosses[b,t] for i < V, 0 for
              V ≤ i < Vp. WRITES (=). In place (dlogits is logits) is safe: every thread reads all the
              elements it will overwrite before the block-wide reduction barrier, and in the writing
              pass reads element i only to overwrite that same element.
              Reads 2·4·B·T·V bytes, writes 4·B·T·Vp.
    forward_backward: both (llm.c's fused_classifier), for a training step: the loss and dlogits from
              one (M, S) pass. In place is safe as for backward, and thread 0 reads the target's
              logit before that barrier too. Reads 2·4·B·T·V bytes (the second pass from L2),
              writes 4·B·T·Vp.
    dlogits_bf16 (backward, forward_backward; --precision bf16): dlogits written in bf16 rows
              (docs/kernels.md): thread j of a pass writes word j of the row, the bf16 (runtime.bf16_round)
              of columns 2j and 2j+1, as float32 bits. A word overwrites column j, which another
              thread may still have to read: each pass reads its columns, the block synchronises,
              then it writes (_write_grad_row_bf16). Writes 2·B·T·Vp bytes.
"""
import math

import numpy as np

from .launch import Launch
from .runtime import F32A, I32A, I64, _bits_f32, _f32_bits, bf16_round, cuda, i64

BLOCK = 256
NWARPS = BLOCK // 32

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_LOWEST = np.float32(-3.0e38)  # finite "minus infinity": exp(_LOWEST − _LOWEST) = 1 but s = 0 there
_FULL = 0xFFFFFFFF


@cuda.jit(device=True, inline=True)
def _combine(m1, s1, m2, s2):
    if m2 > m1:
        return m2, s1 * math.exp(m1 - m2) + s2
    return m1, s1 + s2 * math.exp(m2 - m1)


@cuda.jit(device=True, inline=True)
def _row_max_sum(logits, row, V, sm_m, sm_s):
    """(M, S) of logits[row : row + V] for the calling block; every thread gets the result."""
    tid = cuda.threadIdx.x
    m = _LOWEST
    s = _ZERO
    for i in range(tid, V, BLOCK):
        z = logits[row + i]
        if z > m:
            s = s * math.exp(m - z) + _ONE
            m = z
        else:
            s += math.exp(z - m)
    off = 16
    while off > 0:
        m2 = cuda.shfl_xor_sync(_FULL, m, off)
        s2 = cuda.shfl_xor_sync(_FULL, s, off)
        m, s = _combine(m, s, m2, s2)
        off //= 2
    if tid % 32 == 0:
        sm_m[tid // 32] = m
        sm_s[tid // 32] = s
    cuda.syncthreads()
    m = sm_m[0]
    s = sm_s[0]
    for w in range(1, NWARPS):
        m, s = _combine(m, s, sm_m[w], sm_s[w])
    return m, s


@cuda.jit(fastmath=False)
def crossentropy_forward_kernel(losses, logits, targets, B, T, V, Vp):
    """One block of 256 threads per (b, t) row, grid B·T: losses[b,t] = log S + M − logits[b,t,target] (=),
    (M, S) = max_{i<V} z_i and Σ_{i<V} exp(z_i − M) (_row_max_sum); thread 0 writes."""
    sm_m = cuda.shared.array(NWARPS, np.float32)
    sm_s = cuda.shared.array(NWARPS, np.float32)
    bt = cuda.blockIdx.x
    row = bt * Vp
    m, s = _row_max_sum(logits, row, V, sm_m, sm_s)
    if cuda.threadIdx.x == 0:
        losses[bt] = math.log(s) + m - logits[row + targets[bt]]


@cuda.jit(device=True, inline=True)
def _grad(logits, row, i, m, scale, target, dloss, V):
    """dlogits' column i: exp(z_i − m)·scale − [i = target]·dloss (scale = dloss/s), 0 for i ≥ V."""
    d = _ZERO
    if i < V:
        d = math.exp(logits[row + i] - m) * scale
        if i == target:
            d -= dloss
    return d


@cuda.jit(device=True, inline=True)
def _write_grad_row(dlogits, dlosses, logits, targets, bt, row, m, s, V, Vp):
    """dlogits[row + i] = (exp(z_i − m)/s − [i = target])·dlosses[bt], 0 in the padding."""
    dloss = dlosses[bt]
    scale = dloss / s
    target = targets[bt]
    for i in range(cuda.threadIdx.x, Vp, BLOCK):
        dlogits[row + i] = _grad(logits, row, i, m, scale, target, dloss, V)


@cuda.jit(device=True, inline=True)
def _grad_bf16(logits, row, i, m, scale, target, dloss, V):
    """The 16 bits of bf16(_grad(...)), rounded as runtime.bf16_round."""
    return _f32_bits(bf16_round(_grad(logits, row, i, m, scale, target, dloss, V))) >> 16


@cuda.jit(device=True, inline=True)
def _write_grad_row_bf16(dlogits, dlosses, logits, targets, bt, row, m, s, V, Vp):
    """_write_grad_row's values in bf16 rows: word j of the row = bf16 of column 2j | of 2j+1 << 16.
    Every thread makes the same number of passes: each reads its two columns, then the block
    synchronises, then each writes its word (in place, word j is column j's slot)."""
    dloss = dlosses[bt]
    scale = dloss / s
    target = targets[bt]
    half = Vp // 2
    for j0 in range(0, half, BLOCK):
        j = j0 + cuda.threadIdx.x
        w = 0
        if j < half:
            w = (_grad_bf16(logits, row, 2 * j, m, scale, target, dloss, V)
                 | (_grad_bf16(logits, row, 2 * j + 1, m, scale, target, dloss, V) << 16))
        cuda.syncthreads()
        if j < half:
            dlogits[row + j] = _bits_f32(w)


def _make_kernels(bf16):
    """The backward and forward_backward kernels writing dlogits in float32, or in bf16 rows (bf16:
    a compile-time constant)."""

    def backward(dlogits, dlosses, logits, targets, B, T, V, Vp):
        sm_m = cuda.shared.array(NWARPS, np.float32)
        sm_s = cuda.shared.array(NWARPS, np.float32)
        bt = cuda.blockIdx.x
        row = bt * Vp
        m, s = _row_max_sum(logits, row, V, sm_m, sm_s)
        if bf16:
            _write_grad_row_bf16(dlogits, dlosses, logits, targets, bt, row, m, s, V, Vp)
        else:
            _write_grad_row(dlogits, dlosses, logits, targets, bt, row, m, s, V, Vp)

    def forward_backward(losses, dlogits, dlosses, logits, targets, B, T, V, Vp):
        sm_m = cuda.shared.array(NWARPS, np.float32)
        sm_s = cuda.shared.array(NWARPS, np.float32)
        bt = cuda.blockIdx.x
        row = bt * Vp
        zt = logits[row + targets[bt]]   # before _row_max_sum's barrier: nothing is overwritten yet
        m, s = _row_max_sum(logits, row, V, sm_m, sm_s)
        if cuda.threadIdx.x == 0:
            losses[bt] = math.log(s) + m - zt
        if bf16:
            _write_grad_row_bf16(dlogits, dlosses, logits, targets, bt, row, m, s, V, Vp)
        else:
            _write_grad_row(dlogits, dlosses, logits, targets, bt, row, m, s, V, Vp)

    return cuda.jit(fastmath=False)(backward), cuda.jit(fastmath=False)(forward_backward)


crossentropy_backward_kernel, crossentropy_forward_backward_kernel = _make_kernels(False)
crossentropy_backward_bf16_kernel, crossentropy_forward_backward_bf16_kernel = _make_kernels(True)


SIGNATURES = {
    "crossentropy_forward_kernel": [(F32A, F32A, I32A, I64, I64, I64, I64)],
    "crossentropy_backward_kernel": [(F32A, F32A, F32A, I32A, I64, I64, I64, I64)],
    "crossentropy_forward_backward_kernel": [(F32A, F32A, F32A, F32A, I32A, I64, I64, I64, I64)],
    "crossentropy_backward_bf16_kernel": [(F32A, F32A, F32A, I32A, I64, I64, I64, I64)],
    "crossentropy_forward_backward_bf16_kernel": [(F32A, F32A, F32A, F32A, I32A, I64, I64, I64, I64)],
}


def crossentropy_forward_launches(B, T, V, Vp):
    """[forward]: one block per (b, t) row."""
    return [Launch(crossentropy_forward_kernel, B * T, BLOCK)]


def crossentropy_backward_launches(B, T, V, Vp, bf16=False):
    """[backward]: one block per (b, t) row (bf16: dlogits in bf16 rows)."""
    return [Launch(crossentropy_backward_bf16_kernel if bf16 else crossentropy_backward_kernel, B * T, BLOCK)]


def crossentropy_forward(losses, logits, targets, B, T, V, Vp):
    """losses (B,T) = logsumexp(logits[b,t,:V]) − logits[b,t,target]."""
    (fwd,) = crossentropy_forward_launches(B, T, V, Vp)
    fwd(losses, logits, targets, i64(B), i64(T), i64(V), i64(Vp))


def crossentropy_backward(dlogits, dlosses, logits, targets, B, T, V, Vp, dlogits_bf16=False):
    """dlogits (B,T,Vp) = (softmax − onehot)·dlosses over the first V columns, 0 in the padding
    (dlogits_bf16: rounded to bf16, in bf16 rows; Vp even). Writes (=); dlogits may be logits (in place)."""
    (bwd,) = crossentropy_backward_launches(B, T, V, Vp, dlogits_bf16)
    bwd(dlogits, dlosses, logits, targets, i64(B), i64(T), i64(V), i64(Vp))


def crossentropy_forward_backward_launches(B, T, V, Vp, bf16=False):
    """[forward_backward]: one block per (b, t) row (bf16: dlogits in bf16 rows)."""
    kernel = crossentropy_forward_backward_bf16_kernel if bf16 else crossentropy_forward_backward_kernel
    return [Launch(kernel, B * T, BLOCK)]


def crossentropy_forward_backward(losses, dlogits, dlosses, logits, targets, B, T, V, Vp, dlogits_bf16=False):
    """losses as crossentropy_forward and dlogits as crossentropy_backward (dlogits_bf16 too), from one
    pass over the logits; dlogits may be logits (in place)."""
    (fb,) = crossentropy_forward_backward_launches(B, T, V, Vp, dlogits_bf16)
    fb(losses, dlogits, dlosses, logits, targets, i64(B), i64(T), i64(V), i64(Vp))
