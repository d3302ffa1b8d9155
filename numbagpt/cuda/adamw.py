"""AdamW update and the squared global gradient norm as CUDA kernels.

    adamw_update (one thread per parameter; grid ceil(N/256), block 256):
        g = grad_scale·grads_i;  m_i = β1·m_i + (1−β1)·g;  v_i = β2·v_i + (1−β2)·g²
        params_i −= lr·(m̂/(sqrt(v̂)+eps) + weight_decay·params_i),  m̂ = m_i/(1−β1ᵗ), v̂ = v_i/(1−β2ᵗ)
      The bias corrections 1−β1ᵗ, 1−β2ᵗ are computed on the host in float64 and passed as float32;
      all device arithmetic is float32 (the CPU backend uses float64 per element: results agree to
      float32 rounding). Reads 16N bytes, writes 12N, 17 FLOPs per element (costs.py).
    global_norm_squared: out[0] = Σ grads_i²  (overwritten), deterministic two-stage reduction:
        stage 1: grid min(ceil(N/(256·16)), 512) blocks of 256 threads, grid-stride loop (at most 16
                 elements per thread until the 512 blocks cap the grid, more after), per-thread
                 float32 sums, warp-shuffle + shared-memory block reduction, partial[block] written;
        stage 2: one warp sums the ≤ 512 partials (strided, then a shuffle butterfly) into out[0].
      Reads 4N bytes, 2N FLOPs.
      The partials live in a 512-float scratch buffer allocated once per process (first call).
"""
import math

import numpy as np

from .launch import Launch
from .runtime import F32, F32A, I64, cdiv, cuda, f32, i64, warp_sum

BLOCK = 256
NORM_BLOCKS = 512          # stage-1 grid cap = scratch size
NORM_PER_THREAD = 16       # stage 1 uses at most ceil(N / (BLOCK·NORM_PER_THREAD)) blocks
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@cuda.jit(fastmath=False)
def adamw_kernel(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, grad_scale, bc1, bc2, N):
    """params, m, v (N) updated in place, one thread per i < N: g = grad_scale·grads_i,
    m_i = β1·m_i + (1−β1)·g, v_i = β2·v_i + (1−β2)·g², params_i −= lr·(m̂/(sqrt(v̂)+eps) + weight_decay·params_i)
    with m̂ = m_i/bc1, v̂ = v_i/bc2 (bc1 = 1−β1ᵗ, bc2 = 1−β2ᵗ from the host); float32 arithmetic."""
    i = cuda.grid(1)
    if i < N:
        g = grad_scale * grads[i]
        mi = beta1 * m[i] + (_ONE - beta1) * g
        vi = beta2 * v[i] + (_ONE - beta2) * (g * g)
        m_hat = mi / bc1
        v_hat = vi / bc2
        p = params[i]
        m[i] = mi
        v[i] = vi
        params[i] = p - lr * (m_hat / (math.sqrt(v_hat) + eps) + weight_decay * p)


@cuda.jit(fastmath=False)
def norm_squared_partial_kernel(partial, grads, N):
    """Each block: partial[blockIdx.x] = Σ grads² over its grid-stride share (block of 256)."""
    warp_sums = cuda.shared.array(8, np.float32)
    tid = cuda.threadIdx.x
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    s = _ZERO
    while i < N:
        g = grads[i]
        s += g * g
        i += stride
    s = warp_sum(s)
    if tid % 32 == 0:
        warp_sums[tid // 32] = s
    cuda.syncthreads()
    if tid == 0:
        total = _ZERO
        for w in range(BLOCK // 32):
            total += warp_sums[w]
        partial[cuda.blockIdx.x] = total


@cuda.jit(fastmath=False)
def norm_squared_final_kernel(out, partial, nparts):
    """One warp: out[0] = Σ partial[:nparts] (fixed order: deterministic)."""
    lane = cuda.threadIdx.x
    s = _ZERO
    for i in range(lane, nparts, 32):
        s += partial[i]
    s = warp_sum(s)
    if lane == 0:
        out[0] = s


SIGNATURES = {
    "adamw_kernel": [(F32A, F32A, F32A, F32A, F32, F32, F32, F32, F32, F32, F32, F32, I64)],
    "norm_squared_partial_kernel": [(F32A, F32A, I64)],
    "norm_squared_final_kernel": [(F32A, F32A, I64)],
}

_scratch = {}


def _partials():
    try:
        key = cuda.get_current_device().id
    except Exception:
        key = 0
    buf = _scratch.get(key)
    if buf is None:
        buf = cuda.device_array(NORM_BLOCKS, dtype=np.float32)
        _scratch[key] = buf
    return buf


def adamw_update_launches(N):
    """[update]: one thread per parameter."""
    return [Launch(adamw_kernel, cdiv(N, BLOCK), BLOCK)]


def global_norm_squared_launches(N):
    """[stage 1 (param = its block count = the partials stage 2 sums), stage 2 (one warp)]."""
    nblocks = max(1, min(NORM_BLOCKS, cdiv(N, BLOCK * NORM_PER_THREAD)))
    return [Launch(norm_squared_partial_kernel, nblocks, BLOCK, param=nblocks),
            Launch(norm_squared_final_kernel, 1, 32)]


def adamw_update(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, grad_scale, t, N):
    """One AdamW step over N parameters (t ≥ 1); updates params, m, v in place."""
    if t < 1:
        raise ValueError(f"adamw_update: step t must be >= 1, got {t}")
    bc1 = 1.0 - float(beta1) ** int(t)
    bc2 = 1.0 - float(beta2) ** int(t)
    (update,) = adamw_update_launches(N)
    update(params, m, v, grads, f32(lr), f32(beta1), f32(beta2), f32(eps),
           f32(weight_decay), f32(grad_scale), f32(bc1), f32(bc2), i64(N))


def global_norm_squared(out, grads, N):
    """out[0] = Σ grads[:N]² (out: a 1-element float32 device array, overwritten)."""
    partial_launch, final = global_norm_squared_launches(N)
    partial = _partials()
    partial_launch(partial, grads, i64(N))
    final(out, partial, i64(partial_launch.param))
