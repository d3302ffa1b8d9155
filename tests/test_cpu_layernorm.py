"""layernorm_forward / layernorm_backward / fused_residual_layernorm_forward on every backend against the
float64 reference (tests/harness.py); the fused kernel also bit for bit against residual_forward then
layernorm_forward (the model's -r 2 recomputes the layernorm from the stored residual)."""
import numpy as np
import pytest

from harness import cases, check, rnd, same_bits_at_thread_counts, tolerance
from reference import layernorm_backward_ref, layernorm_forward_ref, numerical_grad

# (B, T, C, offset): on the CPU (3, 25, 100) is 75 rows: three row chunks of the backward (numbagpt/cpu/
# layernorm.py _ROWS = 32, the last one ragged), and a C that no vector width divides; on CUDA (3, 100, 3)
# is 300 rows: two row chunks (atomics) in the dweight/dbias reduction. Every row has an offset of 5 and a
# spread down to 0.1 (the variance must not come from E[x²] − E[x]²; 1 float32 ulp of 5 is 5e-6 of such a
# row: the CPU sums in float64, the CUDA kernel in float32 shifted by the row's first element); with C=3 a
# row's spread can be far smaller still, so the backward must correct the float32-rounded saved mean.
SHAPES = cases(cpu=[(2, 7, 12, 5.0), (2, 7, 36, 5.0), (3, 25, 100, 5.0)],
               cuda=[(2, 5, 12, 5.0), (1, 6, 70, 5.0), (3, 100, 3, 5.0)])


def _data(rng, B, T, C, offset):
    x = (rng.standard_normal((B, T, C)) * rng.uniform(0.1, 3.0, size=(B, T, 1)) + offset).astype(np.float32)
    w = (1.0 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    b = (0.5 * rng.standard_normal(C)).astype(np.float32)
    return x.reshape(-1), w, b


@pytest.mark.parametrize("backend,B,T,C,offset", SHAPES)
def test_layernorm_forward(backend, B, T, C, offset):
    x, w, b = _data(np.random.default_rng(0), B, T, C, offset)
    check(backend, "layernorm_forward", out=B * T * C, mean=B * T, rstd=B * T, inp=x, weight=w, bias=b, B=B, T=T, C=C)


@pytest.mark.parametrize("backend,B,T,C,offset", SHAPES)
def test_layernorm_backward_accumulates(backend, B, T, C, offset):
    rng = np.random.default_rng(1)
    x, w, b = _data(rng, B, T, C, offset)
    _, mean, rstd = layernorm_forward_ref(x.reshape(B, T, C), w, b)
    check(backend, "layernorm_backward", dinp=B * T * C, dweight=C, dbias=C, dout=rnd(rng, B, T, C), inp=x,
          weight=w, mean=mean.astype(np.float32), rstd=rstd.astype(np.float32), B=B, T=T, C=C)


# The fused forward has no column reduction: the 300-row CUDA case (row chunks) would only cost simulator time.
FUSED_SHAPES = cases(cpu=[(2, 7, 12, 5.0), (2, 7, 36, 5.0), (3, 25, 100, 5.0)], cuda=[(2, 5, 12, 5.0), (1, 6, 70, 5.0)])


@pytest.mark.parametrize("backend,B,T,C,offset", FUSED_SHAPES)
def test_fused_residual_layernorm_forward(backend, B, T, C, offset):
    rng = np.random.default_rng(3)
    x, w, b = _data(rng, B, T, C, offset)
    inp2 = rnd(rng, B, T, C, scale=0.3)
    inp1 = x - inp2   # the sum is x, to float32 rounding: the offset and spreads of _data's rows
    N = B * T * C
    got = check(backend, "fused_residual_layernorm_forward", residual=N, ln=N, mean=B * T, rstd=B * T,
                inp1=inp1, inp2=inp2, weight=w, bias=b, B=B, T=T, C=C)
    d = {name: backend.zeros(n) for name, n in (("res", N), ("out", N), ("mean", B * T), ("rstd", B * T))}
    backend.residual_forward(d["res"], backend.to_device(inp1), backend.to_device(inp2), N)
    backend.layernorm_forward(d["out"], d["mean"], d["rstd"], d["res"], backend.to_device(w), backend.to_device(b),
                              B, T, C)
    for fused, pair in (("residual", "res"), ("ln", "out"), ("mean", "mean"), ("rstd", "rstd")):
        np.testing.assert_array_equal(got[fused], backend.to_host(d[pair]), err_msg=fused)


def test_layernorm_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    rtol, atol = tolerance("layernorm_backward", case="reference")
    x = rng.standard_normal((2, 3, 5)) + 1.0
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    g = rng.standard_normal((2, 3, 5))
    dx, dw, db = layernorm_backward_ref(g, x, w)
    for got, arg in ((dx, 0), (dw, 1), (db, 2)):
        def loss(a):
            return (layernorm_forward_ref(*[a if i == arg else v for i, v in enumerate((x, w, b))])[0] * g).sum()
        np.testing.assert_allclose(got, numerical_grad(loss, (x, w, b)[arg]), rtol=rtol, atol=atol)


def test_layernorm_backward_same_bits_at_any_thread_count():
    """The CPU backward sums dweight/dbias per chunk of rows, then the chunks in order: the bits must not
    depend on how many threads ran the chunks (75 rows: three chunks)."""
    from numbagpt.cpu import layernorm_backward
    rng = np.random.default_rng(4)
    B, T, C = 3, 25, 100
    x, w, _ = _data(rng, B, T, C, 5.0)
    _, mean, rstd = layernorm_forward_ref(x.reshape(B, T, C), w, np.zeros(C))
    dout = rnd(rng, B, T, C)

    def run():
        got = [np.zeros(B * T * C, np.float32), np.zeros(C, np.float32), np.zeros(C, np.float32)]
        layernorm_backward(*got, dout, x, w, mean.astype(np.float32).ravel(), rstd.astype(np.float32).ravel(),
                           B, T, C)
        return got
    same_bits_at_thread_counts(run)
