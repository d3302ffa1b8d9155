"""Matmul in bf16 mixed precision (--precision bf16): the products of numbagpt/cpu/matmul.py with
both operands of every GEMM rounded to bfloat16, multiplied exactly and summed in float32.

    matmul_forward_bf16(out, inp, weight, bias, B, T, C, OC)
        out (B,T,OC) = bf16(inp) (B,T,C) · bf16(weight) (OC,C)ᵀ + bias (OC)      bias may be None
    matmul_backward_bf16(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True)
        dinp    (B,T,C) += bf16(dout) (B,T,OC) · bf16(weight) (OC,C)
        dweight (OC,C)  += bf16(dout) (B·T,OC)ᵀ · bf16(inp) (B·T,C)             = when not accumulate
        dbias   (OC)    += Σ_bt dout[bt, :]            (not a GEMM: float32 dout) = when not accumulate

Same contract, shapes and flat float32 buffers as matmul_forward / matmul_backward; only the GEMMs'
operands change. bf16(x) is x rounded to bfloat16 (8 significant bits, float32's exponent range)
round-to-nearest-even, as PyTorch's CPU autocast and llm.c's bf16 mode round a matmul's operands;
the output, the bias, the accumulation, every other kernel, the master weights, the gradients and
the AdamW state stay float32. A product of two bf16 values has at most 16 significant bits, so it
is exact in float32: the only roundings are the operands' and the float32 sum's (the error bound
of an fp32 sum of K terms, as for the fp32 GEMM, on the rounded operands).

Why: a bf16 operand is half the bytes, and CPUs with AVX512-BF16 (Intel Cooper Lake, Sapphire
Rapids and later, AMD Zen 4 and later) multiply pairs of them at twice the float32 FMA rate
(`vdpbf16ps`: 32 products into 16 float32 sums per instruction).

The rounding (`bf16_bits`): bits u of a float32 -> (u + 0x7FFF + ((u >> 16) & 1)) >> 16, exact RNE
on the bit pattern, including subnormals (kept, rounded like any other value: the bf16 subnormals
are float32's with the low 16 bits dropped), overflow to ±inf (values ≥ 0x7F7F8000 round up to
it), ±inf kept; a NaN stays a NaN (sign and upper payload kept, quiet bit set). This is the
rounding of PyTorch's `.to(torch.bfloat16)` for every non-NaN value (tests/test_cpu_matmul_bf16.py
checks it bit for bit). The hardware's `vcvtne2ps2bf16` is not used: it treats subnormal inputs as
zero (measured on Zen 4: 1e-40 -> 0x0000, 0x007FFFFF -> 0x0000 where RNE gives 0x0080).

Two kernels, chosen once at import from the CPU's features (matmul.cpu_features, as the fp32
kernels), NUMBAGPT_MATMUL naming one overrides (an error if the CPU lacks its features; a comma list
may name an fp32 kernel and a bf16 one, e.g. avx2,portable), set_kernel() switches at run time:

    avx512bf16   the packed GEMM of matmul.py with vdpbf16ps for vfmadd231ps          (AVX512-BF16)
    portable     round copies of the operands, then the fp32 GEMM in use (any CPU: the same numbers
                 up to the order of the sum)

avx512bf16. The operands are first converted, once per call (parallel, vectorised loops), into
arrays of bf16 *pairs*: one 32-bit word holds bf16(x[k]) (low half) and bf16(x[k+1]) (high half)
for two consecutive k, the VNNI layout `vdpbf16ps` reads (lane j: c[j] += a.lo·b[j].lo +
a.hi·b[j].hi). Along k a row of A or a column of B is then ⌈K/2⌉ words; an odd K pads the last pair
with a zero high half, which adds exact zeros. On those 32-bit words the GEMM of matmul.py runs
unchanged with K' = ⌈K/2⌉: its packing (copies, the forward weight's 16 × 16 register transposes),
blocking, task split, in-place A panels and edge tiles only move 32-bit words; only the
micro-kernel's multiply-add is `vdpbf16ps` (two k per instruction) instead of `vfmadd231ps`, with
the same 6 × 64 tile of 24 zmm accumulators. Per product the pair arrays are

    product   A (pairs of)                            B (pairs of)
    forward   inp rows:   A'[m·K' + k'] (M, K')       weight rows: B'[n·K' + k'] (N, K')
    dinp      dout rows:  A'[m·K' + k'] (M, K')       weight columns: B'[k'·N + n] (K', N)
    dweight   dout columns: A'[k'·M + m] (K', M)      inp columns:    B'[k'·N + n] (K', N)

(a row pair is two adjacent floats, a column pair two floats a row apart; both operands in one
parallel region, `_pairs`: ~0.12 ns an element at 2 threads, a few % of a d12 product), in per-process scratch
that grows to the largest operand seen (half its float32 size: the tiny model's LM-head dout,
2048 × 50304, takes 206 MB). vdpbf16ps itself treats subnormal bf16 inputs and sums as zero (DAZ,
FTZ, measured): only values below 2^-126 ≈ 1.2e-38 differ from the portable path that way.

Numerics: every sum is float32 in a fixed order (k by pairs, the odd element's product before the
even one's; blocks in order), so results are bit-identical run to run and across thread counts, as
the fp32 GEMM; the two kernels agree to the error of an fp32 sum, not bit for bit. Numbers:
bench/bench_matmul.py --precision bf16 (against the fp32 GEMM, OpenBLAS and torch.mm on bf16).
"""
import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import matmul as _fp32
from .simd import F32Vec

