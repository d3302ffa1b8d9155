"""The portable matmul: plain Numba loops that LLVM vectorises for whatever CPU it compiles for.

numbagpt/cpu/matmul.py runs these where it has no explicit-SIMD GEMM for the CPU (neither AVX-512
nor AVX2/FMA, e.g. ARM), or when NUMBAGPT_MATMUL=portable. They were the first production kernels;
the numbers below are theirs (bench/bench_matmul.py --kernels portable,... shows them side by side).

    forward(out, inp, weight, bias, BT, C, OC)     out (BT,OC) = inp (BT,C) · weight (OC,C)ᵀ [+ bias]
    backward_dinp(dinp, dout, weight, BT, C, OC)   dinp (BT,C) += dout (BT,OC) · weight (OC,C)
    backward_dweight(dweight, dout, inp, BT, C, OC, accumulate)
                                                   dweight (OC,C) (+)= dout (BT,OC)ᵀ · inp (BT,C)

How fast: see bench/bench_matmul.py (against OpenBLAS in the same process) and
dev/matmul/loops.py (every variant tried, with numbers). In short: LLVM, as Numba drives it on
this CPU, vectorises with 256-bit registers (8 floats, 2 FMA/cycle), where OpenBLAS uses 512-bit
ones, so about half of BLAS is the ceiling; these kernels reach 0.3-0.6 of BLAS (0.46 over the
GPT-2 tiny and d12 shapes, 1 thread).

Two loop forms, each used where its operands are laid out for it (or cheaply made so):

  forward, out = inp · weightᵀ: the *dot-product* form, `_gemm_nt`. Both operands are contiguous
      along the reduction index k (= c), so the innermost loop runs over k for a 4×4 block of
      outputs held in 16 scalar accumulators (register blocking): per k it loads 4 + 4 values for
      16 FMAs. LLVM vectorises the k loop into 16 lane-wise partial sums (needs fastmath 'reassoc')
      and adds the lanes up once per output.

  backward, Y (M,N) += opA (M,K) · B (K,N) (dweight: or =): the *register-blocked axpy* form, `_gemm_acc`:

      dinp    (BT,C) += dout (BT,OC) · weight (OC,C)          K = OC, A = dout
      dweight (OC,C) += dout (BT,OC)ᵀ · inp (BT,C)            K = BT, A = doutᵀ (read transposed)

      B is (K, N) row-major as stored; a strip of 4 rows of Y lives in a small accumulator panel
      acc (4, NT) (task-local scratch, L1-resident) and is updated 4 values of k at a time:

          acc[r, j] += A[r,k]·B[k,j] + A[r,k+1]·B[k+1,j] + A[r,k+2]·B[k+2,j] + A[r,k+3]·B[k+3,j]

      The 16 A values are scalars (broadcast into registers), so A's layout hardly matters (each
      chunk's block of dout is first copied densely, row runs only, to spare TLB misses); the
      j loop is contiguous in acc and B, and LLVM vectorises it with no reduction: per 8 j it does
      16 FMAs for 4 B loads and 4 accumulator loads + stores (a plain axpy, 1 FMA per load and
      store, is load/store bound). The dot form would need both operands contiguous in k here,
      i.e. transposed copies of weight or dout; dout (B·T × OC, 412 MB for the tiny model's LM
      head) is too big to transpose, packing it tile by tile cost ~30% (see dev/).

      Exception: dinp with C <= 256 and OC >= 256 (the tiny model's LM head, qkv, fc): there the
      axpy's j loop over C is short and pays its per-pass setup often (~40 GF/s at C = 128), so
      weight is transposed once per call into scratch (C·OC floats, a few % of the product's time)
      and dinp = dout · (weightᵀ)ᵀ runs in the dot form over the long OC reduction (~60-70 GF/s).

Why not the classic BLAS micro-kernel (broadcast A, a register-resident vector accumulator)? In
plain Numba loops the accumulator of such a loop stays in memory, unless LLVM's SLP vectoriser packs
named scalars into vectors, and Numba runs with SLP vectorisation off; numbagpt/cpu/matmul.py gets
there with explicit vector types (numbagpt/cpu/simd.py), for the CPUs it has a kernel for.

Parallelism and accuracy: Y is cut into MT × NT tiles, one prange task each, so every Y cell is
written by exactly one task (no races, no atomics; scratch is allocated per task). Within a task the
reduction runs in KT-long chunks: the B block stays in L2 while the task's rows stream past it, and
each float32 partial sum spans at most KT terms before it is added into Y (the LM head's
50304-long dinp reduction is a sum of ~200 chunk sums, each vectorised further). dbias is a
separate column-sum kernel. `_tiles` picks MT, NT, KT per product and thread count.
"""
import numba
import numpy as np
from numba import njit, prange

