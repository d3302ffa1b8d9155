import numpy as np
import pytest

from numbagpt.cpu import attention_backward, attention_forward
from reference import attention_backward_ref, attention_forward_ref, numerical_grad

B, T, C, NH = 2, 7, 12, 3


def _run_forward(qkv, B, T, C, NH):
    out = np.full(B * T * C, np.nan, dtype=np.float32)
    preatt = np.full(B * NH * T * T, 7.0, dtype=np.float32)
    att = np.full(B * NH * T * T, 7.0, dtype=np.float32)  # the masked part must be overwritten with 0
    attention_forward(out, preatt, att, qkv.reshape(-1), B, T, C, NH)
    return out.reshape(B, T, C), preatt.reshape(B, NH, T, T), att.reshape(B, NH, T, T)


@pytest.mark.parametrize("B,T,C,NH", [(B, T, C, NH), (1, 8, 16, 1)])
def test_attention_forward(B, T, C, NH):
    rng = np.random.default_rng(0)
    qkv = (2.0 * rng.standard_normal((B, T, 3 * C))).astype(np.float32)
    out, preatt, att = _run_forward(qkv, B, T, C, NH)
    rout, rpre, ratt = attention_forward_ref(qkv, NH)
    np.testing.assert_allclose(out, rout, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(att, ratt, rtol=1e-5, atol=1e-7)
    lower = np.tril(np.ones((T, T), dtype=bool))
    np.testing.assert_allclose(preatt[..., lower], rpre[..., lower], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(att[..., ~lower], 0.0)
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("B,T,C,NH", [(B, T, C, NH), (1, 5, 16, 1)])
def test_attention_backward_accumulates(B, T, C, NH):
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    _, _, att = _run_forward(qkv, B, T, C, NH)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    d0 = rng.standard_normal(B * T * 3 * C).astype(np.float32)
    dinp = d0.copy()
    dpreatt = np.zeros(B * NH * T * T, dtype=np.float32)
    datt = np.zeros(B * NH * T * T, dtype=np.float32)
    attention_backward(dinp, dpreatt, datt, dout.reshape(-1), qkv.reshape(-1), att.reshape(-1), B, T, C, NH)
    ref = attention_backward_ref(dout, qkv, NH)
    np.testing.assert_allclose(dinp.reshape(B, T, 3 * C), d0.reshape(B, T, 3 * C) + ref, rtol=1e-5, atol=1e-5)


def test_attention_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    Bs, Ts, Cs, NHs = 1, 4, 6, 2
    qkv = rng.standard_normal((Bs, Ts, 3 * Cs))
    g = rng.standard_normal((Bs, Ts, Cs))
    num = numerical_grad(lambda a: (attention_forward_ref(a, NHs)[0] * g).sum(), qkv)
    np.testing.assert_allclose(attention_backward_ref(g, qkv, NHs), num, atol=1e-7)


def test_attention_backward_against_float64_loss_of_the_kernel():
    # Finite differences of a scalar loss built from the kernel's own forward (in float32, so a
    # coarse step and tolerance): ties the kernel backward to the kernel forward directly.
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    g = rng.standard_normal((B, T, C))
    _, _, att = _run_forward(qkv, B, T, C, NH)
    dinp = np.zeros(B * T * 3 * C, dtype=np.float32)
    attention_backward(dinp, np.zeros(B * NH * T * T, np.float32), np.zeros(B * NH * T * T, np.float32),
                       g.astype(np.float32).reshape(-1), qkv.reshape(-1), att.reshape(-1), B, T, C, NH)
    h = 1e-2
    for idx in [(0, 0, 0), (0, 3, C + 1), (1, 6, 2 * C + 5), (1, 2, 4), (0, 5, C + 11)]:
        qp, qm = qkv.copy(), qkv.copy()
        qp[idx] += h
        qm[idx] -= h
        fp = (_run_forward(qp, B, T, C, NH)[0].astype(np.float64) * g).sum()
        fm = (_run_forward(qm, B, T, C, NH)[0].astype(np.float64) * g).sum()
        num = (fp - fm) / (2 * h)
        assert abs(dinp.reshape(B, T, 3 * C)[idx] - num) < 2e-3 * max(1.0, abs(num)), (idx, dinp.reshape(B, T, 3 * C)[idx], num)


# Shapes for both forms of the products (rows shorter than hs use dot products, longer ones the
# transposed form), hs not a multiple of 4 and T not a multiple of 4 (the unrolled loops' tails).
_SHAPES = [(1, 37, 30, 2), (2, 70, 64, 2), (1, 9, 48, 1), (2, 20, 20, 4)]


@pytest.mark.parametrize("B,T,C,NH", _SHAPES)
def test_attention_forward_more_shapes(B, T, C, NH):
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    out, preatt, att = _run_forward(qkv, B, T, C, NH)
    rout, rpre, ratt = attention_forward_ref(qkv, NH)
    lower = np.tril(np.ones((T, T), dtype=bool))
    np.testing.assert_allclose(out, rout, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(att, ratt, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(preatt[..., lower], rpre[..., lower], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(att[..., ~lower], 0.0)


@pytest.mark.parametrize("B,T,C,NH", _SHAPES)
def test_attention_backward_more_shapes(B, T, C, NH):
    rng = np.random.default_rng(6)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    _, _, att = _run_forward(qkv, B, T, C, NH)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    dinp = np.zeros(B * T * 3 * C, dtype=np.float32)
    # scratch: contents on entry must not matter
    dpreatt = np.full(B * NH * T * T, np.nan, dtype=np.float32)
    datt = np.full(B * NH * T * T, np.nan, dtype=np.float32)
    attention_backward(dinp, dpreatt, datt, dout.reshape(-1), qkv.reshape(-1), att.reshape(-1), B, T, C, NH)
    np.testing.assert_allclose(dinp.reshape(B, T, 3 * C), attention_backward_ref(dout, qkv, NH), rtol=1e-5, atol=1e-5)


def test_attention_saturated_softmax():
    # large scores: most exps of each row underflow (scores − max far below −87), att is near
    # one-hot. Scores of ~100s carry float32 rounding of ~1e-5 absolute, which moves att by as
    # much relatively, so the softmax is checked against float64 maths on the kernel's own preatt.
    Bs, Ts, Cs, NHs = 1, 40, 16, 2
    rng = np.random.default_rng(7)
    qkv = (12.0 * rng.standard_normal((Bs, Ts, 3 * Cs))).astype(np.float32)
    out, preatt, att = _run_forward(qkv, Bs, Ts, Cs, NHs)
    _, rpre, _ = attention_forward_ref(qkv, NHs)
    lower = np.tril(np.ones((Ts, Ts), dtype=bool))
    np.testing.assert_allclose(preatt[..., lower], rpre[..., lower], rtol=1e-5, atol=1e-5)
    gaps = rpre.max(axis=-1, where=lower, initial=-np.inf)[..., None] - rpre
    assert (gaps[..., lower] > 87).mean() > 0.2  # many exps flushed to 0
    z = np.where(lower, preatt.astype(np.float64), -np.inf)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(att, p, rtol=2e-6, atol=1e-7)
    v = qkv[..., 2 * Cs:].astype(np.float64).reshape(Bs, Ts, NHs, Cs // NHs).transpose(0, 2, 1, 3)
    rout = np.einsum("bhts,bhsd->bhtd", att.astype(np.float64), v).transpose(0, 2, 1, 3).reshape(Bs, Ts, Cs)
    np.testing.assert_allclose(out, rout, rtol=1e-5, atol=1e-5)


def test_attention_backward_is_deterministic():
    # each parallel unit owns its (b, h) pair's cells of dinp: repeated runs agree bit for bit
    Bs, Ts, Cs, NHs = 3, 33, 24, 3
    rng = np.random.default_rng(8)
    qkv = rng.standard_normal((Bs, Ts, 3 * Cs)).astype(np.float32)
    _, _, att = _run_forward(qkv, Bs, Ts, Cs, NHs)
    dout = rng.standard_normal(Bs * Ts * Cs).astype(np.float32)
    res = []
    for _ in range(3):
        dinp = np.zeros(Bs * Ts * 3 * Cs, dtype=np.float32)
        N = Bs * NHs * Ts * Ts
        attention_backward(dinp, np.zeros(N, np.float32), np.zeros(N, np.float32), dout, qkv.reshape(-1),
                           att.reshape(-1), Bs, Ts, Cs, NHs)
        res.append(dinp)
    np.testing.assert_array_equal(res[0], res[1])
    np.testing.assert_array_equal(res[0], res[2])
