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
checks it bit for bit), of `round_to_bf16` and of the portable kernel. The avx512bf16 kernel's
packing converts with the hardware's `vcvtne2ps2bf16` instead (`_bits_daz` where it converts one
word at a time): the same rounding after a subnormal input is flushed to the zero of its sign
(measured on Zen 4: 1e-40 -> 0x0000). Its vdpbf16ps treats a subnormal bf16 as zero anyway, so
only the float32s just below 2^-126 (bits 0x007F8000-0x007FFFFF, either sign), which RNE rounds up
to the smallest normal bf16, multiply differently: as zero there, as ±2^-126 on the portable path.

Two kernels, chosen once at import from the CPU's features (matmul.cpu_features, as the fp32
kernels), NUMBAGPT_MATMUL naming one overrides (an error if the CPU lacks its features; a pair names
the fp32 GEMM's kernel, then the bf16 one's, e.g. avx2,portable), set_kernel() switches at run time:

    avx512bf16   the packed GEMM of matmul.py with vdpbf16ps for vfmadd231ps          (AVX512-BF16)
    portable     round copies of the operands, then the fp32 GEMM in use (any CPU: the same numbers
                 up to the order of the sum); the activation-sized operands in chunks of rows (of
                 K for dweight) of at most CHUNK floats, so the scratch stays bounded

