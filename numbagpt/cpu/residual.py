"""Residual connection (llm.c's residual_forward / residual_backward), over N elements.

    forward:   out = inp1 + inp2
    backward:  dinp1 += dout;  dinp2 += dout
"""
from numba import njit, prange


@njit(parallel=True, cache=True)
def residual_forward(out, inp1, inp2, N):
    for i in prange(N):
        out[i] = inp1[i] + inp2[i]


@njit(parallel=True, cache=True)
def residual_backward(dinp1, dinp2, dout, N):
    for i in prange(N):
        d = dout[i]
        dinp1[i] += d
        dinp2[i] += d
