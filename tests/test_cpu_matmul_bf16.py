"""numbagpt.cpu.matmul_bf16 (the bf16 matmul pair, --precision bf16) on every bf16 kernel this CPU
can run (the `kernel` fixture: avx512bf16, portable), against float64 products of the bf16-rounded
inputs (tests/reference.py's bf16_round_ref), plus the rounding bit for bit, the vdpbf16ps
micro-kernel's machine code and the dispatch.

A product of two bf16 values (8 significant bits each) is exact in float32, so the kernels' only
error is the float32 sum's: the tolerances are the fp32 kernels' (tests/harness.py TOL), tight.
The shapes straddle the avx512bf16 GEMM's edges in pair words: K odd in every product (the last
pair's zero high half: C odd for the forward, OC odd for dinp, B·T odd for dweight), K = 1 and 2,
primes, and the blocks of numbagpt/cpu/matmul.py's GEMM on K' = ⌈K/2⌉ (KC 256 pairs: C = 1030).
"""
import os
import re
import subprocess
import sys

import numba
import numpy as np
import pytest

import numbagpt.cpu as CPU
from asm import inner_loop, stack_accesses
from harness import check, same_bits_at_thread_counts, tolerance
from numbagpt.cpu import matmul as mm
from numbagpt.cpu import matmul_bf16 as mb
from reference import bf16_round_ref, matmul_backward_ref, matmul_forward_ref, to_bf16_rows


@pytest.fixture(params=mb.supported_kernels(), autouse=True)
def kernel(request):
    """Every test of this file runs once per bf16 kernel the CPU supports; the default is restored."""
    before = mb.kernel().split()[0]
    mb.set_kernel(request.param)
    yield request.param
    mb.set_kernel(before)


SHAPES = [  # (B, T, C, OC)
    (1, 1, 1, 1),        # M = N = K = 1 in all three products: a single half-empty pair
    (1, 1, 2, 1),        # forward K = 2: one full pair
    (1, 1, 13, 1),       # a single output row and column, K = 13 (forward) / 1 (dinp, dweight)
    (1, 97, 131, 61),    # primes everywhere: ragged tiles, K odd in every product
    (2, 101, 257, 263),  # BT = 202 > MC; K' = 129 / 132 / 101 pairs; every block ragged
    (1, 13, 17, 4099),   # OC > 4096: a third, ragged column panel in the forward; dinp K = 4099 odd
    (2, 5, 13, 7),       # small odd shape
    (1, 3, 1, 5),        # C = 1: a single term per forward output
    (1, 4, 8, 4),        # everything even: no half-empty pair
    (3, 7, 33, 70),      # BT = 21 odd (dweight), two forward column tiles
    (1, 10, 1030, 9),    # forward K' = 515 pairs: two reduction blocks of the small Y and a ragged 3
    (4, 64, 32, 1100),   # a narrow "LM head": OC ≫ C
]


def _ids(s):
    return "B{}T{}C{}OC{}".format(*s)


