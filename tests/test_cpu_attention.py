"""attention_forward / attention_backward (flash attention: out and lse, no (T, T) buffer) on every backend
against the float64 reference (tests/harness.py), the reference against finite differences, and the
kernel's backward against its own forward."""
import inspect

import numpy as np
import pytest

from harness import cases, check, rnd, tolerance
from reference import attention_backward_ref, attention_forward_ref, attention_lse_ref, numerical_grad
from simulator import SIM

cpu_only = pytest.mark.skipif(SIM, reason="the CPU kernels' own structure (the CUDA simulator run skips it)")

B, T, C, NH = 2, 7, 12, 3
# (B, T, C, NH). CPU (AVX-512 blocks: 32 queries x 64 keys): T = 1, 2, odd; a query block -1/+1 (31,
# 33), a key block -1/0/+1 (63, 64, 65), several blocks (70, 100) and >= 512 (520, every tile kind:
# skipped, masked, full); hs = 64 and odd or non-multiple-of-16 head sizes (5, 15, 4, 24, 48, 5).
SHAPES = [(B, T, C, NH), (1, 1, 16, 1), (1, 2, 10, 2), (1, 31, 30, 2), (1, 33, 64, 1), (2, 63, 24, 1),
          (1, 64, 128, 2), (1, 65, 128, 2), (1, 37, 30, 2), (2, 70, 64, 2), (1, 9, 48, 1), (2, 20, 20, 4),
          (1, 100, 15, 3), (1, 520, 128, 2)]
# CUDA (simulator): tiny shapes, T > 64 for several tiles.
CUDA_SHAPES = [(2, 5, 12, 3), (1, 70, 8, 2)]


def _forward(backend, qkv, B, T, C, NH, **kw):
    return check(backend, "attention_forward", out=B * T * C, lse=B * NH * T, inp=qkv, B=B, T=T, C=C, NH=NH, **kw)


def _ref_outputs(qkv, B, T, C, NH):
    """The float64 reference's out and lse as float32: the backward's inputs."""
    q = qkv.reshape(B, T, 3 * C)
    return (attention_forward_ref(q, NH)[0].astype(np.float32).reshape(-1),
            attention_lse_ref(q, NH).astype(np.float32).reshape(-1))


# scale 2: the first two shapes with larger scores too
@pytest.mark.parametrize("backend,B,T,C,NH,scale", cases(
    cpu=[s + (2.0,) for s in SHAPES[:2]] + [s + (1.0,) for s in SHAPES], cuda=[s + (1.0,) for s in CUDA_SHAPES]))
def test_attention_forward(backend, B, T, C, NH, scale):
    qkv = rnd(np.random.default_rng(0), B, T, 3 * C, scale=scale)
    _forward(backend, qkv, B, T, C, NH)


@pytest.mark.parametrize("backend,B,T,C,NH", cases(cpu=SHAPES, cuda=CUDA_SHAPES))
def test_attention_backward_accumulates(backend, B, T, C, NH):
    # dinp accumulates onto random values; out and lse are the forward's outputs (the reference's)
    rng = np.random.default_rng(1)
    qkv = rnd(rng, B, T, 3 * C)
    out, lse = _ref_outputs(qkv, B, T, C, NH)
    check(backend, "attention_backward", dinp=B * T * 3 * C, dout=rnd(rng, B, T, C), inp=qkv, out=out, lse=lse,
          B=B, T=T, C=C, NH=NH)


def test_attention_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    rtol, atol = tolerance("attention_backward", case="reference")
    Bs, Ts, Cs, NHs = 1, 4, 6, 2
    qkv = rng.standard_normal((Bs, Ts, 3 * Cs))
    g = rng.standard_normal((Bs, Ts, Cs))
    num = numerical_grad(lambda a: (attention_forward_ref(a, NHs)[0] * g).sum(), qkv)
    np.testing.assert_allclose(attention_backward_ref(g, qkv, NHs), num, rtol=rtol, atol=atol)


