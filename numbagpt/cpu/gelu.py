"""GELU, tanh approximation (llm.c's gelu_forward / gelu_backward), over N elements.

    forward:   out = 0.5·x·(1 + tanh(s·(x + k·x³)))        s = sqrt(2/π), k = 0.044715
    backward:  dinp += gelu'(x)·dout, with u = s·(x + k·x³):
               gelu'(x) = 0.5·(1 + tanh u) + 0.5·x·(1 − tanh² u)·s·(1 + 3k·x²)

tanh is numbagpt/cpu/fastmath.py's tanh_f32 (<= 1.51 ulp from the true tanh over all float32, as
arithmetic that LLVM vectorises, 16 lanes at a time) instead of libm's tanhf (a call per element,
which kept the loop scalar: GELU was ~9% of a tiny-model step).
"""
import math

import numpy as np
from numba import njit, prange

from .fastmath import tanh_f32

# float32 constants keep the arithmetic in float32 (a Python float would promote it to float64).
_S = np.float32(math.sqrt(2.0 / math.pi))
_K = np.float32(0.044715)
_K3 = np.float32(3.0 * 0.044715)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


@njit(parallel=True, fastmath={"contract"}, cache=True)
def gelu_forward(out, inp, N):
    """out (N) = gelu(inp (N))."""
    for i in prange(N):
        x = inp[i]
        cube = _K * x * x * x
        out[i] = _HALF * x * (_ONE + tanh_f32(_S * (x + cube)))


@njit(parallel=True, fastmath={"contract"}, cache=True)
def gelu_backward(dinp, dout, inp, N):
    """dinp (N) += gelu'(inp)·dout."""
    for i in prange(N):
        x = inp[i]
        cube = _K * x * x * x
        tanh_out = tanh_f32(_S * (x + cube))
        # sech² u = 1 − tanh² u (as PyTorch does): no coshf, which overflows for |u| > ~89.
        sech2 = _ONE - tanh_out * tanh_out
        local_grad = _HALF * (_ONE + tanh_out) + x * _HALF * sech2 * _S * (_ONE + _K3 * x * x)
        dinp[i] += local_grad * dout[i]
