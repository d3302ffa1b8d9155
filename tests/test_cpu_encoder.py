import numpy as np
import pytest

from numbagpt.cpu import encoder_backward, encoder_forward
from reference import encoder_backward_ref, encoder_forward_ref, numerical_grad

B, T, V, Vp, maxT = 2, 7, 37, 64, 9


def _tokens(rng):
    inp = rng.integers(0, V, size=(B, T)).astype(np.int32)
    inp[1, 3] = inp[0, 0] = inp[1, 6]  # repeated ids: the dwte scatter must add, not overwrite
    return inp


@pytest.mark.parametrize("C", [12, 36])  # 36: channel blocks of 16 with a partial last block
def test_encoder_forward(C):
    rng = np.random.default_rng(0)
    inp = _tokens(rng)
    wte = rng.standard_normal(Vp * C).astype(np.float32)
    wpe = rng.standard_normal(maxT * C).astype(np.float32)
    out = np.full(B * T * C, np.nan, dtype=np.float32)
    encoder_forward(out, inp.reshape(-1), wte, wpe, B, T, C)
    ref = encoder_forward_ref(inp, wte.reshape(Vp, C), wpe.reshape(maxT, C))
    np.testing.assert_allclose(out.reshape(B, T, C), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("C", [12, 36])
def test_encoder_backward_accumulates(C):
    rng = np.random.default_rng(1)
    inp = _tokens(rng)
    dout = rng.standard_normal(B * T * C).astype(np.float32)
    dwte0 = rng.standard_normal(Vp * C).astype(np.float32)
    dwpe0 = rng.standard_normal(maxT * C).astype(np.float32)
    dwte, dwpe = dwte0.copy(), dwpe0.copy()
    encoder_backward(dwte, dwpe, dout, inp.reshape(-1), B, T, C)
    rwte, rwpe = encoder_backward_ref(dout.reshape(B, T, C), inp, Vp, maxT)
    np.testing.assert_allclose(dwte.reshape(Vp, C), dwte0.reshape(Vp, C) + rwte, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dwpe.reshape(maxT, C), dwpe0.reshape(maxT, C) + rwpe, rtol=1e-6, atol=1e-6)
    # rows of tokens never seen and positions >= T are untouched
    unseen = np.setdiff1d(np.arange(Vp), inp)
    np.testing.assert_array_equal(dwte.reshape(Vp, C)[unseen], dwte0.reshape(Vp, C)[unseen])
    np.testing.assert_array_equal(dwpe.reshape(maxT, C)[T:], dwpe0.reshape(maxT, C)[T:])


def test_encoder_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    C, Vs = 4, 6
    inp = rng.integers(0, Vs, size=(B, 3))
    inp[0, 0] = inp[1, 2]
    wte, wpe, w = rng.standard_normal((Vs, C)), rng.standard_normal((5, C)), rng.standard_normal((B, 3, C))
    dwte, dwpe = encoder_backward_ref(w, inp, Vs, 5)
    np.testing.assert_allclose(dwte, numerical_grad(lambda a: (encoder_forward_ref(inp, a, wpe) * w).sum(), wte), atol=1e-7)
    np.testing.assert_allclose(dwpe, numerical_grad(lambda a: (encoder_forward_ref(inp, wte, a) * w).sum(), wpe), atol=1e-7)
