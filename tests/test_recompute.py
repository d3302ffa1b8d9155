"""-r/--recompute: 1 recomputes GELU's output in the backward pass, 2 also the layernorm outputs.
The gradients (and loss) are bitwise those of -r 0; the activations (and their gradients) take
(L-1)·B·T·4C floats less each with -r 1, and another (L-1)·B·T·2C with -r 2."""
import numpy as np
import pytest

from numbagpt.config import GPT2Config, preset
from numbagpt.layout import memory_estimate
from numbagpt.model import GPT2
from numbagpt.profiler import allocated_bytes
from numbagpt.train.step import train_step

CFG = GPT2Config(max_seq_len=16, vocab_size=61, num_layers=3, num_heads=2, channels=16)


def grads_after(recompute, batches, steps=1):
    model = GPT2(CFG, recompute=recompute)
    model.init_weights(7)
    for t in range(1, steps + 1):
        res = train_step(model, batches, lr=1e-3, t=t)
    return model, res


@pytest.mark.parametrize("recompute", [1, 2])
def test_gradients_are_bitwise_those_of_r0(recompute):
    rng = np.random.default_rng(3)
    tok = rng.integers(0, 61, (2, 4, 13)).astype(np.int32)
    batches = [(t[:, :-1], t[:, 1:]) for t in tok]  # two micro-steps of (4, 12)
    ref, ref_res = grads_after(0, batches, steps=2)
    got, got_res = grads_after(recompute, batches, steps=2)
    assert got_res.loss == ref_res.loss and got_res.norm == ref_res.norm
    np.testing.assert_array_equal(got.grads_host(), ref.grads_host())
    np.testing.assert_array_equal(got.parameters_host(), ref.parameters_host())
    # and the forward still gives the same logits (the recomputed buffers are only scratch)
    ref.forward(tok[0][:, :-1])
    got.forward(tok[0][:, :-1])
    np.testing.assert_array_equal(got.logits_host(), ref.logits_host())


def test_memory_saving_formula_and_allocation():
    B, T = 4, 12
    L, C = CFG.num_layers, CFG.channels
    est = [memory_estimate(CFG, B, T, recompute=r) for r in (0, 1, 2)]
    gelu, ln = (L - 1) * B * T * 4 * C * 4, (L - 1) * B * T * 2 * C * 4   # bytes no longer stored
    assert est[0]["activations"] - est[1]["activations"] == gelu
    assert est[1]["activations"] - est[2]["activations"] == ln
    assert est[0]["total"] - est[2]["total"] == 2 * (gelu + ln)   # activations and their gradients
    for r in (0, 1, 2):
        model, _ = grads_after(r, [(np.zeros((B, T), np.int32), np.zeros((B, T), np.int32))])
        got = allocated_bytes(model)
        assert got["activations"] == est[r]["activations"] and got["activation_grads"] == est[r]["activation_grads"]


def test_d12_saving():
    """The figure of the closing note: GPT-2 124M at B=4 T=64."""
    est = [memory_estimate(preset("d12"), 4, 64, recompute=r)["total"] / 2**20 for r in (0, 1, 2)]
    assert est[0] - est[1] == pytest.approx(2 * 11 * 4 * 64 * 4 * 768 * 4 / 2**20)   # 66 MiB
    assert est[1] - est[2] == pytest.approx(2 * 11 * 4 * 64 * 2 * 768 * 4 / 2**20)   # 33 MiB


def test_bad_recompute():
    for bad, message in ((3, "recompute must be one of 0, 1, 2, got 3"),
                         (True, "recompute must be an integer, got True"),
                         ("1", "recompute must be an integer, got '1'")):
        with pytest.raises(ValueError) as e:
            GPT2(CFG, recompute=bad)
        assert str(e.value) == message


def test_startup_lines_show_the_saving(capsys):
    """bin/profile_gpt2 prints the estimate for -r and the saving against -r 0 (train_gpt2 prints the
    same estimate, tested in tests/test_cli_features.py)."""
    import re

    from numbagpt.cli import profile
    B, T, L, C = 4, 32, 4, 128  # the tiny preset: 1.5 MiB less with -r 1, 2.25 with -r 2
    for r, saved in ((0, 0), (1, 2 * (L - 1) * B * T * 4 * C * 4), (2, 2 * (L - 1) * B * T * 6 * C * 4)):
        assert profile.main(["-e", "tiny", "-b", str(B), "-t", str(T), "--steps", "1", "--baseline-steps", "0",
                             "--no-calibrate", "--omp-threads", "1", "-r", str(r)]) == 0
        out = capsys.readouterr().out
        m = re.search(rf"-r {r}: (\d+\.\d) MiB less than -r 0", out)
        if r == 0:   # nothing saved: no "-r 0: 0.0 MiB less than -r 0"
            assert "less than -r 0" not in out, out[:500]
        else:
            assert m and float(m.group(1)) == round(saved / 2**20, 1), out[:500]
