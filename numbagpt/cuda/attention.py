"""Causal multi-head self-attention as CUDA kernels: FlashAttention-2 (no (T, T) buffer anywhere), and
generation's KV-cache attention.

Shapes (row-major, flat), hs = C/NH, scale = 1/sqrt(hs):
    inp, dinp (B, T, 3C) rows [q | k | v]    out, dout (B, T, C)    lse (B, NH, T)
    S = scale·q·kᵀ, P = exp(S − lse) (t2 ≤ t), out = P·v, lse[t] = log Σ_{t2≤t} exp(S[t, t2])

Tiles: BR = 32 rows (queries or keys) per tile, 128 threads per block in 16 row groups of 8 lanes; a
thread holds two rows (rg and rg + 16, rg = its group) and the tile columns cl + 8j (cl = its lane % 8,
j < 4) of their scores, and the output channels cl + 8i (i < 8) of a 64-channel slice of both rows in
registers (constant indices: no local memory): per shared-memory step 2 row loads and 4 (or 8) column
loads feed 8 (or 16) FMAs. Row reductions: three `shfl_xor`s within the 8 lanes. Shared memory (static):
one 32×129 staging array W, which holds four 32-channel chunks side by side (q, k[, dout, v]) while the
scores are formed over hs in chunks of HC = 32, then the value (or k, or dout and q) tile(s) of HO = 64
channels for the product with P (or dS); P and dS tiles 32×33; D and lse of the 32 queries (dk/dv
kernel). Loads are coalesced along the channels and zero-filled past T and hs, so any T and any hs (odd
ones too) work; hs > HO is handled by blocks per HO-channel slice of the output (blockIdx.z), each
recomputing the scores (one slice for GPT-2's hs = 64).
Causality: a query tile visits only the key tiles 0..its own (tiles above the diagonal are never
loaded); only the diagonal tile is masked (t2 > t: P = 0).

Grids (B·NH, ⌈T/32⌉, ⌈hs/64⌉) × 128 threads.
forward (1 launch, flash_attention_forward_kernel): one block per (b·h, query tile, slice), heaviest (last)
    query tiles first; online softmax over the key tiles: running max m and sum l per row, the
    accumulator rescaled by exp(m_old − m_new); out = acc/l and lse = m + log l written (HO = 64:
    2 × 8 accumulators per thread).
backward (2 launches, dinp accumulated, deterministic: every dinp cell has one owning thread, no atomics):
    flash_attention_dkdv_kernel: one block per (b·h, key tile, slice), looping over the query tiles from the
        diagonal; per query tile D_t = Σ dout_t·out_t and lse_t are staged, Pᵀ = exp(scale·k·qᵀ − lse)
        and dPᵀ = v·doutᵀ recomputed, dSᵀ = Pᵀ∘(dPᵀ − D); dv += Pᵀ·dout, dk += scale·dSᵀ·q
        (HO = 64 channels of each: 2 × 2 × 8 accumulators per thread).
    flash_attention_dq_kernel: one block per (b·h, query tile, slice), looping over the key tiles up to
        the diagonal with the same recomputation; dq += scale·dS·k (HO = 64), max_registers 128.
Resources (ptxas via dev/cuda_resources.py; docs/cuda.md): forward 186 / 96 registers (sm_80 / sm_90),
dk/dv 209 / 128, dq 128 / 128, no spills; 20.7 / 25.2 / 20.7 KB static shared memory.
"""
import math

import numpy as np

from .launch import Launch
from .runtime import F32, F32A, FULL_MASK, I64, SIMULATOR, cdiv, cuda, f32, float32, i64, warp_max, warp_sum

WARPS = 4
ROW_BLOCK = 32 * WARPS

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_NEG_INF = np.float32(-np.inf)

