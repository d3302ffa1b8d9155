"""The layernorm lab (numbagpt/cpu/layernorm.py): numbered variants of layernorm_forward,
fused_residual_layernorm_forward and layernorm_backward, each checked against the float64 reference,
then timed side by side (dev/lab.py).

    python dev/layernorm.py [layernorm_forward|fused_residual_layernorm_forward|layernorm_backward] [N ...]
                            [--shapes seed,d12,d12_1k]

    1 scalar   the replaced kernels: float64 row sums in index order, flat indexing; the backward's
               dweight/dbias in a second parallel loop over blocks of 16 channels, every row
    2 production: row views, fastmath 'reassoc' (the float64 sums vectorise); the backward in one
               pass, dweight/dbias summed per chunk of 32 rows into float64 partials

Findings (this lab, when it timed the best of single calls: of 7; the 2-core AMD EPYC (Zen 4), 2 threads,
wall ms):

    |               | seed B64 T256 C128 | d12 B4 T64   | d12 B1 T1024 |
    |---------------|--------------------|--------------|--------------|
    | forward       | 4.43 -> 0.99       | 0.38 -> 0.08 | 1.37 -> 0.27 |
    | fused forward | 4.27 -> 1.27       | 0.45 -> 0.10 | 1.86 -> 0.59 |
    | backward      | 16.79 -> 1.21      | 0.60 -> 0.10 | 1.64 -> 0.31 |

  * A float64 sum in index order is a chain of dependent adds (about 4 cycles each on this CPU);
    with 'reassoc' LLVM keeps vectors of partial sums instead. The order is then fixed by the
    compiled code, so the bits repeat run to run.
  * Row views, not flat `inp[x + i]` indexing: in crossentropy and matmul the flat index kept
    Numba's negative-index wraparound select in the loops.
  * The backward's dweight/dbias loop read every row a second time, 16 channels (one cache line) at a
    time with a stride of C floats, summing into a heap array. Summed as each row is read, into
    float64 partials per chunk of 32 rows (added in chunk order: the same bits at any thread count),
    the backward is one pass over memory: at the seed shape 8 ns an element before, 0.6 after.
"""
import math
import sys

import numpy as np
from numba import njit, prange

import lab
from numbagpt.cpu.layernorm import fused_residual_layernorm_forward, layernorm_backward, layernorm_forward  # noqa: E402

_EPS = 1e-5
_CBLOCK = 16   # channels per parallel iteration of the dweight/dbias reduction


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
def forward_v1(out, mean, rstd, inp, weight, bias, B, T, C):
    for bt in prange(B * T):
        x = bt * C
        total = 0.0
        for i in range(C):
            total += inp[x + i]
        _normalize_row(out, mean, rstd, inp, weight, bias, bt, C, total)


@njit(parallel=True, cache=True)
def fused_v1(residual, ln, mean, rstd, inp1, inp2, weight, bias, B, T, C):
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
def backward_v1(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, T, C):
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


SHAPES = {"seed": (64, 256, 128), "d12": (4, 64, 768), "d12_1k": (1, 1024, 768)}   # (B, T, C)


def _rows(shape, rng):
    B, T, C = shape
    x = (rng.standard_normal((B, T, C)) + 5.0).astype(np.float32).reshape(-1)
    return x, (1.0 + 0.5 * rng.standard_normal(C)).astype(np.float32), (0.5 * rng.standard_normal(C)).astype(np.float32)


def _forward_args(shape, rng):
    B, T, C = shape
    x, w, b = _rows(shape, rng)
    return dict(out=B * T * C, mean=B * T, rstd=B * T, inp=x, weight=w, bias=b, B=B, T=T, C=C)


def _fused_args(shape, rng):
    B, T, C = shape
    x, w, b = _rows(shape, rng)
    inp2 = (0.3 * rng.standard_normal(B * T * C)).astype(np.float32)
    return dict(residual=B * T * C, ln=B * T * C, mean=B * T, rstd=B * T, inp1=x - inp2, inp2=inp2, weight=w,
                bias=b, B=B, T=T, C=C)


def _backward_args(shape, rng):
    B, T, C = shape
    x, w, _ = _rows(shape, rng)
    xr = x.reshape(B * T, C).astype(np.float64)
    mean = xr.mean(axis=1)
    rstd = 1.0 / np.sqrt(((xr - mean[:, None]) ** 2).mean(axis=1) + 1e-5)
    return dict(dinp=B * T * C, dweight=C, dbias=C, dout=rng.standard_normal(B * T * C).astype(np.float32), inp=x,
                weight=w, mean=mean.astype(np.float32), rstd=rstd.astype(np.float32), B=B, T=T, C=C)


KERNELS = [
    lab.Kernel("layernorm_forward", [("scalar", forward_v1), ("production", layernorm_forward)], _forward_args),
    lab.Kernel("fused_residual_layernorm_forward",
               [("scalar", fused_v1), ("production", fused_residual_layernorm_forward)], _fused_args),
    lab.Kernel("layernorm_backward", [("scalar", backward_v1), ("production", layernorm_backward)], _backward_args),
]

if __name__ == "__main__":
    sys.exit(lab.main(__doc__, KERNELS, SHAPES))