# Fastmath: 'contract' lets LLVM fuse a·b + c into FMAs; the dot form also needs 'reassoc', without
# which LLVM may not split a float32 reduction over SIMD lanes (it would stay scalar). No
# approximate-math flags (nnan, ninf, arcp, afn): results stay IEEE.
_FASTMATH_DOT = {"reassoc", "contract"}
_FASTMATH_AXPY = {"contract"}


@njit(fastmath=_FASTMATH_DOT, cache=True)
def _generic(Y, yi, mr, yj, nr, A, ai, ak, Bm, bj, bk, kn):
    """The ragged edges: Y[yi:yi+mr, yj:yj+nr] += A[ai:ai+mr, ak:ak+kn] · Bm[bj:bj+nr, bk:bk+kn]ᵀ,
    one plain dot product per output (used only where M or N is not a multiple of 4)."""
    for r in range(mr):
        ar = A[ai + r, ak:ak + kn]
        y = Y[yi + r]
        for q in range(nr):
            bq = Bm[bj + q, bk:bk + kn]
            s = np.float32(0.0)
            for k in range(kn):
                s += ar[k] * bq[k]
            y[yj + q] += s


@njit(fastmath=_FASTMATH_DOT, cache=True)
def _strip(Y, yi, mr, yj0, yj1, A, ai, ak, Bm, bj0, bk, kn):
    """One strip of <= 4 rows of Y against a run of its columns, over one reduction chunk:

        Y[yi+r, yj] += Σ_{k<kn} A[ai+r, ak+k] · Bm[bj0+yj-yj0, bk+k]

    for r < mr <= 4, yj0 <= yj < yj1. Y, A, Bm are 2-D C-contiguous views. The micro-kernel is the
    4×4 block (`_block4x4`): 16 accumulators in registers, k innermost and contiguous in both
    operands, so per k it loads 4 + 4 values for 16 FMAs; LLVM vectorises the k loop as 16 lane-wise
    partial sums ('reassoc') and adds up the lanes once per output at the end. The helpers are
    inlined into the caller's Numba IR (inline="always"): left to LLVM, it vectorised their loops
    otherwise (the same machine code as one long function only this way).
    """
    if mr < 4:
        _generic(Y, yi, mr, yj0, yj1 - yj0, A, ai, ak, Bm, bj0, bk, kn)
        return
    # Row slices starting at the chunk: the index k below is then provably >= 0, so Numba's
    # negative-index wraparound folds away and the loads stay contiguous (indexing a flat array
    # with base + k instead produced gathers and ran ~4x slower).
    a0 = A[ai, ak:ak + kn]
    a1 = A[ai + 1, ak:ak + kn]
    a2 = A[ai + 2, ak:ak + kn]
    a3 = A[ai + 3, ak:ak + kn]
    y0 = Y[yi]
    y1 = Y[yi + 1]
    y2 = Y[yi + 2]
    y3 = Y[yi + 3]
    jend = yj0 + (yj1 - yj0) // 4 * 4
    for j in range(yj0, jend, 4):
        bj = bj0 + (j - yj0)
        _block4x4(y0, y1, y2, y3, j, a0, a1, a2, a3, Bm[bj, bk:bk + kn], Bm[bj + 1, bk:bk + kn],
                  Bm[bj + 2, bk:bk + kn], Bm[bj + 3, bk:bk + kn], kn)
    if jend < yj1:
        _generic(Y, yi, 4, jend, yj1 - jend, A, ai, ak, Bm, bj0 + (jend - yj0), bk, kn)


