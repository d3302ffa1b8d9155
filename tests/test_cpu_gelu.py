"""gelu_forward / gelu_backward against the float64 reference (tests/harness.py; the CUDA cases are in
tests/test_cuda_kernels.py), the reference against finite differences, and the CPU's vector tanh."""
import numpy as np
import pytest

from harness import cases, check, tolerance
from reference import gelu_backward_ref, gelu_forward_ref, numerical_grad

N = 1003


def _inputs(rng):
    x = rng.standard_normal(N) * 2.0
    x[:7] = [0.0, -1e-3, 5.0, -5.0, 12.0, -12.0, 100.0]  # tails: tanh saturates
    return x.astype(np.float32)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_gelu_forward(backend):
    check(backend, "gelu_forward", out=N, inp=_inputs(np.random.default_rng(0)), N=N)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_gelu_backward_accumulates(backend):
    rng = np.random.default_rng(1)
    x = _inputs(rng)
    check(backend, "gelu_backward", dinp=N, dout=rng.standard_normal(N).astype(np.float32), inp=x, N=N)


def test_gelu_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(20) * 2.0, [0.0, 3.5, -3.5]])
    w = rng.standard_normal(x.size)
    num = numerical_grad(lambda a: (gelu_forward_ref(a) * w).sum(), x)
    rtol, atol = tolerance("gelu_backward", case="reference")
    np.testing.assert_allclose(gelu_backward_ref(w, x), num, rtol=rtol, atol=atol)


def _tanh_f32_array():
    from numba import njit, prange

    from numbagpt.cpu.fastmath import tanh_f32

    @njit(parallel=True, fastmath={"contract"})  # the kernels' flags
    def tanh_all(out, x):
        for i in prange(x.size):
            out[i] = tanh_f32(x[i])

    return tanh_all


def test_vector_tanh_within_2_ulp_of_float64_tanh_everywhere():
    """tanh_f32 against float64 tanh, in ulps of the float32 result: 2^22 bit patterns drawn over
    every finite float32 (so every binade, denormals included), 2^22 evenly spaced points of [-10, 10]
    where the function is not ±1, the formula's switch at 0.625, and the special values."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 2**22, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    edge = np.float32(0.625)
    x = np.concatenate([x, np.linspace(-10, 10, 2**22, dtype=np.float32),
                        [edge, np.nextafter(edge, np.float32(0)), -edge, 0.0, 1e-45, -1e-45, 43.5, 88.0, 1e38]])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    _tanh_f32_array()(out, x)
    ref = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(ref.astype(np.float32))).astype(np.float64)
    err = np.abs(out.astype(np.float64) - ref) / ulp
    assert err.max() <= 2.0, (err.max(), x[np.argmax(err)])
    # odd, exact in the tails and at zero; NaN propagates
    np.testing.assert_array_equal(out[x > 10], 1.0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)
    s = np.empty_like(special)
    _tanh_f32_array()(s, special)
    assert s[0] == 0 and not np.signbit(s[0]) and s[1] == 0 and np.signbit(s[1])
    assert s[2] == 1.0 and s[3] == -1.0 and np.isnan(s[4])
