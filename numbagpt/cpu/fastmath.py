"""Vectorisable float32 exp (for softmax arguments x − max ≤ 0) and tanh, shared by the CPU kernels.

`math.exp` on a float32 in Numba is a call to libm's expf: LLVM cannot vectorise a loop around it,
and a loop of exps is then scalar and latency-bound. `exp_nonpos(x)` is expf written out as
arithmetic (Cephes' expf: range reduction by n·ln2 in two parts, a degree-5 polynomial, and 2^n
built directly in the exponent bits), so that loops over it vectorise (16 float32 lanes at a time).

Domain and accuracy (measured against float64 exp, rounded results compared in units in the last
place of the float32 result; tests/test_cpu_crossentropy.py checks it):
    −87 ≤ x ≤ 0      max error 1.01 ulp, checked exhaustively over all 1.1e9 float32 in the range,
                     compiled with fastmath 'contract' as the kernels use it (libm's expf: 0.50 ulp).
                     The softmax kernels only call it with x = z − max(z) ≤ 0.
    x < −87          returns 0.0 (exp(−87) ≈ 1.6e−38, so the absolute error is < 1.7e−38; true expf
                     would give a denormal or 0 there). Includes x = −inf → 0.
    x = NaN          returns NaN (so a NaN logit still poisons the loss).
    x > 0            not supported: no overflow handling (the result is garbage above ~88).

Both functions here are `inline='always'`: they are compiled into each kernel that calls them, with
that kernel's fastmath flags (the kernels use 'reassoc' and 'contract'; the accuracy above is
measured so). An edit here compiles its callers anew (crossentropy.py, gelu.py, attention.py): their
cache entries also key on the files they import (numbagpt/cpu/kernel_cache.py).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _f32_from_bits(typingctx, i):
    """Reinterpret an int32's bits as a float32 (no conversion): how 2^n is built."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_LOG2E = np.float32(1.44269504088896341)
# ln 2 split in two: _LN2_HI has few mantissa bits, so n·_LN2_HI is exact for |n| < 2^9.
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_LO = np.float32(-87.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@njit(inline='always')
def exp_nonpos(x):
    """exp(x) for float32 x ≤ 0 (see the module docstring: ≤ 1.01 ulp on [−87, 0], 0 below −87)."""
    xc = x if x > _LO else _LO  # clamp so that 2^n stays a normal float (n ≥ −126); NaN → −87
    n = np.floor(xc * _LOG2E + _HALF)  # x = n·ln2 + r, |r| ≤ ln2/2
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + _ONE  # exp(r)
    e = p * _f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))  # · 2^n
    if x != x:
        return x
    return e if x >= _LO else _ZERO


@njit(inline='always')
def _order_key(k):
    """The int32 bits of a float32 → an int32 that orders as the floats do (−0.0 just below +0.0;
    a NaN with the sign bit clear above +inf, one with it set below −inf)."""
    return k ^ ((k >> np.int32(31)) & np.int32(0x7fffffff))


@njit(inline='always')
def max_f32(z, n):
    """max(z[:n]) for a contiguous float32 array z, n ≥ 1, exact.

    Done on integer keys of the bits: LLVM vectorises an integer max reduction as it is, whereas a
    float max needs 'nnan' (not used here). A NaN of the usual (positive) sign is returned as the
    max, so it propagates."""
    zi = z.view(np.int32)
    m = np.int32(-2147483648)
    for i in range(n):
        m = max(m, _order_key(zi[i]))
    return _f32_from_bits(_order_key(m))


# tanhf's odd polynomial on |x| < 0.625 (Cephes: tanh x = x + x³·P(x²)).
_T0 = np.float32(-5.70498872745e-3)
_T1 = np.float32(2.06390887954e-2)
_T2 = np.float32(-5.37397155531e-2)
_T3 = np.float32(1.33314422036e-1)
_T4 = np.float32(-3.33332819422e-1)
_TANH_SMALL = np.float32(0.625)
_TWO = np.float32(2.0)


@njit(inline='always')
def tanh_f32(x):
    """tanh(x) for any float32 x, as arithmetic that LLVM vectorises (libm's tanhf is a call).

    |x| < 0.625: Cephes' odd polynomial x + x³·P(x²); above: (1 − e)/(1 + e) with e = exp(−2|x|)
    from exp_nonpos (e underflows to 0 from |x| ≈ 43.5 on, giving exactly ±1), the sign put back
    after; ±0 gives ±0, NaN gives NaN, ±inf gives ±1. Against float64 tanh: at most 1.51 ulp of the
    float32 result over every float32 in [0, 10] (1.09e9 values, checked exhaustively; tanh_f32 is odd
    by construction, and above 10 it is exactly ±1, as is float32 tanh), compiled with fastmath
    'contract' (libm's tanhf: 0.5 ulp, about 20x slower in a loop here). tests/test_cpu_gelu.py checks
    a 2^22-value sample of the whole float32 range, and the points where the formula switches.
    """
    a = abs(x)
    z = x * x
    small = ((((_T0 * z + _T1) * z + _T2) * z + _T3) * z + _T4) * z * x + x
    e = exp_nonpos(-_TWO * a)
    big = (_ONE - e) / (_ONE + e)
    big = big if x >= _ZERO else -big
    return x if a == _ZERO else (small if a < _TANH_SMALL else big)
