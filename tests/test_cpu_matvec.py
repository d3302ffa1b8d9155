"""matvec_forward (the one-position matmul of generation) against the NumPy float64 reference."""
import numpy as np
import pytest

from numbagpt.cpu import matvec_forward
from reference import matmul_forward_ref


# M rows (decoding B sequences), C and OC not multiples of the 4-row blocks or of the SIMD width
@pytest.mark.parametrize("M,C,OC,bias", [(1, 64, 96, True), (1, 37, 50, False), (3, 24, 7, True), (8, 130, 257, True)])
def test_matvec_forward(M, C, OC, bias):
    rng = np.random.default_rng(M * OC)
    inp = rng.standard_normal((M, C)).astype(np.float32)
    w = rng.standard_normal((OC, C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32) if bias else None
    out = np.full(M * OC, np.nan, np.float32)
    matvec_forward(out, inp.reshape(-1), w.reshape(-1), b, M, C, OC)
    np.testing.assert_allclose(out.reshape(M, OC), matmul_forward_ref(inp, w, b), rtol=1e-5, atol=1e-5)