# Flash-attention tiles (plain constants: cuda.shared.array and cuda.local.array need them)
BR = 32                  # rows (queries or keys) per tile
HC = 32                  # channels per staged chunk while the scores are formed
HC_SHIFT = 5             # HC = 2**HC_SHIFT (the staging widths are powers of 2)
TPR = 8                  # threads per row group
TPR_SHIFT = 3            # TPR = 2**TPR_SHIFT
RPT = 2                  # rows per thread: rg and rg + RG
THREADS = BR // RPT * TPR  # 128 threads per block
RG = THREADS // TPR      # 16 row groups
NCOL = BR // TPR         # 4 tile columns per thread (cl + 8j)
W_COLS = 4 * HC + 1      # 129: the staging array's row (4 chunks, or two 64-channel tiles, + 1 of padding)
P_COLS = BR + 1          # 33: the P / dS tiles' row
FWD_HO = 64              # output channels per block (blockIdx.z slice): forward and dq
FWD_NACC = FWD_HO // TPR  # 8 channels per row: 2 × 8 accumulators per thread
FWD_SHIFT = 6            # FWD_HO = 2**FWD_SHIFT
BWD_HO = 64              # dk and dv channels per block (2 × 2 × 8 accumulators per thread)
BWD_NACC = BWD_HO // TPR
BWD_SHIFT = 6            # BWD_HO = 2**BWD_SHIFT
# ptxas gives the dq kernel 133 registers on sm_80 (3 blocks per SM); capped at 128 it fits 4 without
# spilling (127 → 128 on sm_90). The forward and dk/dv kernels spill under the caps that would buy a block.
DQ_MAX_REGISTERS = 128
_DQ_OPTIONS = {} if SIMULATOR else {"max_registers": DQ_MAX_REGISTERS}  # the simulator's jit has no such option


@cuda.jit(device=True, inline=True)
def _quad_sum(v):
    """Sum over the 4 lanes 4r..4r+3; all 32 lanes must call it."""
    v += cuda.shfl_xor_sync(FULL_MASK, v, 1)
    v += cuda.shfl_xor_sync(FULL_MASK, v, 2)
    return v


@cuda.jit(device=True, inline=True)
def _group_sum(v):
    """Sum over the TPR = 8 lanes of a row group (lanes 8g..8g+7); all 32 lanes must call it."""
    v += cuda.shfl_xor_sync(FULL_MASK, v, 1)
    v += cuda.shfl_xor_sync(FULL_MASK, v, 2)
    v += cuda.shfl_xor_sync(FULL_MASK, v, 4)
    return v


@cuda.jit(device=True, inline=True)
def _group_max(v):
    o = cuda.shfl_xor_sync(FULL_MASK, v, 1)
    if o > v:
        v = o
    o = cuda.shfl_xor_sync(FULL_MASK, v, 2)
    if o > v:
        v = o
    o = cuda.shfl_xor_sync(FULL_MASK, v, 4)
    if o > v:
        v = o
    return v


@cuda.jit(device=True, inline=True)
def _stage(W, wcol, shift, src, base, ld, row0, T, col0, hs, tid):
    """W[r, wcol + c] = src[base + (row0 + r)·ld + col0 + c] for r < BR, c < width = 2**shift; 0 where
    row0 + r ≥ T or col0 + c ≥ hs. Consecutive threads take consecutive channels (coalesced). The masks
    (no-ops: r < BR, c < width) tell the compiler the indices are ≥ 0 (no wraparound code)."""
    start = base + row0 * ld + col0
    nr = T - row0
    nc = hs - col0
    for idx in range(tid, BR << shift, cuda.blockDim.x & 1023):  # = THREADS; a runtime step: a loop
        r = (idx >> shift) & (BR - 1)
        c = idx & ((1 << shift) - 1)
        v = _ZERO
        if r < nr and c < nc:
            v = src[start + r * ld + c]
        W[r, wcol + c] = v


@cuda.jit(device=True, inline=True)
def _scores(s, W, kv, rg, cl, n):
    """s[a, j] += Σ_{i<n} W[rg + RG·a, i]·W[cl + TPR·j, HC + i]: rows of the chunk in W[:, 0:32] against
    those in W[:, 32:64]."""
    for i0 in range(n):  # a runtime bound: not unrolled 32 times
        i = i0 & (HC - 1)
        for j in range(NCOL):
            kv[j] = W[cl + TPR * j, HC + i]
        for a in range(RPT):
            x = W[rg + RG * a, i]
            for j in range(NCOL):
                s[a, j] += x * kv[j]


