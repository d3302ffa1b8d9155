"""Matmul (the linear layers and the LM head) on the CPU: one packed, register-blocked GEMM, no BLAS.

    matmul_forward(out, inp, weight, bias, B, T, C, OC)
        out (B,T,OC) = inp (B,T,C) · weight (OC,C)ᵀ + bias (OC)            bias may be None
    matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC)
        dinp    (B,T,C) += dout (B,T,OC) · weight (OC,C)
        dweight (OC,C)  += dout (B·T,OC)ᵀ · inp (B·T,C)
        dbias   (OC)    += Σ_bt dout[bt, :]                                 dbias may be None

All arrays are flat 1-D float32 (views into the model's big buffers); backward accumulates, as llm.c.

All three products are one GEMM, Y (M,N) [+]= op(A) (M,K) · op(B) (K,N), Y row-major:

    product   Y       M    N    K    A(m,k)            B(k,n)
    forward   out     BT   OC   C    inp[m, k]         weight[n, k]     (+ bias, Y written)
    dinp      dinp    BT   C    OC   dout[m, k]        weight[k, n]     (Y += )
    dweight   dweight OC   C    BT   dout[k, m]        inp[k, n]        (Y += )

written in the GotoBLAS/BLIS structure (loops from the outside in):

    for jc in N by NC:                       a column panel of Y
      for pc in K by KC:                     a reduction block
        pack B[pc:pc+KC, jc:jc+NC]  -> Bp    shared by all threads: NR-wide strips, each KC × NR
                                             contiguous (zero-padded past N), packed in parallel
        prange over tasks (MC-row blocks of Y × parts of the panel's strips, split evenly):
          pack A[ic:ic+MC, pc:pc+KC] -> Ap   the thread's own slot: MR-row panels, each KC × MR
          for each NR strip of the part:     (the strip, KC·NR·4 = 32 KiB, stays in L1)
            for each MR panel of the block:  (the block, MC·KC·4 ≈ 150 KiB, stays in L2)
              micro-kernel: the MR × NR tile of Y += Ap panel · Bp strip

The micro-kernel (`_microkernel_source`) keeps the MR × NR tile in MR·NR/L vector registers for the
whole KC loop: per k it loads NR/L vectors of the B strip, broadcasts MR values of the A panel and
issues MR·NR/L FMAs (12 × 32 with L = 16: 24 zmm accumulators, 2 loads + 12 broadcasts per 24 FMAs).
Numba has no vector type, so the kernel is written on numbagpt/cpu/simd.py's explicit `<L x float>`
intrinsics, generated as source per (MR, NR, L) so that every accumulator is a named local (one SSA
value, one register). At the end of the block it adds the tile into Y (or, in the first block of a
forward, writes tile + bias: the bias epilogue costs no extra pass).

Edges are exact: packing pads A panels and B strips with zeros, so the micro-kernel always runs a
full tile and reads only the packing buffers; a tile that sticks out of Y (M % MR, N % NR) is
written to a per-thread scratch tile, and only its valid part is added into Y. Nothing outside the
arrays is read or written.

Determinism: every element of Y is summed in the same order (k ascending inside a KC block, blocks in
order) whatever the thread count and split, so results are bit-identical run to run, and across
thread counts too.

Which kernel runs is chosen once, at import, from the features of the CPU that Numba compiles for
(llvmlite's host CPU features, or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set):

    avx512     16-lane zmm micro-kernel, 12 × 32            (AVX-512F)
    avx2       8-lane ymm micro-kernel, 6 × 16 (16 registers: 12 accumulators, no spills)   (AVX2 + FMA)
    portable   numbagpt/cpu/matmul_portable.py: plain loops, vectorised by LLVM (anything else, e.g. ARM)

NUMBAGPT_MATMUL=avx512|avx2|portable overrides the choice (an error if the CPU lacks the features);
`set_kernel(name)` switches at run time (the tests use it). `kernel()` names the one in use; bin/train_gpt2
prints it at start-up and the profiler in its header. Numbers: bench/bench_matmul.py (against OpenBLAS,
same process), dev/matmul/ (the variants tried).
"""
import os

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import njit, prange

from . import matmul_portable
from .simd import vector_ops

