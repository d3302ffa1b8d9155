"""Explicit SIMD vectors of float32 for Numba kernels: a vector type and the few operations a GEMM
micro-kernel needs, each a `numba.extending.intrinsic` that emits one LLVM instruction.

Why: Numba has no vector type, and LLVM's loop vectoriser cannot keep an outer-product
accumulator (MR×NR partial sums updated every k) in registers — it vectorises one loop, and the
accumulator of the classic BLAS micro-kernel is not a loop. With a value of LLVM type
`<L x float>` held in a named local, LLVM's register allocator puts it in a vector register
(zmm for L = 16 with AVX-512, ymm for L = 8 with AVX2, q registers for L = 4 on ARM NEON), and
the code below compiles to what a BLAS author would write by hand.

    ops = vector_ops(16)          # a namespace of intrinsics for <16 x float>
    v = ops.load(a, i)            # a[i:i+16] as a vector (unaligned load)
    ops.store(a, i, v)            # a[i:i+16] = v
    b = ops.bcast(a, i)           # a[i] in every lane (x86: folds into the FMA as {1to16})
    c = ops.fma(a, b, c)          # a·b + c lane by lane, one rounding (llvm.fma.v16f32)
    c = ops.add(a, b)             # also sub, mul, max (lane by lane; max(a, b) is b where a is NaN)
    e = ops.exp(a)                # fastmath.exp_nonpos lane by lane (for a ≤ 0: < 1.01 ulp, 0 below −87)
    z = ops.zero()
    ops.prefetch(a, i)            # hint: a[i]'s cache line will be read and written soon
    ops.transpose(dst, d, ldd, src, s, lds)   # an L × L block: dst[d + c·ldd + r] = src[s + r·lds + c]

`a` is a 1-D C-contiguous float32 array and `i` an integer index. There is **no bounds check**:
the caller guarantees that i..i+L-1 lies inside the array (the GEMM loads from its padded packing
buffers, or from whole panels of A where they lie, and stores to full tiles; its edges go through a
scratch tile), and for transpose that all L rows of the block lie inside src and dst.
"""
import functools
import hashlib
import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.datamodel import models, register_default
from numba.extending import intrinsic


class F32Vec(types.Type):
    """Numba type of an LLVM `<lanes x float>` value (a local only: not storable in arrays)."""

    def __init__(self, lanes):
        self.lanes = lanes
        super().__init__(name=f"f32x{lanes}")


@register_default(F32Vec)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.lanes))


def _is_f32_array(a):
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 1 and a.layout == "C"


def _element_ptr(context, builder, arrty, arr, idxty, idx):
    """Pointer to a[idx] (no wraparound, no bounds check)."""
    ary = context.make_array(arrty)(context, builder, arr)
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.gep(ary.data, [i], inbounds=True)


def _transpose_stages(lanes):
    """The shuffles of an L × L transpose, as (h, lo, hi) for h = L/2, ..., 1: in every 2h × 2h block
    of rows i, i + h (i & h == 0), swap the two off-diagonal h × h blocks:

        new row i     = row i's columns with bit h clear, then row i+h's columns with bit h clear
        new row i + h = row i's columns with bit h set,   then row i+h's columns with bit h set

    (per 2h-long group of columns; lo and hi are shufflevector masks, index L + j is row i+h's
    column j). After log2(L) stages every element (r, c) has moved to (c, r): 4 stages of 16
    two-source shuffles for L = 16 (vpermt2ps / vunpck / vshuf), against 256 scalar moves."""
    stages = []
    h = lanes // 2
    while h:
        lo = [j if not j & h else lanes + j - h for j in range(lanes)]
        hi = [j + h if not j & h else lanes + j for j in range(lanes)]
        stages.append((h, *(ir.Constant(ir.VectorType(ir.IntType(32), lanes), m) for m in (lo, hi))))
        h //= 2
    return stages


class _Ops:
    """The intrinsics for one vector width (see the module docstring)."""

    def __init__(self, lanes):
        self.lanes = lanes
        vt, llty = F32Vec(lanes), ir.VectorType(ir.FloatType(), lanes)
        for make in (_memory_ops, _arithmetic_ops):
            for name, op in make(lanes, vt, llty).items():
                setattr(self, name, op)
        self.transpose = _transpose_op(lanes, llty)