@cuda.jit(device=True, inline=True)
def _block_coords(T, C, NH):
    """A flash kernel's thread and block coordinates: tid, its row group rg and tile column cl; the head
    bh = blockIdx.x = b·NH + h, b, h, the head size hs, C3 = 3·C and qbase, the offset of head h's
    channels of sequence b in inp (its q; k at + C, v at + 2·C)."""
    tid = cuda.threadIdx.x & (THREADS - 1)  # the masks tell the compiler the indices below are ≥ 0
    rg = tid >> TPR_SHIFT
    cl = tid & (TPR - 1)
    bh = cuda.blockIdx.x
    b = bh // NH
    h = bh - b * NH
    hs = C // NH
    C3 = 3 * C
    return tid, rg, cl, bh, b, h, hs, C3, b * T * C3 + h * hs


@cuda.jit(device=True, inline=True)
def _key_product(acc, P, W, inp, base, C3, k0, T, o0, hs, tid, rg, cl):
    """acc[a, i] += Σ_{k < min(BR, T − k0)} P[rg + RG·a, k]·x[k0 + k, o0 + cl + TPR·i], x the rows
    inp[base + t·C3 ..] of the key tile (k or v), its FWD_HO channels from o0 staged in W[:, 0:64]. All the
    block's threads must call it."""
    _stage(W, 0, FWD_SHIFT, inp, base, C3, k0, T, o0, hs, tid)
    cuda.syncthreads()
    for k0_ in range(min(BR, T - k0)):
        k = k0_ & (BR - 1)
        p0 = P[rg, k]
        p1 = P[rg + RG, k]
        for i in range(FWD_NACC):
            v = W[k, cl + TPR * i]
            acc[0, i] += p0 * v
            acc[1, i] += p1 * v
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def _scores_dp(s, dp, W, kv, inp, dout, qbase, obase, C, T, hs, q0, k0, kcol, tid, rg, cl):
    """The backward's two products of a query tile (rows q0..) and a key tile (rows k0..) over hs, in
    32-channel chunks staged in W: s[a, j] = Σ x[rg + RG·a]·y[cl + TPR·j] and dp[a, j] likewise of x', y'.
    kcol = 0 (dk/dv: sᵀ, dpᵀ): x, y, x', y' = k, q, v, dout; kcol = HC (dq: s, dp): q, k, dout, v (the keys
    staged at W columns kcol.. and 2·HC + kcol..). All the block's threads must call it."""
    for a in range(RPT):
        for j in range(NCOL):
            s[a, j] = _ZERO
            dp[a, j] = _ZERO
    C3 = 3 * C
    for c0 in range(0, hs, HC):
        _stage(W, kcol, HC_SHIFT, inp, qbase + C, C3, k0, T, c0, hs, tid)
        _stage(W, HC - kcol, HC_SHIFT, inp, qbase, C3, q0, T, c0, hs, tid)
        _stage(W, 2 * HC + kcol, HC_SHIFT, inp, qbase + 2 * C, C3, k0, T, c0, hs, tid)
        _stage(W, 3 * HC - kcol, HC_SHIFT, dout, obase, C, q0, T, c0, hs, tid)
        cuda.syncthreads()
        n = min(HC, hs - c0)
        _scores(s, W, kv, rg, cl, n)
        for i0 in range(n):
            i = i0 & (HC - 1)
            for j in range(NCOL):
                kv[j] = W[cl + TPR * j, 3 * HC + i]
            for a in range(RPT):
                x = W[rg + RG * a, 2 * HC + i]
                for j in range(NCOL):
                    dp[a, j] += x * kv[j]
        cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def _online_softmax(s, Ps, m, l, acc, scale, q0, k0, T, rg, cl):
    """The forward's online softmax over key tile k0.. for this thread's rows r = rg + RG·a: s scaled,
    the running max m[a] and this thread's share l[a] of the row sum updated, P = exp(s − m) into
    Ps[r, :] (0 for keys t2 > t or ≥ T), acc rescaled by exp(m_old − m_new). Every row has key 0
    (< T, ≤ t) in key tile 0, so m is finite from then on."""
    for a in range(RPT):
        r = rg + RG * a
        nk = q0 + r + 1 - k0  # keys t2 = k0 + c of this tile with t2 ≤ t and t2 < T: c < nk
        if T - k0 < nk:
            nk = T - k0
        mt = _NEG_INF
        for j in range(NCOL):
            s[a, j] *= scale
            if cl + TPR * j < nk and s[a, j] > mt:
                mt = s[a, j]
        mt = _group_max(mt)
        m_new = m[a]
        if mt > m_new:
            m_new = mt
        alpha = math.exp(m[a] - m_new)  # 0 at the first key tile (m = −inf)
        psum = _ZERO
        for j in range(NCOL):
            p = _ZERO
            if cl + TPR * j < nk:
                p = math.exp(s[a, j] - m_new)
            Ps[r, cl + TPR * j] = p
            psum += p
        l[a] = l[a] * alpha + psum
        m[a] = m_new
        for i in range(FWD_NACC):
            acc[a, i] *= alpha


