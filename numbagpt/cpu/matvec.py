"""The one-position matmul of generation: out = inp · weightᵀ + bias for a few rows (decoding a token).

    matvec_forward(out, inp, weight, bias, M, C, OC)
        out (M,OC) = inp (M,C) · weight (OC,C)ᵀ + bias (OC)        bias may be None; M small (≤ 8)

The same product as matmul_forward, for the shape a decoding step has: M = B rows (one position per
sequence) against a whole weight matrix. It is a read of the weights (4·OC·C bytes, from DRAM: the
weights of a d12 model are 500 MB) for 2·M·OC·C flops, so what counts is streaming every weight row
once, at memory bandwidth: one dot product per output, prange over blocks of 4 weight rows, each row
read once for all M inputs. The tiled GEMM's blocking for large M buys nothing here and costs its
setup (and a packing GEMM would copy the whole matrix per call).
"""
import numpy as np
from numba import njit, prange

_FASTMATH = {"reassoc", "contract"}  # 'reassoc' vectorises the dot products (lane-wise partial sums)
_ROWS = 4                              # weight rows per parallel task
_NO_BIAS = np.zeros(1, dtype=np.float32)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _matvec(out, inp, weight, bias, has_bias, M, C, OC):
    X = inp.reshape(M, C)
    W = weight.reshape(OC, C)
    Y = out.reshape(M, OC)
    for blk in prange((OC + _ROWS - 1) // _ROWS):
        o0 = blk * _ROWS
        for o in range(o0, min(o0 + _ROWS, OC)):
            w = W[o]
            b = bias[o] if has_bias else np.float32(0.0)
            for m in range(M):
                x = X[m]
                s = np.float32(0.0)
                for c in range(C):
                    s += x[c] * w[c]
                Y[m, o] = s + b


def matvec_forward(out, inp, weight, bias, M, C, OC):
    """out (M,OC) = inp (M,C) · weight (OC,C)ᵀ + bias (OC); bias may be None. Writes out."""
    _matvec(out, inp, weight, bias if bias is not None else _NO_BIAS, bias is not None, M, C, OC)