avx512bf16. The GEMM of numbagpt/cpu/matmul.py (same task split, blocking, tile order, edge tiles,
6 × 64 micro-tile of 24 zmm accumulators) whose packing converts: each KC × NC panel of B and MC × KC
block of A is packed as bf16 *pairs*, one 32-bit word holding bf16(x[k]) (low half) and
bf16(x[k+1]) (high half) for two consecutive k, the VNNI layout `vdpbf16ps` reads (lane j:
c[j] += a.lo·b[j].lo + a.hi·b[j].hi). A panel row of KC elements is ⌈KC/2⌉ words; an odd K pads the
last pair with a zero high half, which adds exact zeros. The micro-kernel is matmul.py's with
`vdpbf16ps` (two k per instruction, A's word broadcast) for `vfmadd231ps`, and reduction blocks of
four times avx512's k (KC 1024 on Zen 4, 512 words: _bf16_blocking).
The packing (`_CORE_SOURCE_BF16`) reads the float32 operands where they lie and converts as it
copies, 16 words at a time with one vcvtne2ps2bf16 (`_pairs_along`: 32 consecutive floats of a
row-major A's row, whose 32 bf16 in order are the words; `_pairs_across`: two rows of a k-major A or
B, the halves then interleaved by one vpermw);
the forward's weight, whose pairs run along its rows, is converted 16 columns × 16 words at a time
into the thread's scratch tile and moved into its strip by a 16 × 16 register transpose. So there
is no extra memory and one parallel region per product, as in fp32; A is always packed (it must be
converted), where the fp32 GEMM may read a row-major A in place. (A first version converted both
operands into pair arrays in a separate pass and ran the fp32 core on the words: 1.47x the fp32
GEMM over the d12 shapes against 1.71x for this one, at 2 threads, and scratch of half the operands,
412 MB for a d12 LM-head dout at B·T = 4096.) vdpbf16ps itself treats subnormal bf16 inputs and
subnormal sums as zero (DAZ, FTZ, measured): only values below 2^-126 ≈ 1.2e-38 differ from the
portable path that way.

Numerics: every sum is float32 in a fixed order (k by pairs, within a pair the odd element's
product added before the even one's as Intel documents vdpbf16ps; blocks in order), so results are
bit-identical run to run and across thread counts, as the fp32 GEMM; the two kernels agree to the
error of an fp32 sum, not bit for bit.

Speed (bench/bench_matmul.py, d12 shapes, BT = 256, AMD Zen 4, 2 threads, wall clock, three runs):
1.79x-1.81x the fp32 avx512 GEMM over the 15 products (medians 1.82x-1.87x), 1.61x-2.02x each but
for two products of one run that a burst of load on the machine slowed to half speed; 286-407 GF/s;
0.72-1.03 of torch.mm on bf16 tensors (oneDNN) in the run that no burst touched. What got it there,
each measured in the same session as the one before it: 1.62x at first (1.35x-1.81x, median 1.57x).
(1) The converting packs work 16 words at a time in vector registers: the packing of the fc forward
fell from 0.48 to 0.22 ms, of its dinp from 1.24 to 0.31 (1.62x -> 1.69x). (2) Reduction blocks
four times avx512's k, so that d12's K = 768 is one block (_bf16_blocking). Where a task's rows fit
one A block (MC, as at BT = 256) the reduction blocks run outside the column panels, so A is
converted once per block rather than once per panel (forward of the LM head: 50 panels a task).
(3) In that one-block case a forward's weight is packed one strip at a time, each strip used at once
from L2 (qkv and fc forwards 1.09x; a dinp's weight, whose pairs lie across two rows, packs faster in
whole-panel rows: 0.82x-1.00x strip by strip, so it keeps them). (4) The packing converts with
vcvtne2ps2bf16, its subnormal flush as vdpbf16ps's own (above): with (3) the forwards 1.07x-1.19x,
the other products unchanged (0.93x-1.03x, noise); over the 15 products 1.01x at BT = 1024 and 1.04x
at the seed shape (BT = 16384, C = 128). A training step shows neither beyond its noise.
The dinps still trail the rest. Skipping a dinp's B packing (an experiment) takes 15-25% off its
time, skipping its A packing 2-5%: the weight's float32 come from L3 or memory at about 6 GB/s a
thread, where the conversion itself runs from L1 at 0.13-0.3 ns a word; a bf16 copy of the weights,
kept by AdamW, would halve those bytes. Both threads also convert the same rows of dout (the split
that packs least). Packing a row-major A k-major by register transposes, so that its micro-kernel
reads one cache line per k, measured no faster (dinp of the LM head slower); nor did prefetching the
weight's rows a few pairs ahead (0.98x-1.07x).
(5) A dout in bf16 rows (`dout_bf16`: the LM head's dlogits, which a bf16 step's classifier writes
rounded, docs/kernels.md) has nothing to convert: a row-major one (dinp) is read in place, its whole
MR-row panels where they lie and only a ragged last one packed, as the fp32 GEMM reads a row-major A;
a k-major one (dweight) is packed by interleaving two rows' bf16 (_pairs_interleaved: two 32-byte
loads, one shuffle). At the seed shape (B·T = 16384: 3.3 GB of float32 dout, which the packing had
read from memory at ~8 GB/s a thread) its dinp 678 -> 521 ms (1.30x), its dweight 615 -> 569 (1.08x),
the same bits (interleaved in one process, best of 5); at d12, B·T = 256: 1.07x, 1.09x; at B·T =
1024: 0.98x, 1.01x (noise). An experiment that skipped the A packing altogether had measured its
cost first: 30% of the seed dinp, 25% of its dweight.
(6) Measured, not built (AMD Zen 4, 2 threads, d12 products at B·T = 256, December 2026). In a step
the weights come from memory, not from the caches as in bench/bench_matmul.py's back-to-back calls:
cycling each product through 96 MB of weight copies, the bf16 forwards ran 5-9% and the dinps 12-16%
slower than on one warm copy (fp32: 2-8%). Software prefetch of the next panel's float32 weight rows,
spread over the current panel's micro-tiles (prefetcht0 or prefetcht1; whole panels, or the dinp's
weight packed strip by strip as the forward's) changed nothing beyond the ±5% noise. The weight given
in bf16 rows (an experiment standing in for a bf16 copy AdamW would write: packing then only moves
words) gave the cold forwards +3-10% and dinps +7-17%, the same bits: about 4% of a d12 B=4 T=64 bf16
step, 1% at B·T = 1024, for 2 bytes a parameter more memory, an AdamW that writes the copy in both
backends and a copy that must never go stale; left for when AMX, whose tiles leave the conversion a
larger share, makes it worth that.

Never compiled where it cannot run: nothing of avx512bf16 is compiled before set_kernel picks it,
which it refuses on a CPU without the features (the import picks portable there); and Numba's
on-disk cache keys every entry on the target's CPU name and features (codegen.magic_tuple), so
machine code cached on an AVX512-BF16 host is never loaded on another CPU sharing the directory.
"""
import textwrap

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import matmul as _fp32
from .simd import F32Vec, _element_ptr

_VEC16 = F32Vec(16)
_LL_F = ir.VectorType(ir.FloatType(), 16)
_LL_I = ir.VectorType(ir.IntType(32), 16)
_LL_H = ir.VectorType(ir.IntType(16), 32)
_LL_H16 = ir.VectorType(ir.IntType(16), 16)


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


def _is_word_array(a):
    return (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
            and a.dtype in (types.float32, types.uint32))


def _words_ptr(context, builder, sig, args, a, i, vec=_LL_I):
    """Pointer to 16 words (as `vec`, <16 x i32> or <16 x float>) at array args[a], index args[i]
    (no bounds check: the caller's guarantee)."""
    p = _element_ptr(context, builder, sig.args[a], args[a], sig.args[i], args[i])
    return builder.bitcast(p, vec.as_pointer())


def _cvt(builder, lo, hi):
    """<32 x i16>: the bf16 of float32 vectors lo (lanes 0-15) and hi (16-31), one
    `vcvtne2ps2bf16`: round to nearest even, NaN quieted (the payload as _bits keeps it), and a
    subnormal input flushed to zero of its sign first (which vdpbf16ps does to a subnormal bf16
    anyway): _bits_daz, lane by lane."""
    fnty = ir.FunctionType(_LL_H, [_LL_F, _LL_F])
    f = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512bf16.cvtne2ps2bf16.512")
    return builder.call(f, [hi, lo])   # the instruction's first operand goes to the high half


def _interleave(builder, x, y):
    """<16 x i32>: word c = element c of the 16-bit vector x | element c of y << 16 (x, y <16 x i16>,
    or both the same <32 x i16>, whose halves then pair up), one vpermw."""
    mix = ir.Constant(ir.VectorType(ir.IntType(32), 32), [j for c in range(16) for j in (c, 16 + c)])
    return builder.bitcast(builder.shuffle_vector(x, y, mix), _LL_I)


@intrinsic
def _pairs_along(typingctx, dst, d, src, s):
    """dst[d + c] = bf16(src[s + 2c]) | bf16(src[s + 2c + 1]) << 16 for c < 16, bf16 as _bits_daz:
    32 consecutive floats (pairs along a row) to 16 words, which are the 32 bf16 in order: one
    vcvtne2ps2bf16."""
    if not (_is_word_array(dst) and _is_word_array(src) and isinstance(d, types.Integer)
            and isinstance(s, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _words_ptr(context, builder, sig, args, 2, 3, _LL_F)
        lo = builder.load(p, align=4)
        hi = builder.load(builder.gep(p, [ir.Constant(ir.IntType(64), 1)]), align=4)
        builder.store(builder.bitcast(_cvt(builder, lo, hi), _LL_I), _words_ptr(context, builder, sig, args, 0, 1),
                      align=4)
        return context.get_dummy_value()

    return types.void(dst, d, src, s), codegen


@intrinsic
def _pairs_across(typingctx, dst, d, src, lo, hi):
    """dst[d + c] = bf16(src[lo + c]) | bf16(src[hi + c]) << 16 for c < 16, bf16 as _bits_daz: two
    rows to 16 words (one vcvtne2ps2bf16, then the two halves' bf16 interleaved)."""
    if not (_is_word_array(dst) and _is_word_array(src) and all(isinstance(i, types.Integer) for i in (d, lo, hi))):
        return None

    def codegen(context, builder, sig, args):
        rows = (builder.load(_words_ptr(context, builder, sig, args, 2, i, _LL_F), align=4) for i in (3, 4))
        t = _cvt(builder, *rows)
        builder.store(_interleave(builder, t, t), _words_ptr(context, builder, sig, args, 0, 1), align=4)
        return context.get_dummy_value()

    return types.void(dst, d, src, lo, hi), codegen


@intrinsic
def _pairs_interleaved(typingctx, dst, d, src, lo, hi):
    """dst[d + c] = x[c] | y[c] << 16 for c < 16, where x and y are the 16 bf16 from word lo and from
    word hi of src (bf16 held two to a word, the even element in the low half): two 32-byte loads
    interleaved (a k-major A in bf16 rows, whose pairs lie across two rows)."""
    if not (_is_word_array(dst) and _is_word_array(src) and all(isinstance(i, types.Integer) for i in (d, lo, hi))):
        return None

    def codegen(context, builder, sig, args):
        x, y = (builder.load(_words_ptr(context, builder, sig, args, 2, i, _LL_H16), align=2) for i in (3, 4))
        builder.store(_interleave(builder, x, y), _words_ptr(context, builder, sig, args, 0, 1), align=4)
        return context.get_dummy_value()

    return types.void(dst, d, src, lo, hi), codegen


# ---- rounding ------------------------------------------------------------------------------------

@njit(inline="always")
def _bits(u):
    """The bf16 (low 16 bits of the result) of the float32 with bits u (uint32): RNE, NaN quieted.
    Both results computed, then selected: a branch here kept LLVM from vectorising the loops that
    call it (6.6 ns an element -> 0.13 at 2 threads)."""
    v = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    n = (u >> np.uint32(16)) | np.uint32(0x40)
    return n if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else v


@intrinsic
def _to_bf16(typingctx, dst, d, src, s):
    """dst[d + c] = _bits(src[s + c]) for c < 16 (dst uint16, src float32 or its uint32 view): to
    nearest even, NaN quieted, in vector registers on any CPU (LLVM splits the 16 lanes where vectors
    are narrower). All 16 are loaded before any is stored, so dst may overlap src below s + 16 (a row
    rounded in place, front to back)."""
    if not (isinstance(dst, types.Array) and dst.dtype == types.uint16 and dst.layout == "C"
            and _is_word_array(src) and isinstance(d, types.Integer) and isinstance(s, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        u = builder.load(_words_ptr(context, builder, sig, args, 2, 3), align=4)

        def c(v):
            return ir.Constant(_LL_I, [v] * 16)
        r = builder.lshr(builder.add(builder.add(u, c(0x7FFF)), builder.and_(builder.lshr(u, c(16)), c(1))), c(16))
        nan = builder.icmp_unsigned(">", builder.and_(u, c(0x7FFFFFFF)), c(0x7F800000))
        w = builder.select(nan, builder.or_(builder.lshr(u, c(16)), c(0x40)), r)
        builder.store(builder.trunc(w, _LL_H16), _words_ptr(context, builder, sig, args, 0, 1, _LL_H16), align=2)
        return context.get_dummy_value()

    return types.void(dst, d, src, s), codegen


@njit(inline="always")
def _row_to_bf16(dst, row, n):
    """The n float32 of `row` rounded to bf16 (as _bits) into dst as a bf16 row: bf16 i in the low
    (i even) or high half of word i // 2, the words in dst's first ⌈n/2⌉ float32 slots (the rest not
    written); 16 at a time (_to_bf16), front to back, so dst may be row itself."""
    h = dst.view(np.uint16)
    u = row.view(np.uint32)
    for i in range(0, n - 15, 16):
        _to_bf16(h, i, u, i)
    for i in range(n // 16 * 16, n):
        h[i] = np.uint16(_bits(u[i]))


@njit(inline="always")
def _bits_daz(u):
    """_bits of u with a subnormal flushed to zero of its sign first: the conversion of the
    avx512bf16 kernel's packing (vcvtne2ps2bf16, _cvt), for the words it converts one by one."""
    return _bits(u & np.uint32(0x80000000) if (u & np.uint32(0x7F800000)) == 0 else u)


@njit(inline="always")
def _words_along(dst, d, src, s0, n, w):
    """dst[d + c] = bf16(src[s0 + 2c]) | bf16(src[s0 + 2c + 1]) << 16 for the ⌈n/2⌉ words of n
    consecutive floats (an odd n's last high half 0), then zero words up to w (uint32 views), bf16 as
    _bits_daz: 16 words at a time in registers (_pairs_along), the rest one by one."""
    n2 = n // 2
    for c in range(0, n2 - 15, 16):
        _pairs_along(dst, d + c, src, s0 + 2 * c)
    dd = dst[d:d + w]
    x = src[s0:s0 + n]
    for c in range(n2 // 16 * 16, n2):
        dd[c] = _bits_daz(x[2 * c]) | (_bits_daz(x[2 * c + 1]) << np.uint32(16))
    if n % 2:
        dd[n2] = _bits_daz(x[n - 1])
    for c in range((n + 1) // 2, w):
        dd[c] = 0


@njit(inline="always")
def _words_across(dst, d, src, lo, hi, n, w):
    """dst[d + i] = bf16(src[lo + i]) | bf16(src[hi + i]) << 16 for i < n (the high half 0 when hi < 0:
    an odd K's last pair), then zero words up to w (uint32 views), bf16 as _bits_daz: 16 words at a
    time in registers (_pairs_across), the rest one by one."""
    dd = dst[d:d + w]
    x = src[lo:lo + n]
    if hi >= 0:
        for i in range(0, n - 15, 16):
            _pairs_across(dst, d + i, src, lo + i, hi + i)
        y = src[hi:hi + n]
        for i in range(n // 16 * 16, n):
            dd[i] = _bits_daz(x[i]) | (_bits_daz(y[i]) << np.uint32(16))
    else:
        for i in range(n):
            dd[i] = _bits_daz(x[i])
    for i in range(n, w):
        dd[i] = 0


@njit(inline="always")
def _half(src, row, e):
    """Element e of the bf16 row that starts at word `row` of src (uint32): its 16 bits."""
    return (src[row + e // 2] >> np.uint32(16 * (e % 2))) & np.uint32(0xFFFF)


@njit(inline="always")
def _words_interleaved(dst, d, src, lo, hi, e0, n, w):
    """dst[d + i] = x[e0 + i] | y[e0 + i] << 16 for i < n, where x, y are the bf16 rows from words lo
    and hi of src (y = 0 when hi < 0: an odd K's last pair), then zero words up to w (uint32 views):
    16 words at a time (_pairs_interleaved) where e0 is even, the rest one by one."""
    dd = dst[d:d + w]
    nv = n // 16 * 16 if hi >= 0 and e0 % 2 == 0 else 0
    for i in range(0, nv, 16):
        _pairs_interleaved(dst, d + i, src, lo + (e0 + i) // 2, hi + (e0 + i) // 2)
    for i in range(nv, n):
        dd[i] = _half(src, lo, e0 + i) | (_half(src, hi, e0 + i) << np.uint32(16) if hi >= 0 else np.uint32(0))
    for i in range(n, w):
        dd[i] = 0


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


# The GEMM core of avx512bf16: numbagpt/cpu/matmul.py's _CORE_SOURCE (same arguments, task split,
# blocking, tile order, edges; K, KC in elements, KC even; where a task's rows fit one A block, pc
# outside jc so that A is converted once per reduction block) with packing that converts: A and B are
# float32 (read as their uint32 bits), the packed panels are bf16 pair words (in the float32 Ap, Bp,
# as bits), kc' = ⌈kc/2⌉ words per panel row, the last one's high half 0 for an odd kc. A float32 A
# is always packed (a_in_place is ignored: A must be converted); a_bf16 (a further argument): A is
# given in bf16 rows, a row-major one read in place, a k-major one packed by interleaving. Forward's
# weight (B(k, n) = B[n·ldb + k]) is converted 16 columns × 16 words at a time into the task's scratch
# tile, row by row (contiguous pairs), then moved into the strip by one 16 × 16 register transpose.
_CORE_SOURCE_BF16 = '''
@njit(inline="always")
def pack_a(Ap, a0, A, a_kmaj, a_bf16, lda, ic, mc, pc, kc, S):
    # the MC x KC block of A as words: row by row (row stride kc2) from a row-major A, else pair of
    # k by pair of k (row stride S, the block's rows rounded up to MR); zero rows pad it. An A in
    # bf16 rows (a_bf16; pc even) is copied as it lies, its k-major pairs interleaved; a float32 A
    # is converted
    kc2 = (kc + 1) // 2
    Au = A.view(np.uint32)
    Apu = Ap.view(np.uint32)
    if a_kmaj:
        for i in range(S):
            r = (ic + min(i, mc - 1)) * lda
            if a_bf16:
                for c in range(kc2):
                    Apu[a0 + i * kc2 + c] = Au[r + pc // 2 + c] if i < mc else 0
            else:
                words_along(Apu, a0 + i * kc2, Au, r + pc, kc if i < mc else 0, kc2)
    else:
        for k in range(kc2):
            l0 = (pc + 2 * k) * lda
            l1 = l0 + lda if 2 * k + 1 < kc else -1
            if a_bf16:
                words_interleaved(Apu, a0 + k * S, Au, l0, l1, ic, mc, S)
            else:
                words_across(Apu, a0 + k * S, Au, l0 + ic, l1 + ic if l1 >= 0 else -1, mc, S)


@njit(inline="always")
def pack_b_t(Bp, b0, B, ldb, jc, nc, pc, kc, tile, t0):
    # from a B whose rows run along k (B(k, n) = B[n*ldb + k]): L columns x L words converted row by
    # row into tile[t0:t0 + L*L], then one L x L register transpose into the strip; the ragged words
    # and columns one at a time
    kc2 = (kc + 1) // 2
    Bu = B.view(np.uint32)
    Bpu = Bp.view(np.uint32)
    Tu = tile.view(np.uint32)
    nl = nc // L * L
    kl = kc // (2 * L) * L  # words in whole L-word blocks (all pairs full)
    for i in range(0, (nc + NR - 1) // NR * NR):
        d = b0 + i // NR * NR * kc2 + i % NR  # column i of the panel: strip i // NR, lane i % NR
        if i < nl and i % L == 0:
            for k in range(0, kl, L):
                for r in range(L):
                    pairs_along(Tu, t0 + r * L, Bu, (jc + i + r) * ldb + pc + 2 * k)
                transpose(Bp, d + k * NR, NR, tile, t0, L)
        r0 = kl if i < nl else 0  # the words this column still needs, one by one
        for k in range(r0, kc2):
            w = np.uint32(0)
            if i < nc:
                w = bits(Bu[(jc + i) * ldb + pc + 2 * k])
                if 2 * k + 1 < kc:
                    w |= bits(Bu[(jc + i) * ldb + pc + 2 * k + 1]) << np.uint32(16)
            Bpu[d + k * NR] = w


@njit(inline="always")
def pack_b(Bp, b0, B, b_kmaj, ldb, jc, nc, pc, kc, tile, t0):
    # the KC x NC panel of B as NR-wide strips of words, each k-major, zero-padded past column nc
    if b_kmaj:
        pack_b_t(Bp, b0, B, ldb, jc, nc, pc, kc, tile, t0)
    else:
        kc2 = (kc + 1) // 2
        Bu = B.view(np.uint32)
        Bpu = Bp.view(np.uint32)
        for k in range(kc2):
            l0 = (pc + 2 * k) * ldb + jc
            full = 2 * k + 1 < kc
            for s in range((nc + NR - 1) // NR):
                words_across(Bpu, b0 + s * NR * kc2 + k * NR, Bu, l0 + s * NR, l0 + ldb + s * NR if full else -1,
                             min(NR, nc - s * NR), NR)


@njit(inline="always")
def tiles(Y, N, Ap, a0, A, ai, lda, a_kmaj, Bp, b0, tile, t0, bias, jc, nc, ic, mc, kc2, S, blockmode,
          along_rows):
    # the micro-kernels of one packed A block (rows ic.., mc of them) against one packed B panel
    # (columns jc.., nc of them), kc2 words deep; ai >= 0: the block's whole panels read in place,
    # from word ai of A (row stride lda), and only a ragged last one from Ap (packed as its panel 0)
''' + textwrap.indent(_fp32.TILE_LOOP, ' ' * 4) + '''        if a_kmaj and ai >= 0 and (p + 1) * MR <= mc:
            UKR(kc2, A, ai + p * MR * lda, lda, Bp, b0 + s * NR * kc2, Yt, yt, ldt, tmode, bias, n0)
        elif a_kmaj:
            q = 0 if ai >= 0 else p * MR * kc2
            UKR(kc2, Ap, a0 + q, kc2, Bp, b0 + s * NR * kc2, Yt, yt, ldt, tmode, bias, n0)
        else:
            UKK(kc2, Ap, a0 + p * MR, S, Bp, b0 + s * NR * kc2, Yt, yt, ldt, tmode, bias, n0)
        if not full:
            edge(Y, y0, N, mr, nr, tile, t0, NR, blockmode, bias, n0)


def {name}(Y, A, a_kmaj, B, b_kmaj, bias, M, N, K, mode, Ap, Bp, tile, mparts, nparts, MC, KC, NC, along_rows,
           a_in_place, a_bf16):
''' + _fp32.TASK_SPLIT + '''        # a row-major A in bf16 rows: its whole panels read where they lie
        in_place = a_bf16 and a_kmaj
        if mhi - mlo <= MC:
            # the task's rows are one A block: converted and packed once per reduction block and
            # used by every column panel (pc outside jc: each element still sums its blocks in
            # order, so the same bits as the other order); a forward's weight is packed a strip at
            # a time (W = NR) where the tiles go strip by strip, each strip used at once from L2
            mc = mhi - mlo
            S = (mc + MR - 1) // MR * MR
            W = NR if b_kmaj and not along_rows else NC
            for pc in range(0, K, KC):
                kc = min(KC, K - pc)
                blockmode = mode if pc == 0 else 0
                p0 = mc // MR * MR if in_place else 0
                if p0 < mc:
                    pack_a(Ap, a0, A, a_kmaj, a_bf16, lda, mlo + p0, mc - p0, pc, kc, S - p0)
                for jc in range(nlo, nhi, W):
                    nc = min(W, nhi - jc)
                    pack_b(Bp, b0, B, b_kmaj, ldb, jc, nc, pc, kc, tile, t0)
                    tiles(Y, N, Ap, a0, A, mlo * lda + pc // 2 if in_place else -1, lda, a_kmaj, Bp, b0, tile,
                          t0, bias, jc, nc, mlo, mc, (kc + 1) // 2, S, blockmode, along_rows)
        else:
            for jc in range(nlo, nhi, NC):
                nc = min(NC, nhi - jc)
                for pc in range(0, K, KC):
                    kc = min(KC, K - pc)
                    blockmode = mode if pc == 0 else 0
                    pack_b(Bp, b0, B, b_kmaj, ldb, jc, nc, pc, kc, tile, t0)
                    for ic in range(mlo, mhi, MC):
                        mc = min(MC, mhi - ic)
                        S = (mc + MR - 1) // MR * MR
                        p0 = mc // MR * MR if in_place else 0
                        if p0 < mc:
                            pack_a(Ap, a0, A, a_kmaj, a_bf16, lda, ic + p0, mc - p0, pc, kc, S - p0)
                        tiles(Y, N, Ap, a0, A, ic * lda + pc // 2 if in_place else -1, lda, a_kmaj, Bp, b0,
                              tile, t0, bias, jc, nc, ic, mc, (kc + 1) // 2, S, blockmode, along_rows)
'''


# ---- scratch (portable) ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _round_both(da, sa, na, db, sb, nb):
    """da = sa and db = sb rounded to bf16 (float32s as uint32), in one parallel region (one fork/join
    per call, not one per operand: under load a thread's late wake-up costs every region), in chunks."""
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


@njit(parallel=True, cache=True)
def _widen_rows(dst, src, rows, W):
    """dst (rows × W, uint32 view of float32) = the bf16 rows of src widened to float32 (exact): row r
    of src is W float32 slots whose first W/2 words hold its W bf16, the even element in the low
    half (uint32 view)."""
    for r in prange(rows):
        d = dst[r * W:(r + 1) * W]
        x = src[r * W:r * W + W // 2]
        for c in range(W // 2):
            d[2 * c] = x[c] << np.uint32(16)
            d[2 * c + 1] = x[c] & np.uint32(0xFFFF0000)


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


def _rounded(a, na, b, nb, slots=("a", "b"), a_rows=0):
    """The first na floats of a and nb of b rounded to bf16, in scratch `slots` (portable); a_rows > 0:
    a holds that many bf16 rows of na // a_rows floats, widened instead (_widen_rows)."""
    da, db = _scratch.get(slots[0], na), _scratch.get(slots[1], nb)
    if a_rows:
        _widen_rows(_u32(da), _u32(a[:na]), a_rows, na // a_rows)
        na = 0
    _round_both(_u32(da), _u32(a[:na]), na, _u32(db), _u32(b[:nb]), nb)
    return da, db


# portable: the rounded copies of the activation-sized operand (and, for dweight, of both) are made
# a chunk of rows (of K for dweight) at a time, at most CHUNK floats each, so that the scratch stays
# bounded (a d12 LM-head dout at B·T = 4096 is 206M floats); the weight is rounded whole.
CHUNK = 1 << 23


def _chunks(rows, width):
    """[(r0, r1)] covering rows in runs of at most CHUNK // width rows (at least one)."""
    step = max(1, CHUNK // max(1, width))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def _portable_rows(gemm, Y, ldy, A, K, weight, nw, BT, a_bf16=False):
    """gemm(Y rows, rounded A rows, rounded weight, rows) over chunks of A's (BT, K) rows (a_bf16: A
    in bf16 rows, widened)."""
    w = None
    for r0, r1 in _chunks(BT, K):
        a, w_ = _rounded(A[r0 * K:], (r1 - r0) * K, weight, 0 if w is not None else nw,
                         a_rows=(r1 - r0) * a_bf16)
        if w is None:
            w = w_
        gemm(Y[r0 * ldy:r1 * ldy], a, w, r1 - r0)


# ---- the products --------------------------------------------------------------------------------

def matmul_forward_bf16(out, inp, weight, bias, B, T, C, OC):
    """out (B,T,OC) = bf16(inp) · bf16(weight)ᵀ + bias (OC); bias may be None. Writes out."""
    BT = B * T
    gemm = _choice.gemm
    if gemm is None:
        _portable_rows(lambda y, x, w, rows: _fp32.matmul_forward(y, x, w, bias, 1, rows, C, OC),
                       out, OC, inp, C, weight, OC * C, BT)
        return
    if bias is None:
        gemm(out, inp, True, weight, True, _fp32._NO_BIAS, BT, OC, C, _fp32._OVERWRITE, False)
    else:
        gemm(out, inp, True, weight, True, bias, BT, OC, C, _fp32._BIAS, False)


def matmul_backward_bf16(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True, dout_bf16=False):
    """The gradients of out = bf16(inp) · bf16(weight)ᵀ + bias (shapes as matmul_forward_bf16):

        dinp (B,T,C) += bf16(dout) · bf16(weight)
        dweight (OC,C) += bf16(dout)ᵀ · bf16(inp)          (= when not accumulate)
        dbias (OC) += Σ_bt dout[bt, :]                     (= when not accumulate; skipped when None)

    As matmul_backward: dinp always accumulates; accumulate=False writes dweight and dbias without
    reading them (bit for bit the sums accumulate=True adds to zeros). dout_bf16: dout holds bf16
    rows, as crossentropy_*(..., dlogits_bf16=True) writes the LM head's (docs/kernels.md): its
    values are used as they are, no rounding; OC even, dbias None.
    """
    BT = B * T
    if dout_bf16 and (OC % 2 or dbias is not None):
        raise ValueError(f"matmul_backward_bf16: a bf16 dout needs an even OC (got {OC}) and no dbias")
    _backward_dinp(dinp, dout, weight, BT, C, OC, dout_bf16)
    _backward_dweight(dweight, dout, inp, BT, C, OC, accumulate, dout_bf16)
    if dbias is not None:
        _fp32._column_sum(dbias, dout, BT, OC, accumulate)


def _backward_dinp(dinp, dout, weight, BT, C, OC, dout_bf16):
    """dinp (BT,C) += bf16(dout) (BT,OC) · bf16(weight) (OC,C)."""
    gemm = _choice.gemm
    if gemm is None:
        _portable_rows(lambda y, d, w, rows: _fp32._backward_dinp(y, d, w, rows, C, OC),
                       dinp, C, dout, OC, weight, OC * C, BT, dout_bf16)
    else:
        gemm(dinp, dout, True, weight, False, _fp32._NO_BIAS, BT, C, OC, _fp32._ACCUMULATE, dout_bf16)


def _backward_dweight(dweight, dout, inp, BT, C, OC, accumulate, dout_bf16):
    """dweight (OC,C) (+)= bf16(dout) (BT,OC)ᵀ · bf16(inp) (BT,C)."""
    gemm = _choice.gemm
    if gemm is None:   # K = BT in chunks: the first writes (unless accumulate), the others add
        for k0, k1 in _chunks(BT, max(OC, C)):
            d, x = _rounded(dout[k0 * OC:], (k1 - k0) * OC, inp[k0 * C:], (k1 - k0) * C, a_rows=(k1 - k0) * dout_bf16)
            _fp32._backward_dweight(dweight, d, x, k1 - k0, C, OC, accumulate or k0 > 0)
    else:
        gemm(dweight, dout, False, inp, False, _fp32._NO_BIAS, OC, C, BT,
              _fp32._ACCUMULATE if accumulate else _fp32._OVERWRITE, dout_bf16)


# ---- dispatch ------------------------------------------------------------------------------------

def _bf16_blocking():
    """avx512's blocking (numbagpt/cpu/matmul.py _BLOCKING) with longer reduction blocks: KC and KC_Y
    four times avx512's k (a packed strip of KC/2 words takes twice the bytes of avx512's KC floats;
    1024 on Zen 4, so that d12's K = C = 768 is one block: one pass over Y instead of two, measured
    1.06x over twice avx512's k on the d12 products, the LM head's dinp 1.2x), KC_S twice; A always
    packed; column panels as wide for every Y as for a large one (NC = NC_Y, 1024): a task converts its
    A block once per panel, so a dinp (N = C = 768) that avx512's NC (512) cuts in two converts its
    dout twice (measured at d12, BT = 1024, interleaved in one process: the dinps 1.01-1.11x, the LM
    head's 1.07-1.12x, 1.05x over the 15 products; the same at BT = 256 and at the seed shape, where no
    task is wider than 512 columns but on a large Y, which takes NC_Y already)."""
    b = _fp32._BLOCKING["avx512"]
    return dict(KC=4 * b["KC"], KC_Y=4 * b["KC_Y"], KC_S=2 * b["KC_S"], NC=b["NC_Y"], IN_PLACE_N=0,
                IN_PLACE_ROWS=False)


KERNELS = ("avx512bf16", "portable")
_NEEDS = {"avx512bf16": ("avx512f", "avx512bf16"), "portable": ()}


def _make_gemm(name):
    """The packed bf16 GEMM of kernel `name` (avx512bf16), with its own packing buffers (set_kernel
    keeps one per kernel; dev/matmul/ builds its own to time other blockings)."""
    return _fp32._Gemm(name, base="avx512", fma=_dpbf16, core_source=_CORE_SOURCE_BF16,
                       env_extra=dict(bits=_bits_daz, np=np, pairs_along=_pairs_along, words_along=_words_along,
                                      words_across=_words_across, words_interleaved=_words_interleaved),
                       **_bf16_blocking())


def supported_kernels():
    """The bf16 kernels this CPU can run, fastest first."""
    return list(_choice.supported)


def set_kernel(name):
    """Use bf16 kernel `name` (one of KERNELS) from now on; ValueError if this CPU cannot run it.
    Nothing is compiled for a kernel before it is chosen (so never for one the CPU lacks)."""
    _choice.set(name)


def kernel():
    """The bf16 kernel in use, e.g. 'avx512bf16 6x64' or 'portable'."""
    return _choice.name


_choice = _fp32.KernelChoice("bf16 matmul kernel", KERNELS, _NEEDS, _make_gemm)
_fp32.set_requested_kernel(KERNELS, set_kernel, supported_kernels(), bf16=True)
