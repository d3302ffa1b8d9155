"""Checks of reference.py pieces no test_cpu_<kernel>.py of this set covers (matmul's reference is
used by test_cpu_matmul.py): its backward against finite differences of its forward."""
import numpy as np

from reference import matmul_backward_ref, matmul_forward_ref, numerical_grad


def test_matmul_reference_forward_is_linear_layer():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    expect = np.array([[[sum(x[i, j, c] * w[o, c] for c in range(5)) + b[o] for o in range(4)]
                        for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(matmul_forward_ref(x, w, b), expect, rtol=1e-12)
    np.testing.assert_allclose(matmul_forward_ref(x, w, None), expect - b, rtol=1e-12, atol=1e-12)


def test_matmul_reference_backward_finite_differences():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    g = rng.standard_normal((2, 3, 4))
    dx, dw, db = matmul_backward_ref(g, x, w)
    np.testing.assert_allclose(dx, numerical_grad(lambda a: (matmul_forward_ref(a, w, b) * g).sum(), x), atol=1e-8)
    np.testing.assert_allclose(dw, numerical_grad(lambda a: (matmul_forward_ref(x, a, b) * g).sum(), w), atol=1e-8)
    np.testing.assert_allclose(db, numerical_grad(lambda a: (matmul_forward_ref(x, w, a) * g).sum(), b), atol=1e-8)
