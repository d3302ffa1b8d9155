"""The learning-rate schedules against llm.c's formulas, at the step boundaries (values worked by hand)."""
import math

import pytest

from numbagpt.train.schedule import SCHEDULES, LRSchedule

# peak 1.0, 10 warmup steps, 110 steps, decay to 0.1: the decay spans steps 10..110 (100 steps).
LR, WARMUP, STEPS, FRAC = 1.0, 10, 110, 0.1


def sched(kind, **kw):
    args = dict(lr=LR, warmup=WARMUP, steps=STEPS, final_frac=FRAC)
    args.update(kw)
    return LRSchedule(kind, **args)


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd"])
def test_warmup_is_linear_from_lr_over_warmup(kind):
    s = sched(kind)
    assert s(0) == pytest.approx(0.1)         # (0 + 1) / 10
    assert s(4) == pytest.approx(0.5)
    assert s(WARMUP - 1) == pytest.approx(1.0)  # the peak is reached on the last warmup step


def test_cosine_boundaries():
    s = sched("cosine")
    assert s(10) == pytest.approx(1.0)                                 # r = 0
    assert s(35) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert s(60) == pytest.approx(0.55)                                # r = 1/2: halfway
    assert s(109) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.99)) / 2)
    assert s(110) == pytest.approx(0.1)                                # r = 1: the final fraction


def test_linear_boundaries():
    s = sched("linear")
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55)
    assert s(85) == pytest.approx(1.0 - 0.75 * 0.9)
    assert s(110) == pytest.approx(0.1)


def test_constant_ignores_warmup_and_decay_like_llmc():
    s = sched("constant")
    assert [s(i) for i in (0, 9, 10, 109, 110)] == [1.0] * 5
    assert "ignored" in s.describe()


def test_wsd_stable_then_sqrt_decay_over_last_20_percent():
    s = sched("wsd", steps=100)
    assert s.decay_start == 80
    assert s(10) == 1.0 and s(79) == 1.0                 # stable phase
    assert s(80) == pytest.approx(1.0)                   # decay starts at r = 0
    assert s(85) == pytest.approx(0.1 + (1 - math.sqrt(0.25)) * 0.9)
    assert s(96) == pytest.approx(0.1 + (1 - math.sqrt(0.8)) * 0.9)
    assert s(100) == pytest.approx(0.1)
    # int(0.8 * steps) as llm.c: 0.8 * 7 = 5.6 -> 5
    assert sched("wsd", steps=7, warmup=0).decay_start == 5


def test_no_warmup_starts_at_peak():
    for kind in SCHEDULES:
        assert sched(kind, warmup=0)(0) == pytest.approx(1.0)


def test_warmup_as_long_as_the_run_never_divides_by_zero():
    s = sched("cosine", warmup=STEPS)
    assert s(STEPS - 1) == pytest.approx(1.0) and s(STEPS) == pytest.approx(1.0)


def test_monotone_after_warmup():
    for kind in ("cosine", "linear", "wsd"):
        s = sched(kind)
        lrs = [s(i) for i in range(WARMUP, STEPS + 1)]
        assert all(a >= b - 1e-12 for a, b in zip(lrs, lrs[1:])), kind
        assert min(lrs) == pytest.approx(0.1)


@pytest.mark.parametrize("kw, msg", [(dict(kind="step"), "unknown learning-rate schedule"),
                                     (dict(warmup=-1), "warmup"),
                                     (dict(steps=0), "positive number of steps"),
                                     (dict(final_frac=-0.5), "final learning-rate fraction")])
def test_bad_arguments(kw, msg):
    args = dict(kind="cosine", lr=LR, warmup=WARMUP, steps=STEPS, final_frac=FRAC)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        LRSchedule(**args)


def test_the_startup_line_counts_steps_as_the_step_lines():
    """describe() counts steps from 1, as the step lines (internal step s is line s + 1): wsd holds the
    peak through the line before its first lower lr, and the last line's lr is the schedule's at -x - 1
    (llm.c's decay reaches its floor one step after the last), worked by hand for -x 10, -u 2, -q 0.5."""
    s = LRSchedule("wsd", lr=1.0, warmup=2, steps=10, final_frac=0.5)
    first_lower = next(i for i in range(2, 10) if s(i) < 1.0)        # internal 9: 20% of 10 steps is 2
    assert first_lower == 9 and f"held through step {first_lower} (" in s.describe()   # line 9 = internal 8
    want = 0.5 + (1 - math.sqrt(0.5)) * 0.5                          # r = (9 - 8) / 2 at the last line
    assert f"(the last step, 10, at lr {want:.3g})" in s.describe()
    c = LRSchedule("cosine", lr=1.0, warmup=2, steps=10, final_frac=0.5)
    assert f"at lr {0.5 + 0.25 * (1 + math.cos(math.pi * 7 / 8)):.3g})" in c.describe()   # r = 7/8


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd"])
def test_past_the_last_step_the_rate_stays_at_its_floor(kind):
    """A step at or past `steps` (a run continued past its schedule) is at min_lr, not past it."""
    s = LRSchedule(kind, lr=1.0, warmup=10, steps=100, final_frac=0.1)
    assert [s(step) for step in (100, 120, 1000)] == pytest.approx([0.1] * 3)