def _data(rng, B, T, C, OC):
    x = rng.standard_normal((B, T, C)).astype(np.float32)
    w = (rng.standard_normal((OC, C)) / np.sqrt(C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_matmul_forward_bf16(shape, with_bias):
    B, T, C, OC = shape
    x, w, b = _data(np.random.default_rng(0), B, T, C, OC)
    check(CPU, "matmul_forward_bf16", out=B * T * OC, inp=x, weight=w, bias=b if with_bias else None,
          B=B, T=T, C=C, OC=OC)


@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("with_dbias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_matmul_backward_bf16(shape, with_dbias, accumulate):
    # as test_cpu_matmul: accumulate into random gradients; accumulate=False over NaN dweight/dbias
    B, T, C, OC = shape
    rng = np.random.default_rng(1)
    x, w, _ = _data(rng, B, T, C, OC)
    dout = (rng.standard_normal((B, T, OC)) / np.sqrt(OC)).astype(np.float32)
    check(CPU, "matmul_backward_bf16", dinp=B * T * C, dweight=OC * C, dbias=OC if with_dbias else None,
          dout=dout, inp=x, weight=w, B=B, T=T, C=C, OC=OC, accumulate=accumulate)


# even OC (a bf16 row holds two values a word): BT odd (dweight's last pair half empty), ragged
# panels and blocks, a wide LM head; rows of A read in place on avx512bf16 with a ragged last panel
DOUT_BF16_SHAPES = [(1, 1, 1, 2), (1, 97, 131, 62), (2, 101, 257, 262), (3, 7, 33, 70), (1, 300, 96, 2050),
                    (4, 64, 32, 1100)]


@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("shape", DOUT_BF16_SHAPES, ids=_ids)
def test_matmul_backward_bf16_dout_in_bf16_rows(shape, accumulate):
    """dout_bf16=True (the LM head's dlogits in bf16 rows, as crossentropy writes them with
    dlogits_bf16): against float64 of the rows' values; and bit for bit the float32 dout's products,
    which round it to the same values (no subnormals in it)."""
    B, T, C, OC = shape
    rng = np.random.default_rng(3)
    x, w, _ = _data(rng, B, T, C, OC)
    dout = (rng.standard_normal((B, T, OC)) / np.sqrt(OC)).astype(np.float32)
    rows = to_bf16_rows(dout, OC)
    got = check(CPU, "matmul_backward_bf16", dinp=B * T * C, dweight=OC * C, dbias=None, dout=rows, inp=x,
                weight=w, B=B, T=T, C=C, OC=OC, accumulate=accumulate, dout_bf16=True, seed=4)
    want = check(CPU, "matmul_backward_bf16", dinp=B * T * C, dweight=OC * C, dbias=None, dout=dout, inp=x,
                 weight=w, B=B, T=T, C=C, OC=OC, accumulate=accumulate, seed=4)
    for name in ("dinp", "dweight"):
        np.testing.assert_array_equal(got[name], want[name])


def test_bf16_dout_needs_an_even_oc_and_no_dbias():
    x, w, b = _data(np.random.default_rng(0), 1, 2, 3, 5)
    for OC, dbias in ((5, None), (4, np.zeros(4, np.float32))):
        with pytest.raises(ValueError, match="bf16 dout"):
            CPU.matmul_backward_bf16(np.zeros(6, np.float32), np.zeros(3 * OC, np.float32), dbias,
                                     np.zeros(2 * OC, np.float32), x, w[:OC], 1, 2, 3, OC, True, True)


@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[6], SHAPES[9]], ids=_ids)
def test_portable_in_chunks(kernel, shape, monkeypatch):
    """The portable kernel rounds the activation-sized operands a chunk of rows (of K for dweight) at
    a time: forced small (CHUNK 100 floats: 1 to 7 rows a chunk), every product as before."""
    if kernel != "portable":
        pytest.skip("the portable kernel's chunks")
    monkeypatch.setattr(mb, "CHUNK", 100)
    test_matmul_forward_bf16(shape, True)
    test_matmul_backward_bf16(shape, True, False)
    test_matmul_backward_bf16(shape, False, True)
    test_matmul_backward_bf16_dout_in_bf16_rows(DOUT_BF16_SHAPES[3], False)


@pytest.mark.parametrize("threshold", ["BIG_Y", "SMALL_Y", "KC"])
def test_avx512bf16_big_and_small_y_blocking(kernel, threshold, monkeypatch):
    """The blocks and tile order of a Y beyond BIG_Y elements (KC_Y, NC_Y, tiles along Y's rows), of
    one within SMALL_Y (KC_S), and of the others with a short KC (several ragged reduction blocks,
    which d12's shapes no longer have: KC is 1024 there), each forced on every product."""
    if kernel != "avx512bf16":
        pytest.skip("the packed GEMM's blocking")
    monkeypatch.setitem(mb._choice.gemms[kernel].b, threshold, {"BIG_Y": 0, "SMALL_Y": 1 << 40, "KC": 64}[threshold])
    # (KC: rows in one A block, and more rows than MC)
    shapes = {"BIG_Y": [(2, 101, 1030, 263)], "SMALL_Y": [(4, 150, 33, 70)],
              "KC": [(2, 101, 257, 263), (2, 150, 97, 333)]}[threshold]
    for shape in shapes:
        test_matmul_forward_bf16(shape, True)
        test_matmul_backward_bf16(shape, False, True)
        test_matmul_backward_bf16(shape, True, False)
        test_matmul_backward_bf16_dout_in_bf16_rows(shape[:3] + (shape[3] + shape[3] % 2,), False)   # OC even


def test_bf16_is_not_fp32():
    """The products really are of rounded operands: against the float64 of the unrounded inputs the
    error is bf16's (~2^-9 relative per operand), far above the fp32 kernels' tolerance."""
    B, T, C, OC = 2, 16, 64, 48
    x, w, b = _data(np.random.default_rng(2), B, T, C, OC)
    out = np.empty(B * T * OC, np.float32)
    CPU.matmul_forward_bf16(out, x.reshape(-1), w.reshape(-1), b, B, T, C, OC)
    err = np.abs(out.reshape(B, T, OC) - matmul_forward_ref(x, w, b)).max()
    assert 1e-3 < err < 5e-2, err


def test_matmul_bf16_is_deterministic_across_thread_counts():
    B, T, C, OC = 2, 101, 257, 263
    rng = np.random.default_rng(4)
    x, w, b = (a.reshape(-1) for a in _data(rng, B, T, C, OC))
    dout = rng.standard_normal(B * T * OC).astype(np.float32)

    def run():
        out, dx, dw = (np.empty(B * T * OC, np.float32), np.zeros(B * T * C, np.float32),
                       np.zeros(OC * C, np.float32))
        CPU.matmul_forward_bf16(out, x, w, b, B, T, C, OC)
        CPU.matmul_backward_bf16(dx, dw, None, dout, x, w, B, T, C, OC)
        return out, dx, dw
    same_bits_at_thread_counts(run)


def test_matmul_bf16_on_views_with_the_written_mode():
    """Views at odd offsets into bigger buffers (as the model passes), nothing outside written; and
    accumulate=False over garbage gives the bits accumulate=True adds into zeros."""
    B, T, C, OC = 2, 9, 21, 35
    rng = np.random.default_rng(5)
    x, w, b = _data(rng, B, T, C, OC)
    dout = (rng.standard_normal((B, T, OC)) / np.sqrt(OC)).astype(np.float32)
    buf = rng.standard_normal(3 + x.size + w.size + dout.size + 2).astype(np.float32)
    xv, wv = buf[3:3 + x.size], buf[3 + x.size:3 + x.size + w.size]
    dv = buf[3 + x.size + w.size:3 + x.size + w.size + dout.size]
    xv[:], wv[:], dv[:] = x.reshape(-1), w.reshape(-1), dout.reshape(-1)
    guard = buf.copy()
    got = []
    for accumulate, fill in ((False, 1e30), (True, 0.0)):
        dx = np.zeros(B * T * C + 2, np.float32)
        dw, db = np.full(OC * C + 1, fill, np.float32), np.full(OC + 1, fill, np.float32)
        dw[-1] = db[-1] = 7.0
        CPU.matmul_backward_bf16(dx[1:-1], dw[:-1], db[:-1], dv, xv, wv, B, T, C, OC, accumulate)
        assert dx[0] == dx[-1] == 0 and dw[-1] == db[-1] == 7.0
        got.append((dx, dw, db))
    np.testing.assert_array_equal(buf, guard)
    for a, b_ in zip(*got):
        np.testing.assert_array_equal(a, b_)
    rdx, rdw, _ = matmul_backward_ref(bf16_round_ref(dout), bf16_round_ref(x), bf16_round_ref(w))
    rtol, atol = tolerance("matmul_backward_bf16", "dinp")
    np.testing.assert_allclose(got[0][0][1:-1].reshape(B, T, C), rdx, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got[0][1][:-1].reshape(OC, C), rdw, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got[0][2][:-1], dout.reshape(-1, OC).astype(np.float64).sum(0), rtol=rtol, atol=atol)


def test_matmul_bf16_propagates_inf_and_nan():
    """inf and NaN operands give what float32 products of them give (inf·0 = NaN, inf + finite = inf)."""
    B, T, C, OC = 1, 3, 5, 4
    x = np.ones(B * T * C, np.float32)
    w = np.ones(OC * C, np.float32)
    x[0] = np.inf          # row 0: inf in every output
    x[C + 1] = np.nan      # row 1: NaN in every output
    out = np.empty(B * T * OC, np.float32)
    CPU.matmul_forward_bf16(out, x, w, None, B, T, C, OC)
    out = out.reshape(T, OC)
    assert np.all(np.isposinf(out[0])) and np.all(np.isnan(out[1])) and np.all(out[2] == C)


# ---------------------------------------------------------------------------- the rounding

def _special_bits():
    """Every bf16 upper half with the low halves that decide the rounding (0, just below, at and just
    above the tie, the largest): 327,680 float32s covering zeros, subnormals, normals, the overflow
    to inf, inf and NaN of both signs."""
    hi = np.arange(1 << 16, dtype=np.uint32) << 16
    lo = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    return (hi[:, None] | lo[None, :]).reshape(-1)


def test_rounding_is_round_to_nearest_even_bit_for_bit(kernel):
    if kernel != mb.supported_kernels()[0]:
        pytest.skip("kernel-independent: run once")
    u = _special_bits()
    x = u.view(np.float32)
    got = mb.round_to_bf16(x)
    with np.errstate(invalid="ignore"):   # the signalling NaNs among them
        want = bf16_round_ref(x)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].astype(np.float64), want[~nan])
    # the bits: low halves zero; ties to even, e.g. 1 + 2^-8 (a tie) -> 1, 1 + 3·2^-8 -> 1 + 2^-6
    assert not np.any(got.view(np.uint32) & 0xFFFF)
    # subnormals round too (1e-40 to bf16's smallest, 2^-133; the tie 2^-134 to 0, 3·2^-134 to 2^-132)
    bits = mb.bf16_bits(np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1e-40, -1e-40, 2 ** -134, 3 * 2 ** -134,
                                  3.3961e38, 3.4e38, np.inf, -np.inf, -0.0], np.float32))
    assert [hex(b) for b in bits] == ["0x3f80", "0x3f82", "0x1", "0x8001", "0x0", "0x2", "0x7f7f", "0x7f80",
                                      "0x7f80", "0xff80", "0x8000"]
    # a NaN stays a NaN, quiet, whatever its payload (a signalling 0x7F800001 included)
    nans = np.array([0x7F800001, 0x7FC00000, 0xFFFFFFFF, 0x7FA00001], np.uint32).view(np.float32)
    assert np.all(np.isnan(mb.round_to_bf16(nans)))
    assert np.all(mb.bf16_bits(nans) & 0x40)