@cuda.jit(fastmath=False)
def flash_attention_forward_kernel(out, lse, inp, B, T, C, NH, scale):
    """out, lse of query tile (gridDim.y − 1 − blockIdx.y) of head blockIdx.x = b·NH + h, output channels
    64·blockIdx.z.. (lse by the z = 0 blocks)."""
    W = cuda.shared.array((BR, W_COLS), float32)
    Ps = cuda.shared.array((BR, P_COLS), float32)
    s = cuda.local.array((RPT, NCOL), float32)
    kv = cuda.local.array(NCOL, float32)
    acc = cuda.local.array((RPT, FWD_NACC), float32)
    m = cuda.local.array(RPT, float32)
    l = cuda.local.array(RPT, float32)  # this thread's share of the row sums (its 4 columns)
    tid, rg, cl, bh, b, h, hs, C3, qbase = _block_coords(T, C, NH)
    qt = cuda.gridDim.y - 1 - cuda.blockIdx.y
    q0 = qt * BR
    o0 = cuda.blockIdx.z * FWD_HO  # this block's slice of the output channels
    for a in range(RPT):
        m[a] = _NEG_INF
        l[a] = _ZERO
        for i in range(FWD_NACC):
            acc[a, i] = _ZERO
    for kt in range(qt + 1):
        k0 = kt * BR
        for a in range(RPT):
            for j in range(NCOL):
                s[a, j] = _ZERO
        for c0 in range(0, hs, HC):  # s = q·k over hs, one 32-channel chunk at a time
            _stage(W, 0, HC_SHIFT, inp, qbase, C3, q0, T, c0, hs, tid)
            _stage(W, HC, HC_SHIFT, inp, qbase + C, C3, k0, T, c0, hs, tid)
            cuda.syncthreads()
            _scores(s, W, kv, rg, cl, min(HC, hs - c0))
            cuda.syncthreads()
        _online_softmax(s, Ps, m, l, acc, scale, q0, k0, T, rg, cl)
        # acc += P·v over this block's HO channels (keys past T: P = 0)
        _key_product(acc, Ps, W, inp, qbase + 2 * C, C3, k0, T, o0, hs, tid, rg, cl)
    for a in range(RPT):
        la = _group_sum(l[a])
        t = q0 + rg + RG * a
        if t < T:
            inv = _ONE / la
            obase = (b * T + t) * C + h * hs + o0
            for i in range(FWD_NACC):
                c = cl + TPR * i
                if o0 + c < hs:
                    out[obase + c] = acc[a, i] * inv
            if o0 == 0 and cl == 0:
                lse[bh * T + t] = m[a] + math.log(la)


