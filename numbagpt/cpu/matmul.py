"""Matmul (the linear layers and the LM head) on the CPU: one packed, register-blocked GEMM, no BLAS.

    matmul_forward(out, inp, weight, bias, B, T, C, OC)
        out (B,T,OC) = inp (B,T,C) · weight (OC,C)ᵀ + bias (OC)            bias may be None
    matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True)
        dinp    (B,T,C) += dout (B,T,OC) · weight (OC,C)
        dweight (OC,C)  += dout (B·T,OC)ᵀ · inp (B·T,C)                     = when not accumulate
        dbias   (OC)    += Σ_bt dout[bt, :]                                 = when not accumulate; may be None

All arrays are flat 1-D float32 (views into the model's big buffers); backward accumulates, as llm.c,
except that dweight and dbias are written (never read) with accumulate=False: the model's first
backward after zero_grad(), so that zero_grad() need not zero them.

All three products are one GEMM, Y (M,N) [+]= op(A) (M,K) · op(B) (K,N), Y row-major:

    product   Y       M    N    K    A(m,k)            B(k,n)
    forward   out     BT   OC   C    inp[m, k]         weight[n, k]     (+ bias, Y written)
    dinp      dinp    BT   C    OC   dout[m, k]        weight[k, n]     (Y += )
    dweight   dweight OC   C    BT   dout[k, m]        inp[k, n]        (Y +=, or Y = when not accumulate)

written in the GotoBLAS/BLIS structure (loops from the outside in):

    prange over tasks, one per thread: Y cut into mparts × nparts equal rectangles (in whole
                                       micro-tiles), the factorisation of the thread count that
                                       packs least (split)
      for jc in the task's columns by NC:
        for pc in K by KC:                     a reduction block
          pack B[pc:pc+KC, jc:jc+NC] -> Bp     NR-wide strips, each KC × NR contiguous, zero-padded
                                               (the forward's weight by L × L register transposes)
          for ic in the task's rows by MC:
            pack A[ic:ic+MC, pc:pc+KC] -> Ap   MR-row panels, each KC × MR contiguous, zero-padded
                                               (a row-major A, or any A of a task at most two
                                               strips wide, is read in place: whole panels where
                                               they lie, only a ragged last one packed)
            for each NR strip:                 (a strip, KC·NR·4 = 32 KiB, is reused from L1)
              for each MR panel:               (the block, MC·KC·4 = 144 KiB, stays in L2)
                micro-kernel: the MR × NR tile of Y (+)= Ap panel · Bp strip
                                               (for a Y far out of L2 the two loops swap: _BLOCKING)

The packing buffers are allocated once per process (a slot per thread, `_Gemm`). Unlike BLIS, the
B panel is not shared between threads: with one task per thread and no barrier inside a call, a
thread that the OS deschedules on a shared machine delays only its own rectangle (a barrier per
(jc, pc) block, as BLIS has, made the 2-thread GEMM several times slower here under load); the cost
is that a split along M packs B once per row part (the split is chosen to pack least).

The micro-kernel (`_microkernel_source`) keeps the MR × NR tile in MR·NR/L vector registers for the
whole KC loop: per k it loads NR/L vectors of the B strip, broadcasts MR values of the A panel and
issues MR·NR/L FMAs (6 × 64 with L = 16: 24 zmm accumulators, 4 loads + 6 broadcasts per 24 FMAs).
Numba has no vector type, so the kernel is written on numbagpt/cpu/simd.py's explicit `<L x float>`
intrinsics, generated as source per (MR, NR, L) so that every accumulator is a named local (one SSA
value, one register). At the end of the block it adds the tile into Y (or, in the first block of a
forward, writes tile + bias: the bias epilogue costs no extra pass).

Edges are exact: packing pads A panels and B strips with zeros, so the micro-kernel always runs a
full tile and reads only the packing buffers or whole panels of A; a tile that sticks out of Y (M % MR, N % NR) is
written to a per-thread scratch tile, and only its valid part is added into Y. Nothing outside the
arrays is read or written.

Determinism: every element of Y is summed in the same order (k ascending inside a KC block, blocks in
order) whatever the thread count and split, so results are bit-identical run to run, and across
thread counts too.

Which kernel runs is chosen once, at import, from the features of the CPU that Numba compiles for
(llvmlite's host CPU features, or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set):

    avx512     16-lane zmm micro-kernel, 6 × 64             (AVX-512F)
    avx2       8-lane ymm micro-kernel, 6 × 16 (16 registers: 12 accumulators, no spills)   (AVX2 + FMA)
    portable   numbagpt/cpu/matmul_portable.py: plain loops, vectorised by LLVM (anything else, e.g. ARM)

NUMBAGPT_MATMUL=avx512|avx2|portable overrides the choice (an error if the CPU lacks the features;
a pair names this GEMM's kernel, then the bf16 GEMM's, numbagpt/cpu/matmul_bf16.py, e.g. avx2,portable);
`set_kernel(name)` switches at run time (the tests use it). `kernel()` names the one in use; bin/train_gpt2
prints it at start-up and the profiler in its header. Numbers: bench/bench_matmul.py (against OpenBLAS,
same process), dev/matmul/ (the variants tried).
"""
import functools
import os
import textwrap

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import njit, prange

