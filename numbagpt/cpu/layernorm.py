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
# fastmath 'reassoc' lets LLVM vectorise the float64 row sums (lanes of partial sums, a fixed order
# per compiled kernel: the same bits run to run); 'contract' fuses the multiply-adds.
_FASTMATH = {'reassoc', 'contract'}
# Rows per parallel iteration of the backward: each chunk sums its rows' dweight/dbias terms into its
# own float64 row of partials, added in chunk order at the end (the same bits at any thread count).
_ROWS = 32


@njit(fastmath=_FASTMATH, inline='always')
def _row_sum(x):
    """Σ_i x[i] in float64 (x a row view)."""
    s = 0.0
    for i in range(x.size):
        s += x[i]
    return s


@njit(fastmath=_FASTMATH, inline='always')
def _normalize_row(out, x, weight, bias, total):
    """out = layernorm of row view x given total = Σ_i x[i] (float64); returns (mean, rstd) in
    float64. Two passes in float64 (mean, then centred variance): no cancellation from E[x²] − E[x]²
    and no float32 rounding growing with C."""
    C = x.size
    m = total / C
    v = 0.0
    for i in range(C):
        d = x[i] - m
        v += d * d
    rs = 1.0 / math.sqrt(v / C + _EPS)
    for i in range(C):
        # Normalise with the float64 statistics: x − mean with mean rounded to float32 loses
        # digits when |mean| ≫ std. Only the saved copies are rounded.
        out[i] = (x[i] - m) * rs * weight[i] + bias[i]
    return m, rs


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def layernorm_forward(out, mean, rstd, inp, weight, bias, B, T, C):
    """out (B,T,C) = (inp − mean)·rstd·weight + bias; writes mean, rstd (B,T)."""
    for bt in prange(B * T):
        x = inp[bt * C:(bt + 1) * C]
        mean[bt], rstd[bt] = _normalize_row(out[bt * C:(bt + 1) * C], x, weight, bias, _row_sum(x))


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def fused_residual_layernorm_forward(residual, ln, mean, rstd, inp1, inp2, weight, bias, B, T, C):
    """residual (B,T,C) = inp1 + inp2; ln, mean, rstd = layernorm_forward(residual), bit for bit."""
    # One parallel loop instead of residual_forward's and layernorm_forward's: the normalisation
    # re-reads the row it has just written from L1. Its statistics are those of the float32 residual,
    # summed by the same code, so the bits equal layernorm_forward(residual).
    for bt in prange(B * T):
        r = residual[bt * C:(bt + 1) * C]
        a, b = inp1[bt * C:(bt + 1) * C], inp2[bt * C:(bt + 1) * C]
        for i in range(C):
            r[i] = a[i] + b[i]
        mean[bt], rstd[bt] = _normalize_row(ln[bt * C:(bt + 1) * C], r, weight, bias, _row_sum(r))


@njit(fastmath=_FASTMATH, inline='always')
def _backward_row(dx, pw, pb, dy, x, weight, m, s):
    """Row views: dx += the row's dinp; pw += norm·dy, pb += dy (float64 partials of dweight, dbias)."""
    C = x.size
    dnorm_mean = 0.0
    dnorm_norm_mean = 0.0
    for i in range(C):
        norm_i = (x[i] - m) * s
        dnorm_i = weight[i] * dy[i]
        dnorm_mean += dnorm_i
        dnorm_norm_mean += dnorm_i * norm_i
        pw[i] += norm_i * dy[i]
        pb[i] += dy[i]
    dnorm_mean32 = np.float32(dnorm_mean / C)
    dnorm_norm_mean32 = np.float32(dnorm_norm_mean / C)
    for i in range(C):
        norm_i = (x[i] - m) * s
        dx[i] += (weight[i] * dy[i] - dnorm_mean32 - norm_i * dnorm_norm_mean32) * s


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, T, C):
    """dinp (B,T,C), dweight, dbias (C) += the LayerNorm gradients (accumulate)."""
    # One pass over the rows: chunks of _ROWS rows in parallel, each row's dinp written as it is read,
    # its dweight/dbias terms summed into the chunk's float64 partials; then the partials in order.
    BT = B * T
    nch = (BT + _ROWS - 1) // _ROWS
    pw = np.zeros((nch, C))
    pb = np.zeros((nch, C))
    for ch in prange(nch):
        for bt in range(ch * _ROWS, min(BT, (ch + 1) * _ROWS)):
            row = slice(bt * C, (bt + 1) * C)
            _backward_row(dinp[row], pw[ch], pb[ch], dout[row], inp[row], weight, mean[bt], rstd[bt])
    for ch in range(1, nch):
        for i in range(C):
            pw[0, i] += pw[ch, i]
            pb[0, i] += pb[ch, i]
    for i in range(C):
        dweight[i] += pw[0, i]
        dbias[i] += pb[0, i]
