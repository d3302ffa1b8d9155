"""LayerNorm over the last axis as CUDA kernels, and the residual add fused with the layernorm that
follows it (llm.c's fused_residual_forward5).

Shapes (row-major, flat): inp, out, dinp, dout, residual, ln, inp1, inp2 (B, T, C); weight, bias, dweight, dbias (C);
mean, rstd (B, T). eps 1e-5, biased variance; N = B·T rows.

    forward   (layernorm_forward_kernel): one warp per row, 4 warps (128 threads) per block,
              grid ceil(N/4). Two passes over the row for mean and centred variance (no E[x²]−E[x]²
              cancellation), both shifted by the row's first element (float32 sums of the spread,
              not of the offset), warp-shuffle reductions, then the normalised output; the row is
              re-read from L1/L2. Bytes: ~12·N·C read (3 passes, 1 from DRAM) + 4·N·C written.
    fused     (fused_residual_layernorm_forward_kernel): residual = inp1 + inp2, each lane writing
              the elements it then normalises as the forward does (normalize_row): bit for bit
              residual_forward then layernorm_forward. DRAM: 8·N·C read + 8·N·C written (the pair:
              12·N·C read + 8·N·C written).
    backward  dinp (layernorm_backward_dinp_kernel): one warp per row as above; a warp-reduced
              correction of the float32-rounded saved mean, two warp-reduced means (dnorm,
              dnorm·norm), then dinp += ... (accumulates). 3 passes over the row.
              dweight/dbias (layernorm_backward_dwdb_kernel): a column reduction over the N rows,
              block (32 columns × 8 row-lanes = 256 threads), grid (ceil(C/32), R) with
              R = min(ceil(N/256), 64) row chunks. Each block sums its chunk per column in registers,
              combines its 8 row-lanes in shared memory in a fixed order, and adds the result to
              dweight/dbias with a float32 `cuda.atomic.add`. Race-free always; deterministic when
              R = 1 (N ≤ 256 rows), otherwise the order of the R atomic adds per column varies
              (last-bit differences only).
"""
import math

import numpy as np

from .launch import Launch, column_chunks
from .runtime import F32A, I64, cdiv, cuda, i64, warp_sum

WARPS = 4                 # rows (warps) per block in the row kernels
ROW_BLOCK = 32 * WARPS
COLS = 32                 # columns per block in the column reduction
ROW_LANES = 8             # row-lanes per block in the column reduction (COLS·ROW_LANES threads)
ROWS_PER_CHUNK = 256      # target rows per block-chunk in the column reduction
MAX_CHUNKS = 64

_EPS = np.float32(1e-5)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@cuda.jit(device=True, inline=True)
def _row_mean_minus(inp, x, k, lane, C):
    """mean over the row inp[x : x+C] of (inp − k), summed in float32 by the warp's lanes (every lane
    gets it); with k near the row's mean the sum sees the row's spread, not its offset."""
    s = _ZERO
    for i in range(lane, C, 32):
        s += inp[x + i] - k
    return warp_sum(s) / np.float32(C)


@cuda.jit(device=True, inline=True)
def normalize_row(out, mean, rstd, inp, k, weight, bias, row, lane, C):
    """The warp's row `row` of the forward; k = inp[row·C] (every lane passes it)."""
    x = row * C
    fC = np.float32(C)
    # Shifted sums: the row's first element k is subtracted before summing, so the float32 sums
    # see the row's spread, not its offset (a row at 5 ± 0.1 would lose 1 ulp of 5 = 5e-6 of its
    # spread in a plain sum), and the output is normalised with (x − k) − d, never with the
    # rounded mean. Only the saved mean k + d is rounded.
    d = _row_mean_minus(inp, x, k, lane, C)
    v = _ZERO
    for i in range(lane, C, 32):
        e = (inp[x + i] - k) - d
        v += e * e
    var = warp_sum(v) / fC
    r = _ONE / math.sqrt(var + _EPS)
    for i in range(lane, C, 32):
        out[x + i] = ((inp[x + i] - k) - d) * r * weight[i] + bias[i]
    if lane == 0:
        mean[row] = k + d
        rstd[row] = r


