"""crossentropy_forward / crossentropy_backward / crossentropy_forward_backward on every backend
against the float64 reference (tests/harness.py), the fused kernel bit for bit the other two, the
reference against finite differences, and the CPU's fast exp and max."""
import numpy as np
import pytest

from harness import cases, check, tolerance
from reference import crossentropy_backward_ref, crossentropy_forward_ref, numerical_grad, to_bf16_rows

# (B, T, V, Vp, scale of the logits, shift). CPU: exp would overflow/underflow unshifted. CUDA: rows
# longer than the 256-thread block, large logits (online max rescaling).
CPU_CASES = [(2, 7, 37, 64, 3.0, 0.0), (2, 7, 37, 64, 3.0, 1000.0), (2, 7, 37, 64, 3.0, -1000.0)]
CUDA_CASES = [(2, 5, 37, 64, 3.0, 0.0), (1, 2, 300, 384, 30.0, 0.0)]


def _data(rng, B, T, V, Vp, scale=3.0, shift=0.0):
    logits = (scale * rng.standard_normal((B, T, Vp)) + shift).astype(np.float32)
    # Padding is never read: NaN there would poison any sum that touched it.
    logits[..., V:] = np.nan
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    targets[0, 0], targets[0, 1] = 0, V - 1  # both ends of the real vocabulary
    dlosses = rng.uniform(0.5, 2.0, size=(B, T)).astype(np.float32) / (B * T)
    return logits, targets, dlosses


@pytest.mark.parametrize("backend,B,T,V,Vp,scale,shift", cases(cpu=CPU_CASES, cuda=CUDA_CASES))
def test_crossentropy_forward(backend, B, T, V, Vp, scale, shift):
    logits, targets, _ = _data(np.random.default_rng(0), B, T, V, Vp, scale, shift)
    case = "shifted" if shift else None
    losses = check(backend, "crossentropy_forward", losses=B * T, logits=logits, targets=targets, B=B, T=T, V=V,
                   Vp=Vp, case=case)["losses"]
    # and it is −log softmax of the target, computed the textbook way in float64
    z = logits[..., :V].astype(np.float64) - shift
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    nll = -np.log(np.take_along_axis(p, targets[..., None].astype(np.int64), axis=-1)[..., 0])
    rtol, atol = tolerance("crossentropy_forward", "losses", case)
    np.testing.assert_allclose(losses.reshape(B, T), nll, rtol=rtol, atol=atol)


