"""Residual connection (llm.c's residual_forward), over N elements: out = inp1 + inp2.

Training fuses it with the layernorm that follows (layernorm.fused_residual_layernorm_forward) and
needs no backward: the residual stream's gradient is one buffer the layernorm backwards add to
(numbagpt/model.py); generation (numbagpt/generate.py) calls this.
"""
from numba import njit, prange


@njit(parallel=True, cache=True)
def residual_forward(out, inp1, inp2, N):
    """out (N) = inp1 + inp2."""
    for i in prange(N):
        out[i] = inp1[i] + inp2[i]
