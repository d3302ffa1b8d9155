"""Matrix multiplication (a Linear layer) as tiled CUDA GEMMs.

Shapes (row-major, flat): inp (B, T, C), weight (OC, C) (PyTorch Linear layout), bias (OC),
out/dout (B, T, OC); M = B·T rows.

    matmul_forward:  out = inp · weightᵀ + bias                        (M×OC, K = C)
    matmul_backward: dinp    += dout · weight                          (M×C,  K = OC)
                     dweight += doutᵀ · inp                            (OC×C, K = M)
                     dbias   += Σ_rows dout                            (column reduction)
                     (accumulate=False: dweight, dbias = instead of +=, their old contents never read)

The GEMM kernels (`make_gemm`): block tile BM×BN = 64×64, K step BK = 16, 64 threads per block, each
computing a TM×TN = 8×8 register block (rows ty + 8i, columns tx + 8j: conflict-free shared-memory reads
and 32-byte-segment output writes). Per K step a block loads a 64×16 tile of A and of B from global
memory into shared memory (coalesced along whichever dimension is contiguous in memory: the transposed
layouts are chosen at compile time, so every operand layout is read coalesced), synchronises, and each
thread does 16·64 FMAs from 16·16 shared-memory reads. Edges (any M, N, K) are handled by zero-filling
out-of-range loads and bounds-checking stores. Grid (ceil(N/64), ceil(M/64), K slices) (one slice unless
split-K). FLOPs 2·M·N·K; DRAM bytes ≈ 4·(M·K·⌈N/64⌉ + K·N·⌈M/64⌉ + M·N) with L2 absorbing much of the
re-reads.

bf16 (matmul_forward_bf16 / matmul_backward_bf16, the model's precision="bf16"): the same kernels built with
make_gemm(..., bf16=True), which rounds every A and B element to bfloat16 (runtime.bf16_round: nearest, ties
to even, the CPU's rule) as it is loaded into shared memory; products of two bf16 are exact in float32, so the
sums, the bias and the output are the fp32 kernels' float32. (Tensor-core bf16 MMA would be the fast way on a
GPU; these kernels give the numerics, at the fp32 kernels' speed.) matmul_backward_bf16(..., dout_bf16=True):
the backward GEMMs built with a_bf16=True, which read A (dout) as bf16 rows (docs/kernels.md) and widen each
value as they load it.

dbias (matmul_backward_dbias_kernel): block (32 columns × 8 row-lanes), grid (ceil(OC/32), R) with
R = min(ceil(M/256), 64); per-block shared-memory combine in a fixed order, then a float32
`cuda.atomic.add` per column (deterministic when R = 1, i.e. M ≤ 256).

Writing (accumulate=False, the model's first backward after zero_grad): dweight by the non-accumulating
GEMM and dbias by a plain store (matmul_backward_dbias_write_kernel, R = 1); where split-K's slices or R > 1
row chunks add partial sums with atomics, a fill_zero launch zeroes the output first.
"""
import numpy as np

from .launch import Launch, column_chunks, fill_zero_launch
from .runtime import F32A, I64, _bits_f32, _f32_bits, bf16_round, cdiv, cuda, float32, i64, sm_count

BM = 64          # block tile rows (M)
BN = 64          # block tile columns (N)
BK = 16          # K step
TM = 8           # rows per thread
TN = 8           # columns per thread
TX = BN // TN    # threads along N
TY = BM // TM    # threads along M
THREADS = TX * TY
PAD = 2          # shared-memory row padding: row stride ≡ 2 (mod 32 banks) makes the transposing
                 # tile stores conflict-free
AS_W = BM + PAD  # shared tile row lengths (must be plain constants for cuda.shared.array)
BS_W = BN + PAD
A_LOADS = BM * BK // THREADS
B_LOADS = BN * BK // THREADS

_ZERO = np.float32(0.0)


