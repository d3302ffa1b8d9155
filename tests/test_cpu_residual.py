"""residual_forward on every backend against the float64 reference (tests/harness.py)."""
import numpy as np
import pytest

from harness import cases, check, rnd

N = 2 * 7 * 12 + 5


@pytest.mark.parametrize("backend,N", cases(cpu=[N], cuda=[120, 300]))
def test_residual_forward(backend, N):
    rng = np.random.default_rng(0)
    a, b = rnd(rng, N), rnd(rng, N)
    out = check(backend, "residual_forward", out=N, inp1=a, inp2=b, N=N)["out"]
    np.testing.assert_array_equal(out, a + b)  # one float32 add: exact


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_residual_partial_length(backend):
    # N smaller than the buffers: the first N elements are the sum, the tail is left alone
    rng = np.random.default_rng(2)
    a, b = rnd(rng, N), rnd(rng, N)
    out = np.zeros(N, dtype=np.float32)
    got = check(backend, "residual_forward", out=out, inp1=a, inp2=b, N=N - 5)["out"]
    np.testing.assert_array_equal(got[:N - 5], (a + b)[:N - 5])
    np.testing.assert_array_equal(got[N - 5:], 0.0)
