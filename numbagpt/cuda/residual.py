"""Residual connection as elementwise CUDA kernels (one thread per element).

    forward:   out = inp1 + inp2
    backward:  dinp1 += dout;  dinp2 += dout   (accumulates)

Launch: grid ceil(N/256), block 256. Forward moves 12N bytes, backward 20N.
"""
from .launch import Launch
from .runtime import F32A, I64, cdiv, cuda, i64

BLOCK = 256


@cuda.jit(fastmath=False)
def residual_forward_kernel(out, inp1, inp2, N):
    i = cuda.grid(1)
    if i < N:
        out[i] = inp1[i] + inp2[i]


@cuda.jit(fastmath=False)
def residual_backward_kernel(dinp1, dinp2, dout, N):
    i = cuda.grid(1)
    if i < N:
        d = dout[i]
        dinp1[i] += d
        dinp2[i] += d


SIGNATURES = {
    "residual_forward_kernel": [(F32A, F32A, F32A, I64)],
    "residual_backward_kernel": [(F32A, F32A, F32A, I64)],
}


def residual_forward_launches(N):
    """[forward]: one thread per element."""
    return [Launch(residual_forward_kernel, cdiv(N, BLOCK), BLOCK)]


def residual_backward_launches(N):
    """[backward]: one thread per element."""
    return [Launch(residual_backward_kernel, cdiv(N, BLOCK), BLOCK)]


def residual_forward(out, inp1, inp2, N):
    """out (N) = inp1 + inp2."""
    (fwd,) = residual_forward_launches(N)
    fwd(out, inp1, inp2, i64(N))


def residual_backward(dinp1, dinp2, dout, N):
    """dinp1 += dout; dinp2 += dout."""
    (bwd,) = residual_backward_launches(N)
    bwd(dinp1, dinp2, dout, i64(N))
