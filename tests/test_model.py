"""The whole model on the CPU backend against a float64 NumPy GPT-2 built from tests/reference.py:
logits and loss of the forward, and every gradient tensor against central finite differences of the
float64 loss (sampled entries of all 16 tensors), plus AdamW steps and the model's input checks."""
import numpy as np
import pytest
from reference import (attention_forward_ref, crossentropy_forward_ref, encoder_forward_ref,
                       gelu_forward_ref, layernorm_forward_ref, matmul_forward_ref)

from numbagpt.config import GPT2Config
from numbagpt.layout import PARAMETER_NAMES, parameter_layout
from numbagpt.model import GPT2

CFG = GPT2Config(max_seq_len=8, vocab_size=37, num_layers=2, num_heads=2, channels=12, padded_vocab_size=48)
B, T = 2, 7


def reference_forward(cfg, flat, x):
    """float64 logits (B, T, Vp) of the parameters `flat` on tokens x (B, T)."""
    p = parameter_layout(cfg).host_views(np.asarray(flat, dtype=np.float64))
    h = encoder_forward_ref(x, p["wte"], p["wpe"])
    for l in range(cfg.num_layers):
        ln1 = layernorm_forward_ref(h, p["ln1w"][l], p["ln1b"][l])[0]
        qkv = matmul_forward_ref(ln1, p["qkvw"][l], p["qkvb"][l])
        atty = attention_forward_ref(qkv, cfg.num_heads)[0]
        h = h + matmul_forward_ref(atty, p["attprojw"][l], p["attprojb"][l])
        ln2 = layernorm_forward_ref(h, p["ln2w"][l], p["ln2b"][l])[0]
        fch = gelu_forward_ref(matmul_forward_ref(ln2, p["fcw"][l], p["fcb"][l]))
        h = h + matmul_forward_ref(fch, p["fcprojw"][l], p["fcprojb"][l])
    lnf = layernorm_forward_ref(h, p["lnfw"], p["lnfb"])[0]
    return matmul_forward_ref(lnf, p["wte"])


def reference_loss(cfg, flat, x, y):
    return float(crossentropy_forward_ref(reference_forward(cfg, flat, x), y, cfg.vocab_size).mean())


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    y = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    return x, y


def random_model(seed=1, recompute=0):
    """A model whose biases and layernorm parameters are random too, so every gradient path is live."""
    model = GPT2(CFG, recompute=recompute)
    rng = np.random.default_rng(seed)
    flat = (rng.standard_normal(model.num_parameters) * 0.3).astype(np.float32)
    views = model.param_layout.host_views(flat)
    for name in ("ln1w", "ln2w", "lnfw"):
        views[name] += 1.0
    views["wte"][CFG.vocab_size:] = 0.0
    model.load_parameters(flat)
    return model, flat


def backward_of(batch):
    """random_model() after one forward and backward of `batch` from zeroed gradients."""
    model, flat = random_model()
    model.forward(*batch)
    model.zero_grad()
    model.backward()
    return model, flat


def test_forward_matches_float64_reference(batch):
    x, y = batch
    model, flat = random_model()
    loss = model.forward(x, y)
    ref_logits = reference_forward(CFG, flat, x)
    np.testing.assert_allclose(model.logits_host(), ref_logits, atol=2e-5, rtol=1e-5)
    assert loss == pytest.approx(reference_loss(CFG, flat, x, y), abs=1e-5)
    assert model.forward(x) is None  # without targets: logits only


def test_gradients_match_finite_differences(batch):
    x, y = batch
    model, flat = backward_of(batch)
    grads = model.param_layout.views(model.grads_host())
    layout = model.param_layout
    rng = np.random.default_rng(2)
    base = flat.astype(np.float64)
    h = 1e-5
    for name in PARAMETER_NAMES:
        size = layout.sizes[name]
        # wte rows of real tokens only: padding rows have a zero gradient, checked below.
        limit = CFG.vocab_size * CFG.channels if name == "wte" else size
        for i in rng.choice(limit, size=min(6, limit), replace=False):
            plus, minus = base.copy(), base.copy()
            plus[layout.offsets[name] + i] += h
            minus[layout.offsets[name] + i] -= h
            numeric = (reference_loss(CFG, plus, x, y) - reference_loss(CFG, minus, x, y)) / (2 * h)
            assert grads[name][i] == pytest.approx(numeric, abs=2e-6, rel=1e-3), f"d{name}[{i}]"
    assert not np.any(grads["wte"][CFG.vocab_size * CFG.channels:])


