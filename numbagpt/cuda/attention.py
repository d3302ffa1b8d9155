"""Causal multi-head self-attention as CUDA kernels: llm.c's unfused path (preatt/att buffers), with the
four batched products as tiled GEMMs (`matmul.make_gemm`, one batch per (b, h) on blockIdx.z) and the
softmax and its backward as one-warp-per-row kernels.

Shapes (row-major, flat), hs = C/NH, scale = 1/sqrt(hs):
    inp, dinp (B, T, 3C) rows [q | k | v]    preatt, att, dpreatt, datt (B, NH, T, T)    out, dout (B, T, C)

forward (3 launches):
    preatt[t, t2] = scale·q_t·k_t2        GEMM, M=N=T, K=hs, causal: tiles above the diagonal skip,
                                           only t2 ≤ t written
    att = causal softmax(preatt)           one warp per row (B·NH·T rows, 4 per 128-thread block);
                                           att[t, t2 > t] = 0 written
    out_t = Σ_t2 att[t, t2]·v_t2           GEMM, M=T, N=hs, K=T, K loop stops at the diagonal
backward (5 launches; dinp accumulates, datt/dpreatt are scratch, written here for t2 ≤ t):
    datt[t, t2] = dout_t·v_t2              GEMM (as preatt, written, causal)
    dv_t2 += Σ_t att[t, t2]·dout_t         GEMM, A = attᵀ, K loop starts at the diagonal
    dpreatt = att·(datt − Σ att·datt)      one warp per row; dpreatt[t, t2 > t] = 0 written
    dq_t += scale·Σ_t2 dpreatt[t, t2]·k_t2 GEMM, K loop stops at the diagonal
    dk_t2 += scale·Σ_t dpreatt[t, t2]·q_t  GEMM, A = dpreattᵀ, K loop starts at the diagonal
The q, k, v (and dq, dk, dv) operands are read in place from the (B, T, 3C) buffers with row stride 3C.
"""
import math

import numpy as np

from .launch import Launch
from .matmul import (CAUSAL_K_LOWER, CAUSAL_K_UPPER, CAUSAL_OUT, GEMM_SIGNATURE, gemm_launch, launch_gemm,
                     make_gemm)
from .runtime import F32, F32A, I64, cdiv, cuda, f32, i64, warp_max, warp_sum

WARPS = 4
ROW_BLOCK = 32 * WARPS

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_NEG_INF = np.float32(-np.inf)

# preatt = scale·q·kᵀ (write, t2 ≤ t) and datt = dout·vᵀ (write, t2 ≤ t): A M×K, B N×K storage
att_scores_gemm = make_gemm(a_km=False, b_nk=True, causal=CAUSAL_OUT, has_bias=False, accumulate=False)
# out = att·v (write): A = att (M×K), B = v (K×N storage), att[t, t2 > t] = 0
att_values_gemm = make_gemm(a_km=False, b_nk=False, causal=CAUSAL_K_UPPER, has_bias=False, accumulate=False)
# dq += scale·dpreatt·k: as att_values_gemm, accumulating
att_dq_gemm = make_gemm(a_km=False, b_nk=False, causal=CAUSAL_K_UPPER, has_bias=False, accumulate=True)
# dv += attᵀ·dout and dk += scale·dpreattᵀ·q: A stored K×M (A[m=t2, k=t] = att[t, t2])
att_dkv_gemm = make_gemm(a_km=True, b_nk=False, causal=CAUSAL_K_LOWER, has_bias=False, accumulate=True)


@cuda.jit(fastmath=False)
def softmax_forward_kernel(att, preatt, B, NH, T):
    """att[row, t2] = exp(preatt − max)/Σ over t2 ≤ t (t = row % T); 0 for t2 > t. One warp per row."""
    lane = cuda.threadIdx.x % 32
    row = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // 32
    if row < B * NH * T:
        t = row % T
        base = row * T
        m = _NEG_INF
        for t2 in range(lane, t + 1, 32):
            x = preatt[base + t2]
            if x > m:
                m = x
        m = warp_max(m)
        s = _ZERO
        for t2 in range(lane, t + 1, 32):
            s += math.exp(preatt[base + t2] - m)
        s = warp_sum(s)
        inv = _ONE / s  # s ≥ exp(0) = 1: the diagonal is always present
        for t2 in range(lane, T, 32):
            if t2 <= t:
                att[base + t2] = math.exp(preatt[base + t2] - m) * inv
            else:
                att[base + t2] = _ZERO


@cuda.jit(fastmath=False)
def softmax_backward_kernel(dpreatt, datt, att, B, NH, T):
    """dpreatt[row, t2] = att·(datt − Σ_{t3 ≤ t} att·datt) for t2 ≤ t, 0 beyond. One warp per row."""
    lane = cuda.threadIdx.x % 32
    row = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // 32
    if row < B * NH * T:
        t = row % T
        base = row * T
        s = _ZERO
        for t2 in range(lane, t + 1, 32):
            s += att[base + t2] * datt[base + t2]
        s = warp_sum(s)
        for t2 in range(lane, T, 32):
            if t2 <= t:
                dpreatt[base + t2] = att[base + t2] * (datt[base + t2] - s)
            else:
                dpreatt[base + t2] = _ZERO


