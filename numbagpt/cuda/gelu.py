"""GELU, tanh approximation, as elementwise CUDA kernels (one thread per element).

    forward:   out = 0.5·x·(1 + tanh(s·(x + k·x³)))        s = sqrt(2/π), k = 0.044715
    backward:  dinp += gelu'(x)·dout   (accumulates)

Launch: grid ceil(N/256), block 256. Memory-bound: forward reads 4N and writes 4N bytes; backward reads
12N (dinp, dout, inp) and writes 4N.
"""
import math

import numpy as np

from .launch import Launch
from .runtime import F32A, I64, cdiv, cuda, i64

BLOCK = 256

_S = np.float32(math.sqrt(2.0 / math.pi))
_K = np.float32(0.044715)
_K3 = np.float32(3.0 * 0.044715)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


@cuda.jit(fastmath=False)
def gelu_forward_kernel(out, inp, N):
    """out[i] = 0.5·x·(1 + tanh(s·(x + k·x³))), x = inp[i] (=); one thread per element i < N."""
    i = cuda.grid(1)
    if i < N:
        x = inp[i]
        cube = _K * x * x * x
        out[i] = _HALF * x * (_ONE + math.tanh(_S * (x + cube)))


@cuda.jit(fastmath=False)
def gelu_backward_kernel(dinp, dout, inp, N):
    """dinp[i] += gelu'(x)·dout[i], x = inp[i] (accumulates), gelu'(x) = 0.5·(1 + u) + 0.5·x·(1 − u²)·s·(1 + 3k·x²)
    with u = tanh(s·(x + k·x³)); one thread per element i < N."""
    i = cuda.grid(1)
    if i < N:
        x = inp[i]
        cube = _K * x * x * x
        tanh_out = math.tanh(_S * (x + cube))
        sech2 = _ONE - tanh_out * tanh_out
        local_grad = _HALF * (_ONE + tanh_out) + x * _HALF * sech2 * _S * (_ONE + _K3 * x * x)
        dinp[i] += local_grad * dout[i]


SIGNATURES = {
    "gelu_forward_kernel": [(F32A, F32A, I64)],
    "gelu_backward_kernel": [(F32A, F32A, F32A, I64)],
}


def gelu_forward_launches(N):
    """[forward]: one thread per element."""
    return [Launch(gelu_forward_kernel, cdiv(N, BLOCK), BLOCK)]


def gelu_backward_launches(N):
    """[backward]: one thread per element."""
    return [Launch(gelu_backward_kernel, cdiv(N, BLOCK), BLOCK)]


def gelu_forward(out, inp, N):
    """out (N) = gelu(inp (N))."""
    (fwd,) = gelu_forward_launches(N)
    fwd(out, inp, i64(N))


def gelu_backward(dinp, dout, inp, N):
    """dinp (N) += gelu'(inp)·dout."""
    (bwd,) = gelu_backward_launches(N)
    bwd(dinp, dout, inp, i64(N))
