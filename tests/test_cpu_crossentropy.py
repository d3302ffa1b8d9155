import numpy as np
import pytest

from numbagpt.cpu import crossentropy_backward, crossentropy_forward
from reference import crossentropy_backward_ref, crossentropy_forward_ref, numerical_grad

B, T, V, Vp = 2, 7, 37, 64


def _data(rng, shift=0.0):
    logits = (3.0 * rng.standard_normal((B, T, Vp)) + shift).astype(np.float32)
    # Padding is never read: NaN there would poison any sum that touched it.
    logits[..., V:] = np.nan
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    targets[0, 0], targets[0, 1] = 0, V - 1  # both ends of the real vocabulary
    dlosses = rng.uniform(0.5, 2.0, size=(B, T)).astype(np.float32) / (B * T)
    return logits, targets, dlosses


@pytest.mark.parametrize("shift", [0.0, 1000.0, -1000.0])  # exp would overflow/underflow unshifted
def test_crossentropy_forward(shift):
    rng = np.random.default_rng(0)
    logits, targets, _ = _data(rng, shift)
    losses = np.full(B * T, np.nan, dtype=np.float32)
    crossentropy_forward(losses, logits.reshape(-1), targets.reshape(-1), B, T, V, Vp)
    ref = crossentropy_forward_ref(logits, targets, V)
    np.testing.assert_allclose(losses.reshape(B, T), ref, rtol=1e-5, atol=1e-5 if shift else 1e-6)
    # and it is −log softmax of the target, computed the textbook way in float64
    z = logits[..., :V].astype(np.float64) - shift
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    nll = -np.log(np.take_along_axis(p, targets[..., None].astype(np.int64), axis=-1)[..., 0])
    np.testing.assert_allclose(losses.reshape(B, T), nll, rtol=1e-5, atol=1e-5 if shift else 1e-6)


def _check_dlogits(dlogits, logits, targets, dlosses):
    ref = crossentropy_backward_ref(dlosses, logits, targets, V)
    d = dlogits.reshape(B, T, Vp)
    np.testing.assert_allclose(d[..., :V], ref[..., :V], rtol=1e-5, atol=1e-7)
    assert np.all(d[..., V:] == 0.0)  # padded columns exactly 0 (and not NaN)


@pytest.mark.parametrize("shift", [0.0, 1000.0])
def test_crossentropy_backward_writes(shift):
    rng = np.random.default_rng(1)
    logits, targets, dlosses = _data(rng, shift)
    dlogits = np.full(B * T * Vp, 123.0, dtype=np.float32)  # written, not accumulated
    before = logits.copy()
    crossentropy_backward(dlogits, dlosses.reshape(-1), logits.reshape(-1), targets.reshape(-1), B, T, V, Vp)
    _check_dlogits(dlogits, before, targets, dlosses)
    np.testing.assert_array_equal(logits, before)  # the input is untouched when not in place


def test_crossentropy_backward_in_place():
    rng = np.random.default_rng(2)
    logits, targets, dlosses = _data(rng)
    before = logits.copy()
    buf = logits.reshape(-1)
    crossentropy_backward(buf, dlosses.reshape(-1), buf, targets.reshape(-1), B, T, V, Vp)
    _check_dlogits(buf, before, targets, dlosses)
    # each row of dlogits sums to 0 over the real vocabulary: softmax sums to 1, minus the one-hot
    np.testing.assert_allclose(buf.reshape(B, T, Vp)[..., :V].sum(axis=-1), 0.0, atol=1e-7)


def test_crossentropy_reference_backward_finite_differences():
    rng = np.random.default_rng(3)
    Bs, Ts, Vs, Vps = 1, 3, 5, 8
    logits = rng.standard_normal((Bs, Ts, Vps))
    targets = rng.integers(0, Vs, size=(Bs, Ts))
    dl = rng.uniform(0.5, 2.0, size=(Bs, Ts))
    num = numerical_grad(lambda a: (crossentropy_forward_ref(a, targets, Vs) * dl).sum(), logits)
    np.testing.assert_allclose(crossentropy_backward_ref(dl, logits, targets, Vs), num, atol=1e-8)