_VEC16 = F32Vec(16)
_LL_F = ir.VectorType(ir.FloatType(), 16)
_LL_I = ir.VectorType(ir.IntType(32), 16)


@intrinsic
def _dpbf16(typingctx, a, b, c):
    """c + a·b pair by pair: lane j of the result is c[j] + a[j].hi·b[j].hi + a[j].lo·b[j].lo, where
    a[j], b[j] are 32-bit words of two bf16 each (held in <16 x float> values, bits only). One
    `vdpbf16ps` (the LLVM intrinsic declared with <16 x i32> operands, which LLVM upgrades to its
    <32 x bfloat> form). Argument order as the fp32 micro-kernel's fma(a, b, c)."""
    if not (a == _VEC16 and b == _VEC16 and c == _VEC16):
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_LL_F, [_LL_F, _LL_I, _LL_I])
        f = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512bf16.dpbf16ps.512")
        return builder.call(f, [args[2], builder.bitcast(args[0], _LL_I), builder.bitcast(args[1], _LL_I)])

    return _VEC16(a, b, c), codegen


# ---- rounding ------------------------------------------------------------------------------------

@njit(inline="always")
def _bits(u):
    """The bf16 (low 16 bits of the result) of the float32 with bits u (uint32): RNE, NaN quieted.
    Both results computed, then selected: a branch here kept LLVM from vectorising the loops that
    call it (6.6 ns an element -> 0.13 at 2 threads)."""
    v = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    n = (u >> np.uint32(16)) | np.uint32(0x40)
    return n if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else v


@njit(parallel=True, cache=True)
def _bits_array(dst, src, n):
    """dst (uint16) = the bf16 bits of src (uint32 view of float32), n elements."""
    for i in prange(n):
        dst[i] = np.uint16(_bits(src[i]))


@njit(parallel=True, cache=True)
def _round_array(dst, src, n):
    """dst (uint32 view of float32) = src (uint32 view) rounded to bf16, widened back to float32."""
    for i in prange(n):
        dst[i] = _bits(src[i]) << np.uint32(16)


def bf16_bits(x):
    """The bfloat16 bit patterns (uint16, same shape) of float32 array x, rounded to nearest even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.uint16)
    _bits_array(out.reshape(-1), x.reshape(-1).view(np.uint32), x.size)
    return out


def round_to_bf16(x):
    """float32 array x rounded to the nearest bfloat16 (even on ties), as float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.float32)
    _round_array(out.reshape(-1).view(np.uint32), x.reshape(-1).view(np.uint32), x.size)
    return out


# ---- the pair arrays (avx512bf16) ----------------------------------------------------------------

