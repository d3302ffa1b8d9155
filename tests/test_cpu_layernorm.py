import numpy as np
import pytest

from numbagpt.cpu import layernorm_backward, layernorm_forward
from reference import layernorm_backward_ref, layernorm_forward_ref, numerical_grad

B, T = 2, 7


def _data(rng, C):
    # an offset and a spread of scales: the variance must not come from E[x²] − E[x]²
    x = (rng.standard_normal((B, T, C)) * rng.uniform(0.1, 3.0, size=(B, T, 1)) + 5.0).astype(np.float32)
    w = (1.0 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    b = (0.5 * rng.standard_normal(C)).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("C", [12, 36])  # 36: a partial last channel block in the dweight reduction
def test_layernorm_forward(C):
    rng = np.random.default_rng(0)
    x, w, b = _data(rng, C)
    out = np.full(B * T * C, np.nan, dtype=np.float32)
    mean = np.full(B * T, np.nan, dtype=np.float32)
    rstd = np.full(B * T, np.nan, dtype=np.float32)
    layernorm_forward(out, mean, rstd, x.reshape(-1), w, b, B, T, C)
    rout, rmean, rrstd = layernorm_forward_ref(x, w, b)
    np.testing.assert_allclose(out.reshape(B, T, C), rout, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean.reshape(B, T), rmean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rstd.reshape(B, T), rrstd, rtol=1e-6)


@pytest.mark.parametrize("C", [12, 36])
def test_layernorm_backward_accumulates(C):
    rng = np.random.default_rng(1)
    x, w, b = _data(rng, C)
    mean = np.zeros(B * T, dtype=np.float32)
    rstd = np.zeros(B * T, dtype=np.float32)
    out = np.zeros(B * T * C, dtype=np.float32)
    layernorm_forward(out, mean, rstd, x.reshape(-1), w, b, B, T, C)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    dx0 = rng.standard_normal(B * T * C).astype(np.float32)
    dw0 = rng.standard_normal(C).astype(np.float32)
    db0 = rng.standard_normal(C).astype(np.float32)
    dx, dw, db = dx0.copy(), dw0.copy(), db0.copy()
    layernorm_backward(dx, dw, db, dout.reshape(-1), x.reshape(-1), w, mean, rstd, B, T, C)
    rdx, rdw, rdb = layernorm_backward_ref(dout, x, w)
    np.testing.assert_allclose(dx.reshape(B, T, C), dx0.reshape(B, T, C) + rdx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw0 + rdw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, db0 + rdb, rtol=1e-5, atol=1e-5)


def test_layernorm_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5)) + 1.0
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    g = rng.standard_normal((2, 3, 5))
    dx, dw, db = layernorm_backward_ref(g, x, w)
    np.testing.assert_allclose(dx, numerical_grad(lambda a: (layernorm_forward_ref(a, w, b)[0] * g).sum(), x), atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(lambda a: (layernorm_forward_ref(x, a, b)[0] * g).sum(), w), atol=1e-7)
    np.testing.assert_allclose(db, numerical_grad(lambda a: (layernorm_forward_ref(x, w, a)[0] * g).sum(), b), atol=1e-7)
