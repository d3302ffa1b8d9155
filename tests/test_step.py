"""numbagpt.train.step.train_step: the one training step. Against the model's own primitives and NumPy:
the step equals forward/zero_grad/backward/update by hand, micro-batches average like one batch of
all their rows, clipping scales the update to the clip norm, and a diverged step stops before it
updates anything."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from numbagpt.config import GPT2Config
from numbagpt.dist import CollectiveError
from numbagpt.model import GPT2
from numbagpt.train.step import clip_scale, train_step

CFG = GPT2Config(max_seq_len=8, vocab_size=37, num_layers=2, num_heads=2, channels=12, padded_vocab_size=48)
B, T = 2, 6


def model(seed=0):
    m = GPT2(CFG, backend="cpu")
    m.init_weights(seed)
    return m


def batch(seed, b=B):
    tokens = np.random.default_rng(seed).integers(0, CFG.vocab_size, size=(b, T + 1), dtype=np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def test_step_equals_the_primitives_by_hand():
    a, b = model(), model()
    x, y = batch(1)
    r = train_step(a, [(x, y)], lr=1e-2, t=1, grad_clip=0.0, weight_decay=0.1)
    loss = b.forward(x, y)
    b.zero_grad()
    b.backward()
    norm = b.grad_norm()
    b.update(1e-2, weight_decay=0.1, t=1)
    assert (r.loss, r.norm, r.lr, r.scale) == (loss, norm, 1e-2, 1.0)
    np.testing.assert_array_equal(a.parameters_host(), b.parameters_host())


def test_micro_batches_average_like_one_batch_of_all_their_rows():
    (x1, y1), (x2, y2) = batch(1), batch(2)
    a, b = model(), model()
    ra = train_step(a, [(x1, y1), (x2, y2)], lr=1e-2, t=1, grad_clip=0.0)
    rb = train_step(b, [(np.concatenate([x1, x2]), np.concatenate([y1, y2]))], lr=1e-2, t=1, grad_clip=0.0)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-6)
    assert ra.norm == pytest.approx(rb.norm, rel=1e-5)
    np.testing.assert_allclose(a.grads_host() / 2, b.grads_host(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(a.parameters_host(), b.parameters_host(), rtol=1e-5, atol=1e-6)


def test_clipping_scales_the_gradient_to_the_clip_norm():
    assert clip_scale(4.0, 1.0) == 0.25 and clip_scale(0.5, 1.0) == 1.0 and clip_scale(4.0, 0.0) == 1.0
    a, b = model(), model()
    x, y = batch(3)
    r = train_step(a, [(x, y)], lr=1e-2, t=1, grad_clip=0.1)
    assert r.norm > 0.1 and r.scale == pytest.approx(0.1 / r.norm)
    b.forward(x, y)
    b.zero_grad()
    b.backward()
    b.update(1e-2, t=1, grad_scale=0.1 / b.grad_norm())
    np.testing.assert_array_equal(a.parameters_host(), b.parameters_host())


def test_the_skip_guard_sees_the_reported_mean_gradient_norm():
    """skip(loss, norm) decides on the step's own numbers: with 2 micro-batches the gradient buffer holds
    their sum, and the guard must see the norm the step reports (the mean gradient's), not twice it
    (the spike guard's gradient z-score would compare numbers of another scale)."""
    a = model()
    seen = []
    r = train_step(a, [batch(1), batch(2)], lr=1e-2, t=1, skip=lambda l, n: seen.append((l, n)))
    assert seen == [(r.loss, r.norm)]
    assert r.skipped is None


def test_a_diverged_step_updates_nothing():
    a = model()
    params = a.parameters_host()
    params[a.param_layout.offsets["lnfw"]] = np.nan   # a NaN weight: NaN loss
    a.load_parameters(params)
    with pytest.raises(CollectiveError, match="step 7: loss nan"):
        train_step(a, [batch(4)], lr=1e-2, t=7)
    assert a.m_flat is None   # AdamW never ran


# In a fresh process (the kernels not yet loaded): warm_up loads or compiles kernels, then a step of
# another model, in the same precision, with every recompute (or, training=False, the forwards with
# targets that eval_gpt2 runs), must find each kernel it calls ready (Dispatcher.compile is where
# Numba both loads from its cache and compiles). Under MPI, rank 0 warms up alone before the others
# start, so a kernel it misses is compiled by every rank at once.
WARM_UP_THEN_STEP = textwrap.dedent("""
    import sys
    import numpy as np
    from numba.core import dispatcher
    from numbagpt.config import GPT2Config
    from numbagpt.model import GPT2
    from numbagpt.train.step import train_step, warm_up
    precision, training = sys.argv[1], sys.argv[2] == "train"
    calls = []
    compile_ = dispatcher.Dispatcher.compile
    def recorded(self, sig):
        calls.append(self.py_func.__name__)
        return compile_(self, sig)
    dispatcher.Dispatcher.compile = recorded
    warm_up("cpu", precision, training=training)
    print("warm-up:", len(calls))
    calls.clear()
    cfg = GPT2Config(max_seq_len=16, vocab_size=60, num_layers=2, num_heads=2, channels=32, padded_vocab_size=64)
    x = np.random.default_rng(0).integers(0, 60, (2, 16)).astype(np.int32)
    for recompute in (0, 1, 2):
        m = GPT2(cfg, backend="cpu", precision=precision, recompute=recompute)
        m.init_weights(1)
        if training:
            train_step(m, [(x, x)], lr=1e-3, t=1)
        else:
            for rows in (x, x[:1, :5], np.repeat(x, 4, axis=0)):   # eval_gpt2's batches: any rows, any T
                m.forward(rows, rows)
    print("step:", sorted(set(calls)))
""")


@pytest.mark.parametrize("precision, what", [("fp32", "train"), ("bf16", "train"), ("fp32", "eval"), ("bf16", "eval")])
def test_warm_up_readies_every_kernel_of_a_step(precision, what):
    out = subprocess.run([sys.executable, "-c", WARM_UP_THEN_STEP, precision, what], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    warmed, stepped = out.stdout.splitlines()
    assert int(warmed.split()[1]) > 0   # the recorder sees kernels being readied
    assert stepped == "step: []"