SIGNATURES = {
    "att_scores_gemm": [GEMM_SIGNATURE],
    "att_values_gemm": [GEMM_SIGNATURE],
    "att_dq_gemm": [GEMM_SIGNATURE],
    "att_dkv_gemm": [GEMM_SIGNATURE],
    "softmax_forward_kernel": [(F32A, F32A, I64, I64, I64)],
    "softmax_backward_kernel": [(F32A, F32A, F32A, I64, I64, I64)],
}


def _layout(B, T, C, NH):
    hs = C // NH
    C3 = 3 * C
    # per-(b, h) strides of the (B, T, 3C) qkv buffer, the (B, T, C) out buffer and the (B, NH, T, T) maps
    return hs, C3, dict(sb=T * C3, sh=hs), dict(sb=T * C, sh=hs), dict(sb=NH * T * T, sh=T * T)


def attention_forward_launches(B, T, C, NH):
    """[preatt GEMM, softmax (one warp per row), out GEMM]; the GEMMs batched over the B·NH heads."""
    hs, nb, rows = C // NH, B * NH, B * NH * T
    return [gemm_launch(att_scores_gemm, T, T, hs, batches=nb),
            Launch(softmax_forward_kernel, cdiv(rows, WARPS), ROW_BLOCK),
            gemm_launch(att_values_gemm, T, hs, T, batches=nb)]


def attention_backward_launches(B, T, C, NH):
    """[datt GEMM, dv GEMM, softmax backward (one warp per row), dq GEMM, dk GEMM]."""
    hs, nb, rows = C // NH, B * NH, B * NH * T
    return [gemm_launch(att_scores_gemm, T, T, hs, batches=nb),
            gemm_launch(att_dkv_gemm, T, hs, T, batches=nb),
            Launch(softmax_backward_kernel, cdiv(rows, WARPS), ROW_BLOCK),
            gemm_launch(att_dq_gemm, T, hs, T, batches=nb),
            gemm_launch(att_dkv_gemm, T, hs, T, batches=nb)]


def attention_forward(out, preatt, att, inp, B, T, C, NH):
    """out (B,T,C), preatt, att (B,NH,T,T) from qkv inp (B,T,3C); causal, scale 1/sqrt(C/NH)."""
    if B * T * C == 0:
        return
    hs, C3, qkv, o, maps = _layout(B, T, C, NH)
    scale = 1.0 / math.sqrt(hs)
    scores, softmax, values = attention_forward_launches(B, T, C, NH)
    # preatt[t, t2] = scale·q_t·k_t2
    launch_gemm(scores, preatt, inp, inp, None, T, T, hs, lda=C3, ldb=C3, ldc=T,
                a_off=0, a_sb=qkv["sb"], a_sh=qkv["sh"], b_off=C, b_sb=qkv["sb"], b_sh=qkv["sh"],
                c_off=0, c_sb=maps["sb"], c_sh=maps["sh"], NH=NH, alpha=scale)
    softmax(att, preatt, i64(B), i64(NH), i64(T))
    # out_t = Σ_t2 att[t, t2]·v_t2
    launch_gemm(values, out, att, inp, None, T, hs, T, lda=T, ldb=C3, ldc=C,
                a_off=0, a_sb=maps["sb"], a_sh=maps["sh"], b_off=2 * C, b_sb=qkv["sb"], b_sh=qkv["sh"],
                c_off=0, c_sb=o["sb"], c_sh=o["sh"], NH=NH, alpha=1.0)


