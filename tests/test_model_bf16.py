"""GPT2(precision="bf16"): every GEMM of the forward and backward (the LM head's too) on bf16-rounded
operands with float32 sums, everything else float32 (numbagpt/model.py, numbagpt/cpu/matmul_bf16.py).

- the forward against a float64 model whose every matmul rounds its two inputs to bf16 (a model that
  left one GEMM in fp32 would be off by bf16's ~2^-9 relative error there);
- the backward: every GEMM is the bf16 one, each against float64 products of its operands rounded;
- 20 AdamW steps in bf16 against fp32 from the same weights and data: the losses stay within
  LOSS_BOUND (measured: at most 3.3e-4 apart over 4 seeds of this setup, 1.1e-4 relative; see below);
- the parameters, gradients and optimizer state are float32 buffers either way.
"""
import numpy as np
import pytest
from reference import (attention_forward_ref, bf16_round_ref, crossentropy_forward_ref, encoder_forward_ref,
                       from_bf16_rows, gelu_forward_ref, layernorm_forward_ref, matmul_backward_ref,
                       matmul_forward_ref)

from numbagpt.config import GPT2Config
from numbagpt.layout import parameter_layout
from numbagpt.model import GPT2

# the 20-step comparison: L=2, C=64, NH=4, V=101, B=4, T=32, lr 1e-3, llm.c's init (seed 3). Measured on
# this setup, seeds 0-3 of the data (and 3-6 of the init): max |loss_bf16 − loss_fp32| over the 20 steps
# 2.1e-4, 8.1e-5, 1.3e-4, 3.3e-4 (losses 4.6 -> 2.96); at step 1 (the forward alone) 5e-6 to 6e-5.
# The bound leaves 6x headroom over the worst of those.
LOSS_BOUND = 2e-3
CFG = GPT2Config(max_seq_len=32, vocab_size=101, num_layers=2, num_heads=4, channels=64)
B, T = 4, 32


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    y = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    return x, y


def _mm_bf16(x, w, b=None):
    return matmul_forward_ref(bf16_round_ref(x), bf16_round_ref(w), b)


def reference_logits_bf16(cfg, flat, x):
    """float64 logits of a model whose every matmul (the LM head included) takes bf16-rounded inputs."""
    p = parameter_layout(cfg).host_views(np.asarray(flat, dtype=np.float64))
    h = encoder_forward_ref(x, p["wte"], p["wpe"])
    for l in range(cfg.num_layers):
        ln1 = layernorm_forward_ref(h, p["ln1w"][l], p["ln1b"][l])[0]
        atty = attention_forward_ref(_mm_bf16(ln1, p["qkvw"][l], p["qkvb"][l]), cfg.num_heads)[0]
        h = h + _mm_bf16(atty, p["attprojw"][l], p["attprojb"][l])
        ln2 = layernorm_forward_ref(h, p["ln2w"][l], p["ln2b"][l])[0]
        fch = gelu_forward_ref(_mm_bf16(ln2, p["fcw"][l], p["fcb"][l]))
        h = h + _mm_bf16(fch, p["fcprojw"][l], p["fcprojb"][l])
    return _mm_bf16(layernorm_forward_ref(h, p["lnfw"], p["lnfb"])[0], p["wte"])


