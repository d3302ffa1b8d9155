"""The one-position matmul of generation as a CUDA kernel (see numbagpt/cpu/matvec.py for the contract):

    matvec_forward(out, inp, weight, bias, M, C, OC)   out (M,OC) = inp (M,C)·weight (OC,C)ᵀ + bias

One warp per output column o: its lanes read weight row o with a stride of one float (coalesced,
128 bytes per warp load), each lane sums its share of the M dot products, a warp reduction adds the
lanes, lane 0 writes. 4 warps per block, grid ceil(OC/4). The weights are read once per call (the row
stays in L1 for the other M−1 inputs): at M = 1 this is bandwidth-bound, where the 64×64-tiled GEMM
would compute 63 rows of zeros per tile.
"""
import numpy as np

from .launch import Launch
from .runtime import F32A, I64, cdiv, cuda, i64, warp_sum

WARPS = 4
_ZERO = np.float32(0.0)


@cuda.jit(fastmath=False)
def matvec_kernel(out, inp, weight, bias, has_bias, M, C, OC):
    """One warp per output column o = 4·blockIdx.x + threadIdx.x // 32 (4 warps per block): out[m, o] =
    Σ_c inp[m, c]·weight[o, c] (+ bias[o] if has_bias) for every m < M (=); lanes stride over c, warp_sum adds
    them, lane 0 writes. bias is unread when has_bias is 0 (the launcher then passes out)."""
    lane = cuda.threadIdx.x % 32
    o = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // 32
    if o < OC:  # whole warps take the same branch: the reduction below needs all 32 lanes
        for m in range(M):
            s = _ZERO
            for c in range(lane, C, 32):
                s += inp[m * C + c] * weight[o * C + c]
            s = warp_sum(s)
            if lane == 0:
                out[m * OC + o] = s + bias[o] if has_bias else s


SIGNATURES = {"matvec_kernel": [(F32A, F32A, F32A, F32A, I64, I64, I64, I64)]}


def matvec_forward_launches(M, C, OC):
    """[matvec]: one warp per output column."""
    return [Launch(matvec_kernel, cdiv(OC, WARPS) if M > 0 else 0, 32 * WARPS)]


def matvec_forward(out, inp, weight, bias, M, C, OC):
    """out (M,OC) = inp (M,C) · weight (OC,C)ᵀ + bias (OC); bias may be None. Writes out."""
    has_bias = bias is not None
    (mv,) = matvec_forward_launches(M, C, OC)
    mv(out, inp, weight, bias if has_bias else out, i64(has_bias), i64(M), i64(C), i64(OC))