def attention_backward(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    """dinp (B,T,3C) += the attention gradients; dpreatt, datt (B,NH,T,T) are scratch."""
    if B * T * C == 0:
        return
    hs, C3, qkv, o, maps = _layout(B, T, C, NH)
    scale = 1.0 / math.sqrt(hs)
    datt_gemm, dv_gemm, softmax_bwd, dq_gemm, dk_gemm = attention_backward_launches(B, T, C, NH)
    # datt[t, t2] = dout_t·v_t2 (t2 ≤ t)
    launch_gemm(datt_gemm, datt, dout, inp, None, T, T, hs, lda=C, ldb=C3, ldc=T,
                a_off=0, a_sb=o["sb"], a_sh=o["sh"], b_off=2 * C, b_sb=qkv["sb"], b_sh=qkv["sh"],
                c_off=0, c_sb=maps["sb"], c_sh=maps["sh"], NH=NH, alpha=1.0)
    # dv_t2 += Σ_t att[t, t2]·dout_t
    launch_gemm(dv_gemm, dinp, att, dout, None, T, hs, T, lda=T, ldb=C, ldc=C3,
                a_off=0, a_sb=maps["sb"], a_sh=maps["sh"], b_off=0, b_sb=o["sb"], b_sh=o["sh"],
                c_off=2 * C, c_sb=qkv["sb"], c_sh=qkv["sh"], NH=NH, alpha=1.0)
    softmax_bwd(dpreatt, datt, att, i64(B), i64(NH), i64(T))
    # dq_t += scale·Σ_t2 dpreatt[t, t2]·k_t2
    launch_gemm(dq_gemm, dinp, dpreatt, inp, None, T, hs, T, lda=T, ldb=C3, ldc=C3,
                a_off=0, a_sb=maps["sb"], a_sh=maps["sh"], b_off=C, b_sb=qkv["sb"], b_sh=qkv["sh"],
                c_off=0, c_sb=qkv["sb"], c_sh=qkv["sh"], NH=NH, alpha=scale)
    # dk_t2 += scale·Σ_t dpreatt[t, t2]·q_t
    launch_gemm(dk_gemm, dinp, dpreatt, inp, None, T, hs, T, lda=T, ldb=C3, ldc=C3,
                a_off=0, a_sb=maps["sb"], a_sh=maps["sh"], b_off=0, b_sb=qkv["sb"], b_sh=qkv["sh"],
                c_off=C, c_sb=qkv["sb"], c_sh=qkv["sh"], NH=NH, alpha=scale)


# ---------------------------------------------------------------------------------------------------
# Generation: attention of T new positions against a key/value cache (T = 1 when decoding a token).
#   kcache, vcache (B, NH, maxT, hs)   att (B, NH, T, maxT)   the rest as above; see the CPU kernel.
# Two launches: the new rows go into the cache first (a query may attend to a key of another new
# position, which another block would otherwise be writing), then one warp per query row (b, h, t)
# computes its n = t0+t+1 scores (lanes over keys), the softmax (warp reductions) and out (lanes over
# the hs channels, coalesced).

@cuda.jit(fastmath=False)
def kv_cache_write_kernel(kcache, vcache, inp, B, T, t0, C, NH, maxT):
    """kcache/vcache[b, h, t0+t, i] = k/v of inp[b, t] (channel h·hs+i); one thread per (b, t, c)."""
    idx = cuda.grid(1)
    if idx < B * T * C:
        bt = idx // C
        c = idx - bt * C
        b = bt // T
        t = bt - b * T
        hs = C // NH
        h = c // hs
        dst = ((b * NH + h) * maxT + t0 + t) * hs + (c - h * hs)
        kcache[dst] = inp[bt * 3 * C + C + c]
        vcache[dst] = inp[bt * 3 * C + 2 * C + c]


@cuda.jit(fastmath=False)
def attention_cached_kernel(out, att, kcache, vcache, inp, B, T, t0, C, NH, maxT, scale):
    lane = cuda.threadIdx.x % 32
    row = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // 32
    if row < B * NH * T:
        t = row % T
        bh = row // T
        h = bh % NH
        b = bh // NH
        hs = C // NH
        n = t0 + t + 1
        q = (b * T + t) * 3 * C + h * hs
        kv = bh * maxT * hs
        a = row * maxT
        m = _NEG_INF
        for t2 in range(lane, n, 32):
            s = _ZERO
            for i in range(hs):
                s += inp[q + i] * kcache[kv + t2 * hs + i]
            s *= scale
            att[a + t2] = s
            if s > m:
                m = s
        m = warp_max(m)
        e_sum = _ZERO
        for t2 in range(lane, maxT, 32):
            if t2 < n:
                e = math.exp(att[a + t2] - m)
                att[a + t2] = e
                e_sum += e
            else:
                att[a + t2] = _ZERO
        inv = _ONE / warp_sum(e_sum)  # ≥ exp(0) = 1: the query's own key is always there
        for t2 in range(lane, n, 32):
            att[a + t2] *= inv
        cuda.syncwarp()  # every lane reads every lane's weights below
        o = (b * T + t) * C + h * hs
        for i in range(lane, hs, 32):
            acc = _ZERO
            for t2 in range(n):
                acc += att[a + t2] * vcache[kv + t2 * hs + i]
            out[o + i] = acc


SIGNATURES.update({
    "kv_cache_write_kernel": [(F32A, F32A, F32A, I64, I64, I64, I64, I64, I64)],
    "attention_cached_kernel": [(F32A, F32A, F32A, F32A, F32A, I64, I64, I64, I64, I64, I64, F32)],
})


def attention_forward_cached_launches(B, T, t0, C, NH, maxT):
    """[cache write (one thread per (b, t, c)), attention (one warp per query row)]."""
    return [Launch(kv_cache_write_kernel, cdiv(B * T * C, 256), 256),
            Launch(attention_cached_kernel, cdiv(B * NH * T, WARPS), ROW_BLOCK)]


def attention_forward_cached(out, att, kcache, vcache, inp, B, T, t0, C, NH, maxT):
    """out (B,T,C) and att (B,NH,T,maxT) of positions t0..t0+T−1 from qkv inp (B,T,3C), whose k and v
    are first written into rows t0.. of kcache, vcache (B,NH,maxT,hs)."""
    if B * T * C == 0:
        return
    args = (i64(B), i64(T), i64(t0), i64(C), i64(NH), i64(maxT))
    write, attend = attention_forward_cached_launches(B, T, t0, C, NH, maxT)
    write(kcache, vcache, inp, *args)
    attend(out, att, kcache, vcache, inp, *args, f32(1.0 / math.sqrt(C // NH)))