class _GemmRecorder:
    """The model's backend, recording each matmul call: its kernel's name and, for a backward, its
    operands as they were and the dinp, dweight it added or wrote."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def __getattr__(self, name):
        fn = getattr(self.backend, name)
        if not name.startswith("matmul_"):
            return fn

        def record(*args):
            if "backward" not in name:
                self.calls.append((name, None))
                return fn(*args)
            dinp, dweight, _, dout, inp, weight, B, T, C, OC, acc, *bf16_rows = args
            before = dinp.copy(), dweight.copy() if acc else np.zeros_like(dweight)
            # copies: the buffers change after the call (dout is the residual stream's gradient)
            dout = (from_bf16_rows(dout, OC) if bf16_rows and bf16_rows[0] else dout.copy()).reshape(-1, OC)
            operands = dout, inp.reshape(-1, C).copy(), weight.reshape(OC, C).copy()
            fn(*args)
            self.calls.append((name, (*operands, dinp - before[0], dweight - before[1])))
        return record


def test_bf16_forward_rounds_every_gemm():
    x, y = _batch()
    model = GPT2(CFG, precision="bf16")
    model.init_weights(seed=3)
    loss = model.forward(x, y)
    flat = model.parameters_host()
    got = model.logits_host()[..., :CFG.vocab_size]
    want = reference_logits_bf16(CFG, flat, x)[..., :CFG.vocab_size]
    # float32 activations round to bf16 where the float64 reference's may round the other way (one
    # bf16 ulp, rarely): a loose atol, still 10x below what one fp32 GEMM among them would leave
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    assert loss == pytest.approx(float(crossentropy_forward_ref(
        reference_logits_bf16(CFG, flat, x), y, CFG.vocab_size).mean()), abs=1e-5)
    fp32 = GPT2(CFG)
    fp32.load_parameters(flat)
    fp32.forward(x, y)
    assert np.abs(fp32.logits_host()[..., :CFG.vocab_size] - got).max() > 2e-3   # bf16 is not fp32


def test_bf16_backward_rounds_every_gemm():
    # every GEMM of the step is the bf16 kernel, and each backward one gives the float64 products of
    # its operands rounded to bf16 (a backward GEMM left in fp32 would be off by bf16's ~2^-9 there;
    # the model's gradients as a whole cannot tell: the float32 and float64 models round their
    # activations to bf16 differently here and there, and that difference grows toward the input)
    x, y = _batch()
    model = GPT2(CFG, precision="bf16")
    model.init_weights(seed=3)
    model.backend = rec = _GemmRecorder(model.backend)
    model.forward(x, y)
    model.zero_grad()
    model.backward()
    gemms = 4 * CFG.num_layers + 1
    assert [name for name, _ in rec.calls] == ["matmul_forward_bf16"] * gemms + ["matmul_backward_bf16"] * gemms
    # the gradients here are ~1e-3 and smaller: relative errors of each tensor, float32 sums' ~1e-6
    # against ~1e-3 for operands left unrounded
    for i, (_, (dout, inp, weight, dinp, dweight)) in enumerate(rec.calls[gemms:]):
        want = matmul_backward_ref(bf16_round_ref(dout), bf16_round_ref(inp), bf16_round_ref(weight))[:2]
        for name, got, w in zip(("dinp", "dweight"), (dinp, dweight), want):
            err = np.linalg.norm(got.reshape(w.shape) - w) / np.linalg.norm(w)
            assert err < 2e-5, (i, name, err)


def test_bf16_training_tracks_fp32():
    x, y = _batch()
    losses, models = {}, {}
    for precision in ("fp32", "bf16"):
        model = GPT2(CFG, precision=precision)
        model.init_weights(seed=3)
        run = []
        for step in range(1, 21):
            run.append(model.forward(x, y))
            model.zero_grad()
            model.backward()
            model.update(lr=1e-3, t=step)
        losses[precision], models[precision] = np.array(run), model
    diff = np.abs(losses["bf16"] - losses["fp32"])
    assert diff.max() < LOSS_BOUND, diff
    assert diff.max() > 0                                 # the bf16 pair really ran
    assert losses["bf16"][-1] < 0.7 * losses["bf16"][0]   # and it learns
    m = models["bf16"]
    for buf in (m.params_flat, m.grads_flat, m.m_flat, m.v_flat, m.acts_flat):
        assert buf.dtype == np.float32


def test_precision_is_checked_and_kept():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        GPT2(CFG, precision="fp16")
    assert GPT2(CFG).precision == "fp32"
    assert GPT2.from_preset("tiny", vocab_size=101, precision="bf16").precision == "bf16"


def test_from_file_takes_precision(tmp_path):
    model = GPT2(CFG)
    model.init_weights(seed=1)
    model.save(tmp_path / "m.bin")
    again = GPT2.from_file(tmp_path / "m.bin", precision="bf16")
    assert again.precision == "bf16"
    np.testing.assert_array_equal(again.parameters_host(), model.parameters_host())