def test_rounding_matches_torch(kernel):
    """The bits of PyTorch's .to(torch.bfloat16) (what llm.c's train_gpt2.py writes), every non-NaN
    value; NaNs are NaN in both (torch's NaN pattern is its own: 0x7FC0 scalar, 0xFFFF vectorised)."""
    torch = pytest.importorskip("torch")
    if kernel != mb.supported_kernels()[0]:
        pytest.skip("kernel-independent: run once")
    x = _special_bits().view(np.float32)
    want = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = mb.bf16_bits(x)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7F80) == 0x7F80) and np.all(got[nan] & 0x7F)


@numba.njit
def _rows_to_bf16(dst, src, n):
    for r in range(src.size // n):
        mb._row_to_bf16(dst[r * n:(r + 1) * n], src[r * n:(r + 1) * n], n)


@pytest.mark.parametrize("n", [64, 37])  # 16 at a time only; and one by one for the ragged 5 of each row
def test_bf16_rows_round_to_nearest_even_bit_for_bit(kernel, n):
    """_row_to_bf16, the conversion of crossentropy's dlogits to bf16 rows (--precision bf16): bit for
    bit bf16_bits (tested above against float64 and torch) on every special float32, ties among them,
    whether 16 at a time (_to_bf16) or one by one converts a value; a NaN stays a NaN."""
    if kernel != mb.supported_kernels()[0]:
        pytest.skip("kernel-independent: run once")
    x = _special_bits().view(np.float32)
    x = x[:x.size // n * n]
    dst = np.full(x.size, np.nan, np.float32)
    _rows_to_bf16(dst, x, n)
    got = dst.view(np.uint16).reshape(-1, 2 * n)[:, :n].reshape(-1)
    want = mb.bf16_bits(x)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7F80) == 0x7F80) and np.all(got[nan] & 0x7F)


