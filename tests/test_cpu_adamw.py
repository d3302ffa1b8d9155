"""adamw_update / global_norm_squared on every backend against the float64 reference (tests/harness.py),
and AdamW against torch.optim.AdamW."""
import numpy as np
import pytest

from harness import TORCH_TOL, cases, check, rnd, tolerance
from reference import adamw_update_ref

N = 1001
HP = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def _step(backend, p, m, v, g, t, grad_scale=1.0, n=None, case=None, **hp):
    """One update through the harness; returns (params, m, v) after it."""
    got = check(backend, "adamw_update", params=p, m=m, v=v, grads=g, grad_scale=grad_scale, t=t,
                N=p.size if n is None else n, case=case, **{**HP, **hp})
    return got["params"], got["m"], got["v"]


@pytest.mark.parametrize("backend,grad_scale", cases(cpu=[1.0, 0.25]))
def test_adamw_several_steps_match_float64(backend, grad_scale):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(N).astype(np.float32)
    p, m, v = p0, np.zeros(N, np.float32), np.zeros(N, np.float32)
    rp, rm, rv = p.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    for t in range(1, 6):   # each step against the reference from its own state, and the float64 trajectory
        g = rng.standard_normal(N).astype(np.float32) * np.float32(10.0 ** rng.uniform(-4, 1))
        p, m, v = _step(backend, p, m, v, g, t, grad_scale)
        rp, rm, rv = adamw_update_ref(rp, rm, rv, g, grad_scale=grad_scale, t=t, **HP)
        for name, got, want in (("m", m, rm), ("v", v, rv), ("params", p, rp)):
            rtol, atol = tolerance("adamw_update", name)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"step {t}: {name}")
    assert not np.allclose(p, p0, atol=1e-4)  # sanity: the parameters did move


# a first step and a later one with weight decay and a grad scale, from a non-zero state
STATES = [(1, 0.0, 1.0), (3, 0.01, 0.5)]


@pytest.mark.parametrize("backend,t,weight_decay,grad_scale", cases(cpu=STATES, cuda=STATES))
def test_adamw_from_a_state(backend, t, weight_decay, grad_scale):
    rng = np.random.default_rng(9)
    n = 1000
    _step(backend, rnd(rng, n), rnd(rng, n, scale=0.1), np.abs(rnd(rng, n, scale=0.1)), rnd(rng, n), t, grad_scale,
          case="from_state", weight_decay=weight_decay, beta2=0.999)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_adamw_partial_length(backend):
    # N - 10 elements updated as the reference says, the last 10 (and their m, v) left alone
    rng = np.random.default_rng(1)
    p = rng.standard_normal(N).astype(np.float32)
    got, m, v = _step(backend, p, np.zeros(N, np.float32), np.zeros(N, np.float32),
                      rng.standard_normal(N).astype(np.float32), 1, n=N - 10)
    assert np.all(got[:N - 10] != p[:N - 10])
    np.testing.assert_array_equal(got[N - 10:], p[N - 10:])
    np.testing.assert_array_equal(m[N - 10:], 0.0)


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_adamw_matches_torch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(N).astype(np.float32)
    tp = torch.nn.Parameter(torch.tensor(p0.copy()))
    opt = torch.optim.AdamW([tp], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                            weight_decay=HP["weight_decay"])
    p, m, v = p0.copy(), np.zeros(N, np.float32), np.zeros(N, np.float32)
    for t in range(1, 6):
        g = rng.standard_normal(N).astype(np.float32)
        tp.grad = torch.tensor(g)
        opt.step()
        p, m, v = _step(backend, p, m, v, g, t)
    for name, got, want in (("params", p, tp.detach()), ("m", m, opt.state[tp]["exp_avg"]),
                            ("v", v, opt.state[tp]["exp_avg_sq"])):
        rtol, atol = TORCH_TOL[name]
        np.testing.assert_allclose(got, want.numpy(), rtol=rtol, atol=atol, err_msg=name)


# fewer elements than chunks, and uneven chunks; on CUDA 9000 is three stage-1 blocks
@pytest.mark.parametrize("backend,n", cases(cpu=[0, 1, 255, 1001, 100_003], cuda=[1, 1000, 9000]))
def test_global_norm_squared(backend, n):
    rng = np.random.default_rng(3)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    check(backend, "global_norm_squared", out=1, grads=g, N=n)   # NaN-filled: overwritten, not accumulated