@njit(fastmath=_FASTMATH_DOT, cache=True, inline="always")
def _block4x4(y0, y1, y2, y3, j, a0, a1, a2, a3, b0, b1, b2, b3, kn):
    """The micro-kernel: yr[j + q] += Σ_{k<kn} ar[k]·bq[k] for r, q < 4, in 16 scalar accumulators
    (rows y0..y3 of Y, a0..a3 of A and b0..b3 of Bm, each a slice starting at its index 0 or the
    chunk: k is then provably >= 0, and the loads contiguous)."""
    s00 = s01 = s02 = s03 = np.float32(0.0)
    s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = np.float32(0.0)
    s30 = s31 = s32 = s33 = np.float32(0.0)
    for k in range(kn):
        x0 = a0[k]
        x1 = a1[k]
        x2 = a2[k]
        x3 = a3[k]
        w0 = b0[k]
        w1 = b1[k]
        w2 = b2[k]
        w3 = b3[k]
        s00 += x0 * w0
        s01 += x0 * w1
        s02 += x0 * w2
        s03 += x0 * w3
        s10 += x1 * w0
        s11 += x1 * w1
        s12 += x1 * w2
        s13 += x1 * w3
        s20 += x2 * w0
        s21 += x2 * w1
        s22 += x2 * w2
        s23 += x2 * w3
        s30 += x3 * w0
        s31 += x3 * w1
        s32 += x3 * w2
        s33 += x3 * w3
    y0[j] += s00
    y0[j + 1] += s01
    y0[j + 2] += s02
    y0[j + 3] += s03
    y1[j] += s10
    y1[j + 1] += s11
    y1[j + 2] += s12
    y1[j + 3] += s13
    y2[j] += s20
    y2[j + 1] += s21
    y2[j + 2] += s22
    y2[j + 3] += s23
    y3[j] += s30
    y3[j + 1] += s31
    y3[j + 2] += s32
    y3[j + 3] += s33


