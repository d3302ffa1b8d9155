import numpy as np
import pytest

from numbagpt.cpu import adamw_update, global_norm_squared
from reference import adamw_update_ref, global_norm_squared_ref

N = 1001
HP = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def _step(p, m, v, g, t, grad_scale=1.0, n=N):
    adamw_update(p, m, v, g, HP["lr"], HP["beta1"], HP["beta2"], HP["eps"], HP["weight_decay"], grad_scale, t, n)


@pytest.mark.parametrize("grad_scale", [1.0, 0.25])
def test_adamw_several_steps_match_float64(grad_scale):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N).astype(np.float32)
    m, v = np.zeros(N, np.float32), np.zeros(N, np.float32)
    rp, rm, rv = p.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    for t in range(1, 6):
        g = rng.standard_normal(N).astype(np.float32) * np.float32(10.0 ** rng.uniform(-4, 1))
        _step(p, m, v, g, t, grad_scale)
        rp, rm, rv = adamw_update_ref(rp, rm, rv, g, grad_scale=grad_scale, t=t, **HP)
        np.testing.assert_allclose(m, rm, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(v, rv, rtol=1e-5, atol=1e-15)
        np.testing.assert_allclose(p, rp, rtol=1e-6, atol=1e-7)
    # sanity: the parameters did move
    assert not np.allclose(p, np.random.default_rng(0).standard_normal(N).astype(np.float32), atol=1e-4)


def test_adamw_partial_length():
    rng = np.random.default_rng(1)
    p = rng.standard_normal(N).astype(np.float32)
    p0 = p.copy()
    _step(p, np.zeros(N, np.float32), np.zeros(N, np.float32), rng.standard_normal(N).astype(np.float32), 1, n=N - 10)
    np.testing.assert_array_equal(p[N - 10:], p0[N - 10:])


def test_adamw_matches_torch():
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
        _step(p, m, v, g, t)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m, opt.state[tp]["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, opt.state[tp]["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("n", [0, 1, 255, 1001, 100_003])  # fewer elements than chunks, and uneven chunks
def test_global_norm_squared(n):
    rng = np.random.default_rng(3)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    out = np.full(1, 123.0, dtype=np.float32)  # overwritten, not accumulated
    global_norm_squared(out, g, n)
    np.testing.assert_allclose(out[0], global_norm_squared_ref(g), rtol=1e-6, atol=0)