@cuda.jit(device=True, inline=True)
def _stage_d_lse(Ds, Ls, dout, out, lse, obase, lbase, q0, T, C, hs, rq, cq):
    """Ds[rq] = D = Σ_c dout·out and Ls[rq] = lse of query q0 + rq (0 past T), 4 lanes (cq) a row: the
    dk/dv kernel's per-query-tile constants."""
    tq = q0 + rq
    d = _ZERO
    if tq < T:
        for c in range(cq, hs, 4):
            d += dout[obase + tq * C + c] * out[obase + tq * C + c]
    d = _quad_sum(d)
    if cq == 0:
        Ds[rq] = d
        Ls[rq] = lse[lbase + tq] if tq < T else _ZERO


@cuda.jit(device=True, inline=True)
def _p_ds_transposed(Ps, dSs, s, dp, Ds, Ls, scale, k0, q0, T, rg, cl):
    """Pᵀ = exp(scale·sᵀ − lse) and dSᵀ = Pᵀ∘(dPᵀ − D) of this thread's keys r = rg + RG·a (rows, from
    k0) and queries tc = cl + TPR·j (columns, from q0) into Ps[r, tc], dSs[r, tc]; 0 where the key is
    past the query (t2 > t) or the query past T."""
    for a in range(RPT):
        r = rg + RG * a
        for j in range(NCOL):
            tc = cl + TPR * j
            p = _ZERO
            ds = _ZERO
            if k0 + r <= q0 + tc and q0 + tc < T:
                p = math.exp(s[a, j] * scale - Ls[tc])
                ds = p * (dp[a, j] - Ds[tc])
            Ps[r, tc] = p
            dSs[r, tc] = ds


@cuda.jit(device=True, inline=True)
def _dkdv_product(dk, dv, Ps, dSs, W, n, rg, cl):
    """dv[a, i] += Σ_{k<n} Pᵀ[rg + RG·a, k]·dout[k, cl + TPR·i] and dk likewise of dSᵀ and q: the query
    tile's dout staged in W[:, :64], its q in W[:, 64:128]."""
    for k0_ in range(n):
        k = k0_ & (BR - 1)
        p0 = Ps[rg, k]
        p1 = Ps[rg + RG, k]
        e0 = dSs[rg, k]
        e1 = dSs[rg + RG, k]
        for i in range(BWD_NACC):
            g = W[k, cl + TPR * i]
            q = W[k, BWD_HO + cl + TPR * i]
            dv[0, i] += p0 * g
            dv[1, i] += p1 * g
            dk[0, i] += e0 * q
            dk[1, i] += e1 * q