def _memory_ops(lanes, vt, llty):
    """load, store, bcast, prefetch on a float32 array at an index (intrinsics take no *args: fixed
    arities below)."""

    def pointer(context, builder, sig, args):   # &a[i]
        return _element_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])

    def reader(ret, build):   # op(a, i) -> build(context, builder, &a[i])
        @intrinsic
        def op(typingctx, a, i):
            if not (_is_f32_array(a) and isinstance(i, types.Integer)):
                return None
            return ret(a, i), lambda context, builder, sig, args: build(context, builder,
                                                                        pointer(context, builder, sig, args))
        return op

    @intrinsic
    def store(typingctx, a, i, v):
        if not (_is_f32_array(a) and isinstance(i, types.Integer) and v == vt):
            return None

        def codegen(context, builder, sig, args):
            builder.store(args[2], builder.bitcast(pointer(context, builder, sig, args), llty.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.void(a, i, v), codegen

    def bcast(context, builder, p):
        v = builder.insert_element(ir.Constant(llty, ir.Undefined), builder.load(p, align=4), cgutils.int32_t(0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        return builder.shuffle_vector(v, ir.Constant(llty, ir.Undefined), mask)

    def prefetch(context, builder, p):
        p = builder.bitcast(p, ir.IntType(8).as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [p.type] + [ir.IntType(32)] * 3)
        f = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # write intent (Y is read and written), keep in all levels, data cache
        builder.call(f, [p] + [ir.Constant(ir.IntType(32), v) for v in (1, 3, 1)])
        return context.get_dummy_value()

    return dict(load=reader(vt, lambda context, builder, p: builder.load(builder.bitcast(p, llty.as_pointer()),
                                                                         align=4)),
                store=store, bcast=reader(vt, bcast), prefetch=reader(types.void, prefetch))


def _arithmetic_ops(lanes, vt, llty):
    """fma, add, sub, mul, max, exp, zero on vectors (fixed arities: intrinsics take no *args)."""

    def codegen(build):
        return lambda context, builder, sig, args: build(builder, *args)

    def nullary(build):
        @intrinsic
        def op(typingctx):
            return vt(), codegen(build)
        return op

    def unary(build):
        @intrinsic
        def op(typingctx, a):
            return (vt(a), codegen(build)) if a == vt else None
        return op

    def binary(build):
        @intrinsic
        def op(typingctx, a, b):
            return (vt(a, b), codegen(build)) if a == vt and b == vt else None
        return op

    @intrinsic
    def fma(typingctx, a, b, c):
        def build(builder, a, b, c):
            fnty = ir.FunctionType(llty, [llty] * 3)
            return builder.call(cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{lanes}f32"),
                                [a, b, c])
        return (vt(a, b, c), codegen(build)) if a == vt and b == vt and c == vt else None

    return dict(fma=fma, add=binary(lambda builder, a, b: builder.fadd(a, b)),
                sub=binary(lambda builder, a, b: builder.fsub(a, b)),
                mul=binary(lambda builder, a, b: builder.fmul(a, b)),
                max=binary(lambda builder, a, b: builder.select(builder.fcmp_ordered(">", a, b), a, b)),
                exp=unary(lambda builder, a: _exp_nonpos(builder, a, lanes)),
                zero=nullary(lambda builder: ir.Constant(llty, [0.0] * lanes)))


def _transpose_op(lanes, llty):
    """transpose(dst, d, ldd, src, s, lds): an L × L block by _transpose_stages' shuffles."""

    @intrinsic
    def transpose(typingctx, dst, d, ldd, src, s, lds):
        if not (_is_f32_array(dst) and _is_f32_array(src)
                and all(isinstance(i, types.Integer) for i in (d, ldd, s, lds))):
            return None

        def codegen(context, builder, sig, args):
            def row(a, r):  # pointer to row r of the block in array argument a (0: dst, 3: src)
                base = _element_ptr(context, builder, sig.args[a], args[a], sig.args[a + 1], args[a + 1])
                ld = context.cast(builder, args[a + 2], sig.args[a + 2], types.intp)
                off = builder.mul(ld, ir.Constant(ld.type, r))
                return builder.bitcast(builder.gep(base, [off], inbounds=True), llty.as_pointer())

            rows = [builder.load(row(3, r), align=4) for r in range(lanes)]
            for h, lo, hi in _transpose_stages(lanes):
                for i in range(lanes):
                    if not i & h:
                        a, b = rows[i], rows[i + h]
                        rows[i], rows[i + h] = builder.shuffle_vector(a, b, lo), builder.shuffle_vector(a, b, hi)
            for c in range(lanes):
                builder.store(rows[c], row(0, c), align=4)
            return context.get_dummy_value()

        return types.void(dst, d, ldd, src, s, lds), codegen
    return transpose


def _exp_nonpos(builder, x, lanes):
    """numbagpt/cpu/fastmath.py's exp_nonpos on a `<lanes x float>`: the same constants and steps, the
    same results bit for bit, in fewer instructions. The reduction r = x − n·ln2_hi as one fused
    multiply-add (n·ln2_hi is exact: ln2_hi has 9 significant bits and |n| ≤ 126); the clamp below at
    −87 lets a NaN through (max(lo, x) with x second, as vmaxps keeps its second operand), so one
    compare (x ≥ −87, or unordered) both zeroes the underflow and keeps the NaN; with 16 lanes
    (AVX-512) the scaling by 2^n is one `vscalefps` (exact like the multiply: 2^n is normal)."""
    from . import fastmath as fm
    fty = ir.VectorType(ir.FloatType(), lanes)
    ity = ir.VectorType(ir.IntType(32), lanes)

    def c(v):
        return ir.Constant(fty, [float(v)] * lanes)

    def call(name, *xs):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty] * len(xs)),
                                            f"llvm.{name}.v{lanes}f32")
        return builder.call(fn, list(xs))

    lo = c(fm._LO)
    xc = builder.select(builder.fcmp_ordered(">", lo, x), lo, x)     # NaN stays NaN
    n = call("floor", call("fma", xc, c(fm._LOG2E), c(fm._HALF)))
    r = call("fma", builder.fneg(n), c(fm._LN2_HI), xc)
    r = call("fma", builder.fneg(n), c(fm._LN2_LO), r)
    p = c(fm._P0)
    for k in (fm._P1, fm._P2, fm._P3, fm._P4, fm._P5):
        p = call("fma", p, r, c(k))
    p = builder.fadd(call("fma", builder.fmul(p, r), r, r), c(fm._ONE))
    if lanes == 16:
        fnty = ir.FunctionType(fty, [fty, fty, fty, ir.IntType(16), ir.IntType(32)])
        f = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.mask.scalef.ps.512")
        e = builder.call(f, [p, n, ir.Constant(fty, ir.Undefined), ir.Constant(ir.IntType(16), -1),
                             ir.Constant(ir.IntType(32), 4)])               # 4: the current rounding
    else:
        two_n = builder.bitcast(builder.shl(builder.add(builder.fptosi(n, ity), ir.Constant(ity, [127] * lanes)),
                                            ir.Constant(ity, [23] * lanes)), fty)
        e = builder.fmul(p, two_n)
    return builder.select(builder.fcmp_unordered(">=", x, lo), e, c(0.0))


_OPS = {}


def vector_ops(lanes):
    """The intrinsics for `<lanes x float>` (one set per width, shared by every kernel)."""
    if lanes not in _OPS:
        _OPS[lanes] = _Ops(lanes)
    return _OPS[lanes]


# the files the generated kernels (matmul.py, matmul_bf16.py, attention.py: source built as text and
# compiled with exec) are made from, this one's intrinsics and fastmath.py's constants included
_GENERATED_FROM = ("simd.py", "fastmath.py", "matmul.py", "matmul_bf16.py", "attention.py")


# The line a generated kernel's source starts at in its module's file (see compile_source).
GENERATED_LINE = 1_000_000


def compile_source(source, filename):
    """compile() of a generated kernel's source, under the name of the module that generates it
    (`filename`: Numba's on-disk cache keys on a real file) and numbered from line GENERATED_LINE, past
    that file's end. Why: when Numba caches a kernel it asks inspect for the kernel's source lines;
    past the end inspect finds none (OSError, which Numba expects), where Python 3.13's inspect
    tokenized the module's own lines from the middle of a string and raised TokenError, which ended
    the first compile of every generated kernel."""
    return compile("\n" * (GENERATED_LINE - 1) + source, filename, "exec")


@functools.cache
def source_tag():
    """8 hex digits of a hash of _GENERATED_FROM, which the generated kernels carry in their names.
    Why: Numba's on-disk cache keys an entry on the function's name, its bytecode (not its constants)
    and its own file's time stamp, not on what it calls from other files (an intrinsic here, a helper
    of matmul_bf16.py's compiled under matmul.py's name): without the tag an edit there could leave
    the old machine code in use. With it any edit to these files compiles them anew."""
    h = hashlib.sha256()
    for name in _GENERATED_FROM:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:8]