@njit(inline="always")
def _row_pairs(dst, src, r, K):
    """Row r of the (R, ⌈K/2⌉) pair words of src (R, K): dst[r, k'] = bf16(src[r, 2k']) |
    bf16(src[r, 2k'+1]) << 16, the high half 0 past K."""
    K2 = (K + 1) // 2
    s = src[r * K:(r + 1) * K]
    d = dst[r * K2:(r + 1) * K2]
    for k in range(K // 2):
        d[k] = _bits(s[2 * k]) | (_bits(s[2 * k + 1]) << np.uint32(16))
    if K % 2:
        d[K2 - 1] = _bits(s[K - 1])


@njit(inline="always")
def _column_pairs(dst, src, k, K, N):
    """Row k' = k of the (⌈K/2⌉, N) pair words of src (K, N): dst[k', n] = bf16(src[2k', n]) |
    bf16(src[2k'+1, n]) << 16, the high half 0 past K."""
    lo = src[2 * k * N:(2 * k + 1) * N]
    d = dst[k * N:(k + 1) * N]
    if 2 * k + 1 < K:
        hi = src[(2 * k + 1) * N:(2 * k + 2) * N]
        for n in range(N):
            d[n] = _bits(lo[n]) | (_bits(hi[n]) << np.uint32(16))
    else:
        for n in range(N):
            d[n] = _bits(lo[n])


@njit(parallel=True, cache=True)
def _pairs(da, sa, a_rows, ra, ka, db, sb, b_rows, rb, kb):
    """Both operands of a product as pair words, in one parallel region (one fork/join per call, not
    one per operand: under load a thread's late wake-up costs every region). Operand x (a or b) of
    rx "rows" (the dimension that is not k) and kx terms: x_rows, its float32s (as uint32) are
    (rx, kx) and it becomes (rx, ⌈kx/2⌉) words (_row_pairs), else (kx, rx) -> (⌈kx/2⌉, rx)
    (_column_pairs). One task a row of words."""
    na = ra if a_rows else (ka + 1) // 2
    nb = rb if b_rows else (kb + 1) // 2
    for t in prange(na + nb):
        if t < na:
            if a_rows:
                _row_pairs(da, sa, t, ka)
            else:
                _column_pairs(da, sa, t, ka, ra)
        else:
            if b_rows:
                _row_pairs(db, sb, t - na, kb)
            else:
                _column_pairs(db, sb, t - na, kb, rb)


@njit(parallel=True, cache=True)
def _round_both(da, sa, na, db, sb, nb):
    """da = sa and db = sb rounded to bf16 (float32s as uint32), in one parallel region, in chunks."""
    CH = 1 << 14
    ca = (na + CH - 1) // CH
    for t in prange(ca + (nb + CH - 1) // CH):
        # slices, so that the index is provably >= 0 and the loop vectorises (no wraparound)
        if t < ca:
            d, s = da[t * CH:min(na, (t + 1) * CH)], sa[t * CH:min(na, (t + 1) * CH)]
        else:
            d, s = db[(t - ca) * CH:min(nb, (t - ca + 1) * CH)], sb[(t - ca) * CH:min(nb, (t - ca + 1) * CH)]
        for i in range(d.size):
            d[i] = _bits(s[i]) << np.uint32(16)


class _Scratch:
    """Grow-only per-process buffers (float32; the pair words are stored in them as bits)."""

    def __init__(self):
        self.bufs = {}

    def get(self, slot, n):
        b = self.bufs.get(slot)
        if b is None or b.size < n:
            b = self.bufs[slot] = np.empty(max(n, 1), np.float32)
        return b[:n]


_scratch = _Scratch()


def _u32(a):
    return a.view(np.uint32)


def _operands(a, a_rows, ra, ka, b, b_rows, rb, kb):
    """The pair words of both operands (see _pairs), in scratch slots "a" and "b"."""
    da = _scratch.get("a", (ra * ((ka + 1) // 2)))
    db = _scratch.get("b", (rb * ((kb + 1) // 2)))
    _pairs(_u32(da), _u32(a), a_rows, ra, ka, _u32(db), _u32(b), b_rows, rb, kb)
    return da, db


def _rounded(a, na, b, nb):
    """The first na floats of a and nb of b rounded to bf16, in scratch slots "a" and "b" (portable)."""
    da, db = _scratch.get("a", na), _scratch.get("b", nb)
    _round_both(_u32(da), _u32(a[:na]), na, _u32(db), _u32(b[:nb]), nb)
    return da, db


# ---- the products --------------------------------------------------------------------------------

def matmul_forward_bf16(out, inp, weight, bias, B, T, C, OC):
    """out (B,T,OC) = bf16(inp) · bf16(weight)ᵀ + bias (OC); bias may be None. Writes out."""
    BT = B * T
    if _gemm is None:
        x, w = _rounded(inp, BT * C, weight, OC * C)
        _fp32.matmul_forward(out, x, w, bias, B, T, C, OC)
        return
    # inp (BT, C) and weight (OC, C): pairs along their rows
    a, w = _operands(inp, True, BT, C, weight, True, OC, C)
    if bias is None:
        _gemm(out, a, True, w, True, _fp32._NO_BIAS, BT, OC, (C + 1) // 2, _fp32._OVERWRITE)
    else:
        _gemm(out, a, True, w, True, bias, BT, OC, (C + 1) // 2, _fp32._BIAS)


def matmul_backward_bf16(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True):
    """The gradients of out = bf16(inp) · bf16(weight)ᵀ + bias (shapes as matmul_forward_bf16):

        dinp (B,T,C) += bf16(dout) · bf16(weight)
        dweight (OC,C) += bf16(dout)ᵀ · bf16(inp)          (= when not accumulate)
        dbias (OC) += Σ_bt dout[bt, :]                     (= when not accumulate; skipped when None)

    As matmul_backward: dinp always accumulates; accumulate=False writes dweight and dbias without
    reading them (bit for bit the sums accumulate=True adds to zeros).
    """
    BT = B * T
    _backward_dinp(dinp, dout, weight, BT, C, OC)
    _backward_dweight(dweight, dout, inp, BT, C, OC, accumulate)
    if dbias is not None:
        _fp32._column_sum(dbias, dout, BT, OC, accumulate)


def _backward_dinp(dinp, dout, weight, BT, C, OC):
    """dinp (BT,C) += bf16(dout) (BT,OC) · bf16(weight) (OC,C)."""
    if _gemm is None:
        d, w = _rounded(dout, BT * OC, weight, OC * C)
        _fp32._backward_dinp(dinp, d, w, BT, C, OC)
    else:
        # dout (BT, OC): pairs along rows; weight (K=OC, C): pairs along columns
        d, w = _operands(dout, True, BT, OC, weight, False, C, OC)
        _gemm(dinp, d, True, w, False, _fp32._NO_BIAS, BT, C, (OC + 1) // 2, _fp32._ACCUMULATE)


def _backward_dweight(dweight, dout, inp, BT, C, OC, accumulate):
    """dweight (OC,C) (+)= bf16(dout) (BT,OC)ᵀ · bf16(inp) (BT,C)."""
    if _gemm is None:
        d, x = _rounded(dout, BT * OC, inp, BT * C)
        _fp32._backward_dweight(dweight, d, x, BT, C, OC, accumulate)
    else:
        # dout (K=BT, OC) and inp (K=BT, C): pairs along columns
        d, x = _operands(dout, False, OC, BT, inp, False, C, BT)
        _gemm(dweight, d, False, x, False, _fp32._NO_BIAS, OC, C, (BT + 1) // 2,
              _fp32._ACCUMULATE if accumulate else _fp32._OVERWRITE)


# ---- dispatch ------------------------------------------------------------------------------------
KERNELS = ("avx512bf16", "portable")
_NEEDS = {"avx512bf16": ("avx512f", "avx512bf16"), "portable": ()}


@functools.cache
def _supported():
    have = _fp32.cpu_features()
    return tuple(k for k in KERNELS if all(f in have for f in _NEEDS[k]))


def supported_kernels():
    """The bf16 kernels this CPU can run, fastest first."""
    return list(_supported())


def set_kernel(name):
    """Use bf16 kernel `name` (one of KERNELS) from now on; ValueError if this CPU cannot run it.
    Nothing is compiled for a kernel before it is chosen (so never for one the CPU lacks)."""
    global _gemm, _kernel
    if name not in KERNELS:
        raise ValueError(f"unknown bf16 matmul kernel {name!r}: expected one of {', '.join(KERNELS)}")
    if name not in supported_kernels():
        raise ValueError(f"bf16 matmul kernel {name!r} needs CPU features {', '.join(_NEEDS[name])}; "
                         f"this CPU runs: {', '.join(supported_kernels())}")
    if name == "portable":
        _gemm, _kernel = None, "portable"
    else:
        if name not in _GEMMS:
            _GEMMS[name] = _fp32._Gemm(name, base="avx512", fma=_dpbf16)
        _gemm = _GEMMS[name]
        b = _gemm.b
        _kernel = f"{name} {b['MR']}x{b['NR']}"


def kernel():
    """The bf16 kernel in use, e.g. 'avx512bf16 6x64' or 'portable'."""
    return _kernel


def _set_default_kernel():
    want = _fp32.requested_kernel(KERNELS)
    try:
        set_kernel(want or supported_kernels()[0])
    except ValueError as e:
        raise ValueError(f"NUMBAGPT_MATMUL={want}: {e}") from None


_GEMMS = {}
_gemm = None
_kernel = "portable"
_set_default_kernel()
