"""Residual connection as an elementwise CUDA kernel (one thread per element): out = inp1 + inp2.

Training fuses it with the layernorm that follows (layernorm.fused_residual_layernorm_forward) and
needs no backward (numbagpt/model.py); generation (numbagpt/generate.py) calls this.
Launch: grid ceil(N/256), block 256. Moves 12N bytes.
"""
from .launch import Launch
from .runtime import F32A, I64, cdiv, cuda, i64

BLOCK = 256


@cuda.jit(fastmath=False)
def residual_forward_kernel(out, inp1, inp2, N):
    """out[i] = inp1[i] + inp2[i] (=); one thread per element i < N."""
    i = cuda.grid(1)
    if i < N:
        out[i] = inp1[i] + inp2[i]


SIGNATURES = {
    "residual_forward_kernel": [(F32A, F32A, F32A, I64)],
}


def residual_forward_launches(N):
    """[forward]: one thread per element."""
    return [Launch(residual_forward_kernel, cdiv(N, BLOCK), BLOCK)]


def residual_forward(out, inp1, inp2, N):
    """out (N) = inp1 + inp2."""
    (fwd,) = residual_forward_launches(N)
    fwd(out, inp1, inp2, i64(N))