from . import matmul_portable
from .simd import compile_source, source_tag, vector_ops

# Blocking per kernel: lanes L, micro-tile MR × NR, and the cache blocks, set from the caches the
# CPU reports (_cache_bytes). Inside a block the tiles go strip by strip (each KC × NR strip of B,
# KC·NR·4 bytes, is reused by every A panel of the MC × KC block, in L2), with the B panel
# (NC·KC·4 bytes) in half the L2. Where the avx512 strip at KC = 128 (32 KiB) fits in two thirds of
# L1 (Intel's 48 KiB, where it was tuned: KC 128 beat 256 there), KC is 128; where it doesn't (AMD
# Zen 4's 32 KiB) the strip streams from L2 anyway, and KC 256 halves the passes over Y instead
# (Zen 4, 2 threads: +0-8% on every d12 and tiny product, the d12 dinps 0.88-0.94 -> 0.95-1.00 of
# BLAS; KC 64 and 96 lost 5-15%). NC follows: 2048 at KC 128 with a 2 MiB L2, 512 at KC 256 with
# Zen 4's 1 MiB. Where Y has more than BIG_Y elements (4 MiB, twice the L2) the tiles go along Y's
# rows instead (an A panel stays in L1, the strips of the panel, NC_Y·KC_Y·4 = 1 MiB, pass it from
# L2): Y is then written in long runs, not in 6-row patches over hundreds of rows (tiny lm_head
# forward 0.8 -> 1.1 of BLAS), and with the strip out of L1 KC_Y can double, halving the passes
# over Y (each KC block loads, adds, stores every tile). The avx2 strip fits at 256 (BIG_Y None:
# always strip by strip, not timed the other way). Measured in dev/matmul/ (micro-tiles 8×32,
# 12×32, 6×64, 14×32; KC 64-512; MC 96-576; NC 512-8192; both orders).
def _cache_bytes(level, default):
    """The level-`level` data (or unified) cache of CPU 0 in bytes, from Linux's sysfs (`default`
    where that can't be read)."""
    try:
        for index in sorted(os.listdir(_CACHE_DIR)):
            entry = {}
            for field in ("level", "type", "size"):
                with open(os.path.join(_CACHE_DIR, index, field)) as f:
                    entry[field] = f.read().strip()
            if entry["level"] == str(level) and entry["type"] in ("Data", "Unified"):
                size = entry["size"].upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return default


def _reduction_block(l1, NR):
    """KC: 128 where that strip of B (128·NR floats) fits in two thirds of the L1, else 256."""
    return 128 if 128 * NR * 4 <= l1 * 2 // 3 else 256


