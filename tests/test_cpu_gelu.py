import numpy as np

from numbagpt.cpu import gelu_backward, gelu_forward
from reference import gelu_backward_ref, gelu_forward_ref, numerical_grad

N = 1003


def _inputs(rng):
    x = rng.standard_normal(N) * 2.0
    x[:7] = [0.0, -1e-3, 5.0, -5.0, 12.0, -12.0, 100.0]  # tails: tanh saturates
    return x.astype(np.float32)


def test_gelu_forward():
    rng = np.random.default_rng(0)
    x = _inputs(rng)
    out = np.full(N, np.nan, dtype=np.float32)
    gelu_forward(out, x, N)
    np.testing.assert_allclose(out, gelu_forward_ref(x), rtol=1e-5, atol=1e-6)


def test_gelu_backward_accumulates():
    rng = np.random.default_rng(1)
    x = _inputs(rng)
    dout = rng.standard_normal(N).astype(np.float32)
    d0 = rng.standard_normal(N).astype(np.float32)
    dinp = d0.copy()
    gelu_backward(dinp, dout, x, N)
    np.testing.assert_allclose(dinp, d0 + gelu_backward_ref(dout, x), rtol=1e-5, atol=2e-6)


def test_gelu_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(20) * 2.0, [0.0, 3.5, -3.5]])
    w = rng.standard_normal(x.size)
    num = numerical_grad(lambda a: (gelu_forward_ref(a) * w).sum(), x)
    np.testing.assert_allclose(gelu_backward_ref(w, x), num, rtol=1e-6, atol=1e-8)