# Blocking per kernel: lanes L, micro-tile MR × NR, and the cache blocks. KC·NR·4 bytes (the B
# strip) fit L1 and MC·KC·4 (the A block) L2; NC·KC·4 (the shared B panel) a share of L3.
# Measured in dev/matmul/ (micro-tiles 8×32, 12×32, 6×64, 14×32; KC 192-512; NC 1024-8192).
_BLOCKING = {
    "avx512": dict(lanes=16, MR=12, NR=32, MC=144, KC=256, NC=4096),
    "avx2": dict(lanes=8, MR=6, NR=16, MC=96, KC=256, NC=4096),
}
# Micro-kernel modes: how the tile meets Y.
_ACCUMULATE, _OVERWRITE, _BIAS = 0, 1, 2


def _microkernel_source(name, MR, NR, L):
    """Source of the MR × NR micro-kernel on L-lane vectors (NR a multiple of L):

        name(kc, Ap, pa, Bp, pb, Y, py, ldy, mode, bias, pbias)
        tile[r, j] = Σ_{k<kc} Ap[pa + k·MR + r] · Bp[pb + k·NR + j]            r < MR, j < NR
        Y[py + r·ldy + j] (+)= tile[r, j]      mode 0: +=, 1: =, 2: = tile + bias[pbias + j]

    (Ap, Bp: the packed panels, k-major.) The A values are broadcast one by one rather than read as
    rows: a row-major A panel needs MR address streams, and LLVM then spills (dev/matmul/).
    """
    NV = NR // L
    acc = [[f"c{r}_{v}" for v in range(NV)] for r in range(MR)]
    src = [f"def {name}(kc, Ap, pa, Bp, pb, Y, py, ldy, mode, bias, pbias):"]
    src += ["    " + " = ".join(row) + " = zero()" for row in acc]
    src += ["    for k in range(kc):"]
    src += [f"        b{v} = load(Bp, pb + {v * L})" for v in range(NV)]
    for r in range(MR):
        src += [f"        a = bcast(Ap, pa + {r})"]
        src += [f"        {acc[r][v]} = fma(a, b{v}, {acc[r][v]})" for v in range(NV)]
    src += [f"        pa += {MR}", f"        pb += {NR}"]

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
def _pack_cols(dst, d0, W, src, kmaj, ld, i0, n, k0, kc):
    """Panels of W columns stored k by k, for the n columns i0..i0+n-1 of op (K, ·):
    panel p holds dst[d0 + p·W·kc + k·W + i] = op(k0 + k, i0 + p·W + i), zero-padded past column n.

    op(k, i) = src[i·ld + k] if kmaj (the source's rows run along k: a transposing copy, done in
    runs of 16 k per row so that the strided stores stay within a few cache lines), else
    src[k·ld + i] (rows along i: contiguous runs, read row by row across all the panels).
    Either way it runs at about the speed of a plain copy (dev/matmul/).
    """
    npan = (n + W - 1) // W
    if kmaj:
        for kb in range(0, kc, 16):
            kl = min(16, kc - kb)
            for i in range(n):
                row = src[(i0 + i) * ld + k0 + kb:(i0 + i) * ld + k0 + kb + kl]
                p0 = d0 + (i // W) * W * kc + kb * W + i % W
                col = dst[p0:p0 + kl * W:W]  # a strided view: k >= 0, so no wraparound code
                for k in range(kl):
                    col[k] = row[k]
    else:
        for k in range(kc):
            row = src[(k0 + k) * ld + i0:(k0 + k) * ld + i0 + n]
            for p in range(npan):
                w = min(W, n - p * W)
                out = dst[d0 + p * W * kc + k * W:d0 + p * W * kc + k * W + w]
                seg = row[p * W:p * W + w]
                for i in range(w):
                    out[i] = seg[i]
    if n % W:
        p0 = d0 + (npan - 1) * W * kc
        for k in range(kc):
            pad = dst[p0 + k * W + n % W:p0 + (k + 1) * W]
            for i in range(W - n % W):
                pad[i] = 0.0


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


# The GEMM core, instantiated per kernel (UK its micro-kernel, MR × NR its tile). Arguments:
# Y (M,N) row-major; A, B and their layouts (a_kmaj: A[m·K + k], else A[k·M + m]; b_kmaj:
# B[n·K + k], else B[k·N + n]); bias (N) for mode 2; Ap, Bp, tile the packing buffers; MC (a
# multiple of MR), npart (strip parts per row block), KC, NC the blocking.
_CORE_SOURCE = '''
def {name}(Y, A, a_kmaj, B, b_kmaj, bias, M, N, K, mode, Ap, Bp, tile, MC, npart, KC, NC):
    lda = K if a_kmaj else M
    ldb = K if b_kmaj else N
    mb = (M + MC - 1) // MC
    for jc in range(0, N, NC):
        nc = min(NC, N - jc)
        nstrips = (nc + NR - 1) // NR
        for pc in range(0, K, KC):
            kc = min(KC, K - pc)
            blockmode = mode if pc == 0 else 0
            for s in prange(nstrips):
                n0 = jc + s * NR
                pack_cols(Bp, s * KC * NR, NR, B, b_kmaj, ldb, n0, min(NR, N - n0), pc, kc)
            for t in prange(mb * npart):
                ib = t // npart
                part = t - ib * npart
                m0 = ib * MC
                mc = min(MC, M - m0)
                npan = (mc + MR - 1) // MR
                tid = numba.get_thread_id()
                a0 = tid * MC * KC
                t0 = tid * MR * NR
                pack_cols(Ap, a0, MR, A, a_kmaj, lda, m0, mc, pc, kc)
                for s in range(part * nstrips // npart, (part + 1) * nstrips // npart):
                    n0 = jc + s * NR
                    nr = min(NR, N - n0)
                    for p in range(npan):
                        mr = min(MR, mc - p * MR)
                        full = mr == MR and nr == NR
                        Yt, yt, ldt, tmode = (Y, (m0 + p * MR) * N + n0, N, blockmode) if full else (tile, t0, NR, 1)
                        UK(kc, Ap, a0 + p * MR * kc, Bp, s * KC * NR, Yt, yt, ldt, tmode, bias, n0)
                        if not full:
                            edge(Y, (m0 + p * MR) * N + n0, N, mr, nr, tile, t0, NR, blockmode, bias, n0)
'''


def _compile(isa):
    """The micro-kernel and GEMM core of one kernel, as Numba dispatchers. The generated source is
    compiled under this file's name, so Numba's on-disk cache (keyed on this file) keeps them."""
    b = _BLOCKING[isa]
    ops = vector_ops(b["lanes"])
    env = dict(numba=numba, prange=prange, pack_cols=_pack_cols, edge=_edge, MR=b["MR"], NR=b["NR"],
               load=ops.load, store=ops.store, bcast=ops.bcast, fma=ops.fma, add=ops.add, zero=ops.zero,
               __name__=__name__)
    uk, core = f"_microkernel_{isa}", f"_gemm_{isa}"
    exec(compile(_microkernel_source(uk, b["MR"], b["NR"], b["lanes"]), __file__, "exec"), env)
    env["UK"] = njit(cache=True)(env[uk])
    exec(compile(_CORE_SOURCE.format(name=core), __file__, "exec"), env)
    return env["UK"], njit(parallel=True, cache=True)(env[core])


class _Gemm:
    """One kernel's GEMM with its packing buffers (allocated once per process, for every thread
    Numba may start, and reused by every call)."""

    def __init__(self, isa):
        self.isa = isa
        self.b = _BLOCKING[isa]
        self.microkernel, self.core = _compile(isa)
        b, nt = self.b, numba.config.NUMBA_NUM_THREADS
        self.Ap = np.empty(nt * b["MC"] * b["KC"], np.float32)
        self.Bp = np.empty(_ceil(b["NC"], b["NR"]) * b["NR"] * b["KC"], np.float32)
        self.tile = np.empty(nt * b["MR"] * b["NR"], np.float32)

    def __call__(self, Y, A, a_kmaj, B, b_kmaj, bias, M, N, K, mode):
        MC, npart = self.split(M, N)
        self.core(Y, A, a_kmaj, B, b_kmaj, bias, M, N, K, mode, self.Ap, self.Bp, self.tile,
                  MC, npart, self.b["KC"], self.b["NC"])

    def split(self, M, N):
        """(MC, npart): row blocks of at most MC rows (a multiple of MR), as many as needed to give
        every thread the same number of blocks when there are few, and, when there are fewer
        blocks than threads, each block's strips cut into npart parts."""
        MR, NR, nt = self.b["MR"], self.b["NR"], numba.get_num_threads()
        mb = _ceil(M, self.b["MC"])
        if mb < 4 * nt:
            mb = _ceil(mb, nt) * nt
        MC = min(self.b["MC"], _ceil(_ceil(M, mb), MR) * MR)
        mb = _ceil(M, MC)
        nstrips = _ceil(min(N, self.b["NC"]), NR)
        npart = min(nstrips, _ceil(nt, mb)) if mb < nt else 1
        return MC, npart


def _ceil(a, b):
    return -(-a // b)


_NO_BIAS = np.zeros(1, dtype=np.float32)


def matmul_forward(out, inp, weight, bias, B, T, C, OC):
    """out (B,T,OC) = inp (B,T,C) · weight (OC,C)ᵀ + bias (OC); bias may be None. Writes out."""
    if _gemm is None:
        matmul_portable.forward(out, inp, weight, bias, B * T, C, OC)
    elif bias is None:
        _gemm(out, inp, True, weight, True, _NO_BIAS, B * T, OC, C, _OVERWRITE)
    else:
        _gemm(out, inp, True, weight, True, bias, B * T, OC, C, _BIAS)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC):
    """Accumulate the gradients of out = inp · weightᵀ + bias (shapes as matmul_forward):

        dinp (B,T,C) += dout (B,T,OC) · weight (OC,C)
        dweight (OC,C) += dout (BT,OC)ᵀ · inp (BT,C)
        dbias (OC) += Σ_bt dout[bt, :]          (skipped when dbias is None)
    """
    BT = B * T
    _backward_dinp(dinp, dout, weight, BT, C, OC)
    _backward_dweight(dweight, dout, inp, BT, C, OC)
    if dbias is not None:
        _column_sum(dbias, dout, BT, OC)


def _backward_dinp(dinp, dout, weight, BT, C, OC):
    """dinp (BT,C) += dout (BT,OC) · weight (OC,C)."""
    if _gemm is None:
        matmul_portable.backward_dinp(dinp, dout, weight, BT, C, OC)
    else:
        _gemm(dinp, dout, True, weight, False, _NO_BIAS, BT, C, OC, _ACCUMULATE)


def _backward_dweight(dweight, dout, inp, BT, C, OC):
    """dweight (OC,C) += dout (BT,OC)ᵀ · inp (BT,C)."""
    if _gemm is None:
        matmul_portable.backward_dweight(dweight, dout, inp, BT, C, OC)
    else:
        _gemm(dweight, dout, False, inp, False, _NO_BIAS, OC, C, BT, _ACCUMULATE)


@njit(parallel=True, fastmath={"contract"}, cache=True)
def _column_sum(dbias, dout, BT, OC):
    """dbias (OC) += Σ_bt dout (BT,OC)[bt, :]: prange over 256-wide column chunks, rows inside."""
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
            dbias[o0 + o] += acc[o]


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


def supported_kernels():
    """The kernels this CPU can run, fastest first."""
    have = cpu_features()
    return [k for k in KERNELS if all(f in have for f in _NEEDS[k])]


def set_kernel(name):
    """Use kernel `name` (one of KERNELS) from now on; ValueError if this CPU cannot run it."""
    global _gemm, _kernel
    if name not in KERNELS:
        raise ValueError(f"unknown matmul kernel {name!r}: expected one of {', '.join(KERNELS)}")
    if name not in supported_kernels():
        raise ValueError(f"matmul kernel {name!r} needs CPU features {', '.join(_NEEDS[name])}; "
                         f"this CPU runs: {', '.join(supported_kernels())}")
    if name == "portable":
        _gemm = None
        _kernel = "portable"
    else:
        if name not in _GEMMS:
            _GEMMS[name] = _Gemm(name)
        _gemm = _GEMMS[name]
        b = _BLOCKING[name]
        _kernel = f"{name} {b['MR']}x{b['NR']}"


def kernel():
    """The kernel in use, as bin/train_gpt2 and the profiler print it, e.g. 'avx512 12x32'."""
    return _kernel


def _default_kernel():
    return os.environ.get("NUMBAGPT_MATMUL", "").strip() or supported_kernels()[0]


_GEMMS = {}
_gemm = None
_kernel = "portable"
set_kernel(_default_kernel())