@cuda.jit(fastmath=False)
def flash_attention_dkdv_kernel(dinp, dout, inp, out, lse, B, T, C, NH, scale):
    """dk, dv (added into dinp) of key tile blockIdx.y of head blockIdx.x = b·NH + h, channels
    64·blockIdx.z.."""
    W = cuda.shared.array((BR, W_COLS), float32)
    Ps = cuda.shared.array((BR, P_COLS), float32)
    dSs = cuda.shared.array((BR, P_COLS), float32)
    Ds = cuda.shared.array(BR, float32)
    Ls = cuda.shared.array(BR, float32)
    s = cuda.local.array((RPT, NCOL), float32)
    dp = cuda.local.array((RPT, NCOL), float32)
    kv = cuda.local.array(NCOL, float32)
    dk = cuda.local.array((RPT, BWD_NACC), float32)
    dv = cuda.local.array((RPT, BWD_NACC), float32)
    # the coordinates of _block_coords, written out: through it ptxas gives this kernel 215 registers on
    # sm_80, not 209
    tid = cuda.threadIdx.x & (THREADS - 1)  # the masks tell the compiler the indices below are ≥ 0
    rg = tid >> TPR_SHIFT
    cl = tid & (TPR - 1)
    rq = tid >> 2  # the D / lse staging: 4 threads per query row
    cq = tid & 3
    bh = cuda.blockIdx.x
    kt = cuda.blockIdx.y
    nt = cuda.gridDim.y
    b = bh // NH
    h = bh - b * NH
    hs = C // NH
    C3 = 3 * C
    k0 = kt * BR
    qbase = b * T * C3 + h * hs
    obase = b * T * C + h * hs
    o0 = cuda.blockIdx.z * BWD_HO  # this block's slice of the output channels
    for a in range(RPT):
        for i in range(BWD_NACC):
            dk[a, i] = _ZERO
            dv[a, i] = _ZERO
    for qt in range(kt, nt):
        q0 = qt * BR
        _stage_d_lse(Ds, Ls, dout, out, lse, obase, bh * T, q0, T, C, hs, rq, cq)
        # sᵀ = k·qᵀ and dpᵀ = v·doutᵀ
        _scores_dp(s, dp, W, kv, inp, dout, qbase, obase, C, T, hs, q0, k0, 0, tid, rg, cl)
        _p_ds_transposed(Ps, dSs, s, dp, Ds, Ls, scale, k0, q0, T, rg, cl)
        # dv += Pᵀ·dout, dk += dSᵀ·q over this block's HO channels: dout in W[:, :64], q in W[:, 64:128]
        _stage(W, 0, BWD_SHIFT, dout, obase, C, q0, T, o0, hs, tid)
        _stage(W, BWD_HO, BWD_SHIFT, inp, qbase, C3, q0, T, o0, hs, tid)
        cuda.syncthreads()
        _dkdv_product(dk, dv, Ps, dSs, W, min(BR, T - q0), rg, cl)   # queries past T: P = dS = 0
        cuda.syncthreads()
    for a in range(RPT):
        t2 = k0 + rg + RG * a
        if t2 < T:
            base = (b * T + t2) * C3 + h * hs + o0
            for i in range(BWD_NACC):
                c = cl + TPR * i
                if o0 + c < hs:
                    dinp[base + C + c] += dk[a, i] * scale
                    dinp[base + 2 * C + c] += dv[a, i]


@cuda.jit(fastmath=False, **_DQ_OPTIONS)
def flash_attention_dq_kernel(dinp, dout, inp, out, lse, B, T, C, NH, scale):
    """dq (added into dinp) of query tile (gridDim.y − 1 − blockIdx.y) of head blockIdx.x = b·NH + h,
    channels 64·blockIdx.z.."""
    W = cuda.shared.array((BR, W_COLS), float32)
    dSs = cuda.shared.array((BR, P_COLS), float32)
    s = cuda.local.array((RPT, NCOL), float32)
    dp = cuda.local.array((RPT, NCOL), float32)
    kv = cuda.local.array(NCOL, float32)
    acc = cuda.local.array((RPT, FWD_NACC), float32)
    dr = cuda.local.array(RPT, float32)
    lr = cuda.local.array(RPT, float32)
    tid, rg, cl, bh, b, h, hs, C3, qbase = _block_coords(T, C, NH)
    qt = cuda.gridDim.y - 1 - cuda.blockIdx.y
    q0 = qt * BR
    obase = b * T * C + h * hs
    o0 = cuda.blockIdx.z * FWD_HO  # this block's slice of the output channels
    # D and lse of this thread's query rows
    for a in range(RPT):
        t = q0 + rg + RG * a
        d = _ZERO
        lt = _ZERO
        if t < T:
            for c in range(cl, hs, TPR):
                d += dout[obase + t * C + c] * out[obase + t * C + c]
            lt = lse[bh * T + t]
        dr[a] = _group_sum(d)
        lr[a] = lt
        for i in range(FWD_NACC):
            acc[a, i] = _ZERO
    for kt in range(qt + 1):
        k0 = kt * BR
        # s = q·kᵀ and dp = dout·vᵀ
        _scores_dp(s, dp, W, kv, inp, dout, qbase, obase, C, T, hs, q0, k0, HC, tid, rg, cl)
        for a in range(RPT):
            r = rg + RG * a
            for j in range(NCOL):
                ds = _ZERO
                if k0 + cl + TPR * j <= q0 + r and q0 + r < T:
                    ds = math.exp(s[a, j] * scale - lr[a]) * (dp[a, j] - dr[a])
                dSs[r, cl + TPR * j] = ds
        # acc += dS·k over this block's HO channels (keys past T: dS = 0)
        _key_product(acc, dSs, W, inp, qbase + C, C3, k0, T, o0, hs, tid, rg, cl)
    for a in range(RPT):
        t = q0 + rg + RG * a
        if t < T:
            base = (b * T + t) * C3 + h * hs + o0
            for i in range(FWD_NACC):
                c = cl + TPR * i
                if o0 + c < hs:
                    dinp[base + c] += acc[a, i] * scale


