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


def good_backward(dwte, dwpe, dout, inp, B, T, C):
    np.add.at(dwte.reshape(-1, C), inp, dout.reshape(-1, C))
    dwpe[:T * C] += dout.reshape(B, T * C).sum(axis=0)


def run_forward(kernel):
    rng = np.random.default_rng(0)
    return check(fake(residual_forward=kernel), "residual_forward", out=N, inp1=rnd(rng, N), inp2=rnd(rng, N), N=N)


def run_backward(kernel):
    rng = np.random.default_rng(0)
    B, T, C = 2, 5, 5
    return check(fake(encoder_backward=kernel), "encoder_backward", dwte=7 * C, dwpe=T * C, dout=rnd(rng, B * T * C),
                 inp=rng.integers(0, 7, B * T).astype(np.int32), B=B, T=T, C=C)


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


def writes_a_gradient(dwte, dwpe, dout, inp, B, T, C):   # = where the contract says +=
    dwte[:] = 0.0
    np.add.at(dwte.reshape(-1, C), inp, dout.reshape(-1, C))
    dwpe[:T * C] = dout.reshape(B, T * C).sum(axis=0)


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
