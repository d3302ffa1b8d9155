"""The spike guard's z-score detector against NumPy over the same window, and a planted spike."""
import math

import numpy as np
import pytest

from numbagpt.train.outlier import WINDOW, OutlierDetector, SpikeGuard


def test_window_is_llmc_128():
    assert WINDOW == 128 and OutlierDetector().window == 128


def test_nan_until_the_window_is_full_then_numpy_zscore():
    rng = np.random.default_rng(0)
    xs = rng.normal(3.0, 0.5, 300)
    w = 16
    det = OutlierDetector(w)
    for i, x in enumerate(xs):
        z = det.update(x)
        if i < w:
            assert math.isnan(z)
        else:
            win = xs[i - w + 1:i + 1]  # the window includes the new value, as in llm.c
            assert z == pytest.approx((x - win.mean()) / win.std(), rel=1e-9, abs=1e-9)


def test_constant_window_gives_zero():
    det = OutlierDetector(4)
    zs = [det.update(2.5) for _ in range(10)]
    assert zs[4:] == [0.0] * 6


def test_state_round_trip_continues_the_same_scores():
    a, b = OutlierDetector(8), OutlierDetector(8)
    xs = np.linspace(1, 2, 30) ** 2
    for x in xs[:20]:
        a.update(x)
    b.set_state(a.get_state())
    assert [a.update(x) for x in xs[20:]] == [b.update(x) for x in xs[20:]]


def test_guard_state_round_trip_makes_the_same_decisions():
    """What a checkpoint keeps (both windows, float64 running sums) continues every z-score and
    skip exactly; an empty guard in its place would score NaN for a window's length."""
    rng = np.random.default_rng(3)
    xs = [(4.0 + 0.1 * rng.standard_normal(), 1.0 + 0.3 * rng.random()) for _ in range(300)]
    a, b, empty = (SpikeGuard(loss_z=1.0, grad_z=1.0, window=32) for _ in range(3))
    for x in xs[:100]:
        a.check(*x)
    b.set_state(a.get_state())
    checks = [(a.check(*x), a.zloss, a.zgrad) for x in xs[100:]]
    assert checks == [(b.check(*x), b.zloss, b.zgrad) for x in xs[100:]]
    assert any(skip for skip, _, _ in checks)
    assert all(empty.check(*x) is None and math.isnan(empty.zloss) for x in xs[100:132])
    with pytest.raises(ValueError, match="a 32-value window, this detector's is 128"):
        SpikeGuard().set_state(a.get_state())


def test_planted_loss_spike_is_skipped_and_only_it():
    rng = np.random.default_rng(1)
    guard = SpikeGuard(loss_z=3.0, window=32)
    losses = 4.0 + 0.01 * rng.standard_normal(80)
    losses[60] = 6.0  # the spike
    skips = [(i, guard.check(loss, 1.0)) for i, loss in enumerate(losses)]
    skipped = [(i, s) for i, s in skips if s is not None]
    assert [i for i, _ in skipped] == [60]
    what, z, threshold = skipped[0][1]
    assert what == "loss" and z > 3.0 and threshold == 3.0 and str(skipped[0][1]).startswith("loss z-score of ")


def test_planted_grad_spike_and_thresholds_off():
    rng = np.random.default_rng(2)
    norms = 1.0 + 0.05 * rng.standard_normal(80)
    norms[50] = 10.0
    on, off = SpikeGuard(grad_z=3.0, window=32), SpikeGuard(window=32)
    reasons = [on.check(2.0, n) for n in norms]
    assert [i for i, r in enumerate(reasons) if r] == [50] and reasons[50].what == "grad norm"
    assert all(off.check(2.0, n) is None for n in norms)


def test_no_skip_while_the_window_fills():
    guard = SpikeGuard(loss_z=1.0, grad_z=1.0, window=8)
    assert all(guard.check(v, v) is None for v in [1, 1, 1, 100, 1, 1, 1, 1])


def test_bad_thresholds():
    with pytest.raises(ValueError, match="z-score thresholds"):
        SpikeGuard(loss_z=-1)


def test_lone_spike_in_a_flat_window_scores_sqrt_window_minus_one():
    # window of n-1 values c and one x: mean c + (x-c)/n, std |x-c| sqrt(n-1)/n, so z = sqrt(n-1)
    det = OutlierDetector()
    for _ in range(WINDOW):
        det.update(2.0)
    assert det.update(7.0) == pytest.approx(math.sqrt(WINDOW - 1))


@pytest.mark.parametrize("which", ["loss", "grad"])
def test_a_z_score_at_the_threshold_is_not_a_spike(which):
    # window 2: [1, 1] then 3 gives the window [3, 1], mean 2, std 1: z = 1 exactly. llm.c skips
    # only above the threshold
    def third(threshold):
        guard = SpikeGuard(**{f"{which}_z": threshold}, window=2)
        for v in (1.0, 1.0):
            guard.check(v, v)
        return guard.check(3.0, 3.0)
    assert third(1.0) is None
    assert third(0.99) is not None and third(0.99).z == 1.0


def test_a_window_of_one_is_refused():
    """One value has no spread, so no z-score: window 1 is refused as window 0 is (a test of < 1 took it)."""
    for window in (0, 1):
        with pytest.raises(ValueError) as e:
            OutlierDetector(window)
        assert str(e.value) == f"the outlier window needs at least 2 values, got {window}"


def test_a_sharp_drop_in_the_grad_norm_is_not_skipped():
    """llm.c skips an update only for a positive grad norm z-score (a spike): a drop as far below the
    mean is applied (a test of abs(z) skipped it)."""
    guard = SpikeGuard(grad_z=3.0, window=16)
    for _ in range(16):
        guard.check(2.0, 1.0)
    window = np.array([0.0] + [1.0] * 15)   # the drop replaces the oldest 1.0
    assert guard.check(2.0, 0.0) is None
    assert guard.zgrad == pytest.approx((0.0 - window.mean()) / window.std())
    assert guard.zgrad < -3.0