@njit(parallel=True, fastmath=_FASTMATH_DOT, cache=True)
def _gemm_nt(Y, A, Bm, bias, M, N, K, has_bias, accumulate, MT, NT, KT):
    """Y (M,N) = [Y +] A (M,K) · Bm (N,K)ᵀ [+ bias (N)], all flat float32.

    Dot-product form: both operands are contiguous in the reduction index k. One prange task per
    (MT × NT) tile of Y, which is first set to the bias (or 0) unless accumulate; then the reduction
    runs in KT chunks, each adding strips of 4 rows of A against 4-row blocks of Bm into it.
    """
    Y2 = Y.reshape(M, N)
    A2 = A.reshape(M, K)
    B2 = Bm.reshape(N, K)
    nmt = (M + MT - 1) // MT
    nnt = (N + NT - 1) // NT
    for t in prange(nmt * nnt):
        # consecutive tasks share the same rows of A and walk along N; each task owns its tile of Y
        m0 = (t // nnt) * MT
        n0 = (t % nnt) * NT
        m1 = min(m0 + MT, M)
        n1 = min(n0 + NT, N)
        # the tile starts as the bias (or 0), unless accumulating; the reduction chunks add into it
        for i in range(m0, m1 if not accumulate else m0):
            y = Y2[i, n0:n1]
            if has_bias:
                bb = bias[n0:n1]
                for j in range(n1 - n0):
                    y[j] = bb[j]
            else:
                for j in range(n1 - n0):
                    y[j] = 0.0
        for k0 in range(0, K, KT):
            kn = min(KT, K - k0)
            for i in range(m0, m1, 4):
                _strip(Y2, i, min(4, m1 - i), n0, n1, A2, i, k0, B2, n0, k0, kn)


@njit(fastmath=_FASTMATH_AXPY, cache=True)
def _panel(acc, mr, A, a_trans, ai, ak, kn, Bm, bk, bn, nn):
    """acc[r, j] += Σ_{k<kn} opA[ai+r, ak+k] · Bm[bk+k, bn+j]   for r < mr (<= 4), j < nn.

    acc (4, >=nn) scratch; opA[m, k] = A[m, k], or A[k, m] if a_trans (A is read as scalars only);
    Bm (K, N) row-major. The micro-kernel: 4 rows × 4 k per pass over j (16 scalars in registers,
    16 FMAs per vector of j against 4 B loads + 4 acc loads/stores).
    """
    # slices (views) rather than base + j indexing: the loop index j is then provably >= 0, so
    # Numba's negative-index wraparound folds away and the loads are contiguous vector loads
    # (indexing a flat array with base + j produced gathers and ran ~4x slower)
    c0 = acc[0, :nn]
    c1 = acc[1, :nn]
    c2 = acc[2, :nn]
    c3 = acc[3, :nn]
    if mr == 4:
        k4 = kn // 4 * 4
        for k in range(0, k4, 4):
            if a_trans:
                # opA[ai+r, ak+k+q] = A[ak+k+q, ai+r]: four 4-float runs of the stored (K, M) array
                e0 = A[ak + k, ai:ai + 4]
                e1 = A[ak + k + 1, ai:ai + 4]
                e2 = A[ak + k + 2, ai:ai + 4]
                e3 = A[ak + k + 3, ai:ai + 4]
                p00, p01, p02, p03 = e0[0], e1[0], e2[0], e3[0]
                p10, p11, p12, p13 = e0[1], e1[1], e2[1], e3[1]
                p20, p21, p22, p23 = e0[2], e1[2], e2[2], e3[2]
                p30, p31, p32, p33 = e0[3], e1[3], e2[3], e3[3]
            else:
                e0 = A[ai, ak + k:ak + k + 4]
                e1 = A[ai + 1, ak + k:ak + k + 4]
                e2 = A[ai + 2, ak + k:ak + k + 4]
                e3 = A[ai + 3, ak + k:ak + k + 4]
                p00, p01, p02, p03 = e0[0], e0[1], e0[2], e0[3]
                p10, p11, p12, p13 = e1[0], e1[1], e1[2], e1[3]
                p20, p21, p22, p23 = e2[0], e2[1], e2[2], e2[3]
                p30, p31, p32, p33 = e3[0], e3[1], e3[2], e3[3]
            b0 = Bm[bk + k, bn:bn + nn]
            b1 = Bm[bk + k + 1, bn:bn + nn]
            b2 = Bm[bk + k + 2, bn:bn + nn]
            b3 = Bm[bk + k + 3, bn:bn + nn]
            for j in range(nn):
                w0 = b0[j]
                w1 = b1[j]
                w2 = b2[j]
                w3 = b3[j]
                # written as c + p·w + p·w + ... (left to right) so it is a chain of 4 FMAs
                c0[j] = c0[j] + p00 * w0 + p01 * w1 + p02 * w2 + p03 * w3
                c1[j] = c1[j] + p10 * w0 + p11 * w1 + p12 * w2 + p13 * w3
                c2[j] = c2[j] + p20 * w0 + p21 * w1 + p22 * w2 + p23 * w3
                c3[j] = c3[j] + p30 * w0 + p31 * w1 + p32 * w2 + p33 * w3
        _panel_k_tail(c0, c1, c2, c3, A, a_trans, ai, ak, k4, kn, Bm, bk, bn, nn)
    else:
        _panel_rows(acc, mr, A, a_trans, ai, ak, kn, Bm, bk, bn, nn)


@njit(fastmath=_FASTMATH_AXPY, cache=True, inline="always")
def _panel_k_tail(c0, c1, c2, c3, A, a_trans, ai, ak, k0, kn, Bm, bk, bn, nn):
    """_panel's last kn − k0 (< 4) values of k for its 4 rows (accumulator rows c0..c3), one at a time."""
    for k in range(k0, kn):
        if a_trans:
            e0 = A[ak + k, ai:ai + 4]
            p00, p10, p20, p30 = e0[0], e0[1], e0[2], e0[3]
        else:
            p00, p10, p20, p30 = A[ai, ak + k], A[ai + 1, ak + k], A[ai + 2, ak + k], A[ai + 3, ak + k]
        b0 = Bm[bk + k, bn:bn + nn]
        for j in range(nn):
            w0 = b0[j]
            c0[j] = c0[j] + p00 * w0
            c1[j] = c1[j] + p10 * w0
            c2[j] = c2[j] + p20 * w0
            c3[j] = c3[j] + p30 * w0


@njit(fastmath=_FASTMATH_AXPY, cache=True, inline="always")
def _panel_rows(acc, mr, A, a_trans, ai, ak, kn, Bm, bk, bn, nn):
    """_panel for a ragged last strip (mr = M % 4 < 4 rows): one row, one k at a time."""
    for r in range(mr):
        c = acc[r, :nn]
        for k in range(kn):
            if a_trans:
                p = A[ak + k, ai + r]
            else:
                p = A[ai + r, ak + k]
            b0 = Bm[bk + k, bn:bn + nn]
            for j in range(nn):
                c[j] = c[j] + p * b0[j]


@njit(parallel=True, fastmath=_FASTMATH_AXPY, cache=True)
def _gemm_acc(Y, A, Bm, M, N, K, a_trans, accumulate, MT, NT, KT):
    """Y (M,N) += op(A) (M,K) · Bm (K,N), all flat float32 (the backward products); with accumulate
    false Y = op(A) · Bm instead (the first reduction chunk writes Y, the later ones add to it).

    op(A) = A stored (M,K), or, if a_trans, A stored (K,M) and read transposed (as scalars, so no
    transposing copy is needed). Axpy form: one prange task per (MT × NT) tile of Y; inside it the
    reduction runs in KT chunks; per chunk and strip of 4 rows, `_panel` accumulates into the task's
    (4, NT) scratch panel, which is then added into Y.
    """
    Y2 = Y.reshape(M, N)
    A2 = A.reshape(K, M) if a_trans else A.reshape(M, K)
    B2 = Bm.reshape(K, N)
    nmt = (M + MT - 1) // MT
    nnt = (N + NT - 1) // NT
    for t in prange(nmt * nnt):
        m0 = (t // nnt) * MT
        n0 = (t % nnt) * NT
        m1 = min(m0 + MT, M)
        n1 = min(n0 + NT, N)
        nn = n1 - n0
        # task-local scratch (no sharing between threads): the accumulator panel, and a compact
        # copy of the block of A that a reduction chunk reads
        acc = np.empty((4, NT), dtype=np.float32)
        if a_trans:
            ablk = np.empty((KT, MT), dtype=np.float32)
        else:
            ablk = np.empty((MT, KT), dtype=np.float32)
        for k0 in range(0, K, KT):
            kn = min(KT, K - k0)
            # _panel reads 4 floats from each of 4 rows of A per step. Straight from A those rows
            # are a whole row apart (OC floats for dout: a new page, a TLB miss, each); the copy
            # (contiguous runs, cheap) keeps the block dense, and it stays in L1/L2 while used.
            if a_trans:
                for k in range(kn):
                    src = A2[k0 + k, m0:m1]
                    dst = ablk[k]
                    for r in range(m1 - m0):
                        dst[r] = src[r]
            else:
                for r in range(m1 - m0):
                    src = A2[m0 + r, k0:k0 + kn]
                    dst = ablk[r]
                    for k in range(kn):
                        dst[k] = src[k]
            for i in range(m0, m1, 4):
                mr = min(4, m1 - i)
                acc[:, :nn] = 0
                _panel(acc, mr, ablk, a_trans, i - m0, 0, kn, B2, k0, n0, nn)
                for r in range(mr):
                    y = Y2[i + r, n0:n1]
                    c = acc[r, :nn]
                    if accumulate or k0 > 0:
                        for j in range(nn):
                            y[j] += c[j]
                    else:
                        for j in range(nn):
                            y[j] = c[j]


@njit(parallel=True, cache=True)
def _transpose(dst, src, R, Cn):
    """dst (Cn,R) = src (R,Cn)ᵀ. prange over blocks of 16 columns of src (= rows of dst); per row of
    src a 64-byte run is read and spread over the block's 16 dst rows, which fill up sequentially."""
    S = src.reshape(R, Cn)
    D = dst.reshape(Cn, R)
    for t in prange((Cn + 15) // 16):
        c0 = t * 16
        c1 = min(c0 + 16, Cn)
        for r in range(R):
            run = S[r, c0:c1]
            for c in range(c1 - c0):
                D[c0 + c, r] = run[c]


_NO_BIAS = np.zeros(1, dtype=np.float32)


def forward(out, inp, weight, bias, BT, C, OC):
    """out (BT,OC) = inp (BT,C) · weight (OC,C)ᵀ + bias (OC); bias may be None. Writes out."""
    has_bias = bias is not None
    _gemm_nt(out, inp, weight, bias if has_bias else _NO_BIAS, BT, OC, C, has_bias, False,
             *_tiles("forward", BT, C, OC))


def backward_dinp(dinp, dout, weight, BT, C, OC):
    """dinp (BT,C) += dout (BT,OC) · weight (OC,C).

    weight is already (K, N) = (OC, C) for the axpy form, but with C <= 256 the axpy's j loop (over
    C) is short and pays its per-pass setup often (~40 GF/s at C = 128), while the dot form over a
    long reduction (OC >= 256) runs at ~55-70: then transposing weight once (C·OC floats of scratch,
    a few % of the product's time when BT·2 flops amortise each copied float) and using the dot
    form wins (dev/matmul/loops.py).
    """
    if C <= 256 and OC >= 256:
        wT = np.empty(C * OC, dtype=np.float32)
        _transpose(wT, weight, OC, C)
        _gemm_nt(dinp, dout, wT, _NO_BIAS, BT, C, OC, False, True, *_tiles("dinp_dot", BT, C, OC))
    else:
        _gemm_acc(dinp, dout, weight, BT, C, OC, False, True, *_tiles("dinp", BT, C, OC))


def backward_dweight(dweight, dout, inp, BT, C, OC, accumulate=True):
    """dweight (OC,C) += dout (BT,OC)ᵀ · inp (BT,C), or = when not accumulate (dweight not read):
    dout read transposed, inp is (K, N) = (BT, C)."""
    _gemm_acc(dweight, dout, inp, OC, C, BT, True, accumulate, *_tiles("dweight", BT, C, OC))


def _tiles(op, BT, C, OC):
    """(MT, NT, KT) for one product (measurements in dev/matmul/loops.py).

    forward (dot form): tiles of 256 rows × 64 columns of out, C in chunks of 512 (the B block,
    64 × 512 floats = 128 KiB, stays in L2 while the task's 256 rows stream past it).
    dinp in the dot form (C <= 256): 256 rows × 128 columns, OC in chunks of 1024.
    backward (axpy form): NT = all of N when N <= 1024 (the accumulator panel is then at most
    16 KiB and long j loops amortise each pass's setup), else 512; KT = 256; MT = 128 rows, halved
    (down to 16) until there are >= 4 tasks per thread, so small products still use every thread.
    """
    if op == "forward":
        return 256, 64, 512
    if op == "dinp_dot":
        return 256, 128, 1024
    M, N = (BT, C) if op == "dinp" else (OC, C)
    NT = N if N <= 1024 else 512
    nnt = (N + NT - 1) // NT
    MT = 128
    want = 4 * numba.get_num_threads()
    while MT > 16 and ((M + MT - 1) // MT) * nnt < want:
        MT //= 2
    return MT, NT, 256