def test_backward_accumulates_only_after_zero_grad(batch):
    x, y = batch
    model, _ = backward_of(batch)
    once = model.grads_host()
    model.forward(x, y)
    model.backward()  # no zero_grad: gradients add up
    np.testing.assert_allclose(model.grads_host(), 2 * once, rtol=1e-5, atol=1e-7)
    model.forward(x, y)
    model.zero_grad()
    model.backward()
    np.testing.assert_allclose(model.grads_host(), once, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("garbage", [np.nan, 1e30])
@pytest.mark.parametrize("recompute", [0, 1, 2])
def test_zero_grad_leaves_the_written_gradients_to_backward_bit_for_bit(batch, recompute, garbage):
    """zero_grad() zeroes only the gradients no matmul_backward writes (WRITTEN_GRADS); the backward
    right after writes the others (accumulate=False). Over a buffer of stale garbage, the gradients are
    bit for bit those of the old way, the whole buffer zeroed and every backward accumulating
    (materialize_grads() before the backward forces that path), for one micro-batch and with a second
    one accumulated onto it."""
    x, y = batch
    second = (x[::-1].copy(), y[:, ::-1].copy())

    def gradients(old_way):
        model, _ = random_model(recompute=recompute)
        model.forward(x, y)
        model.zero_grad()  # allocates the buffer; then an earlier step's stale gradients in it
        model.backend.copy_to_device(model.grads_flat, np.full(model.num_parameters, garbage, np.float32))
        model.zero_grad()
        if old_way:
            model.backend.fill_zero(model.grads_flat)
            model.materialize_grads()
        model.backward()
        one = model.grads_host()
        model.forward(*second)
        model.backward()
        return one, model.grads_host()

    new, old = gradients(old_way=False), gradients(old_way=True)
    for got, want in zip(new, old):
        assert np.isfinite(got).all() and np.abs(got).max() < 1e3
        assert np.array_equal(got, want)
    assert not np.array_equal(new[0], new[1])


def test_gradients_read_between_zero_grad_and_backward_are_zeros(batch):
    """Whatever reads the gradients before the backward that writes them sees zeros, not stale values;
    the backward then accumulates into those zeros, to the same bits."""
    model, _ = backward_of(batch)
    once = model.grads_host()
    model.forward(*batch)
    model.zero_grad()
    assert model.grad_norm() == 0.0
    assert not model.grads_host().any()
    model.backward()
    assert np.array_equal(model.grads_host(), once)


def test_zero_grad_before_the_first_forward(batch):
    """zero_grad() on a model that has run no forward yet (no activations to size their gradients
    by) zeroes the gradients, and the first forward and backward then give the usual ones."""
    model, _ = random_model()
    model.zero_grad()
    assert model.grads_host().shape == (model.num_parameters,) and not model.grads_host().any()
    model.forward(*batch)
    model.zero_grad()
    model.backward()
    expected, _ = backward_of(batch)
    assert np.array_equal(model.grads_host(), expected.grads_host())


def test_training_steps_lower_the_loss(batch):
    x, y = batch
    model = GPT2(CFG)
    model.init_weights(seed=3)
    losses = []
    for step in range(1, 21):
        losses.append(model.forward(x, y))
        model.zero_grad()
        model.backward()
        model.update(lr=1e-2, t=step)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("decay_all", [False, True])
@pytest.mark.parametrize("shard", [None, (100, 1900)])   # a ZeRO-1 shard that cuts through tensors
def test_weight_decay_applies_to_the_matrices_unless_decay_all(batch, decay_all, shard):
    """update(weight_decay=...) decays wte, wpe and the matmuls' weights (llm.c's train_gpt2.cu, PyTorch's
    GPT-2 trainers), not the biases and layernorms; decay_all decays every parameter (llm.c's
    test_gpt2.c): each tensor against NumPy float64 AdamW with its decay."""
    from reference import adamw_update_ref
    from numbagpt.layout import DECAYED_PARAMETERS
    model, flat = random_model()
    model.forward(*batch)
    model.zero_grad()
    model.backward()
    grads = model.grads_host()
    start, end = shard or (0, model.num_parameters)
    if shard:
        model.set_optimizer_shard(start, end)
    model.update(lr=0.1, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.5, t=1, decay_all=decay_all)
    got = model.parameters_host()
    layout = model.param_layout
    decayed = 0
    for name in PARAMETER_NAMES:
        a, b = max(layout.offsets[name], start), min(layout.offsets[name] + layout.sizes[name], end)
        if a >= b:
            continue
        wd = 0.5 if decay_all or name in DECAYED_PARAMETERS else 0.0
        want, _, _ = adamw_update_ref(flat[a:b], np.zeros(b - a), np.zeros(b - a), grads[a:b], 0.1, 0.9, 0.95, 1e-8,
                                      wd, 1.0, 1)
        np.testing.assert_allclose(got[a:b], want, rtol=1e-6, atol=1e-7, err_msg=name)
        decayed += wd > 0
    assert 0 < decayed < (len(PARAMETER_NAMES) if not decay_all else 99)
    np.testing.assert_array_equal(got[:start], flat[:start])   # outside the shard: untouched
    np.testing.assert_array_equal(got[end:], flat[end:])


def test_init_weights_is_seeded_and_llmc_shaped():
    a, b, c = GPT2(CFG), GPT2(CFG), GPT2(CFG)
    a.init_weights(7)
    b.init_weights(7)
    c.init_weights(8)
    pa = a.parameters_host()
    np.testing.assert_array_equal(pa, b.parameters_host())
    assert not np.array_equal(pa, c.parameters_host())
    v = a.param_layout.host_views(pa)
    assert np.all(v["ln1w"] == 1) and np.all(v["lnfb"] == 0) and np.all(v["qkvb"] == 0)
    assert np.all(v["wte"][CFG.vocab_size:] == 0)
    assert v["qkvw"].std() == pytest.approx(0.02, rel=0.1)
    assert v["fcprojw"].std() == pytest.approx(0.02 / np.sqrt(2 * CFG.num_layers), rel=0.1)


def test_save_and_load_round_trip(tmp_path, batch):
    x, y = batch
    model, flat = random_model()
    path = tmp_path / "model.bin"
    model.save(str(path))
    again = GPT2.from_file(str(path))
    assert again.config == CFG
    np.testing.assert_array_equal(again.parameters_host(), flat)
    assert again.forward(x, y) == model.forward(x, y)


def test_bad_inputs_are_refused(batch):
    x, y = batch
    model, _ = random_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model.forward(np.zeros((1, CFG.max_seq_len + 1), dtype=np.int32))
    with pytest.raises(ValueError, match="out of range"):
        model.forward(np.full((1, 3), CFG.vocab_size, dtype=np.int32))
    with pytest.raises(ValueError, match="out of range"):
        model.forward(x, np.full_like(y, -1))
    with pytest.raises(ValueError, match="shape"):
        model.forward(x, y[:, :3])
    with pytest.raises(RuntimeError, match="targets"):
        model.forward(x)
        model.backward()


def test_methods_out_of_order_and_bad_update_arguments_say_so(batch):
    """A notebook's mistakes: gradients or an update before any backward, logits before any forward, an
    update with t = 0 or a NaN lr: a RuntimeError or ValueError saying what to do (they were None
    arrays, TypeErrors, a ZeroDivisionError, or every parameter NaN)."""
    from numbagpt.train.step import train_step
    x, y = batch
    model, _ = random_model()
    for call in (model.grads_host, model.grad_norm, lambda: model.update(1e-3)):
        with pytest.raises(RuntimeError, match=r"no gradients yet: zero_grad\(\), forward\(inputs, targets\)"):
            call()
    with pytest.raises(RuntimeError, match=r"logits_host\(\): no forward yet"):
        model.logits_host()
    model.forward(x, y)
    logits = model.logits_host()
    with pytest.raises(ValueError, match="read-only"):   # a write would change the next backward's dlogits
        logits[0, 0, 0] = 1.0
    model.zero_grad()
    model.backward()
    before = model.parameters_host()
    for kw, said in ((dict(lr=float("nan")), "lr must be a finite number >= 0, got nan"),
                     (dict(lr=-1e-3), "lr must be a finite number >= 0"), (dict(lr="a"), "lr must be"),
                     (dict(lr=1e-3, t=0), r"t \(the AdamW step, counted from 1\) must be an integer >= 1, got 0"),
                     (dict(lr=1e-3, grad_scale=float("inf")), "grad_scale must be a finite number")):
        with pytest.raises(ValueError, match=said):
            model.update(**kw)
    np.testing.assert_array_equal(model.parameters_host(), before)
    with pytest.raises(ValueError, match="train_step: no batches"):
        train_step(model, [], lr=1e-3, t=1)


def test_smaller_batch_after_larger_reuses_buffers(batch):
    x, y = batch
    model, _ = random_model()
    full = model.forward(x, y)
    model.forward(x[:1, :3], y[:1, :3])
    assert model.forward(x, y) == full
    logits = model.logits_host()
    model.forward(x[1:2, :4])
    np.testing.assert_allclose(model.logits_host()[0], logits[1, :4], rtol=1e-5, atol=1e-6)


def test_optimizer_shard_updates_only_its_range_and_matches_the_full_update(batch):
    x, y = batch
    full, flat = random_model()
    shard, _ = random_model()
    start, end = 1000, 3000
    shard.set_optimizer_shard(start, end)
    for m in (full, shard):  # one step: after it, the shard's other parameters differ from full's
        m.forward(x, y)
        m.zero_grad()
        m.backward()
        m.update(lr=1e-2, weight_decay=0.1, t=1)
    assert shard.m_flat.size == end - start
    after, sharded = full.parameters_host(), shard.parameters_host()
    np.testing.assert_array_equal(sharded[start:end], after[start:end])
    np.testing.assert_array_equal(np.delete(sharded, np.s_[start:end]), np.delete(flat, np.s_[start:end]))
    assert not np.array_equal(after[start:end], flat[start:end])


@pytest.mark.parametrize("recompute", [0, 2])
def test_train_forward_fuses_the_loss_gradient_bit_for_bit(batch, recompute):
    """forward(train=True) computes dlogits with the loss (crossentropy_forward_backward): the same
    loss and, after backward(), the same gradients bit for bit as forward() then backward(), over two
    accumulated micro-batches; the logits buffer then holds dlogits, so logits_host() is refused."""
    x, y = batch
    second = (x[::-1].copy(), y[:, ::-1].copy())

    def run(train):
        model, _ = random_model(recompute=recompute)
        losses = []
        for i, (xs, ys) in enumerate((batch, second)):
            losses.append(model.forward(xs, ys, train=train))
            if i == 0:
                model.zero_grad()
            if train and i == 0:
                with pytest.raises(RuntimeError, match="holds dlogits"):
                    model.logits_host()
            model.backward()
        return losses, model.grads_host()

    (fused_losses, fused), (losses, grads) = run(True), run(False)
    assert fused_losses == losses
    assert np.isfinite(grads).all() and np.abs(grads).max() > 0
    assert np.array_equal(fused, grads)
    model, _ = random_model()
    with pytest.raises(ValueError, match="needs targets"):
        model.forward(x, train=True)


def test_decayed_parameters_are_the_tensors_of_two_or_more_dimensions():
    """DECAYED_PARAMETERS is every tensor with dim >= 2 per layer (as llm.c and PyTorch), none dropped
    (wpe included): the expected set comes from the layout's shapes, less the layer axis."""
    from numbagpt.layout import DECAYED_PARAMETERS
    layout = parameter_layout(CFG)
    want = {name for name in PARAMETER_NAMES
            if len(layout.shapes[name]) - (name in layout.layered) >= 2}
    assert want == {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"}
    assert set(DECAYED_PARAMETERS) == want
    assert len(DECAYED_PARAMETERS) == len(want)


def test_layout_views_refuse_a_buffer_of_the_wrong_size():
    """Layout.views refuses a buffer one element too long as well as one too short."""
    layout = parameter_layout(CFG)
    assert layout.views(np.zeros(layout.total, np.float32))["lnfb"].size == CFG.channels
    for n in (layout.total + 1, layout.total - 1):
        with pytest.raises(ValueError, match="layout needs"):
            layout.views(np.zeros(n, np.float32))


def test_optimizer_shard_past_the_last_parameter_is_refused():
    """set_optimizer_shard refuses an end past num_parameters (and accepts num_parameters itself)."""
    model = GPT2(CFG)
    n = model.num_parameters
    model.set_optimizer_shard(0, n)
    with pytest.raises(ValueError, match="bad optimizer shard"):
        model.set_optimizer_shard(0, n + 1)


def test_optimizer_shard_ending_one_past_a_decayed_tensor_updates_its_last_parameter(batch):
    """A ZeRO shard ending one element after wpe (a 1-element no-decay tail, ln1w's first) updates
    every parameter of its range as the unsharded update does, that last one included."""
    x, y = batch
    full, flat = random_model()
    shard, _ = random_model()
    layout = full.param_layout
    end = layout.offsets["wpe"] + layout.sizes["wpe"] + 1
    start = end - 50
    shard.set_optimizer_shard(start, end)
    for m in (full, shard):
        m.forward(x, y)
        m.zero_grad()
        m.backward()
        m.update(lr=1e-2, weight_decay=0.1, t=1)
    after, sharded = full.parameters_host(), shard.parameters_host()
    assert after[end - 1] != flat[end - 1]
    np.testing.assert_array_equal(sharded[start:end], after[start:end])
    np.testing.assert_array_equal(np.delete(sharded, np.s_[start:end]), np.delete(flat, np.s_[start:end]))


def test_format_memory_shows_adamw_m_plus_v():
    """format_memory's "AdamW m+v" is the sum of the m and v buffers in MiB (not m alone)."""
    from numbagpt.layout import format_memory, memory_estimate
    cfg = GPT2Config(max_seq_len=1024, vocab_size=50257, num_layers=12, num_heads=12, channels=768,
                     padded_vocab_size=50304)
    n = sum(int(np.prod(s)) for s in parameter_layout(cfg).shapes.values())
    assert f"AdamW m+v {2 * 4 * n / 2**20:.1f}," in format_memory(memory_estimate(cfg, 4, 64))
    assert "AdamW m+v 76.3," in format_memory(memory_estimate(cfg, 4, 64, optimizer_params=10_000_000))
