"""numbagpt.cpu.matmul against float64 NumPy (tests/reference.py) and against finite differences,
on every kernel this CPU can run (the `kernel` fixture: avx512, avx2, portable — see
numbagpt/cpu/matmul.py), plus the dispatch itself and the AVX-512 micro-kernel's machine code.

The shapes straddle every blocking of the kernels. Packed GEMM (M, N, K per product in matmul.py):
the micro-tile (6 × 64 / 6 × 16: M, N not multiples, and M, N, K = 1), the row blocks (MC = 288 /
96: BT, OC > MC), the reduction blocks (KC = 128 / 256: C, OC, BT > 256; KC 512 of a small Y: C = 1030;
a big Y's blocks and tile order are tested with the threshold lowered), the column panels (NC = 2048 with
a 2 MiB L2, 1024 with 1 MiB: OC > 2048) and the forward's 16 × 16 transposing pack of the weight (C, OC
not multiples of 16). Portable: 4-row / 4-column micro-blocks, the 4-long k groups of the backward, the
reduction chunks (forward C > 512, backward K > 256, dot-form dinp OC > 1024), the task tiles, both
dinp paths (axpy; dot form on a transposed weight when C <= 256 and OC >= 256).
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
from numbagpt.cpu.matmul import matmul_backward, matmul_forward
from reference import matmul_backward_ref, matmul_forward_ref


@pytest.fixture(params=mm.supported_kernels(), autouse=True)
def kernel(request):
    """Every test of this file runs once per kernel the CPU supports; the default is restored."""
    before = mm.kernel().split()[0]
    mm.set_kernel(request.param)
    yield request.param
    mm.set_kernel(before)


SHAPES = [  # (B, T, C, OC)
    (1, 1, 1, 1),        # M = N = K = 1 in all three products
    (1, 1, 13, 1),       # a single output row and column, K = 13 (forward) / 1 (dinp, dweight)
    (1, 97, 131, 61),    # primes everywhere: ragged micro-tiles in M and N in every product
    (2, 101, 257, 263),  # BT = 202 > MC, C = 257 > KC, OC = 263 > KC: every block ragged
    (1, 13, 17, 4099),   # OC > 4096 >= 2 NC: a third (or fifth), ragged column panel in the forward
    (2, 5, 13, 7),       # the brief's small odd shape: ragged rows, columns and k groups
    (1, 3, 1, 5),        # C = 1: a single term per output
    (1, 4, 8, 4),        # everything a multiple of 4: no ragged paths at all
    (3, 7, 33, 70),      # OC > 64: two forward column tiles, the second ragged
    (2, 150, 530, 70),   # BT = 300 > 256 rows; C = 530 > 512 (forward) and > 256 (dinp/dweight chunks)
    (1, 10, 1030, 9),    # C > 1024: backward column tiles of 512 (+ a ragged 6); small Y: KC 512 twice + 6
    (3, 7, 33, 257),     # dinp through the dot form on a transposed weight (C <= 256, OC >= 256)
    (4, 64, 32, 1100),   # a narrow "LM head": OC ≫ C; dot-form dinp with two 1024-long chunks
]


def test_forward_is_deterministic_across_runs_and_thread_counts():
    """Every output is summed in a fixed order: bit-identical results at 1 thread and at 2."""
    B, T, C, OC = 2, 101, 257, 263
    rng = np.random.default_rng(4)
    x, w, b = _data(rng, B, T, C, OC)
    dout = rng.standard_normal(B * T * OC).astype(np.float32)

    def run():
        out = np.empty(B * T * OC, np.float32)
        dx = np.zeros(B * T * C, np.float32)
        dw = np.zeros(OC * C, np.float32)
        matmul_forward(out, x.reshape(-1), w.reshape(-1), b, B, T, C, OC)
        matmul_backward(dx, dw, None, dout, x.reshape(-1), w.reshape(-1), B, T, C, OC)
        return out, dx, dw
    same_bits_at_thread_counts(run, (1, 2, 2))


def _data(rng, B, T, C, OC):
    # weights ~ 1/sqrt(C) so that outputs are O(1) and an absolute tolerance means the same everywhere
    x = rng.standard_normal((B, T, C)).astype(np.float32)
    w = (rng.standard_normal((OC, C)) / np.sqrt(C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    return x, w, b


def _ids(s):
    return "B{}T{}C{}OC{}".format(*s)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_matmul_forward(shape, with_bias):
    B, T, C, OC = shape
    x, w, b = _data(np.random.default_rng(0), B, T, C, OC)
    check(CPU, "matmul_forward", out=B * T * OC, inp=x, weight=w, bias=b if with_bias else None, B=B, T=T, C=C, OC=OC)


@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("with_dbias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_matmul_backward(shape, with_dbias, accumulate):
    # accumulate: pre-filled gradients (the harness's), the kernel must add to them (llm.c's +=);
    # accumulate=False: dweight and dbias start NaN (the harness's written outputs), so a kernel that
    # reads or misses any element fails, and dinp is still added to. No dbias: none passed; the
    # inputs are read-only (the harness checks them)
    B, T, C, OC = shape
    rng = np.random.default_rng(1)
    x, w, _ = _data(rng, B, T, C, OC)
    dout = (rng.standard_normal((B, T, OC)) / np.sqrt(OC)).astype(np.float32)
    check(CPU, "matmul_backward", dinp=B * T * C, dweight=OC * C, dbias=OC if with_dbias else None, dout=dout,
          inp=x, weight=w, B=B, T=T, C=C, OC=OC, accumulate=accumulate)


def test_matmul_backward_written_is_accumulated_into_zeros_bit_for_bit():
    """accumulate=False over garbage (1e30) gives the very floats accumulate=True adds into zeros:
    what lets the model skip zeroing these gradients (numbagpt/model.py, WRITTEN_GRADS)."""
    B, T, C, OC = 2, 150, 530, 70   # several reduction blocks / chunks in every product
    rng = np.random.default_rng(5)
    x, w, _ = _data(rng, B, T, C, OC)
    dout = rng.standard_normal(B * T * OC).astype(np.float32)
    dx0 = rng.standard_normal(B * T * C).astype(np.float32)
    got, want = [], []
    for accumulate, fill in ((False, 1e30), (True, 0.0)):
        dx, dw, db = dx0.copy(), np.full(OC * C, fill, np.float32), np.full(OC, fill, np.float32)
        matmul_backward(dx, dw, db, dout, x.reshape(-1), w.reshape(-1), B, T, C, OC, accumulate)
        (got if not accumulate else want).extend((dx, dw, db))
    for a, b_ in zip(got, want):
        assert np.array_equal(a, b_)


def test_matmul_with_the_big_y_reduction_blocks(kernel, monkeypatch):
    """The blocking and tile order used for a Y beyond BIG_Y elements (KC_Y, NC_Y, along Y's rows),
    on a small shape: the threshold lowered to 0, so every product takes that path."""
    if kernel == "portable":
        pytest.skip("the packed GEMM's blocking")
    monkeypatch.setitem(mm._choice.gemms[kernel].b, "BIG_Y", 0)
    test_matmul_forward((2, 101, 257, 263), True)
    test_matmul_backward((2, 101, 257, 263), False, True)
    test_matmul_backward((2, 101, 257, 263), True, False)


def test_matmul_with_the_small_y_reduction_blocks(kernel, monkeypatch):
    """The KC_S blocks of a Y of at most SMALL_Y elements, the threshold raised so that every
    product takes them: BT = 600, so the dweight sums a whole block of 512 terms and a ragged 88."""
    if kernel == "portable":
        pytest.skip("the packed GEMM's blocking")
    monkeypatch.setitem(mm._choice.gemms[kernel].b, "SMALL_Y", 1 << 40)
    test_matmul_forward((4, 150, 33, 70), True)
    test_matmul_backward((4, 150, 33, 70), True, True)
    test_matmul_backward((4, 150, 33, 70), False, False)


@pytest.mark.parametrize("shape", SHAPES[2:5] + SHAPES[8:9], ids=_ids)
def test_matmul_reads_a_in_place_or_packed_alike(kernel, shape):
    """A row-major A, or a task of at most IN_PLACE_N columns, reads A's whole panels in place (and
    packs a ragged last one); the others pack A. Forced either way, every product gives the same bits."""
    if kernel == "portable":
        pytest.skip("the portable loops do not pack")
    B, T, C, OC = shape
    rng = np.random.default_rng(11)
    x, w, b = (a.reshape(-1) for a in _data(rng, B, T, C, OC))
    dout = rng.standard_normal(B * T * OC).astype(np.float32)
    got = []
    for limit, rows in ((0, False), (1 << 30, True)):  # never, always in place
        g = mm._Gemm(kernel, IN_PLACE_N=limit, IN_PLACE_ROWS=rows)
        out, dinp, dw = np.empty(B * T * OC, np.float32), np.zeros(B * T * C, np.float32), np.zeros(OC * C, np.float32)
        g(out, x, True, w, True, b, B * T, OC, C, mm._BIAS)
        g(dinp, dout, True, w, False, mm._NO_BIAS, B * T, C, OC, mm._ACCUMULATE)
        g(dw, dout, False, x, False, mm._NO_BIAS, OC, C, B * T, mm._ACCUMULATE)
        got.append((out, dinp, dw))
    rtol, atol = tolerance("matmul_forward")
    ref_out = matmul_forward_ref(x.reshape(B * T, C), w.reshape(OC, C), b)
    np.testing.assert_allclose(got[1][0], ref_out.reshape(-1), rtol=rtol, atol=atol)
    for packed, in_place in zip(*got):
        assert np.array_equal(packed, in_place)


def test_matmul_on_views_of_big_buffers():
    """The model passes flat views at odd offsets into big parameter / activation / grad buffers."""
    B, T, C, OC = 2, 9, 21, 35
    rng = np.random.default_rng(2)
    x, w, b = _data(rng, B, T, C, OC)
    dout = rng.standard_normal((B, T, OC)).astype(np.float32)
    params = rng.standard_normal(3 + OC * C + OC + 5).astype(np.float32)
    params[3:3 + OC * C] = w.reshape(-1)
    params[3 + OC * C:3 + OC * C + OC] = b
    acts = rng.standard_normal(7 + B * T * C + B * T * OC + 2).astype(np.float32)
    acts[7:7 + B * T * C] = x.reshape(-1)
    grads = np.zeros_like(params)
    dacts = np.zeros_like(acts)
    guard_p, guard_a = params.copy(), acts.copy()
    wv, bv = params[3:3 + OC * C], params[3 + OC * C:3 + OC * C + OC]
    xv, outv = acts[7:7 + B * T * C], acts[7 + B * T * C:7 + B * T * C + B * T * OC]
    matmul_forward(outv, xv, wv, bv, B, T, C, OC)
    rtol, atol = tolerance("matmul_forward")
    np.testing.assert_allclose(outv.reshape(B, T, OC), matmul_forward_ref(x, w, b), rtol=rtol, atol=atol)
    # nothing outside `out` was written
    np.testing.assert_array_equal(acts[:7 + B * T * C], guard_a[:7 + B * T * C])
    np.testing.assert_array_equal(acts[7 + B * T * C + B * T * OC:], guard_a[7 + B * T * C + B * T * OC:])
    np.testing.assert_array_equal(params, guard_p)

    dacts[7 + B * T * C:7 + B * T * C + B * T * OC] = dout.reshape(-1)
    dxv = dacts[7:7 + B * T * C]
    dwv, dbv = grads[3:3 + OC * C], grads[3 + OC * C:3 + OC * C + OC]
    matmul_backward(dxv, dwv, dbv, dacts[7 + B * T * C:7 + B * T * C + B * T * OC], xv, wv, B, T, C, OC)
    rdx, rdw, rdb = matmul_backward_ref(dout, x, w)
    rtol, atol = tolerance("matmul_backward", case="views")
    np.testing.assert_allclose(dxv.reshape(B, T, C), rdx, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dwv.reshape(OC, C), rdw, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dbv, rdb, rtol=rtol, atol=atol)
    assert not grads[:3].any() and not grads[3 + OC * C + OC:].any()
    assert not dacts[:7].any() and not dacts[7 + B * T * C + B * T * OC:].any()


def test_matmul_backward_matches_finite_differences_of_forward():
    """The kernels' own forward and backward agree: L = Σ g·out(x, W, b) (summed in float64).

    L is linear in each of x, W, b, so central differences with a large step (h = 0.5, exact in
    float32) are exact up to the float32 rounding of `out`; this checks the backward against the
    forward kernel with no reference implementation in between.
    """
    B, T, C, OC = 2, 3, 6, 5
    rng = np.random.default_rng(3)
    x, w, b = _data(rng, B, T, C, OC)
    g = rng.standard_normal((B, T, OC)).astype(np.float32)

    def loss(x_, w_, b_):
        out = np.empty(B * T * OC, dtype=np.float32)
        matmul_forward(out, x_.reshape(-1), w_.reshape(-1), b_, B, T, C, OC)
        return float(np.dot(out.astype(np.float64), g.reshape(-1).astype(np.float64)))

    def fd(arr, f, h=0.5):
        grad = np.zeros(arr.size)
        flat = arr.reshape(-1)
        for i in range(arr.size):
            old = flat[i]
            flat[i] = old + h
            fp = f()
            flat[i] = old - h
            fm = f()
            flat[i] = old
            grad[i] = (fp - fm) / (2 * h)
        return grad.reshape(arr.shape)

    num_dx = fd(x, lambda: loss(x, w, b))
    num_dw = fd(w, lambda: loss(x, w, b))
    num_db = fd(b, lambda: loss(x, w, b))
    dx = np.zeros(B * T * C, np.float32)
    dw = np.zeros(OC * C, np.float32)
    db = np.zeros(OC, np.float32)
    matmul_backward(dx, dw, db, g.reshape(-1), x.reshape(-1), w.reshape(-1), B, T, C, OC)
    rtol, atol = tolerance("matmul_backward", case="finite_differences")
    np.testing.assert_allclose(dx.reshape(x.shape), num_dx, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dw.reshape(w.shape), num_dw, rtol=rtol, atol=atol)
    np.testing.assert_allclose(db, num_db, rtol=rtol, atol=atol)


@pytest.mark.skipif("avx512" not in mm.supported_kernels(), reason="the CPU has no AVX-512")
@pytest.mark.parametrize("variant", ["UKR", "UKK"])  # A panel row by row / k-major
def test_avx512_microkernel_is_zmm_fmas_with_no_spills(kernel, variant):
    """The 6 × 64 micro-kernels compile to 512-bit FMAs on register accumulators: the k loop holds
    >= 24 zmm FMAs (the 24 accumulators, once or unrolled) and touches no stack slot (no spills)."""
    if kernel != "avx512":
        pytest.skip("checked once, under the avx512 kernel")
    # a fresh, uncached copy: Numba has no assembly for code loaded from its cache
    uk = numba.njit(mm._choice.gemms["avx512"].microkernels[variant].py_func)
    kc, MR, NR = 8, 6, 64
    Ap = np.ones(kc * MR, np.float32)
    Bp = np.ones(kc * NR, np.float32)
    Y = np.zeros(MR * NR, np.float32)
    uk(kc, Ap, 0, kc if variant == "UKR" else MR, Bp, 0, Y, 0, NR, 1, Y, 0)
    np.testing.assert_array_equal(Y, kc)  # it ran: every tile entry is the sum of kc ones
    asm = uk.inspect_asm(uk.signatures[0])
    loop = inner_loop(asm, r"vfmadd\w*ps", 24)
    fmas = re.findall(r"vfmadd\w*ps\s+[^\n]*", loop)
    assert len(fmas) >= 24 and len(fmas) % 24 == 0, loop
    assert all(f.count("%zmm") == 3 or "{1to16}" in f for f in fmas), loop
    assert not stack_accesses(asm, loop), "spills in the k loop:\n" + loop



@pytest.mark.skipif("avx512" not in mm.supported_kernels(), reason="the CPU has no AVX-512")
def test_a_micro_kernel_that_spills_is_seen_to():
    """The check above can fail: a 12 × 64 tile (48 accumulators, 32 zmm registers) must keep some
    of them on the stack, and stack_accesses finds them in its k loop."""
    env = mm.vector_env(16)
    exec(mm._microkernel_source("uk_12x64", 12, 64, 16, True), env)
    uk = numba.njit(env["uk_12x64"])
    kc, MR, NR = 8, 12, 64
    Y = np.zeros(MR * NR, np.float32)
    uk(kc, np.ones(kc * MR, np.float32), 0, kc, np.ones(kc * NR, np.float32), 0, Y, 0, NR, 1, Y, 0)
    np.testing.assert_array_equal(Y, kc)
    asm = uk.inspect_asm(uk.signatures[0])
    assert len(stack_accesses(asm, inner_loop(asm, r"vfmadd\w*ps", 48))) >= 16


_CHILD = """
import numpy as np
from numbagpt.cpu import matmul as mm
print(mm.kernel(), mm.supported_kernels())
x = np.arange(7 * 5, dtype=np.float32) / 10
w = np.arange(9 * 5, dtype=np.float32)[::-1].copy() / 10
out = np.empty(7 * 9, np.float32)
mm.matmul_forward(out, x, w, None, 1, 7, 5, 9)
np.testing.assert_allclose(out.reshape(7, 9), x.reshape(7, 5) @ w.reshape(9, 5).T, rtol=1e-6)
try:
    mm.set_kernel("avx512")