_FLASH_BWD_SIG = (F32A, F32A, F32A, F32A, F32A, I64, I64, I64, I64, F32)
SIGNATURES = {
    "flash_attention_forward_kernel": [(F32A, F32A, F32A, I64, I64, I64, I64, F32)],
    "flash_attention_dkdv_kernel": [_FLASH_BWD_SIG],
    "flash_attention_dq_kernel": [_FLASH_BWD_SIG],
}


def attention_forward_launches(B, T, C, NH):
    """[flash forward]: grid (B·NH, ⌈T/32⌉, ⌈hs/64⌉) of 128 threads (one z slice for GPT-2's hs = 64)."""
    hs = C // NH
    return [Launch(flash_attention_forward_kernel, (B * NH, cdiv(T, BR), cdiv(hs, FWD_HO)), THREADS)]


def attention_backward_launches(B, T, C, NH):
    """[dk/dv (one block per key tile), dq (one block per query tile)]: grids (B·NH, ⌈T/32⌉, ⌈hs/64⌉) of
    128 threads."""
    hs = C // NH
    return [Launch(flash_attention_dkdv_kernel, (B * NH, cdiv(T, BR), cdiv(hs, BWD_HO)), THREADS),
            Launch(flash_attention_dq_kernel, (B * NH, cdiv(T, BR), cdiv(hs, FWD_HO)), THREADS)]


