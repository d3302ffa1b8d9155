import numpy as np

from numbagpt.cpu import residual_backward, residual_forward
from reference import residual_backward_ref, residual_forward_ref

N = 2 * 7 * 12 + 5


def test_residual_forward():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(np.float32)
    out = np.full(N, np.nan, dtype=np.float32)
    residual_forward(out, a, b, N)
    np.testing.assert_allclose(out, residual_forward_ref(a, b), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out, a + b)  # one float32 add: exact


def test_residual_backward_accumulates():
    rng = np.random.default_rng(1)
    dout = rng.standard_normal(N).astype(np.float32)
    d1_0, d2_0 = rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(np.float32)
    d1, d2 = d1_0.copy(), d2_0.copy()
    residual_backward(d1, d2, dout, N)
    r1, r2 = residual_backward_ref(dout)
    np.testing.assert_allclose(d1, d1_0 + r1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d2, d2_0 + r2, rtol=1e-6, atol=1e-7)


def test_residual_partial_length():
    # N smaller than the buffers: the tail is left alone
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(np.float32)
    out = np.zeros(N, dtype=np.float32)
    residual_forward(out, a, b, N - 5)
    np.testing.assert_array_equal(out[N - 5:], 0.0)
