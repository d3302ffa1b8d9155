"""LayerNorm over the last axis (llm.c's layernorm_forward / layernorm_backward), and the residual
add fused with the layernorm that follows it (llm.c's fused_residual_forward5).

Shapes (row-major, flat float32 buffers):
    inp, out, dinp, dout, residual, ln, inp1, inp2 (B, T, C)     weight, bias, dweight, dbias (C)
    mean, rstd (B, T)

    forward:   mean = Σ_i x_i / C;  var = Σ_i (x_i − mean)² / C  (biased);  rstd = 1/sqrt(var + 1e-5)
               norm_i = (x_i − mean)·rstd;  out_i = norm_i·weight_i + bias_i
    backward:  dnorm_i = weight_i·dout_i
               dinp_i   += rstd·(dnorm_i − mean_j(dnorm_j) − norm_i·mean_j(dnorm_j·norm_j))
               dweight_i += Σ_{b,t} norm_i·dout_i;   dbias_i += Σ_{b,t} dout_i
    fused:     residual = inp1 + inp2 (float32); ln, mean, rstd = layernorm_forward(residual), bit
               for bit (the backward, and -r 2's recomputed layernorm, start from the stored residual)
"""
import math

import numpy as np
from numba import njit, prange

_EPS = 1e-5
# Channels per parallel iteration of the dweight/dbias reduction (one cache line of float32).
_CBLOCK = 16


@njit(cache=True)
def _normalize_row(out, mean, rstd, inp, weight, bias, bt, C, total):
    """Row bt of the forward, given total = Σ_i inp[row] in float64 (summed by the caller, in index
    order, so the fused kernel can sum while it writes the row)."""
    x = bt * C
    # Two passes in float64 (mean, then centred variance): no cancellation from E[x²] − E[x]²
    # and no float32 rounding growing with C.
    m = total / C
    v = 0.0
    for i in range(C):
        d = inp[x + i] - m
        v += d * d
    v = v / C
    rs = 1.0 / math.sqrt(v + _EPS)
    for i in range(C):
        # Normalise with the float64 statistics: x − mean with mean rounded to float32 loses
        # digits when |mean| ≫ std. Only the saved copies are rounded.
        n = (inp[x + i] - m) * rs
        out[x + i] = n * weight[i] + bias[i]
    mean[bt] = m
    rstd[bt] = rs


@njit(parallel=True, cache=True)
def layernorm_forward(out, mean, rstd, inp, weight, bias, B, T, C):
    for bt in prange(B * T):
        x = bt * C
        total = 0.0
        for i in range(C):
            total += inp[x + i]
        _normalize_row(out, mean, rstd, inp, weight, bias, bt, C, total)


@njit(parallel=True, cache=True)
def fused_residual_layernorm_forward(residual, ln, mean, rstd, inp1, inp2, weight, bias, B, T, C):
    # One parallel loop instead of residual_forward's and layernorm_forward's: each row's sum is
    # taken as it is written, and the normalisation re-reads it from L1. The statistics are of the
    # float32 residual, summed in the same order, so the bits equal layernorm_forward(residual).
    for bt in prange(B * T):
        x = bt * C
        total = 0.0
        for i in range(C):
            r = inp1[x + i] + inp2[x + i]
            residual[x + i] = r
            total += r
        _normalize_row(ln, mean, rstd, residual, weight, bias, bt, C, total)


@njit(parallel=True, cache=True)
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, T, C):
    # dinp: every (b, t) row is independent.
    for bt in prange(B * T):
        x = bt * C
        m = mean[bt]
        s = rstd[bt]
        dnorm_mean = 0.0
        dnorm_norm_mean = 0.0
        for i in range(C):
            norm_i = (inp[x + i] - m) * s
            dnorm_i = weight[i] * dout[x + i]
            dnorm_mean += dnorm_i
            dnorm_norm_mean += dnorm_i * norm_i
        dnorm_mean32 = np.float32(dnorm_mean / C)
        dnorm_norm_mean32 = np.float32(dnorm_norm_mean / C)
        for i in range(C):
            norm_i = (inp[x + i] - m) * s
            dnorm_i = weight[i] * dout[x + i]
            dinp[x + i] += (dnorm_i - dnorm_mean32 - norm_i * dnorm_norm_mean32) * s

    # dweight, dbias reduce over all (b, t): a parallel loop over (b, t) would race on them, so
    # reduce in a separate loop whose iterations own disjoint blocks of channels, in float64.
    nblocks = (C + _CBLOCK - 1) // _CBLOCK
    for blk in prange(nblocks):
        c0 = blk * _CBLOCK
        nc = min(_CBLOCK, C - c0)
        dw = np.zeros(_CBLOCK, dtype=np.float64)
        db = np.zeros(_CBLOCK, dtype=np.float64)
        for bt in range(B * T):
            x = bt * C + c0
            m = mean[bt]
            s = rstd[bt]
            for j in range(nc):
                d = dout[x + j]
                db[j] += d
                dw[j] += ((inp[x + j] - m) * s) * d
        for j in range(nc):
            dweight[c0 + j] += dw[j]
            dbias[c0 + j] += db[j]