def attention_forward(out, lse, inp, B, T, C, NH):
    """out (B,T,C) and lse (B,NH,T) (natural log of each row's Σ exp of its scaled scores) from qkv inp
    (B,T,3C); causal, scale 1/sqrt(C/NH)."""
    if B * T * C == 0:
        return
    (fwd,) = attention_forward_launches(B, T, C, NH)
    fwd(out, lse, inp, i64(B), i64(T), i64(C), i64(NH), f32(1.0 / math.sqrt(C // NH)))


def attention_backward(dinp, dout, inp, out, lse, B, T, C, NH):
    """dinp (B,T,3C) += the attention gradients (dq, dk, dv) from dout, out (B,T,C) and the forward's lse
    (B,NH,T); the attention weights are recomputed, no scratch."""
    if B * T * C == 0:
        return
    args = (dinp, dout, inp, out, lse, i64(B), i64(T), i64(C), i64(NH), f32(1.0 / math.sqrt(C // NH)))
    for launch in attention_backward_launches(B, T, C, NH):
        launch(*args)


# ---------------------------------------------------------------------------------------------------
# Generation: attention of T new positions against a key/value cache (T = 1 when decoding a token).
#   kcache, vcache (B, NH, maxT, hs)   att (B, NH, T, maxT)   the rest as above; see the CPU kernel.
# Two launches: the new rows go into the cache first (a query may attend to a key of another new
# position, which another block would otherwise be writing), then one warp per query row (b, h, t)
# computes its n = t0+t+1 scores (lanes over keys), the softmax (warp reductions) and out (lanes over
# the hs channels, coalesced).

@cuda.jit(fastmath=False)
def kv_cache_write_kernel(kcache, vcache, inp, B, T, t0, C, NH, maxT):
    """kcache/vcache[b, h, t0+t, i] = k/v of inp[b, t] (channel h·hs+i); one thread per (b, t, c)."""
    idx = cuda.grid(1)
    if idx < B * T * C:
        bt = idx // C
        c = idx - bt * C
        b = bt // T
        t = bt - b * T
        hs = C // NH
        h = c // hs
        dst = ((b * NH + h) * maxT + t0 + t) * hs + (c - h * hs)
        kcache[dst] = inp[bt * 3 * C + C + c]
        vcache[dst] = inp[bt * 3 * C + 2 * C + c]


@cuda.jit(fastmath=False)
def attention_cached_kernel(out, att, kcache, vcache, inp, B, T, t0, C, NH, maxT, scale):
    """One warp per query row (b·NH + h)·T + t (4 per block), q read from inp (B,T,3C):
    att[b,h,t,t2] = softmax over t2 < n = t0+t+1 of scale·q·kcache[b,h,t2] (lanes over keys), 0 for n ≤ t2 < maxT;
    out[b,t,h·hs + i] = Σ_{t2<n} att[b,h,t,t2]·vcache[b,h,t2,i] (lanes over the hs channels). Both written (=);
    the cache must already hold rows ..t0+T−1 (kv_cache_write_kernel)."""
    lane = cuda.threadIdx.x % 32
    row = cuda.blockIdx.x * WARPS + cuda.threadIdx.x // 32
    if row < B * NH * T:
        t = row % T
        bh = row // T
        h = bh % NH
        b = bh // NH
        hs = C // NH
        n = t0 + t + 1
        q = (b * T + t) * 3 * C + h * hs
        kv = bh * maxT * hs
        a = row * maxT
        m = _NEG_INF
        for t2 in range(lane, n, 32):
            s = _ZERO
            for i in range(hs):
                s += inp[q + i] * kcache[kv + t2 * hs + i]
            s *= scale
            att[a + t2] = s
            if s > m:
                m = s
        m = warp_max(m)
        e_sum = _ZERO
        for t2 in range(lane, maxT, 32):
            if t2 < n:
                e = math.exp(att[a + t2] - m)
                att[a + t2] = e
                e_sum += e
            else:
                att[a + t2] = _ZERO
        inv = _ONE / warp_sum(e_sum)  # ≥ exp(0) = 1: the query's own key is always there
        for t2 in range(lane, n, 32):
            att[a + t2] *= inv
        cuda.syncwarp()  # every lane reads every lane's weights below
        o = (b * T + t) * C + h * hs
        for i in range(lane, hs, 32):
            acc = _ZERO
            for t2 in range(n):
                acc += att[a + t2] * vcache[kv + t2 * hs + i]
            out[o + i] = acc


SIGNATURES.update({
    "kv_cache_write_kernel": [(F32A, F32A, F32A, I64, I64, I64, I64, I64, I64)],
    "attention_cached_kernel": [(F32A, F32A, F32A, F32A, F32A, I64, I64, I64, I64, I64, I64, F32)],
})


def attention_forward_cached_launches(B, T, t0, C, NH, maxT):
    """[cache write (one thread per (b, t, c)), attention (one warp per query row)]."""
    return [Launch(kv_cache_write_kernel, cdiv(B * T * C, 256), 256),
            Launch(attention_cached_kernel, cdiv(B * NH * T, WARPS), ROW_BLOCK)]


def attention_forward_cached(out, att, kcache, vcache, inp, B, T, t0, C, NH, maxT):
    """out (B,T,C) and att (B,NH,T,maxT) of positions t0..t0+T−1 from qkv inp (B,T,3C), whose k and v
    are first written into rows t0.. of kcache, vcache (B,NH,maxT,hs)."""
    if B * T * C == 0:
        return
    args = (i64(B), i64(T), i64(t0), i64(C), i64(NH), i64(maxT))
    write, attend = attention_forward_cached_launches(B, T, t0, C, NH, maxT)
    write(kcache, vcache, inp, *args)
    attend(out, att, kcache, vcache, inp, *args, f32(1.0 / math.sqrt(C // NH)))