except ValueError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("features, expect", [
    ("+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c", "avx2 6x16"),  # an AVX2 CPU (Haswell): the ymm kernel
    ("+sse4.2,+popcnt", "portable"),                         # neither: the portable loops
])
def test_dispatch_follows_the_target_cpu(kernel, features, expect):
    """Compiled for another CPU (NUMBA_CPU_NAME/FEATURES), the import picks that CPU's kernel, runs
    it correctly, and refuses a kernel the CPU lacks."""
    if kernel != mm.supported_kernels()[0]:
        pytest.skip("a subprocess test: run once")
    env = dict(os.environ, NUMBA_CPU_NAME="haswell" if "avx2" in features else "x86-64",
               NUMBA_CPU_FEATURES=features)
    env.pop("NUMBAGPT_MATMUL", None)
    r = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(expect + " "), r.stdout
    assert "refused: matmul kernel 'avx512' needs CPU features avx512f, fma" in r.stdout, r.stdout


def test_blocking_follows_the_caches(kernel, tmp_path, monkeypatch):
    """The caches are read from sysfs (level, type, size of each index; the L1 instruction cache
    doesn't count), with defaults where sysfs can't be read; KC is 128 where that strip fits in two
    thirds of L1, else 256; NC puts the B panel in half the L2, in whole strips, within [512, 4096]."""
    caches = (("1", "Instruction", "64K"), ("1", "Data", "32K"), ("2", "Unified", "1024K"), ("3", "Unified", "32M"))
    for index, entry in enumerate(caches):
        for field, value in zip(("level", "type", "size"), entry):
            (tmp_path / f"index{index}").mkdir(exist_ok=True)
            (tmp_path / f"index{index}" / field).write_text(value + "\n")
    monkeypatch.setattr(mm, "_CACHE_DIR", str(tmp_path))
    assert [mm._cache_bytes(level, 0) for level in (1, 2, 3)] == [32 << 10, 1 << 20, 32 << 20]
    monkeypatch.setattr(mm, "_CACHE_DIR", str(tmp_path / "missing"))
    assert mm._cache_bytes(2, 123) == 123
    assert [mm._reduction_block(l1 << 10, 64) for l1 in (32, 48, 64)] == [256, 128, 128]
    assert [mm._panel_columns(l2 << 10, 128, 64) for l2 in (256, 1024, 1280, 2048, 32768)] == \
        [512, 1024, 1280, 2048, 4096]
    assert mm._panel_columns(1 << 20, 256, 64) == 512