@cuda.jit(fastmath=False)
def layernorm_forward_kernel(out, mean, rstd, inp, weight, bias, B, T, C):
    """One warp per row r = b·T + t (4 per block): out[r,:] = (inp[r,:] − mean[r])·rstd[r]·weight + bias, mean[r]
    = the row's mean, rstd[r] = 1/sqrt(var + 1e-5) (biased var), all written (=) by normalize_row (sums shifted
    by the row's first element)."""
    lane = cuda.threadIdx.x % 32
    row = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // 32
    if row < B * T:  # uniform across the warp
        normalize_row(out, mean, rstd, inp, inp[row * C], weight, bias, row, lane, C)


@cuda.jit(fastmath=False)
def fused_residual_layernorm_forward_kernel(residual, ln, mean, rstd, inp1, inp2, weight, bias, B, T, C):
    """One warp per row r (4 per block): residual[r,:] = inp1 + inp2 (=), each lane writing the elements it
    then normalises; ln, mean, rstd (=) as layernorm_forward_kernel of that residual, bit for bit."""
    lane = cuda.threadIdx.x % 32
    row = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // 32
    if row < B * T:
        x = row * C
        # Each lane writes the residual elements it will read back in normalize_row (same lane
        # stride), so no other lane's write is needed: the row stays in L1, one DRAM read of each
        # input. The row's first element is recomputed in every lane rather than read from lane 0.
        for i in range(lane, C, 32):
            residual[x + i] = inp1[x + i] + inp2[x + i]
        normalize_row(ln, mean, rstd, residual, inp1[x] + inp2[x], weight, bias, row, lane, C)


@cuda.jit(fastmath=False)
def layernorm_backward_dinp_kernel(dinp, dout, inp, weight, mean, rstd, B, T, C):
    """One warp per row r (4 per block): dinp[r,i] += (dn_i − mean(dn) − n_i·mean(dn·n))·rstd (accumulates),
    dn = weight·dout, n = ((inp − mean) − c)·rstd, c = mean(inp − mean) (the saved float32 mean's rounding)."""
    lane = cuda.threadIdx.x % 32
    row = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // 32
    if row < B * T:
        x = row * C
        fC = np.float32(C)
        m = mean[row]
        r = rstd[row]
        # The saved mean is rounded to float32 (up to 1/2 ulp of the row's offset): recover the
        # remainder c = mean(x − m) (each x − m is exact near the mean, their sum is small) and
        # normalise with (x − m) − c, else a row of tiny spread gets norm shifted by ulp(m)·rstd.
        c = _row_mean_minus(inp, x, m, lane, C)
        a = _ZERO
        b = _ZERO
        for i in range(lane, C, 32):
            n = ((inp[x + i] - m) - c) * r
            dn = weight[i] * dout[x + i]
            a += dn
            b += dn * n
        dnorm_mean = warp_sum(a) / fC
        dnorm_norm_mean = warp_sum(b) / fC
        for i in range(lane, C, 32):
            n = ((inp[x + i] - m) - c) * r
            dn = weight[i] * dout[x + i]
            dinp[x + i] += (dn - dnorm_mean - n * dnorm_norm_mean) * r