def test_attention_lse_reference():
    # lse is the log of the softmax's denominator: exp(preatt − lse) is the reference's att
    qkv = np.random.default_rng(9).standard_normal((2, 6, 24))
    _, preatt, att = attention_forward_ref(qkv, 2)
    p = np.exp(preatt - attention_lse_ref(qkv, 2)[..., None]) * np.tril(np.ones((6, 6)))
    np.testing.assert_allclose(p, att, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend,B,T,C,NH", cases(cpu=[(B, T, C, NH), (1, 70, 32, 2)]))
def test_attention_backward_against_float64_loss_of_the_kernel(backend, B, T, C, NH):
    # Finite differences of a scalar loss built from the kernel's own forward (in float32, so a
    # coarse step and tolerance): ties the kernel backward to the kernel forward (and its lse) directly.
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    g = rng.standard_normal((B, T, C))
    got = _forward(backend, qkv, B, T, C, NH)
    dinp = check(backend, "attention_backward", dinp=np.zeros(B * T * 3 * C, np.float32), dout=g.astype(np.float32),
                 inp=qkv, out=got["out"], lse=got["lse"], B=B, T=T, C=C, NH=NH)["dinp"].reshape(B, T, 3 * C)
    h = 1e-2
    rtol, atol = tolerance("attention_backward", "dinp", "finite_differences")
    for idx in [(0, 0, 0), (0, 3, C + 1), (B - 1, 6, 2 * C + 5), (B - 1, 2, 4), (0, 5, C + 11), (0, T - 1, C - 1)]:
        qp, qm = qkv.copy(), qkv.copy()
        qp[idx] += h
        qm[idx] -= h
        fp = (_forward(backend, qp, B, T, C, NH)["out"].astype(np.float64).reshape(B, T, C) * g).sum()
        fm = (_forward(backend, qm, B, T, C, NH)["out"].astype(np.float64).reshape(B, T, C) * g).sum()
        num = (fp - fm) / (2 * h)
        assert abs(dinp[idx] - num) < max(atol, rtol * abs(num)), (idx, dinp[idx], num)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_attention_saturated_softmax(backend):
    # large scores: most exps of each row underflow (scores − max far below −87), the softmax is near
    # one-hot and the online softmax's running max jumps between key blocks. q and k are small integers
    # and hs = 16 (scale 1/4), so the float32 scores are exact and out, lse and dinp are compared with
    # the float64 reference itself (scores of ~100s would otherwise carry float32 rounding of ~1e-5
    # absolute, which moves the softmax by as much relatively).
    Bs, Ts, Cs, NHs = 1, 140, 32, 2
    rng = np.random.default_rng(7)
    qkv = np.concatenate([rng.integers(-12, 13, (Bs, Ts, 2 * Cs)),
                          12.0 * rng.standard_normal((Bs, Ts, Cs))], axis=-1).astype(np.float32)
    got = _forward(backend, qkv, Bs, Ts, Cs, NHs, case="saturated")
    lower = np.tril(np.ones((Ts, Ts), dtype=bool))
    rpre = attention_forward_ref(qkv, NHs)[1]
    gaps = rpre.max(axis=-1, where=lower, initial=-np.inf)[..., None] - rpre
    assert (gaps[..., lower] > 87).mean() > 0.2  # many exps flushed to 0
    check(backend, "attention_backward", dinp=Bs * Ts * 3 * Cs, dout=rnd(rng, Bs, Ts, Cs), inp=qkv, out=got["out"],
          lse=got["lse"], B=Bs, T=Ts, C=Cs, NH=NHs, case="saturated")


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_attention_backward_is_deterministic(backend):
    # no two parallel units write the same cell of dinp (dk, dv by key block, dq per unit and then
    # summed in order): repeated runs agree bit for bit
    Bs, Ts, Cs, NHs = 3, 133, 48, 3
    rng = np.random.default_rng(8)
    qkv = rnd(rng, Bs, Ts, 3 * Cs)
    out, lse = _ref_outputs(qkv, Bs, Ts, Cs, NHs)
    dout = rnd(rng, Bs, Ts, Cs)
    res = [check(backend, "attention_backward", dinp=np.zeros(Bs * Ts * 3 * Cs, np.float32), dout=dout, inp=qkv,
                 out=out, lse=lse, B=Bs, T=Ts, C=Cs, NH=NHs)["dinp"] for _ in range(3)]
    np.testing.assert_array_equal(res[0], res[1])
    np.testing.assert_array_equal(res[0], res[2])


@cpu_only
@pytest.mark.parametrize("groups", [1, 2, 3, 5])
def test_cpu_attention_any_number_of_units_per_head(monkeypatch, groups):
    # G parallel units per head (query blocks of the forward, key blocks of the backward dealt out
    # round-robin; the backward's dq as G partial sums added after): every G gives the reference
    import numbagpt.cpu as cpu
    from numbagpt.cpu import attention
    monkeypatch.setattr(attention, "_groups", lambda B, NH, T, block: groups)
    Bs, Ts, Cs, NHs = 1, 200, 64, 2
    rng = np.random.default_rng(10)
    qkv = rnd(rng, Bs, Ts, 3 * Cs)
    _forward(cpu, qkv, Bs, Ts, Cs, NHs)
    out, lse = _ref_outputs(qkv, Bs, Ts, Cs, NHs)
    check(cpu, "attention_backward", dinp=Bs * Ts * 3 * Cs, dout=rnd(rng, Bs, Ts, Cs), inp=qkv, out=out, lse=lse,
          B=Bs, T=Ts, C=Cs, NH=NHs)


def _other_isas():
    if SIM:
        return []
    from numbagpt.cpu import attention, matmul
    return [k for k in matmul.supported_kernels() if k != attention._kernel]


@cpu_only
@pytest.mark.parametrize("isa", _other_isas())
@pytest.mark.parametrize("B_,T_,C_,NH_", [(2, 7, 12, 3), (1, 70, 80, 1)])
def test_cpu_attention_every_isa(isa, B_, T_, C_, NH_):
    # the same code on 8-lane (avx2) and 4-lane (portable) vectors, with their smaller blocks
    import numbagpt.cpu as cpu
    from numbagpt.cpu import attention
    saved = attention._kernel
    attention.set_kernel(isa)
    try:
        rng = np.random.default_rng(11)
        qkv = rnd(rng, B_, T_, 3 * C_)
        _forward(cpu, qkv, B_, T_, C_, NH_)
        out, lse = _ref_outputs(qkv, B_, T_, C_, NH_)
        check(cpu, "attention_backward", dinp=B_ * T_ * 3 * C_, dout=rnd(rng, B_, T_, C_), inp=qkv, out=out,
              lse=lse, B=B_, T=T_, C=C_, NH=NH_)
    finally:
        attention.set_kernel(saved)


@cpu_only
def test_no_T_by_T_buffer_in_training():
    # the activation layout (and so its gradient buffer) grows linearly with T: no (T, T) tensor,
    # and attention's kernels take no argument but out/lse/inp/dinp/dout and sizes
    from numbagpt.config import preset
    from numbagpt.layout import activation_layout, activation_shapes
    import numbagpt.cpu as cpu
    cfg = preset("tiny")
    for recompute in (0, 1, 2):
        small, big = activation_layout(cfg, 2, 64, recompute), activation_layout(cfg, 2, 128, recompute)
        assert big.total == 2 * small.total
        for name, shape in activation_shapes(cfg, 2, 64, recompute):
            assert list(shape).count(64) <= 1, name
    assert list(inspect.signature(cpu.attention_forward).parameters) == ["out", "lse", "inp", "B", "T", "C", "NH"]
    assert list(inspect.signature(cpu.attention_backward).parameters) == [
        "dinp", "dout", "inp", "out", "lse", "B", "T", "C", "NH"]