def test_unknown_kernel_is_refused(kernel):
    with pytest.raises(ValueError, match="'avx1024'"):
        mm.set_kernel("avx1024")


def test_environment_forces_a_kernel_or_says_why_not(kernel):
    """NUMBAGPT_MATMUL picks the kernel at import; a bad value fails with a message naming it."""
    if kernel != mm.supported_kernels()[0]:
        pytest.skip("a subprocess test: run once")
    code = "from numbagpt.cpu import matmul as mm; print(mm.kernel())"
    ok = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, NUMBAGPT_MATMUL="portable"),
                        capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0 and ok.stdout.strip() == "portable", ok.stderr
    bad = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, NUMBAGPT_MATMUL="avx1024"),
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "NUMBAGPT_MATMUL=avx1024: unknown matmul kernel 'avx1024'" in bad.stderr


def test_generated_kernels_are_named_after_their_sources(tmp_path, monkeypatch):
    """The GEMM and attention kernels built as source text carry a hash of the files they are made
    from (simd.source_tag), so that Numba's cache, which keys on a function's own file and bytecode,
    never serves one compiled from older sources: an edit to any of those files changes the tag."""
    from numbagpt.cpu import attention, simd
    tag = simd.source_tag()
    assert re.fullmatch(r"[0-9a-f]{8}", tag)
    if mm._choice.gemm is not None:
        assert mm._choice.gemm.core.py_func.__name__.endswith("_" + tag)
    assert all(f.py_func.__name__.endswith("_" + tag) for f in attention._impl())
    for name in simd._GENERATED_FROM:   # a copy of the sources with one file changed: another tag
        src = os.path.join(os.path.dirname(simd.__file__), name)
        with open(src, "rb") as f:
            (tmp_path / name).write_bytes(f.read() + (b"\n# edited\n" if name == "fastmath.py" else b""))
    monkeypatch.setattr(simd, "__file__", str(tmp_path / "simd.py"))
    simd.source_tag.cache_clear()
    try:
        assert simd.source_tag() != tag
    finally:
        simd.source_tag.cache_clear()