def _panel_columns(l2, KC, NR):
    """NC: the B panel (NC·KC floats) in half the L2, whole strips of NR, between 512 and 4096."""
    return max(512, min(4096, l2 // 2 // (4 * KC) // NR * NR))


_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"
_L1, _L2 = _cache_bytes(1, 48 << 10), _cache_bytes(2, 2 << 20)   # defaults: the Intel machine's
_KC = _reduction_block(_L1, 64)
# SMALL_Y: where Y has at most this many elements (256 KiB: the tiny model's weight gradients,
# 2048 terms each), the reduction blocks are KC_S long: fewer passes over the tiles of a Y that
# is cheap to keep anyway, and fewer micro-kernel starts per FMA (2 threads, Zen 4, idle: the four
# tiny dweights 5-12% faster than at KC 128, KC 256 in between).
# IN_PLACE_N: where a task has at most this many columns of Y (two strips), A is not packed: the
# micro-kernel reads its panels where they lie (a packed A block would serve only one or two
# strips, so packing costs as much traffic as the product's own reads of A: tiny lm_head dinp,
# 2048 x 128 x 50304, packed 412 MB a call). 2 threads, Zen 4: that dinp 0.90-1.00 -> 1.03-1.12
# of BLAS, the tiny qkv dweight 0.97-1.00 -> 1.06-1.19, the other N = 128 products within noise.
# IN_PLACE_ROWS: a row-major A (forward, dinp) is read in place at any width: its panels are MR
# rows read along k, as the packed ones are (Zen 4, KC 256: the d12 dinps +2-6% at 1 and 2
# threads, forwards within noise, 7 of 10 a little faster); a k-major A (dweight) gained nothing.
_BLOCKING = {
    "avx512": dict(lanes=16, MR=6, NR=64, MC=288, KC=_KC, NC=_panel_columns(_L2, _KC, 64),
                   BIG_Y=1 << 20, KC_Y=256, NC_Y=1024, IN_PLACE_N=128, IN_PLACE_ROWS=True,
                   SMALL_Y=1 << 16, KC_S=512),
    "avx2": dict(lanes=8, MR=6, NR=16, MC=96, KC=256, NC=2048, BIG_Y=None, KC_Y=256, NC_Y=2048,
                 IN_PLACE_N=32, IN_PLACE_ROWS=False, SMALL_Y=None, KC_S=256),
}
# Micro-kernel modes: how the tile meets Y.
_ACCUMULATE, _OVERWRITE, _BIAS = 0, 1, 2


def _microkernel_source(name, MR, NR, L, a_rows):
    """Source of the MR × NR micro-kernel on L-lane vectors (NR a multiple of L):

        name(kc, Ap, pa, sa, Bp, pb, Y, py, ldy, mode, bias, pbias)
        tile[r, j] = Σ_{k<kc} a(r, k) · Bp[pb + k·NR + j]                      r < MR, j < NR
        Y[py + r·ldy + j] (+)= tile[r, j]      mode 0: +=, 1: =, 2: = tile + bias[pbias + j]

    Bp is a packed B strip (k-major). The A panel is a(r, k) = Ap[pa + r·sa + k] if a_rows (MR rows,
    as a row-major A is packed by a plain copy), else Ap[pa + k·sa + r] (k-major, as a transposed A
    packs by a plain copy). Either way A is read one value at a time and broadcast.
    """
    NV = NR // L
    acc = [[f"c{r}_{v}" for v in range(NV)] for r in range(MR)]
    src = [f"def {name}(kc, Ap, pa, sa, Bp, pb, Y, py, ldy, mode, bias, pbias):"]
    src += ["    " + " = ".join(row) + " = zero()" for row in acc]
    # the tile of Y is needed only after the k loop: ask for it now, so that its (likely) misses
    # overlap the FMAs instead of stalling the adds at the end
    src += [f"    prefetch(Y, py + {r} * ldy + {v * L})" for r in range(MR) for v in range(NV)]
    if a_rows:
        src += [f"    q{r} = pa + {r} * sa" for r in range(MR)]

    def step(k):  # one k: NV loads of B, MR broadcasts of A, MR·NV FMAs; then the next row of Bp
        body = [f"b{v} = load(Bp, pb + {v * L})" for v in range(NV)]
        for r in range(MR):
            body += [f"a = bcast(Ap, q{r} + {k})" if a_rows else f"a = bcast(Ap, pa + {r})"]
            body += [f"{acc[r][v]} = fma(a, b{v}, {acc[r][v]})" for v in range(NV)]
        return ["        " + line for line in body + [f"pb += {NR}"] + ([] if a_rows else ["pa += sa"])]

    # k two at a time (3-13% faster inside the GEMM than one: half the loop overhead), then the odd k
    src += ["    for k in range(0, kc - 1, 2):"] + step("k") + step("k + 1")
    src += ["    for k in range(kc - kc % 2, kc):"] + step("k")

    def y(r, v):
        return f"py + {r} * ldy + {v * L}"

    src += ["    if mode == 0:"]
    src += [f"        store(Y, {y(r, v)}, add(load(Y, {y(r, v)}), {acc[r][v]}))"
            for r in range(MR) for v in range(NV)]
    src += ["    elif mode == 1:"]
    src += [f"        store(Y, {y(r, v)}, {acc[r][v]})" for r in range(MR) for v in range(NV)]
    src += ["    else:"]
    src += [f"        d{v} = load(bias, pbias + {v * L})" for v in range(NV)]
    src += [f"        store(Y, {y(r, v)}, add({acc[r][v]}, d{v}))" for r in range(MR) for v in range(NV)]
    return "\n".join(src) + "\n"


@njit(cache=True)
def _edge(Y, y0, ldy, mr, nr, tile, t0, NR, mode, bias, n0):
    """Add the valid mr × nr corner of a scratch tile (row stride NR) into Y at y0 (row stride ldy),
    with the micro-kernel's modes (0: +=, 1: =, 2: = tile + bias[n0 + j])."""
    for r in range(mr):
        y = Y[y0 + r * ldy:y0 + r * ldy + nr]
        t = tile[t0 + r * NR:t0 + r * NR + nr]
        for j in range(nr):
            if mode == 0:
                y[j] = y[j] + t[j]
            elif mode == 1:
                y[j] = t[j]
            else:
                y[j] = t[j] + bias[n0 + j]


# Fragments of the GEMM cores' source (this file's _CORE_SOURCE and numbagpt/cpu/matmul_bf16.py's
# _CORE_SOURCE_BF16), spliced in before .format (so no braces in them). TASK_SPLIT: the core's
# prologue (leading dimensions, the mparts x nparts task loop, the thread's slots a0, b0, t0 in
# Ap, Bp, tile, and the task's rectangle mlo:mhi x nlo:nhi of Y), at the core's indentation.
# TILE_LOOP: the head of the loop over a block's micro-tiles, up to the tile's destination (Yt, yt,
# ldt, tmode), unindented (textwrap.indent it to the place it goes).
TASK_SPLIT = '''    lda = K if a_kmaj else M
    ldb = K if b_kmaj else N
    mu = (M + MR - 1) // MR  # rows and columns in units of the micro-tile, split evenly
    nu = (N + NR - 1) // NR
    for t in prange(mparts * nparts):
        tid = numba.get_thread_id()
        a0 = tid * MC * KC
        b0 = tid * NC * KC
        t0 = tid * MR * NR
        im = t // nparts
        jn = t - im * nparts
        mlo = min(M, mu * im // mparts * MR)
        mhi = min(M, mu * (im + 1) // mparts * MR)
        nlo = min(N, nu * jn // nparts * NR)
        nhi = min(N, nu * (jn + 1) // nparts * NR)
'''
TILE_LOOP = '''ns, npn = (nc + NR - 1) // NR, S // MR
for u in range(ns * npn):  # the block's tiles: strip s, A panel p
    s, p = (u % ns, u // ns) if along_rows else (u // npn, u % npn)
    n0 = jc + s * NR
    nr = min(NR, N - n0)
    mr = min(MR, mc - p * MR)
    y0 = (ic + p * MR) * N + n0
    full = mr == MR and nr == NR
    Yt, yt, ldt, tmode = (Y, y0, N, blockmode) if full else (tile, t0, NR, 1)
'''
assert not any(c in TASK_SPLIT + TILE_LOOP for c in "{}")

# The GEMM core, instantiated per kernel (UKR / UKK its micro-kernels for row-by-row / k-major A
# panels: A is packed as it lies, so packing A is always a plain copy; MR × NR the tile). Arguments:
# Y (M,N) row-major; A, B and their layouts (a_kmaj: K is A's leading dimension, lda = K, A[m·K + k]:
# a row-major (M,K), k contiguous, packed into the "rows" micro-kernel's panels; else A[k·M + m], the
# "k-major" panels, k the slow index; b_kmaj: B[n·K + k], else B[k·N + n]); bias (N) for mode 2;
# Ap, Bp, tile the per-thread packing buffers; mparts × nparts the task grid; MC, KC, NC the
# blocking; along_rows: a block's tiles along Y's rows, else strip by strip (see _BLOCKING). One
# parallel region per call: each task owns a rectangle of Y and runs the whole blocked loop nest on
# it with its own buffers, so the
# threads never wait on each other inside a call (a barrier per block costs dearly when the cores
# are shared and a thread gets descheduled).
_CORE_SOURCE = '''
@njit(inline="always")
def copy(dst, d, src, s0, n, w):
    # dst[d:d+w] = src[s0:s0+n] followed by w - n zeros (n <= w), L lanes at a time
    nv = n // L * L
    for i in range(0, nv, L):
        store(dst, d + i, load(src, s0 + i))
    for i in range(nv, w):
        dst[d + i] = src[s0 + i] if i < n else 0.0


@njit(inline="always")
def pack_a(Ap, a0, A, a_kmaj, lda, ic, mc, pc, kc, S):
    # the MC x KC block of A: row by row (MR-row panels, row stride kc) from a row-major A, else
    # k by k (row stride S, the block's rows rounded up to MR); zero rows pad it to whole panels
    if a_kmaj:
        for i in range(S):
            copy(Ap, a0 + i * kc, A, (ic + min(i, mc - 1)) * lda + pc, kc if i < mc else 0, kc)
    else:
        for k in range(kc):
            copy(Ap, a0 + k * S, A, (pc + k) * lda + ic, mc, S)


@njit(inline="always")
def pack_b_t(Bp, b0, B, ldb, jc, nc, pc, kc):
    # pack_b from a B whose rows run along k (the forward's weight, B(k, n) = B[n*ldb + k]): by
    # L x L block transposes in registers (an element-by-element transposing copy cost as much as
    # the whole product on the d12 shapes); the ragged k and columns one element at a time
    nl = nc // L * L
    kl = kc // L * L
    for i in range(0, (nc + NR - 1) // NR * NR):
        d = b0 + i // NR * NR * kc + i % NR  # column i of the panel: strip i // NR, lane i % NR
        if i < nl and i % L == 0:
            for k in range(0, kl, L):
                transpose(Bp, d + k * NR, NR, B, (jc + i) * ldb + pc + k, ldb)
        r0 = kl if i < nl else 0  # the k this column still needs, one by one
        for k in range(r0, kc):
            Bp[d + k * NR] = B[(jc + i) * ldb + pc + k] if i < nc else 0.0


@njit(inline="always")
def pack_b(Bp, b0, B, b_kmaj, ldb, jc, nc, pc, kc):
    # the KC x NC panel of B as NR-wide strips, each k-major, zero-padded past column nc
    if b_kmaj:
        pack_b_t(Bp, b0, B, ldb, jc, nc, pc, kc)
    else:
        for k in range(kc):
            for s in range((nc + NR - 1) // NR):
                copy(Bp, b0 + s * NR * kc + k * NR, B, (pc + k) * ldb + jc + s * NR, min(NR, nc - s * NR), NR)


def {name}(Y, A, a_kmaj, B, b_kmaj, bias, M, N, K, mode, Ap, Bp, tile, mparts, nparts, MC, KC, NC, along_rows,
           a_in_place):
''' + TASK_SPLIT + '''        for jc in range(nlo, nhi, NC):
            nc = min(NC, nhi - jc)
            for pc in range(0, K, KC):
                kc = min(KC, K - pc)
                blockmode = mode if pc == 0 else 0
                pack_b(Bp, b0, B, b_kmaj, ldb, jc, nc, pc, kc)
                for ic in range(mlo, mhi, MC):
                    mc = min(MC, mhi - ic)
                    S = (mc + MR - 1) // MR * MR
                    # in place, the micro-kernel reads A's whole panels where they lie and only a
                    # ragged last panel is packed (as panel 0 of Ap); else the block is packed
                    p0 = mc // MR * MR if a_in_place else 0
                    if p0 < mc:
                        pack_a(Ap, a0, A, a_kmaj, lda, ic + p0, mc - p0, pc, kc, S - p0)
''' + textwrap.indent(TILE_LOOP, ' ' * 20) + '''\
                        q = p * MR - p0  # the panel's first row in Ap (< 0: read in place)
                        if a_kmaj:
                            if q < 0:
                                UKR(kc, A, (ic + p * MR) * lda + pc, lda, Bp, b0 + s * NR * kc, Yt, yt, ldt, tmode,
                                    bias, n0)
                            else:
                                UKR(kc, Ap, a0 + q * kc, kc, Bp, b0 + s * NR * kc, Yt, yt, ldt, tmode, bias, n0)
                        else:
                            if q < 0:
                                UKK(kc, A, pc * lda + ic + p * MR, lda, Bp, b0 + s * NR * kc, Yt, yt, ldt, tmode,
                                    bias, n0)
                            else:
                                UKK(kc, Ap, a0 + q, S - p0, Bp, b0 + s * NR * kc, Yt, yt, ldt, tmode, bias, n0)
                        if not full:
                            edge(Y, y0, N, mr, nr, tile, t0, NR, blockmode, bias, n0)
'''


def vector_env(lanes, fma=None):
    """The vector operations of L = lanes the generated micro-kernels and GEMM cores call by name
    (simd.py's; `fma` replaces the multiply-add: see _compile). dev/matmul/ compiles with them too."""
    ops = vector_ops(lanes)
    return dict(load=ops.load, store=ops.store, bcast=ops.bcast, fma=fma or ops.fma, add=ops.add, zero=ops.zero,
                prefetch=ops.prefetch, transpose=ops.transpose)


def _compile(isa, b, fma=None, core_source=None, env_extra=None):
    """The micro-kernels and GEMM core of one kernel with blocking b, as Numba dispatchers. The
    generated source is compiled under this file's name, so Numba's on-disk cache (keyed on this
    file) keeps them. `fma` replaces the micro-kernel's multiply-add (c = fma(a, b, c) on vectors of
    L 32-bit elements), `core_source` the GEMM core (_CORE_SOURCE), env_extra adds names for it:
    numbagpt/cpu/matmul_bf16.py's vdpbf16ps on pairs of bfloat16, and its core that packs them."""
    env = dict(numba=numba, njit=njit, prange=prange, edge=_edge, MR=b["MR"], NR=b["NR"], L=b["lanes"],
               __name__=__name__, **vector_env(b["lanes"], fma), **(env_extra or {}))
    kernels = {}
    for key, a_rows in (("UKR", True), ("UKK", False)):
        name = f"_microkernel_{isa}_{b['MR']}x{b['NR']}_{'rows' if a_rows else 'kmajor'}_{source_tag()}"
        exec(compile_source(_microkernel_source(name, b["MR"], b["NR"], b["lanes"], a_rows), __file__), env)
        kernels[key] = env[key] = njit(cache=True)(env[name])
    core = f"_gemm_{isa}_{b['MR']}x{b['NR']}_{source_tag()}"
    exec(compile_source((core_source or _CORE_SOURCE).format(name=core), __file__), env)
    return kernels, njit(parallel=True, cache=True)(env[core])


class _Gemm:
    """One kernel's GEMM with its packing buffers (allocated once per process, a slot for every
    thread Numba may start, and reused by every call). `blocking` overrides entries of the kernel's
    _BLOCKING (dev/matmul/ times other micro-tiles and blocks with it). `base` names the _BLOCKING
    entry when isa has none; `fma`, `core_source`, `env_extra`: see _compile (the bf16 GEMM)."""

    def __init__(self, isa, base=None, fma=None, core_source=None, env_extra=None, **blocking):
        self.isa = isa
        self.b = b = dict(_BLOCKING[base or isa], **blocking)
        self.microkernels, self.core = _compile(isa, b, fma, core_source, env_extra)
        nt = numba.config.NUMBA_NUM_THREADS
        kc = max(b["KC"], b["KC_Y"], b["KC_S"])
        self.Ap = np.empty(nt * b["MC"] * kc, np.float32)
        self.Bp = np.empty(nt * max(b["NC"] * max(b["KC"], b["KC_S"]), b["NC_Y"] * b["KC_Y"]), np.float32)
        self.tile = np.empty(nt * b["MR"] * b["NR"], np.float32)

    def __call__(self, Y, A, a_kmaj, B, b_kmaj, bias, M, N, K, mode, *extra):
        """Y (M,N) (+)= op(A) · op(B) in `mode`; `extra`: the core's further arguments (the bf16
        core's a_bf16)."""
        mparts, nparts = self.split(M, N)
        b = self.b
        big = b["BIG_Y"] is not None and M * N > b["BIG_Y"]
        small = b["SMALL_Y"] is not None and M * N <= b["SMALL_Y"]
        KC, NC = (b["KC_Y"], b["NC_Y"]) if big else (b["KC_S"] if small else b["KC"], b["NC"])
        in_place = (a_kmaj and b["IN_PLACE_ROWS"]) or _ceil(N, nparts) <= b["IN_PLACE_N"]
        self.core(Y, A, a_kmaj, B, b_kmaj, bias, M, N, K, mode, self.Ap, self.Bp, self.tile,
                  mparts, nparts, b["MC"], KC, NC, big, in_place, *extra)

    def split(self, M, N):
        """The task grid (mparts, nparts), one task per thread: of the ways to factor the thread
        count, the one that packs least (each row part packs its own copy of B, each column part
        its own copy of A), among those that give every task at least one micro-tile row/column."""
        nt = numba.get_num_threads()
        mu, nu = _ceil(M, self.b["MR"]), _ceil(N, self.b["NR"])
        best = None
        for mp in range(1, nt + 1):
            if nt % mp:
                continue
            np_ = nt // mp
            cost = (N * mp + M * np_, mp > mu or np_ > nu)
            if best is None or (cost[1], cost[0]) < (best[0][1], best[0][0]):
                best = (cost, mp, np_)
        return best[1], best[2]


def _ceil(a, b):
    return -(-a // b)


_NO_BIAS = np.zeros(1, dtype=np.float32)


def matmul_forward(out, inp, weight, bias, B, T, C, OC):
    """out (B,T,OC) = inp (B,T,C) · weight (OC,C)ᵀ + bias (OC); bias may be None. Writes out."""
    gemm = _choice.gemm
    if gemm is None:
        matmul_portable.forward(out, inp, weight, bias, B * T, C, OC)
    elif bias is None:
        gemm(out, inp, True, weight, True, _NO_BIAS, B * T, OC, C, _OVERWRITE)
    else:
        gemm(out, inp, True, weight, True, bias, B * T, OC, C, _BIAS)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True):
    """The gradients of out = inp · weightᵀ + bias (shapes as matmul_forward):

        dinp (B,T,C) += dout (B,T,OC) · weight (OC,C)
        dweight (OC,C) += dout (BT,OC)ᵀ · inp (BT,C)       (= when not accumulate)
        dbias (OC) += Σ_bt dout[bt, :]                     (= when not accumulate; skipped when None)

    dinp always accumulates; with accumulate=False dweight and dbias are overwritten, their old
    contents never read (bit for bit the sums accumulate=True adds to zeros).
    """
    BT = B * T
    _backward_dinp(dinp, dout, weight, BT, C, OC)
    _backward_dweight(dweight, dout, inp, BT, C, OC, accumulate)
    if dbias is not None:
        _column_sum(dbias, dout, BT, OC, accumulate)


def _backward_dinp(dinp, dout, weight, BT, C, OC):
    """dinp (BT,C) += dout (BT,OC) · weight (OC,C)."""
    gemm = _choice.gemm
    if gemm is None:
        matmul_portable.backward_dinp(dinp, dout, weight, BT, C, OC)
    else:
        gemm(dinp, dout, True, weight, False, _NO_BIAS, BT, C, OC, _ACCUMULATE)


def _backward_dweight(dweight, dout, inp, BT, C, OC, accumulate):
    """dweight (OC,C) (+)= dout (BT,OC)ᵀ · inp (BT,C): += if accumulate, else = (the GEMM's first
    reduction block writes the tile, the later ones add to it)."""
    gemm = _choice.gemm
    if gemm is None:
        matmul_portable.backward_dweight(dweight, dout, inp, BT, C, OC, accumulate)
    else:
        gemm(dweight, dout, False, inp, False, _NO_BIAS, OC, C, BT, _ACCUMULATE if accumulate else _OVERWRITE)


@njit(parallel=True, fastmath={"contract"}, cache=True)
def _column_sum(dbias, dout, BT, OC, accumulate):
    """dbias (OC) (+)= Σ_bt dout (BT,OC)[bt, :] (+= if accumulate, else =): prange over 256-wide
    column chunks, rows inside."""
    D = dout.reshape(BT, OC)
    CW = 256
    for t in prange((OC + CW - 1) // CW):
        o0 = t * CW
        o1 = min(o0 + CW, OC)
        acc = np.zeros(o1 - o0, dtype=np.float32)
        for bt in range(BT):
            row = D[bt, o0:o1]
            for o in range(o1 - o0):
                acc[o] += row[o]
        for o in range(o1 - o0):
            dbias[o0 + o] = dbias[o0 + o] + acc[o] if accumulate else acc[o]


# ---- dispatch -------------------------------------------------------------------------------------
KERNELS = ("avx512", "avx2", "portable")
_NEEDS = {"avx512": ("avx512f", "fma"), "avx2": ("avx2", "fma"), "portable": ()}


def cpu_features():
    """The features of the CPU Numba compiles for: NUMBA_CPU_FEATURES when NUMBA_CPU_NAME is set
    (then the host's do not apply), else llvmlite's host CPU features."""
    if numba.config.CPU_NAME:
        flags = (numba.config.CPU_FEATURES or "").split(",")
        return {f[1:] for f in flags if f.startswith("+")}
    return {k for k, on in llvm.get_host_cpu_features().items() if on}


class KernelChoice:
    """A GEMM's kernels, fastest first, and the one in use (this GEMM's and matmul_bf16.py's).

    `needs[name]`: the CPU features kernel `name` needs; `make(name)`: its packed GEMM, built when the
    kernel is first chosen (so never for one the CPU lacks), "portable" none (the plain-loop path);
    `denied(name)`: why a kernel whose features are there may still not run here, or None. `gemm` is
    the GEMM in use (None: portable); `name` names it as bin/train_gpt2 and the profiler print it,
    e.g. 'avx512 6x64'. The kernels this CPU runs are asked of llvmlite once (a query costs ~0.3 ms,
    which every switch would otherwise pay)."""

    def __init__(self, what, kernels, needs, make, denied=lambda name: None):
        self.what, self.kernels, self.needs, self.make, self.denied = what, kernels, needs, make, denied
        self.gemms = {}
        self.gemm, self.name = None, "portable"

    @functools.cached_property
    def supported(self):
        have = cpu_features()
        return tuple(k for k in self.kernels if all(f in have for f in self.needs[k]) and not self.denied(k))

    def set(self, name):
        """Use kernel `name` from now on; ValueError if it is none of `kernels` or cannot run here."""
        if name not in self.kernels:
            raise ValueError(f"unknown {self.what} {name!r}: expected one of {', '.join(self.kernels)}")
        if name not in self.supported:
            lacks = any(f not in cpu_features() for f in self.needs[name])
            why = f"needs CPU features {', '.join(self.needs[name])}" if lacks else self.denied(name)
            raise ValueError(f"{self.what} {name!r} {why}; this CPU runs: {', '.join(self.supported)}")
        if name == "portable":
            self.gemm, self.name = None, "portable"
            return
        if name not in self.gemms:
            self.gemms[name] = self.make(name)
        self.gemm = self.gemms[name]
        self.name = f"{name} {self.gemm.b['MR']}x{self.gemm.b['NR']}"


def supported_kernels():
    """The kernels this CPU can run, fastest first."""
    return list(_choice.supported)


def set_kernel(name):
    """Use kernel `name` (one of KERNELS) from now on; ValueError if this CPU cannot run it."""
    _choice.set(name)


def kernel():
    """The kernel in use, as bin/train_gpt2 and the profiler print it, e.g. 'avx512 6x64'."""
    return _choice.name


# The kernels of the bf16 GEMM (numbagpt/cpu/matmul_bf16.py) that are not also fp32 ones:
# NUMBAGPT_MATMUL may name one of them beside an fp32 kernel (e.g. "avx2,avx512bf16").
BF16_ONLY_KERNELS = ("avx512bf16",)


def requested_kernel(kernels, bf16=False):
    """The kernel NUMBAGPT_MATMUL asks of a GEMM whose kernels are `kernels` (the bf16 GEMM's when
    bf16), '' if it asks none. One name forces each GEMM that has it ("portable": both); a pair names
    the fp32 GEMM's kernel, then the bf16 GEMM's ("avx2,portable": avx2 for fp32, portable for bf16).
    ValueError for a name no GEMM has, more than two names, or a pair whose names are not of that
    order."""
    want = os.environ.get("NUMBAGPT_MATMUL", "").strip()
    entries = [w.strip() for w in want.split(",") if w.strip()]
    for w in entries:
        if w not in KERNELS + BF16_ONLY_KERNELS:
            raise ValueError(f"NUMBAGPT_MATMUL={want}: unknown matmul kernel {w!r}: expected one of "
                             f"{', '.join(KERNELS + BF16_ONLY_KERNELS)}")
    if len(entries) <= 1:
        return next((w for w in entries if w in kernels), "")
    pair = "a list is the fp32 GEMM's kernel, then the bf16 GEMM's (e.g. avx2,avx512bf16)"
    if len(entries) > 2:
        raise ValueError(f"NUMBAGPT_MATMUL={want}: {pair}: {len(entries)} names given")
    for w, gemm, names in ((entries[0], "an fp32", KERNELS), (entries[1], "a bf16", BF16_ONLY_KERNELS + ("portable",))):
        if w not in names:
            raise ValueError(f"NUMBAGPT_MATMUL={want}: {pair}: {w!r} is not {gemm} kernel "
                             f"({', '.join(names)})")
    return entries[bf16]


def set_requested_kernel(kernels, set_kernel, supported, bf16=False):
    """Call `set_kernel` with what NUMBAGPT_MATMUL asks of `kernels` (the bf16 GEMM's when bf16), else
    the first `supported` kernel: the import-time choice of this GEMM and of the bf16 one
    (numbagpt/cpu/matmul_bf16.py)."""
    want = requested_kernel(kernels, bf16)
    try:
        set_kernel(want or supported[0])
    except ValueError as e:
        raise ValueError(f"NUMBAGPT_MATMUL={os.environ.get('NUMBAGPT_MATMUL', '').strip()}: {e}") from None


_choice = KernelChoice("matmul kernel", KERNELS, _NEEDS, _Gemm)
set_requested_kernel(KERNELS, set_kernel, supported_kernels())
