"""Token + position embedding (llm.c's encoder_forward / encoder_backward).

Shapes (row-major, flat float32 buffers):
    inp  (B, T) int32 token ids        out, dout (B, T, C)
    wte  (Vp, C) token embeddings      wpe (maxT, C) position embeddings

    forward:   out[b,t,:]  = wte[inp[b,t], :] + wpe[t, :]
    backward:  dwte[inp[b,t], :] += dout[b,t,:]   dwpe[t, :] += dout[b,t,:]
"""
from numba import njit, prange

# Channels handed to one parallel iteration of the backward: 16 float32 = one cache line,
# so every (b, t) row is still read a line at a time while C/16 blocks give enough parallel work.
_CBLOCK = 16


@njit(parallel=True, cache=True)
def encoder_forward(out, inp, wte, wpe, B, T, C):
    """out (B,T,C) = wte[inp] + wpe[t]."""
    for bt in prange(B * T):
        t = bt % T
        out_bt = bt * C
        wte_ix = inp[bt] * C
        wpe_t = t * C
        for i in range(C):
            out[out_bt + i] = wte[wte_ix + i] + wpe[wpe_t + i]


@njit(parallel=True, cache=True)
def encoder_backward(dwte, dwpe, dout, inp, B, T, C):
    """dwte[inp[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] (accumulates)."""
    # The same token id can appear at many (b, t), so a scatter parallel over (b, t) would race on
    # dwte rows. Parallel over blocks of channels instead: each iteration owns columns
    # [c0, c1) of dwte and dwpe and walks all (b, t) in llm.c's order.
    nblocks = (C + _CBLOCK - 1) // _CBLOCK
    for blk in prange(nblocks):
        c0 = blk * _CBLOCK
        c1 = min(c0 + _CBLOCK, C)
        for bt in range(B * T):
            t = bt % T
            dout_bt = bt * C
            dwte_ix = inp[bt] * C
            dwpe_t = t * C
            for i in range(c0, c1):
                d = dout[dout_bt + i]
                dwte[dwte_ix + i] += d
                dwpe[dwpe_t + i] += d