def _tile_loaders(a_km, b_nk, bf16, a_bf16):
    """(load_a_tile, load_b_tile): device functions that fill a block's shared-memory tiles of A and B
    for one K step, for make_gemm's operand layout and rounding flags (compile-time constants)."""

    @cuda.jit(device=True, inline=True)
    def load_a_tile(As, a, M, lda, m0, k0, k_end, tid):
        """As[kk, mm] = A[m0 + mm, k0 + kk] (bf16-rounded or widened as the flags say), 0 outside M or K."""
        for l in range(A_LOADS):
            e = tid + l * THREADS
            if a_km:   # consecutive threads along m, contiguous in memory
                mm = e % BM
                kk = e // BM
            else:
                mm = e // BK
                kk = e % BK
            gm = m0 + mm
            gk = k0 + kk
            val = _ZERO
            if gm < M and gk < k_end:
                row, col = (gk, gm) if a_km else (gm, gk)
                if a_bf16:   # the half of word col // 2 of the row, widened
                    val = _bits_f32(((_f32_bits(a[row * lda + col // 2]) >> (16 * (col % 2))) & 0xFFFF) << 16)
                elif bf16:
                    val = bf16_round(a[row * lda + col])
                else:
                    val = a[row * lda + col]
            As[kk, mm] = val

    @cuda.jit(device=True, inline=True)
    def load_b_tile(Bs, b, N, ldb, n0, k0, k_end, tid):
        """Bs[kk, nn] = B[k0 + kk, n0 + nn] (bf16-rounded if bf16), 0 outside N or K."""
        for l in range(B_LOADS):
            e = tid + l * THREADS
            if b_nk:   # consecutive threads along k, contiguous in memory
                nn = e // BK
                kk = e % BK
            else:
                nn = e % BN
                kk = e // BN
            gn = n0 + nn
            gk = k0 + kk
            val = _ZERO
            if gn < N and gk < k_end:
                if b_nk:
                    val = b[gn * ldb + gk]
                else:
                    val = b[gk * ldb + gn]
                if bf16:
                    val = bf16_round(val)
            Bs[kk, nn] = val

    return load_a_tile, load_b_tile


def make_gemm(a_km, b_nk, has_bias, accumulate, split_k=False, bf16=False, a_bf16=False):
    """A GEMM kernel  c[m, n] (+)= Σ_k A[m, k]·B[k, n] (+ bias[n])  for one operand layout.

    a_km: A is stored K×M (A[m, k] = a[k·lda + m]); else M×K (A[m, k] = a[m·lda + k]).
    b_nk: B is stored N×K (B[k, n] = b[n·ldb + k]); else K×N (B[k, n] = b[k·ldb + n]).
    split_k (accumulating kernels without bias only): blockIdx.z is a slice of K of `kchunk` elements, and
    each block adds its partial tile into c with float32 atomics (unsplit: one slice, kchunk = K).
    bf16: every A and B element is rounded to bfloat16 (runtime.bf16_round) as it is loaded into shared
    memory (the bf16 matmul: products of bf16 values, exact in float32, summed in float32).
    a_bf16 (with bf16): A is held in bf16 rows (docs/kernels.md) of lda values (lda even), A[m, k] the
    value at row m, column k (k, m if a_km): read from its word and widened, not rounded again.
    The flags are compile-time constants of the returned kernel (closure variables).
    """
    if split_k and not (accumulate and not has_bias):
        raise ValueError("split_k needs an accumulating GEMM without bias")

    load_a_tile, load_b_tile = _tile_loaders(a_km, b_nk, bf16, a_bf16)
    store_tile = _tile_store(has_bias, accumulate, split_k)

    def gemm(c, a, b, bias, M, N, K, lda, ldb, ldc, kchunk):
        As = cuda.shared.array((BK, AS_W), float32)
        Bs = cuda.shared.array((BK, BS_W), float32)
        tid = cuda.threadIdx.x
        tx = tid % TX
        ty = tid // TX
        n0 = cuda.blockIdx.x * BN
        m0 = cuda.blockIdx.y * BM

        k_begin = 0
        k_end = K
        if split_k:
            k_begin = cuda.blockIdx.z * kchunk
            k_end = min(K, k_begin + kchunk)

        acc = cuda.local.array((TM, TN), float32)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = _ZERO
        ar = cuda.local.array(TM, float32)
        br = cuda.local.array(TN, float32)

        for k0 in range(k_begin, k_end, BK):
            load_a_tile(As, a, M, lda, m0, k0, k_end, tid)
            load_b_tile(Bs, b, N, ldb, n0, k0, k_end, tid)
            cuda.syncthreads()
            for kk in range(BK):   # the thread's TM×TN outer products of this K step
                for i in range(TM):
                    ar[i] = As[kk, ty + TY * i]
                for j in range(TN):
                    br[j] = Bs[kk, tx + TX * j]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ar[i] * br[j]
            cuda.syncthreads()
        store_tile(c, acc, bias, M, N, ldc, m0, n0, tx, ty)

    return cuda.jit(fastmath=False)(gemm)


def _tile_store(has_bias, accumulate, split_k):
    """store_tile: the device function that writes a thread's TM×TN results into c (+ bias), for
    make_gemm's flags (compile-time constants)."""

    @cuda.jit(device=True, inline=True)
    def store_tile(c, acc, bias, M, N, ldc, m0, n0, tx, ty):
        """c[m, n] = (or +=, or atomically +=) acc[i, j] (+ bias[n]) at m = m0 + ty + TY·i,
        n = n0 + tx + TX·j, inside M × N."""
        for i in range(TM):
            gm = m0 + ty + TY * i
            if gm < M:
                for j in range(TN):
                    gn = n0 + tx + TX * j
                    if gn < N:
                        val = acc[i, j]
                        if has_bias:
                            val += bias[gn]
                        idx = gm * ldc + gn
                        if split_k:
                            cuda.atomic.add(c, idx, val)
                        elif accumulate:
                            c[idx] += val
                        else:
                            c[idx] = val
    return store_tile


GEMM_SIGNATURE = (F32A, F32A, F32A, F32A) + (I64,) * 7

# split-K: used by the accumulating (backward) GEMMs when the output tiles alone cannot fill the GPU,
# e.g. dinp of the vocab projection (M = B·T, N = C, K = Vp = 50304: without it, 64-128 blocks would
# each walk 3144 K steps while most SMs idle) or dweight at d12 (K = B·T, 144-576 tiles on 108-132 SMs).
SPLIT_MIN_K = 256        # at least this many K per split (16 K steps)
MAX_SPLITS = 64
BLOCKS_PER_SM = 8        # GEMM blocks resident per SM: 128 registers × 64 threads → 8 on sm_80 and sm_90
                         # (register-limited; dev/cuda_resources.py computes it, its test checks this)


WAVE_FILL = 0.8          # split-K stops at the first slice count whose last wave is this full


def split_k_count(M, N, K, sms=None):
    """How many K slices an accumulating GEMM of this shape is split into (1: no split), for a GPU
    with `sms` multiprocessors (default: the current one's). Only when the output tiles fill less than
    one wave of resident blocks (BLOCKS_PER_SM·sms slots): then the fewest slices s whose blocks fill
    their waves to WAVE_FILL on average (tiles·s / (slots·⌈tiles·s/slots⌉)), else the best fill found;
    at most K/SPLIT_MIN_K and MAX_SPLITS slices. E.g. d12's 576-tile dweight GEMMs on 132 SMs: 0.55 of
    a wave unsplit (and at s = 2), 0.82 at s = 3."""
    tiles = cdiv(M, BM) * cdiv(N, BN)
    slots = BLOCKS_PER_SM * (sm_count() if sms is None else sms)
    if tiles >= slots or K < 2 * SPLIT_MIN_K:
        return 1
    best, best_fill = 1, 0.0
    for s in range(1, min(K // SPLIT_MIN_K, MAX_SPLITS) + 1):
        blocks = tiles * s
        fill = blocks / (slots * cdiv(blocks, slots))
        if fill > best_fill + 1e-9:
            best, best_fill = s, fill
        if fill >= WAVE_FILL:
            break
    return best


def gemm_launch(kernel, M, N, K, splits=1):
    """The launch of a `make_gemm` kernel: grid (ceil(N/BN), ceil(M/BM), K slices), THREADS threads;
    param = K per slice (K when not split). `splits` > 1 only for kernels made with split_k=True; the
    slices are whole K steps, so there may be fewer than asked."""
    kchunk = K
    slices = 1
    if splits > 1:
        kchunk = cdiv(cdiv(K, splits), BK) * BK
        slices = cdiv(K, kchunk)
    if M <= 0 or N <= 0:
        slices = 0
    return Launch(kernel, (cdiv(N, BN), cdiv(M, BM), int(slices)), THREADS, param=kchunk)


def launch_gemm(launch, c, a, b, bias, M, N, K, lda, ldb, ldc):
    """Run a `gemm_launch` with its operands (argument meanings: `make_gemm`)."""
    if bias is None:
        bias = c  # unused by kernels made with has_bias=False
    launch(c, a, b, bias, i64(M), i64(N), i64(K), i64(lda), i64(ldb), i64(ldc), i64(launch.param))


def _matmul_gemms(bf16, dout_bf16=False):
    """The GEMM kernels of matmul_forward / matmul_backward (bf16: of their bf16 variants; dout_bf16: the
    backward's, with dout in bf16 rows), by role."""
    def gemm(a_km, b_nk, has_bias, accumulate, split_k=False):
        return make_gemm(a_km=a_km, b_nk=b_nk, has_bias=has_bias, accumulate=accumulate, split_k=split_k,
                         bf16=bf16, a_bf16=dout_bf16)
    forward = {} if dout_bf16 else dict(
        # out = inp·Wᵀ (+ bias): A = inp (M×K), B[k, n] = W[n, k] (N×K storage)
        forward_bias=gemm(False, True, True, False),
        forward_nobias=gemm(False, True, False, False))
    return dict(
        **forward,
        # dinp += dout·W: A = dout (M×OC), B = W (OC×C, K×N storage)
        backward_dinp=gemm(False, False, False, True),
        backward_dinp_splitk=gemm(False, False, False, True, split_k=True),
        # dweight += doutᵀ·inp: A[m=oc, k=bt] = dout[bt, oc] (K×M storage), B = inp (K×N storage); and
        # dweight = doutᵀ·inp (not accumulating, unsplit)
        backward_dweight=gemm(True, False, False, True),
        backward_dweight_splitk=gemm(True, False, False, True, split_k=True),
        backward_dweight_write=gemm(True, False, False, False),
    )


# by the key: fp32 (False), bf16 (True), bf16 with dout in bf16 rows ("dout_bf16", the backward's only)
_GEMMS = {False: _matmul_gemms(False), True: _matmul_gemms(True), "dout_bf16": _matmul_gemms(True, True)}
_SUFFIX = {False: "", True: "_bf16", "dout_bf16": "_bf16_dout"}
# as module names (tests/test_cuda_ptx.py compiles every kernel it finds): gemm_<role>, gemm_<role>_bf16,
# gemm_<role>_bf16_dout
for _key, _gemms in _GEMMS.items():
    for _role, _kernel in _gemms.items():
        globals()[f"gemm_{_role}" + _SUFFIX[_key]] = _kernel
del _key, _gemms, _role, _kernel

COLS = 32
ROW_LANES = 8
ROWS_PER_CHUNK = 256
MAX_CHUNKS = 64


def make_dbias_kernel(accumulate):
    """The dbias column reduction: dbias[c] (+)= Σ of dout[row, c] over the block's chunk of rows; accumulate:
    a float32 atomic add (the row chunks, blockIdx.y, combine), else a plain store (one chunk only)."""

    def dbias_kernel(dbias, dout, M, OC, chunk):
        sm = cuda.shared.array((ROW_LANES, COLS), float32)
        tx = cuda.threadIdx.x % COLS
        ty = cuda.threadIdx.x // COLS
        c = cuda.blockIdx.x * COLS + tx
        r0 = cuda.blockIdx.y * chunk
        r1 = min(r0 + chunk, M)
        s = _ZERO
        if c < OC:
            for row in range(r0 + ty, r1, ROW_LANES):
                s += dout[row * OC + c]
        sm[ty, tx] = s
        cuda.syncthreads()
        if ty == 0 and c < OC:
            for j in range(1, ROW_LANES):
                s += sm[j, tx]
            if accumulate:
                cuda.atomic.add(dbias, c, s)
            else:
                dbias[c] = s

    return cuda.jit(fastmath=False)(dbias_kernel)


matmul_backward_dbias_kernel = make_dbias_kernel(accumulate=True)
matmul_backward_dbias_write_kernel = make_dbias_kernel(accumulate=False)


SIGNATURES = {
    **{f"gemm_{role}" + _SUFFIX[key]: [GEMM_SIGNATURE] for key in _GEMMS for role in _GEMMS[key]},
    "matmul_backward_dbias_kernel": [(F32A, F32A, I64, I64, I64)],
    "matmul_backward_dbias_write_kernel": [(F32A, F32A, I64, I64, I64)],
}


def matmul_forward_launches(B, T, C, OC, has_bias=True, bf16=False):
    """[out = inp·Wᵀ (+ bias)] (bf16: with the operands rounded to bfloat16)."""
    g = _GEMMS[bf16]
    return [gemm_launch(g["forward_bias"] if has_bias else g["forward_nobias"], B * T, OC, C)]


def matmul_backward_launches(B, T, C, OC, has_bias=True, accumulate=True, sms=None, bf16=False):
    """[dinp GEMM, dweight GEMM (each split over K when its tiles cannot fill the GPU), then the dbias column
    reduction (param = rows per chunk) when has_bias]. Not accumulating, dweight and dbias are written: by the
    unsplit non-accumulating GEMM and a one-chunk reduction's plain store, or, where split-K slices or several
    row chunks combine with atomics, by a fill_zero launch (on the output, just before) and the atomic kernel.
    bf16: a key of _GEMMS (True, or "dout_bf16": dout in bf16 rows)."""
    dinp, dweight, dbias = _backward_plan(B, T, C, OC, has_bias, accumulate, sms, bf16)
    return [dinp] + dweight + dbias


def matmul_forward_bf16_launches(B, T, C, OC, has_bias=True):
    """matmul_forward_launches of the bf16 kernels."""
    return matmul_forward_launches(B, T, C, OC, has_bias, bf16=True)


def matmul_backward_bf16_launches(B, T, C, OC, has_bias=True, accumulate=True, sms=None, dout_bf16=False):
    """matmul_backward_launches of the bf16 kernels (dout_bf16: those reading dout in bf16 rows)."""
    return matmul_backward_launches(B, T, C, OC, has_bias, accumulate, sms, bf16="dout_bf16" if dout_bf16 else True)


def _backward_plan(B, T, C, OC, has_bias, accumulate, sms=None, bf16=False):
    """(dinp launch, [dweight launches], [dbias launches]): the two lists as matmul_backward_launches
    says, a leading fill_zero launch in a list zeroing that list's output. bf16 (a key of _GEMMS): the
    GEMMs round their operands to bfloat16, or read dout in bf16 rows ("dout_bf16"); dbias sums the
    float32 dout, as in fp32."""
    g = _GEMMS[bf16]
    M = B * T
    s1 = split_k_count(M, C, OC, sms)
    s2 = split_k_count(OC, C, M, sms)
    dinp = gemm_launch(g["backward_dinp_splitk"] if s1 > 1 else g["backward_dinp"], M, C, OC, splits=s1)
    if s2 > 1:  # the slices add up with atomics: writing, dweight is zeroed first
        dweight = ([] if accumulate else [fill_zero_launch(OC * C)]) + [
            gemm_launch(g["backward_dweight_splitk"], OC, C, M, splits=s2)]
    else:
        dweight = [gemm_launch(g["backward_dweight"] if accumulate else g["backward_dweight_write"], OC, C, M)]
    dbias = []
    if has_bias:
        chunk, nchunks = column_chunks(M if OC > 0 else 0, ROWS_PER_CHUNK, MAX_CHUNKS)
        if accumulate or nchunks > 1:  # the row chunks add up with atomics: writing, dbias is zeroed first
            dbias = ([] if accumulate else [fill_zero_launch(OC)]) + [
                Launch(matmul_backward_dbias_kernel, (cdiv(OC, COLS), nchunks), COLS * ROW_LANES, param=chunk)]
        else:
            dbias = [Launch(matmul_backward_dbias_write_kernel, (cdiv(OC, COLS), nchunks), COLS * ROW_LANES,
                            param=chunk)]
    return dinp, dweight, dbias


def matmul_forward(out, inp, weight, bias, B, T, C, OC):
    """out (B,T,OC) = inp (B,T,C) · weight (OC,C)ᵀ + bias (OC); bias may be None."""
    _forward(out, inp, weight, bias, B, T, C, OC, False)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True):
    """dinp += dout·weight; dweight += doutᵀ·inp; dbias += Σ dout (dbias may be None). With accumulate=False
    dweight and dbias are written (=), their old contents never read; dinp always accumulates."""
    _backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate, False)


def _forward(out, inp, weight, bias, B, T, C, OC, bf16):
    """matmul_forward; bf16: inp and weight rounded to bfloat16 as they are loaded."""
    (fwd,) = matmul_forward_launches(B, T, C, OC, bias is not None, bf16)
    launch_gemm(fwd, out, inp, weight, bias, B * T, OC, C, lda=C, ldb=C, ldc=OC)


def _backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate, bf16):
    """matmul_backward; bf16 (a key of _GEMMS): the GEMMs' operands rounded to bfloat16 as they are loaded,
    or dout read in bf16 rows ("dout_bf16"); dbias sums the float32 dout."""
    M = B * T
    dinp_launch, dweight_launches, dbias_launches = _backward_plan(B, T, C, OC, dbias is not None, accumulate,
                                                                   bf16=bf16)
    launch_gemm(dinp_launch, dinp, dout, weight, None, M, C, OC, lda=OC, ldb=C, ldc=C)
    launch_gemm(_zero_first(dweight_launches, dweight, OC * C), dweight, dout, inp, None, OC, C, M,
                lda=OC, ldb=C, ldc=C)
    if dbias is not None:
        dbias_reduce = _zero_first(dbias_launches, dbias, OC)
        dbias_reduce(dbias, dout, i64(M), i64(OC), i64(dbias_reduce.param))


def _zero_first(launches, out, n):
    """Run a plan list's leading fill_zero launch, if any, on out (n elements); return its last launch."""
    for fill in launches[:-1]:
        fill(out, i64(n))
    return launches[-1]


def matmul_forward_bf16(out, inp, weight, bias, B, T, C, OC):
    """matmul_forward with inp and weight rounded to bfloat16 (ties to even) as the GEMM loads them:
    products exact in float32, sums, bias and out float32 (docs/kernels.md, the bf16 matmul)."""
    _forward(out, inp, weight, bias, B, T, C, OC, True)


def matmul_backward_bf16(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True, dout_bf16=False):
    """matmul_backward with dout, inp and weight rounded to bfloat16 as the two GEMMs load them; dbias
    is the column sum of the float32 dout. dout_bf16: dout is in bf16 rows (docs/kernels.md), its values
    used as they are; OC even, dbias None."""
    if dout_bf16 and (OC % 2 or dbias is not None):
        raise ValueError(f"matmul_backward_bf16: a bf16 dout needs an even OC (got {OC}) and no dbias")
    _backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate, "dout_bf16" if dout_bf16 else True)
