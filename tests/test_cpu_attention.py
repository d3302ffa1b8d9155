"""attention_forward / attention_backward on every backend against the float64 reference (tests/harness.py),
the reference against finite differences, and the kernel's backward against its own forward."""
import numpy as np
import pytest

from harness import cases, check, rnd, tolerance
from reference import attention_backward_ref, attention_forward_ref, numerical_grad

B, T, C, NH = 2, 7, 12, 3
# (B, T, C, NH). CPU: both forms of the products (rows shorter than hs use dot products, longer ones
# the transposed form), hs not a multiple of 4 and T not a multiple of 4 (the unrolled loops' tails).
# CUDA: T > 64 -> 2x2 score tiles, one skipped above the diagonal; causal K ranges.
SHAPES = [(B, T, C, NH), (1, 8, 16, 1), (1, 5, 16, 1), (1, 37, 30, 2), (2, 70, 64, 2), (1, 9, 48, 1),
          (2, 20, 20, 4)]
CUDA_SHAPES = [(2, 5, 12, 3), (1, 70, 8, 2)]


def _forward(backend, qkv, B, T, C, NH, **kw):
    BNTT = B * NH * T * T
    return check(backend, "attention_forward", out=B * T * C, preatt=BNTT, att=BNTT, inp=qkv, B=B, T=T, C=C,
                 NH=NH, **kw)


def _lower(T):
    return np.tril(np.ones((T, T), dtype=bool))


# scale 2: the first two shapes with larger scores too
@pytest.mark.parametrize("backend,B,T,C,NH,scale", cases(
    cpu=[s + (2.0,) for s in SHAPES[:2]] + [s + (1.0,) for s in SHAPES], cuda=[s + (1.0,) for s in CUDA_SHAPES]))
def test_attention_forward(backend, B, T, C, NH, scale):
    qkv = rnd(np.random.default_rng(0), B, T, 3 * C, scale=scale)
    att = _forward(backend, qkv, B, T, C, NH)["att"].reshape(B, NH, T, T)
    np.testing.assert_array_equal(att[..., ~_lower(T)], 0.0)   # the masked part overwritten with 0
    rtol, atol = tolerance("attention_forward", "att_rowsum")
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend,B,T,C,NH", cases(cpu=SHAPES, cuda=CUDA_SHAPES))
def test_attention_backward_accumulates(backend, B, T, C, NH):
    # dinp accumulates onto random values; dpreatt and datt are scratch (NaN on entry) whose causal part
    # holds the intermediates
    rng = np.random.default_rng(1)
    qkv = rnd(rng, B, T, 3 * C)
    att = attention_forward_ref(qkv.reshape(B, T, 3 * C), NH)[2].astype(np.float32)
    BNTT = B * NH * T * T
    check(backend, "attention_backward", dinp=B * T * 3 * C, dpreatt=BNTT, datt=BNTT, dout=rnd(rng, B, T, C),
          inp=qkv, att=att, B=B, T=T, C=C, NH=NH)


def test_attention_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    rtol, atol = tolerance("attention_backward", case="reference")
    Bs, Ts, Cs, NHs = 1, 4, 6, 2
    qkv = rng.standard_normal((Bs, Ts, 3 * Cs))
    g = rng.standard_normal((Bs, Ts, Cs))
    num = numerical_grad(lambda a: (attention_forward_ref(a, NHs)[0] * g).sum(), qkv)
    np.testing.assert_allclose(attention_backward_ref(g, qkv, NHs), num, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_attention_backward_against_float64_loss_of_the_kernel(backend):
    # Finite differences of a scalar loss built from the kernel's own forward (in float32, so a
    # coarse step and tolerance): ties the kernel backward to the kernel forward directly.
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    g = rng.standard_normal((B, T, C))
    att = _forward(backend, qkv, B, T, C, NH)["att"]
    BNTT = B * NH * T * T
    dinp = check(backend, "attention_backward", dinp=np.zeros(B * T * 3 * C, np.float32), dpreatt=BNTT, datt=BNTT,
                 dout=g.astype(np.float32), inp=qkv, att=att, B=B, T=T, C=C, NH=NH)["dinp"].reshape(B, T, 3 * C)
    h = 1e-2
    rtol, atol = tolerance("attention_backward", "dinp", "finite_differences")
    for idx in [(0, 0, 0), (0, 3, C + 1), (1, 6, 2 * C + 5), (1, 2, 4), (0, 5, C + 11)]:
        qp, qm = qkv.copy(), qkv.copy()
        qp[idx] += h
        qm[idx] -= h
        fp = (_forward(backend, qp, B, T, C, NH)["out"].astype(np.float64).reshape(B, T, C) * g).sum()
        fm = (_forward(backend, qm, B, T, C, NH)["out"].astype(np.float64).reshape(B, T, C) * g).sum()
        num = (fp - fm) / (2 * h)
        assert abs(dinp[idx] - num) < max(atol, rtol * abs(num)), (idx, dinp[idx], num)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_attention_saturated_softmax(backend):
    # large scores: most exps of each row underflow (scores − max far below −87), att is near
    # one-hot. Scores of ~100s carry float32 rounding of ~1e-5 absolute, which moves att by as
    # much relatively, so the softmax is checked against float64 maths on the kernel's own preatt.
    Bs, Ts, Cs, NHs = 1, 40, 16, 2
    qkv = (12.0 * np.random.default_rng(7).standard_normal((Bs, Ts, 3 * Cs))).astype(np.float32)
    got = _forward(backend, qkv, Bs, Ts, Cs, NHs, case="saturated", only=("preatt",))
    preatt, att = got["preatt"].reshape(Bs, NHs, Ts, Ts), got["att"].reshape(Bs, NHs, Ts, Ts)
    lower = _lower(Ts)
    rpre = attention_forward_ref(qkv, NHs)[1]
    gaps = rpre.max(axis=-1, where=lower, initial=-np.inf)[..., None] - rpre
    assert (gaps[..., lower] > 87).mean() > 0.2  # many exps flushed to 0
    z = np.where(lower, preatt.astype(np.float64), -np.inf)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    rtol, atol = tolerance("attention_forward", "att", "saturated")
    np.testing.assert_allclose(att, p, rtol=rtol, atol=atol)
    v = qkv[..., 2 * Cs:].astype(np.float64).reshape(Bs, Ts, NHs, Cs // NHs).transpose(0, 2, 1, 3)
    rout = np.einsum("bhts,bhsd->bhtd", att.astype(np.float64), v).transpose(0, 2, 1, 3).reshape(-1)
    rtol, atol = tolerance("attention_forward", "out", "saturated")
    np.testing.assert_allclose(got["out"], rout, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_attention_backward_is_deterministic(backend):
    # each parallel unit owns its (b, h) pair's cells of dinp: repeated runs agree bit for bit
    Bs, Ts, Cs, NHs = 3, 33, 24, 3
    rng = np.random.default_rng(8)
    qkv = rnd(rng, Bs, Ts, 3 * Cs)
    att = attention_forward_ref(qkv.reshape(Bs, Ts, 3 * Cs), NHs)[2].astype(np.float32)
    dout = rnd(rng, Bs, Ts, Cs)
    N = Bs * NHs * Ts * Ts
    res = [check(backend, "attention_backward", dinp=np.zeros(Bs * Ts * 3 * Cs, np.float32), dpreatt=N, datt=N,
                 dout=dout, inp=qkv, att=att, B=Bs, T=Ts, C=Cs, NH=NHs)["dinp"] for _ in range(3)]
    np.testing.assert_array_equal(res[0], res[1])
    np.testing.assert_array_equal(res[0], res[2])
