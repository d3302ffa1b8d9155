"""Token + position embedding as CUDA kernels.

Shapes (row-major, flat): inp (B, T) int32, wte (Vp, C), wpe (maxT, C), out/dout (B, T, C).

    forward:   out[b,t,:] = wte[inp[b,t], :] + wpe[t, :]
        grid ceil(B·T·C/256), block 256, one thread per output element (coalesced along C).
    backward:  dwte[inp[b,t], :] += dout[b,t,:]    dwpe[t, :] += dout[b,t,:]
        dwte: one thread per (b, t, c) doing a float32 `cuda.atomic.add` into dwte[inp[b,t], c]
              (the same token can occur at many positions: atomics make it race-free; the order of
              the adds, and so the last bit of a repeated token's gradient, is not deterministic).
        dwpe: one thread per (t, c) summing over b in order (deterministic, no atomics).
"""
from .launch import Launch
from .runtime import F32A, I32A, I64, cdiv, cuda, i64

BLOCK = 256


@cuda.jit(fastmath=False)
def encoder_forward_kernel(out, inp, wte, wpe, B, T, C):
    """out[b,t,c] = wte[inp[b,t], c] + wpe[t, c] (=); one thread per (b, t, c), c fastest (coalesced)."""
    idx = cuda.grid(1)
    if idx < B * T * C:
        bt = idx // C
        c = idx - bt * C
        t = bt % T
        out[idx] = wte[inp[bt] * C + c] + wpe[t * C + c]


@cuda.jit(fastmath=False)
def encoder_backward_wte_kernel(dwte, dout, inp, B, T, C):
    """dwte[inp[b,t], c] += dout[b,t,c] with a float32 `cuda.atomic.add`; one thread per (b, t, c) (the
    adds of a repeated token land in no fixed order)."""
    idx = cuda.grid(1)
    if idx < B * T * C:
        bt = idx // C
        c = idx - bt * C
        cuda.atomic.add(dwte, inp[bt] * C + c, dout[idx])


@cuda.jit(fastmath=False)
def encoder_backward_wpe_kernel(dwpe, dout, B, T, C):
    """dwpe[t, c] += Σ_b dout[b,t,c], summed over b in order (deterministic, no atomics); one thread per (t, c)."""
    idx = cuda.grid(1)
    if idx < T * C:
        s = dout[idx]
        for b in range(1, B):
            s += dout[b * T * C + idx]
        dwpe[idx] += s


SIGNATURES = {
    "encoder_forward_kernel": [(F32A, I32A, F32A, F32A, I64, I64, I64)],
    "encoder_backward_wte_kernel": [(F32A, F32A, I32A, I64, I64, I64)],
    "encoder_backward_wpe_kernel": [(F32A, F32A, I64, I64, I64)],
}


def encoder_forward_launches(B, T, C):
    """[forward]: one thread per output element."""
    return [Launch(encoder_forward_kernel, cdiv(B * T * C, BLOCK), BLOCK)]


def encoder_backward_launches(B, T, C):
    """[dwte, dwpe]: one thread per (b, t, c), then one per (t, c)."""
    return [Launch(encoder_backward_wte_kernel, cdiv(B * T * C, BLOCK), BLOCK),
            Launch(encoder_backward_wpe_kernel, cdiv(T * C, BLOCK) if B * T * C > 0 else 0, BLOCK)]


def encoder_forward(out, inp, wte, wpe, B, T, C):
    """out (B,T,C) = wte[inp] + wpe[t]."""
    (fwd,) = encoder_forward_launches(B, T, C)
    fwd(out, inp, wte, wpe, i64(B), i64(T), i64(C))


def encoder_backward(dwte, dwpe, dout, inp, B, T, C):
    """dwte[inp[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] (accumulates)."""
    wte, wpe = encoder_backward_launches(B, T, C)
    wte(dwte, dout, inp, i64(B), i64(T), i64(C))
    wpe(dwpe, dout, i64(B), i64(T), i64(C))