def _flush_subnormals(u):
    """uint32 bits u with every subnormal replaced by the zero of its sign."""
    u = u.copy()
    u[(u & 0x7F800000) == 0] &= 0x80000000
    return u


@numba.njit
def _along_runs(dst, src, n):
    # src in runs of n floats, each to ⌈n/2⌉ words, as the packing of a row-major A converts a row
    w = (n + 1) // 2
    for r in range(src.size // n):
        mb._words_along(dst, r * w, src, r * n, n, w)


@numba.njit
def _across_runs(dst, src, half, n):
    # rows src[i] (low halves) and src[half + i] (high halves) in runs of n, as a k-major operand's
    # two rows k, k + 1 are converted into one panel row of words
    for r in range(half // n):
        mb._words_across(dst, r * n, src, r * n, half + r * n, n, n)


@pytest.mark.skipif("avx512bf16" not in mb.supported_kernels(), reason="the CPU has no AVX512-BF16")
@pytest.mark.parametrize("n", [64, 31, 47])  # all in registers, all one by one, both (and n odd)
def test_avx512bf16_packing_rounds_as_vcvtne2ps2bf16(kernel, n):
    """The avx512bf16 packing's conversion, bit for bit on every special float32 (_special_bits):
    vcvtne2ps2bf16 (16 words at a time) and _bits_daz (the ragged rest, one word at a time) alike
    give round-to-nearest-even after flushing a subnormal input to the zero of its sign; so which
    path converts a value, which depends on where a task's panel starts, never shows in the bits."""
    if kernel != "avx512bf16":
        pytest.skip("checked once, under the avx512bf16 kernel")
    u = _special_bits()
    want = mb.bf16_bits(_flush_subnormals(u).view(np.float32))
    got = np.zeros(u.size, np.uint32)
    runs = u.size // n
    _along_runs(got, u, n)
    got16 = got.view(np.uint16)[:runs * ((n + 1) // 2) * 2].reshape(runs, -1)
    np.testing.assert_array_equal(got16[:, :n], want[:runs * n].reshape(runs, n))
    assert not np.any(got16[:, n:])                      # an odd n's padding half
    half = u.size // 2
    got[:] = 0
    _across_runs(got, u, half, n)
    m = half // n * n
    np.testing.assert_array_equal(got[:m] & 0xFFFF, want[:m])
    np.testing.assert_array_equal(got[:m] >> 16, want[half:half + m])


@pytest.mark.parametrize("operand", ["inp", "weight", "dout"])
def test_subnormal_operands_as_each_kernel_converts_them(kernel, operand):
    """s = ±0x007FFFFF, the largest subnormal float32, times 2^100 in every position of a 40-wide
    panel (k = 0..31 converted in registers, 32..39 one by one): round-to-nearest-even takes s to
    ±2^-126 (the smallest normal bf16), so the portable kernel gives ±2^-26; the avx512bf16 kernel's
    conversion flushes s to zero first, as vdpbf16ps does with any subnormal bf16, and gives 0."""
    n = 40
    s = np.uint32(0x007FFFFF).view(np.float32)
    sub = np.zeros((n, n), np.float32)
    np.fill_diagonal(sub, s)
    sub[1::2] *= -1                                      # negative on odd rows: the sign is kept
    big = np.full((n, n), 2.0 ** 100, np.float32)
    x, w, dout = (sub if operand == name else big for name in ("inp", "weight", "dout"))
    if operand == "dout":                                # dweight = doutᵀ · inp: dout k-major
        x = big
        got = np.empty(n * n, np.float32)
        CPU.matmul_backward_bf16(np.zeros(n * n, np.float32), got, None, dout.reshape(-1), x.reshape(-1),
                                 w.reshape(-1), 1, n, n, n, accumulate=False)
        got = got.reshape(n, n)                          # dweight[o, c] = Σ_bt dout[bt, o] · 2^100
    else:
        got = np.empty(n * n, np.float32)
        CPU.matmul_forward_bf16(got, x.reshape(-1), w.reshape(-1), None, 1, n, n, n)
        got = got.reshape(n, n)
    want = 0.0 if kernel == "avx512bf16" else 2.0 ** -26
    sign = np.where(np.arange(n) % 2, -1.0, 1.0)
    sign = sign[None, :] if operand == "weight" else sign[:, None]
    np.testing.assert_array_equal(got, np.broadcast_to(want * sign, (n, n)))


# ---------------------------------------------------------------------------- machine code

@pytest.mark.skipif("avx512bf16" not in mb.supported_kernels(), reason="the CPU has no AVX512-BF16")
@pytest.mark.parametrize("variant", ["UKR", "UKK"])  # A panel row by row / k-major
def test_avx512bf16_microkernel_is_vdpbf16ps_with_no_spills(kernel, variant):
    """The 6 × 64 micro-kernels' k loop is >= 24 zmm `vdpbf16ps` (the 24 accumulators, once or
    unrolled) and no `vfmadd`, touching no stack slot; and it computes pair dot products."""
    if kernel != "avx512bf16":
        pytest.skip("checked once, under the avx512bf16 kernel")
    uk = numba.njit(mb._choice.gemms["avx512bf16"].microkernels[variant].py_func)  # fresh: cached code has no asm
    kc, MR, NR = 8, 6, 64                                     # 8 pair words = 16 k
    pair = np.uint32(0x3F80 | (0x4000 << 16))                 # (1.0, 2.0)
    Ap = np.full(kc * MR, pair, np.uint32).view(np.float32)
    Bp = np.full(kc * NR, pair, np.uint32).view(np.float32)
    Y = np.zeros(MR * NR, np.float32)
    uk(kc, Ap, 0, kc if variant == "UKR" else MR, Bp, 0, Y, 0, NR, 1, Y, 0)
    np.testing.assert_array_equal(Y, kc * (1 * 1 + 2 * 2))
    asm = uk.inspect_asm(uk.signatures[0])
    loop = inner_loop(asm, r"vdpbf16ps", 24)
    dps = re.findall(r"vdpbf16ps\s+[^\n]*", loop)
    assert len(dps) >= 24 and len(dps) % 24 == 0, loop
    assert all(d.count("%zmm") == 3 or "{1to16}" in d for d in dps), loop
    assert "vfmadd" not in loop, loop
    assert not stack_accesses(asm, loop), "spills in the k loop:\n" + loop


# ---------------------------------------------------------------------------- dispatch

_CHILD = """
import numpy as np
from numbagpt.cpu import matmul as mm, matmul_bf16 as mb
print(mm.kernel(), "|", mb.kernel(), "|", sorted(mb._choice.gemms))
x = np.arange(7 * 5, dtype=np.float32) / 10
w = np.arange(9 * 5, dtype=np.float32)[::-1].copy() / 10
out = np.empty(7 * 9, np.float32)
mb.matmul_forward_bf16(out, x, w, None, 1, 7, 5, 9)
r = mb.round_to_bf16
np.testing.assert_allclose(out.reshape(7, 9), r(x).reshape(7, 5) @ r(w).reshape(9, 5).T, rtol=1e-6)
try:
    mb.set_kernel("avx512bf16")
except ValueError as e:
    print("refused:", e)
"""


def _child(env_update):
    env = dict(os.environ)
    env.pop("NUMBAGPT_MATMUL", None)
    env.update(env_update)
    r = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_dispatch_follows_the_target_cpu(kernel):
    """Compiled for a CPU without AVX512-BF16 (an AVX-512 Skylake server), the bf16 GEMM is the
    portable one, nothing of avx512bf16 is compiled, and it is refused."""
    if kernel != mb.supported_kernels()[0]:
        pytest.skip("a subprocess test: run once")
    out = _child(dict(NUMBA_CPU_NAME="skylake-avx512",
                      NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c,+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx512cd"))
    assert out.startswith("avx512 6x64 | portable | []"), out
    assert "refused: bf16 matmul kernel 'avx512bf16' needs CPU features avx512f, avx512bf16" in out, out


def test_environment_forces_a_kernel(kernel):
    """NUMBAGPT_MATMUL: one name forces the GEMM(s) it names; a pair names the fp32 GEMM's kernel, then
    the bf16 GEMM's (any other list is refused)."""
    if kernel != mb.supported_kernels()[0]:
        pytest.skip("a subprocess test: run once")
    assert _child(dict(NUMBAGPT_MATMUL="portable")).startswith("portable | portable |")
    if "avx512bf16" in mb.supported_kernels():
        assert _child(dict(NUMBAGPT_MATMUL="avx512bf16")).startswith(f"{mm.supported_kernels()[0]} 6x")
        out = _child(dict(NUMBAGPT_MATMUL="portable,avx512bf16"))
        assert out.startswith("portable | avx512bf16 6x64 | ['avx512bf16']"), out
    code = "from numbagpt.cpu import matmul_bf16"
    bad = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, NUMBAGPT_MATMUL="avx512,bf17"),
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "NUMBAGPT_MATMUL=avx512,bf17: unknown matmul kernel 'bf17'" in bad.stderr
    if "avx2" in mm.supported_kernels():   # the pair of the docs: avx2 for fp32, portable for bf16
        assert _child(dict(NUMBAGPT_MATMUL="avx2,portable")).startswith("avx2 6x16 | portable |")
    for want, why in (("portable,avx2", "'avx2' is not a bf16 kernel"),
                      ("avx512bf16,portable", "'avx512bf16' is not an fp32 kernel"),
                      ("avx2,portable,portable", "3 names given")):
        bad = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, NUMBAGPT_MATMUL=want),
                             capture_output=True, text=True, timeout=600)
        assert bad.returncode != 0 and f"NUMBAGPT_MATMUL={want}: a list is the fp32 GEMM's kernel" in bad.stderr
        assert why in bad.stderr, bad.stderr


def test_unknown_kernel_is_refused(kernel):
    with pytest.raises(ValueError, match="'avx2'"):
        mb.set_kernel("avx2")
