"""tests/harness.py can fail: broken kernels on a fake backend are caught by check()."""
import types

import numpy as np
import pytest

from harness import check, rnd

N = 50


def fake(**kernels):
    return types.SimpleNamespace(NAME="fake", to_device=lambda a: np.array(a, copy=True), to_host=np.asarray,
                                 synchronize=lambda: None, **kernels)


def good_forward(out, inp1, inp2, N):
    out[:N] = inp1[:N] + inp2[:N]


def good_backward(dinp1, dinp2, dout, N):
    dinp1[:N] += dout[:N]
    dinp2[:N] += dout[:N]


def run_forward(kernel):
    rng = np.random.default_rng(0)
    return check(fake(residual_forward=kernel), "residual_forward", out=N, inp1=rnd(rng, N), inp2=rnd(rng, N), N=N)


def run_backward(kernel):
    rng = np.random.default_rng(0)
    return check(fake(residual_backward=kernel), "residual_backward", dinp1=N, dinp2=N, dout=rnd(rng, N), N=N)


def test_correct_kernels_pass():
    run_forward(good_forward)
    run_backward(good_backward)


def nothing(out, inp1, inp2, N):
    pass


def half(out, inp1, inp2, N):
    out[:N // 2] = inp1[:N // 2] + inp2[:N // 2]


def accumulates(out, inp1, inp2, N):   # += into an output the contract says it writes
    out[:N] += inp1[:N] + inp2[:N]


def past_the_end(out, inp1, inp2, N):
    good_forward(out, inp1, inp2, N)
    out.base[N] = 0.0   # the element after the view: the harness's padding


def changes_an_input(out, inp1, inp2, N):
    good_forward(out, inp1, inp2, N)
    inp1[0] = 0.0


def writes_a_gradient(dinp1, dinp2, dout, N):   # = where the contract says +=
    dinp1[:N] = dout[:N]
    dinp2[:N] = dout[:N]


@pytest.mark.parametrize("kernel", [nothing, half, accumulates, past_the_end, changes_an_input])
def test_broken_forwards_fail(kernel):
    with pytest.raises(AssertionError):
        run_forward(kernel)


def test_a_backward_that_overwrites_fails():
    with pytest.raises(AssertionError):
        run_backward(writes_a_gradient)


def test_the_lab_checks_each_variant_before_timing_it():
    """dev/lab.py validates a variant with check() (a broken one is reported) and times the rest."""
    import os
    import sys
    import time
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev"))
    import lab
    rng = np.random.default_rng(0)
    args = dict(out=N, inp1=rnd(rng, N), inp2=rnd(rng, N), N=N)
    kernel = lab.Kernel("residual_forward", [("good", good_forward), ("nothing", nothing)], lambda shape, r: args)
    assert lab.validate(kernel, good_forward, args) is None
    assert "residual_forward" in lab.validate(kernel, nothing, args)
    (best,) = lab.race(kernel, [("good", good_forward)], args, 2, time.perf_counter)
    assert best > 0