@cuda.jit(fastmath=False)
def layernorm_backward_dwdb_kernel(dweight, dbias, dout, inp, mean, rstd, B, T, C, chunk):
    """dweight[c] += Σ_r (inp[r,c] − mean[r])·rstd[r]·dout[r,c], dbias[c] += Σ_r dout[r,c] over the rows r of
    chunk blockIdx.y (r from blockIdx.y·chunk, < B·T): block 32 columns × 8 row-lanes, grid (ceil(C/32), chunks);
    the row-lanes combined in shared memory in a fixed order, then one float32 `cuda.atomic.add` per column."""
    sw = cuda.shared.array((ROW_LANES, COLS), np.float32)
    sb = cuda.shared.array((ROW_LANES, COLS), np.float32)
    tx = cuda.threadIdx.x % COLS
    ty = cuda.threadIdx.x // COLS
    c = cuda.blockIdx.x * COLS + tx
    N = B * T
    r0 = cuda.blockIdx.y * chunk
    r1 = min(r0 + chunk, N)
    dw = _ZERO
    db = _ZERO
    if c < C:
        for row in range(r0 + ty, r1, ROW_LANES):
            d = dout[row * C + c]
            db += d
            dw += (inp[row * C + c] - mean[row]) * rstd[row] * d
    sw[ty, tx] = dw
    sb[ty, tx] = db
    cuda.syncthreads()
    if ty == 0 and c < C:
        for j in range(1, ROW_LANES):
            dw += sw[j, tx]
            db += sb[j, tx]
        cuda.atomic.add(dweight, c, dw)
        cuda.atomic.add(dbias, c, db)


SIGNATURES = {
    "layernorm_forward_kernel": [(F32A, F32A, F32A, F32A, F32A, F32A, I64, I64, I64)],
    "fused_residual_layernorm_forward_kernel": [(F32A,) * 8 + (I64, I64, I64)],
    "layernorm_backward_dinp_kernel": [(F32A, F32A, F32A, F32A, F32A, F32A, I64, I64, I64)],
    "layernorm_backward_dwdb_kernel": [(F32A, F32A, F32A, F32A, F32A, F32A, I64, I64, I64, I64)],
}


def layernorm_forward_launches(B, T, C):
    """[forward]: one warp per row."""
    return [Launch(layernorm_forward_kernel, cdiv(B * T, WARPS), ROW_BLOCK)]


def fused_residual_layernorm_forward_launches(B, T, C):
    """[residual + forward]: one warp per row."""
    return [Launch(fused_residual_layernorm_forward_kernel, cdiv(B * T, WARPS), ROW_BLOCK)]


def layernorm_backward_launches(B, T, C):
    """[dinp (one warp per row), dweight/dbias (column reduction; param = rows per chunk)]."""
    chunk, nchunks = column_chunks(B * T, ROWS_PER_CHUNK, MAX_CHUNKS)
    return [Launch(layernorm_backward_dinp_kernel, cdiv(B * T, WARPS), ROW_BLOCK),
            Launch(layernorm_backward_dwdb_kernel, (cdiv(C, COLS), nchunks), COLS * ROW_LANES, param=chunk)]


def layernorm_forward(out, mean, rstd, inp, weight, bias, B, T, C):
    """out (B,T,C) = (inp − mean)·rstd·weight + bias; writes mean, rstd (B,T)."""
    (fwd,) = layernorm_forward_launches(B, T, C)
    fwd(out, mean, rstd, inp, weight, bias, i64(B), i64(T), i64(C))


def fused_residual_layernorm_forward(residual, ln, mean, rstd, inp1, inp2, weight, bias, B, T, C):
    """residual (B,T,C) = inp1 + inp2; ln, mean, rstd = layernorm_forward(residual), bit for bit."""
    (fwd,) = fused_residual_layernorm_forward_launches(B, T, C)
    fwd(residual, ln, mean, rstd, inp1, inp2, weight, bias, i64(B), i64(T), i64(C))


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, T, C):
    """dinp (B,T,C), dweight, dbias (C) += the LayerNorm gradients (accumulate)."""
    dinp_launch, dwdb = layernorm_backward_launches(B, T, C)
    dinp_launch(dinp, dout, inp, weight, mean, rstd, i64(B), i64(T), i64(C))
    dwdb(dweight, dbias, dout, inp, mean, rstd, i64(B), i64(T), i64(C), i64(dwdb.param))