def _check_rows(dlogits, B, T, V, Vp):
    d = dlogits.reshape(B, T, Vp)
    assert np.all(d[..., V:] == 0.0)  # padded columns exactly 0 (and not NaN)
    # each row of dlogits sums to 0 over the real vocabulary: softmax sums to 1, minus the one-hot
    # (times dloss)
    rtol, atol = tolerance("crossentropy_backward", "rowsum")
    np.testing.assert_allclose(d[..., :V].sum(axis=-1), 0.0, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend,B,T,V,Vp,scale,shift", cases(cpu=CPU_CASES[:2], cuda=CUDA_CASES))
def test_crossentropy_backward_writes_and_in_place(backend, B, T, V, Vp, scale, shift):
    # out of place, into a NaN-filled buffer: dlogits is written (=), padding included, logits untouched;
    # then in place (dlogits is logits): the same result
    logits, targets, dlosses = _data(np.random.default_rng(1), B, T, V, Vp, scale, shift)
    args = dict(dlosses=dlosses, logits=logits, targets=targets, B=B, T=T, V=V, Vp=Vp)
    out = check(backend, "crossentropy_backward", dlogits=B * T * Vp, **args)["dlogits"]
    _check_rows(out, B, T, V, Vp)
    inplace = check(backend, "crossentropy_backward", dlogits=None, inplace={"dlogits": "logits"}, **args)["dlogits"]
    np.testing.assert_array_equal(inplace, out)


@pytest.mark.parametrize("backend,B,T,V,Vp,scale,shift", cases(cpu=CPU_CASES, cuda=CUDA_CASES))
def test_crossentropy_forward_backward(backend, B, T, V, Vp, scale, shift):
    # against the float64 reference, out of place (into NaN-filled buffers, logits untouched) and in
    # place (the model's call); and bit for bit the forward kernel's losses and the backward's dlogits
    logits, targets, dlosses = _data(np.random.default_rng(5), B, T, V, Vp, scale, shift)
    sizes = dict(targets=targets, B=B, T=T, V=V, Vp=Vp, case="shifted" if shift else None)
    fused = "crossentropy_forward_backward"
    out = check(backend, fused, losses=B * T, dlogits=B * T * Vp, dlosses=dlosses, logits=logits, **sizes)
    _check_rows(out["dlogits"], B, T, V, Vp)
    inplace = check(backend, fused, losses=B * T, dlogits=None, dlosses=dlosses, logits=logits,
                    inplace={"dlogits": "logits"}, **sizes)
    separate = {**check(backend, "crossentropy_forward", losses=B * T, logits=logits, **sizes),
                **check(backend, "crossentropy_backward", dlogits=B * T * Vp, dlosses=dlosses, logits=logits, **sizes)}
    for name in ("losses", "dlogits"):
        np.testing.assert_array_equal(inplace[name], out[name])
        np.testing.assert_array_equal(out[name], separate[name])


def _words(x, Vp):
    """The bf16 words of bf16 rows of Vp (each row's first Vp/2 float32 slots), as uint32."""
    return np.ascontiguousarray(x, np.float32).reshape(-1, Vp)[:, :Vp // 2].view(np.uint32)


@pytest.mark.parametrize("backend,B,T,V,Vp,scale,shift",
                         cases(cpu=CPU_CASES + [(1, 3, 37, 46, 3.0, 0.0), (1, 2, 50257, 50304, 3.0, 0.0)],
                               cuda=CUDA_CASES + [(1, 3, 37, 46, 3.0, 0.0)]))
def test_crossentropy_dlogits_in_bf16_rows(backend, B, T, V, Vp, scale, shift):
    # dlogits_bf16=True (--precision bf16), from the fused and the backward kernel, out of place and in
    # place: bit for bit the same kernel's float32 dlogits rounded to nearest even (reference.to_bf16_rows,
    # by float64 arithmetic) in bf16 rows, whatever the row length (Vp 46: not a multiple of the CPU's
    # 16-lane conversion); the losses as in float32
    logits, targets, dlosses = _data(np.random.default_rng(6), B, T, V, Vp, scale, shift)
    sizes = dict(targets=targets, B=B, T=T, V=V, Vp=Vp, case="shifted" if shift else None)
    fused = "crossentropy_forward_backward"
    fp32 = check(backend, fused, losses=B * T, dlogits=B * T * Vp, dlosses=dlosses, logits=logits, **sizes)
    want = _words(to_bf16_rows(fp32["dlogits"], Vp), Vp)
    for inplace in ({}, {"dlogits": "logits"}):
        dl = None if inplace else B * T * Vp
        got = check(backend, fused, losses=B * T, dlogits=dl, dlosses=dlosses, logits=logits, inplace=inplace,
                    dlogits_bf16=True, only=("losses",), **sizes)
        np.testing.assert_array_equal(got["losses"], fp32["losses"])
        np.testing.assert_array_equal(_words(got["dlogits"], Vp), want)
        got = check(backend, "crossentropy_backward", dlogits=dl, dlosses=dlosses, logits=logits, inplace=inplace,
                    dlogits_bf16=True, only=(), **sizes)
        np.testing.assert_array_equal(_words(got["dlogits"], Vp), want)


def test_crossentropy_reference_backward_finite_differences():
    rng = np.random.default_rng(3)
    rtol, atol = tolerance("crossentropy_backward", case="reference")
    Bs, Ts, Vs, Vps = 1, 3, 5, 8
    logits = rng.standard_normal((Bs, Ts, Vps))
    targets = rng.integers(0, Vs, size=(Bs, Ts))
    dl = rng.uniform(0.5, 2.0, size=(Bs, Ts))
    num = numerical_grad(lambda a: (crossentropy_forward_ref(a, targets, Vs) * dl).sum(), logits)
    np.testing.assert_allclose(crossentropy_backward_ref(dl, logits, targets, Vs), num, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- the fast exp and max
from numba import njit  # noqa: E402

from numbagpt.cpu.fastmath import exp_nonpos, max_f32  # noqa: E402


@njit(fastmath={'reassoc', 'contract'})  # the kernels' flags
def _exp_nonpos_array(out, x):
    for i in range(x.size):
        out[i] = exp_nonpos(x[i])


@njit
def _max_f32_of(a):
    return max_f32(a, a.size)


def _ulp_error(x):
    got = np.empty_like(x)
    _exp_nonpos_array(got, x)
    ex = np.exp(x.astype(np.float64))
    ulp = np.spacing(ex.astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - ex) / ulp


def test_exp_nonpos_within_1_02_ulp_on_minus87_to_0():
    # Every 61st float32 bit pattern between -0.0 and -87.0 (18M of the 1.1e9; an exhaustive scan,
    # 30 s, measured 1.01 ulp at most), and every float32 near the ends of the range.
    bits = np.arange(0x80000000, 0xC2AE0001, 61, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    near0 = np.arange(0x80000000, 0x80000000 + 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    near87 = np.arange(0xC2AE0000 - 200_000, 0xC2AE0001, dtype=np.uint64).astype(np.uint32).view(np.float32)
    small = -np.logspace(-8, 0, 100_000).astype(np.float32)
    for xs in (x, near0, near87, small):
        assert xs.min() >= -87.0 and xs.max() <= 0.0
        err = _ulp_error(xs)
        assert err.max() <= 1.02, (err.max(), xs[err.argmax()])  # documented: 1.01 (IEEE arithmetic: any CPU)


def test_exp_nonpos_special_values():
    x = np.array([0.0, -0.0, -87.0, -87.0001, -100.0, -1e30, -np.inf, np.nan, -1e-45], np.float32)
    got = np.empty_like(x)
    _exp_nonpos_array(got, x)
    assert got[0] == 1.0 and got[1] == 1.0 and got[8] == 1.0
    assert got[2] == pytest.approx(np.exp(-87.0), rel=2e-7)
    # below -87 the result is flushed to 0: off by less than exp(-87) ~ 1.6e-38
    assert np.all(got[3:7] == 0.0)
    assert np.isnan(got[7])
    assert got.dtype == np.float32


@njit(fastmath={'contract'})  # (with 'reassoc' too LLVM reorders the polynomial's last sum: 1 ulp apart)
def _exp_nonpos_contract(out, x):
    for i in range(x.size):
        out[i] = exp_nonpos(x[i])


def _vector_exp(lanes):
    """numbagpt/cpu/simd.py's exp on <lanes x float>, over an array (a multiple of lanes long)."""
    from numbagpt.cpu.simd import vector_ops
    ops = vector_ops(lanes)
    load, store, vexp = ops.load, ops.store, ops.exp

    @njit
    def run(out, x):
        for i in range(0, x.size, lanes):
            store(out, i, vexp(load(x, i)))
    return run


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_vector_exp_is_exp_nonpos_bit_for_bit(lanes):
    # the flash attention's exp (simd.py: a fused reduction, one compare for NaN and underflow, and
    # vscalefps at 16 lanes) against the scalar one the error bound above is measured on
    bits = np.arange(0x80000000, 0xC2B00001, 997, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, -87.0, -87.0001, -86.9999, -100.0, -1e30, -np.inf, np.nan, -1e-45,
                        np.float32(-np.nan)], np.float32)
    x = np.concatenate([bits.view(np.float32), special])
    x = np.concatenate([x, np.zeros(-x.size % lanes, np.float32)])
    if lanes == 16 and "avx512f" not in __import__("numbagpt.cpu.matmul", fromlist=["x"]).cpu_features():
        pytest.skip("16 lanes compile to AVX-512 (vscalefps): this CPU has none")
    got, want = np.empty_like(x), np.empty_like(x)
    _vector_exp(lanes)(got, x)
    _exp_nonpos_contract(want, x)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("n", [1, 2, 7, 16, 17, 100, 50257])
def test_max_f32_is_exact(n):
    rng = np.random.default_rng(n)
    for a in (rng.standard_normal(n).astype(np.float32),
              -np.abs(rng.standard_normal(n)).astype(np.float32) - 1.0,  # all negative
              (1e30 * rng.standard_normal(n)).astype(np.float32)):
        assert _max_f32_of(a) == a.max()
    a = np.full(n, -np.inf, np.float32)
    assert _max_f32_of(a) == -np.inf
    a[n // 2] = -0.0
    assert _max_f32_of(a) == 0.0
    b = rng.standard_normal(n).astype(np.float32)
    b[n - 1] = np.nan
    assert np.isnan(_max_f32_of(b))  # a NaN propagates


# ----------------------------------------------------------------------------- GPT-2's vocabulary
@pytest.mark.parametrize("backend,V,Vp", cases(cpu=[(50257, 50304), (1024, 1025), (1025, 1088), (511, 512)]))
def test_crossentropy_real_vocab_against_float64(backend, V, Vp):
    # full rows of GPT-2's size (several exp chunks, a ragged last one), with a row whose max is
    # far above the rest (most exps underflow) and one of equal logits
    rng = np.random.default_rng(V)
    Bs, Ts = 2, 3
    logits = (4.0 * rng.standard_normal((Bs, Ts, Vp))).astype(np.float32)
    logits[..., V:] = np.nan
    logits[0, 1, V // 3] = 150.0
    logits[1, 2, :V] = -2.5
    targets = rng.integers(0, V, size=(Bs, Ts)).astype(np.int32)
    targets[0, 2] = V // 3
    dlosses = rng.uniform(0.5, 2.0, size=(Bs, Ts)).astype(np.float32)
    args = dict(logits=logits, targets=targets, B=Bs, T=Ts, V=V, Vp=Vp, case="gpt2_vocab")
    check(backend, "crossentropy_forward", losses=Bs * Ts, **args)
    d = check(backend, "crossentropy_backward", dlogits=Bs * Ts * Vp, dlosses=dlosses, **args)["dlogits"]
    assert np.all(d.reshape(Bs, Ts, Vp)[..., V:] == 0.0)
    fused = check(backend, "crossentropy_forward_backward", losses=Bs * Ts, dlogits=None, dlosses=dlosses,
                  inplace={"dlogits": "logits"}, **args)["dlogits"]
    np.testing.assert_array_equal(fused, d)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_crossentropy_nan_logit_gives_nan_loss(backend):
    B, T, V, Vp = 2, 7, 37, 64
    logits, targets, _ = _data(np.random.default_rng(4), B, T, V, Vp)
    logits[1, 3, 5] = np.nan
    losses = check(backend, "crossentropy_forward", losses=np.zeros(B * T, np.float32), logits=logits,
                   targets=targets, B=B, T=T, V=V, Vp=Vp)["losses"]   # the NaN row is not compared, the others are
    assert np.isnan(losses[1 * T + 3])
    assert np.all(np.isfinite(np.delete(losses, 1 * T + 3)))


_THREADS_CHILD = """
import sys
import numpy as np
from numbagpt.cpu.crossentropy import crossentropy_backward, crossentropy_forward_backward
from reference import crossentropy_backward_ref, crossentropy_forward_ref
B, T, V, Vp = 1, 24, 50257, 50304
rng = np.random.default_rng(0)
logits = rng.standard_normal((B * T, Vp)).astype(np.float32)
targets = rng.integers(0, V, B * T).astype(np.int32)
dlosses = np.full(B * T, 1.0 / (B * T), np.float32)
losses, dlogits, again = np.empty(B * T, np.float32), np.empty_like(logits), np.empty_like(logits)
crossentropy_forward_backward(losses, dlogits.reshape(-1), dlosses, logits.reshape(-1), targets, B, T, V, Vp)
crossentropy_backward(again.reshape(-1), dlosses, logits.reshape(-1), targets, B, T, V, Vp)
want = crossentropy_backward_ref(dlosses, logits, targets, V)[:, :V]
err = max(np.abs(losses - crossentropy_forward_ref(logits, targets, V)).max(),
          np.abs(dlogits[:, :V] - want).max(), np.abs(again[:, :V] - want).max())
print(err)
"""


def test_a_cached_kernel_serves_more_threads_than_its_compiler_had(tmp_path):
    """The fused and backward kernels give each thread a row of scratch: sized at run time by the
    threads of the call, not frozen into the cached machine code (NUMBA_NUM_THREADS read at compile
    time was: a cache filled by a 1-thread process gave a 4-thread one a buffer of one row, which its
    other threads wrote past). Compiled and cached with 1 thread, then loaded and run with 4."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    for threads in (1, 4):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([here, os.path.dirname(here)]))
        r = subprocess.run([sys.executable, "-c", _THREADS_CHILD], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, (threads, r.returncode, r.stderr[-2000:])
        assert float(r.stdout) < 1e-5, (threads, r.stdout)
        for kernel in ("_backward", "_forward_backward"):   # cached (by the first), so loaded by the second
            assert list(tmp_path.rglob(f"crossentropy.{kernel}-*.nbi")), sorted(tmp_path.rglob("*.nbi"))
