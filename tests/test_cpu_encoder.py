"""encoder_forward / encoder_backward on every backend against the float64 reference (tests/harness.py)."""
import numpy as np
import pytest

from harness import cases, check, rnd, tolerance
from reference import encoder_backward_ref, encoder_forward_ref, numerical_grad

V, Vp, maxT = 37, 64, 9
# (B, T, C): 36 gives channel blocks of 16 with a partial last block
SHAPES = cases(cpu=[(2, 7, 12), (2, 7, 36)], cuda=[(2, 5, 12)])


def _tokens(rng, B, T):
    inp = rng.integers(0, V, size=(B, T)).astype(np.int32)
    inp[1, 3] = inp[0, 0] = inp[1, T - 1]  # repeated ids: the dwte scatter must add, not overwrite
    return inp.reshape(-1)


@pytest.mark.parametrize("backend,B,T,C", SHAPES)
def test_encoder_forward(backend, B, T, C):
    rng = np.random.default_rng(0)
    check(backend, "encoder_forward", out=B * T * C, inp=_tokens(rng, B, T), wte=rnd(rng, Vp, C),
          wpe=rnd(rng, maxT, C), B=B, T=T, C=C)


@pytest.mark.parametrize("backend,B,T,C", SHAPES)
def test_encoder_backward_accumulates(backend, B, T, C):
    rng = np.random.default_rng(1)
    inp = _tokens(rng, B, T)
    dwte0, dwpe0 = rnd(rng, Vp, C), rnd(rng, maxT, C)
    got = check(backend, "encoder_backward", dwte=dwte0, dwpe=dwpe0, dout=rnd(rng, B, T, C), inp=inp, B=B, T=T, C=C)
    # rows of tokens never seen and positions >= T are untouched
    unseen = np.setdiff1d(np.arange(Vp), inp)
    np.testing.assert_array_equal(got["dwte"].reshape(Vp, C)[unseen], dwte0.reshape(Vp, C)[unseen])
    np.testing.assert_array_equal(got["dwpe"].reshape(maxT, C)[T:], dwpe0.reshape(maxT, C)[T:])


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_encoder_backward_one_token_everywhere(backend):
    # 512 positions of one token id, with the threads the process has: a scatter over (b, t) in
    # parallel would lose some of the adds into its dwte row (and dwpe's across b). dout ~ 0.01:
    # 512-term float32 sums within the contract's tolerance; a lost add is ~0.01
    B, T, C = 8, 64, 16
    rng = np.random.default_rng(4)
    inp = np.zeros(B * T, np.int32)
    check(backend, "encoder_backward", dwte=rnd(rng, Vp, C), dwpe=rnd(rng, T, C), dout=rnd(rng, B, T, C, scale=0.01),
          inp=inp, B=B, T=T, C=C)


def test_encoder_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    rtol, atol = tolerance("encoder_backward", case="reference")
    B, C, Vs = 2, 4, 6
    inp = rng.integers(0, Vs, size=(B, 3))
    inp[0, 0] = inp[1, 2]
    wte, wpe, w = rng.standard_normal((Vs, C)), rng.standard_normal((5, C)), rng.standard_normal((B, 3, C))
    dwte, dwpe = encoder_backward_ref(w, inp, Vs, 5)
    num_wte = numerical_grad(lambda a: (encoder_forward_ref(inp, a, wpe) * w).sum(), wte)
    num_wpe = numerical_grad(lambda a: (encoder_forward_ref(inp, wte, a) * w).sum(), wpe)
    np.testing.assert_allclose(dwte, num_wte, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dwpe, num_wpe, rtol=rtol, atol=atol)