def test_generated_kernels_have_no_source_lines_for_inspect():
    """The generated kernels (GEMM cores and micro-kernels, attention's) are numbered past the end of the
    file they are compiled under, so inspect, which Numba asks for their source when it caches them,
    raises the OSError Numba expects. They were numbered from 1: on Python 3.13 inspect tokenized the
    module's own lines from the middle of its docstring and raised TokenError, which ended the first
    compile of every kernel (no training ran on 3.13)."""
    import inspect
    from numbagpt.cpu import attention, matmul_bf16, simd
    env = {}
    exec(simd.compile_source("def f(x):\n    return x\n", mm.__file__), env)
    generated = [env["f"]]
    for gemm in (mm._choice.gemm, matmul_bf16._choice.gemm):
        if gemm is not None:
            generated += [gemm.core.py_func] + [k.py_func for k in gemm.microkernels.values()]
    generated += [k.py_func for k in attention._impl()]   # its forward and backward
    for f in generated:
        assert f.__code__.co_firstlineno >= simd.GENERATED_LINE, f.__name__
        with pytest.raises(OSError, match="out of bounds"):
            inspect.getsourcelines(f)


def test_cpu_features_drops_the_disabled_ones(monkeypatch):
    """With NUMBA_CPU_NAME set, NUMBA_CPU_FEATURES' "-feat" entries are features the CPU lacks: only the
    "+feat" ones count, so avx512f is absent from "+avx2,+fma,-avx512f"."""
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+fma,-avx512f,-avx512bw")
    assert mm.cpu_features() == {"avx2", "fma"}
