"""Whole GPT-2 training steps on the CUDA backend (in Numba's CUDA simulator) against the CPU backend.

Micro config L=2, NH=2, C=16, maxT=8, V=37 (Vp=64), batch B=2, T=4; weights from init_weights plus
noise (so attention and layernorm are far from their trivial regimes). Two steps of
forward + zero_grad + backward + AdamW update on both backends, comparing the losses (to 1e-4), all
parameter gradients and the updated parameters, and the global gradient norm. The first step's CUDA
gradients also serve the -r 2 check (GELU and layernorm outputs recomputed in backward): bitwise the
same there too, the recompute path zeroing and refilling device views of shared per-layer buffers.

Runs under the simulator from a normal pytest run (tests/simulator.py); on a machine with a GPU the
tests also run directly on the GPU in this process.
"""
import os
from types import SimpleNamespace

import numpy as np
import pytest
from simulator import ROOT, RUN_HERE, SIM, cpu_and_cuda_models, under_simulator

if not SIM:
    test_cuda_model_under_simulator = under_simulator("test_cuda_model.py", "CUDA model tests")

if RUN_HERE:
    from numbagpt.config import GPT2Config
    from numbagpt.model import GPT2

    CFG = GPT2Config(max_seq_len=8, vocab_size=37, num_layers=2, num_heads=2, channels=16, padded_vocab_size=64)

    def wte_padding(size):
        """Mask of the parameters that are wte's padded rows V..Vp (wte comes first in the layout)."""
        pad = np.zeros(size, bool)
        pad[CFG.vocab_size * CFG.channels:CFG.padded_vocab_size * CFG.channels] = True
        return pad

    @pytest.fixture(scope="module")
    def first_step():
        """Both backends after step 1's forward, zero_grad and backward (no update yet)."""
        B, T = 2, 4
        rng = np.random.default_rng(0)
        cpu, gpu, params = cpu_and_cuda_models(
            CFG, lambda p: p + np.where(wte_padding(p.size), 0.0, rng.normal(0.0, 0.1, p.size)))
        tokens = rng.integers(0, CFG.vocab_size, (B, T + 1)).astype(np.int32)
        x, y = tokens[:, :-1], tokens[:, 1:]
        losses = [m.forward(x, y) for m in (cpu, gpu)]
        for m in (cpu, gpu):
            m.zero_grad()
            m.backward()
        return SimpleNamespace(x=x, y=y, params=params, cpu=cpu, gpu=gpu, losses=losses,
                               gpu_grads=gpu.grads_host())

    def test_two_training_steps_match_cpu(first_step):
        cpu, gpu, x, y = first_step.cpu, first_step.gpu, first_step.x, first_step.y
        wte_pad = wte_padding(first_step.params.size)
        signal = np.ones(wte_pad.size, bool)
        for step in (1, 2):
            if step == 1:
                loss_c, loss_g = first_step.losses
            else:
                loss_c, loss_g = cpu.forward(x, y), gpu.forward(x, y)
                for m in (cpu, gpu):
                    m.zero_grad()
                    m.backward()
            assert abs(loss_c - loss_g) < 1e-4, (step, loss_c, loss_g)
            g_c, g_g = cpu.grads_host(), gpu.grads_host()
            scale = np.abs(g_c).max()
            np.testing.assert_allclose(g_g, g_c, rtol=1e-3, atol=1e-5 * scale,
                                       err_msg=f"step {step}: gradients")
            assert np.all(g_g[wte_pad] == 0)
            assert abs(cpu.grad_norm() - gpu.grad_norm()) <= 1e-4 * cpu.grad_norm()
            lr = 1e-3
            for m in (cpu, gpu):
                m.update(lr=lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, t=step)   # 11 slices
            p_c, p_g = cpu.parameters_host(), gpu.parameters_host()
            # AdamW divides by sqrt(v): where a gradient is rounding noise (e.g. the key biases, whose
            # exact gradient is 0 because softmax ignores a per-row shift) the two backends' noise is
            # amplified to an update of up to ±lr. Compare tightly only where the gradient is signal.
            # (signal at every step so far: a noise-driven difference persists in params, m and v)
            signal &= np.abs(g_c) > 1e-5 * scale
            np.testing.assert_allclose(p_g[signal], p_c[signal], rtol=0, atol=2e-6,
                                       err_msg=f"step {step}: parameters after AdamW")
            assert np.all(np.abs(p_g - p_c) <= 2.01 * lr * step)

    def test_recompute_gradients_bitwise_on_cuda(first_step):
        m = GPT2(CFG, backend="cuda", recompute=2)
        m.load_parameters(first_step.params)
        assert m.forward(first_step.x, first_step.y) == first_step.losses[1]
        m.zero_grad()
        m.backward()
        np.testing.assert_array_equal(m.grads_host(), first_step.gpu_grads)
        assert np.abs(first_step.gpu_grads).max() > 0

    def test_bf16_step_matches_cpu_bf16(first_step):
        """precision="bf16" on both backends: one forward and backward from the same parameters. The two
        round the same operands the same way and sum exactly-representable products in float32, so they
        agree as the fp32 backends do (up to a rare operand that a float32 difference upstream rounds to
        the neighbouring bf16); both differ from fp32 by far more."""
        models = []
        for backend in ("cpu", "cuda"):
            m = GPT2(CFG, backend=backend, precision="bf16")
            m.load_parameters(first_step.params)
            loss = m.forward(first_step.x, first_step.y)
            m.zero_grad()
            m.backward()
            models.append((loss, m.grads_host()))
        (loss_c, g_c), (loss_g, g_g) = models
        # measured: losses equal, gradients 1.3e-7 of their largest apart; bf16 from fp32: 5.5e-3 of it
        assert abs(loss_c - loss_g) < 1e-5
        scale = np.abs(g_c).max()
        np.testing.assert_allclose(g_g, g_c, rtol=1e-3, atol=1e-5 * scale)
        assert np.abs(g_c - first_step.gpu_grads).max() > 1e-3 * scale

    def test_zero_grad_over_stale_gradients_bitwise_on_cuda(first_step):
        """zero_grad() leaves the gradients the backward writes (WRITTEN_GRADS) to it: over stale NaNs in
        the buffer, the first step's gradients bit for bit, and those of the old way (the whole buffer
        zeroed, the backward accumulating: materialize_grads() forces it)."""
        for old_way in (False, True):
            m = GPT2(CFG, backend="cuda")
            m.load_parameters(first_step.params)
            m.forward(first_step.x, first_step.y)
            m.zero_grad()
            m.backend.copy_to_device(m.grads_flat, np.full(m.num_parameters, np.nan, np.float32))
            m.zero_grad()
            if old_way:
                m.materialize_grads()
            m.backward()
            np.testing.assert_array_equal(m.grads_host(), first_step.gpu_grads)

    def test_test_gpt2_on_the_device_passes_the_pytorch_nano_fixture(capsys, tmp_path):
        """bin/test_gpt2 --device cuda on tests/fixtures/nano_* (a PyTorch dump small enough for the
        simulator): logits, loss and all 16 gradients within the CLI's tolerances, and the loss of the
        first AdamW step's batch. (The second step's loss is left out here: the updates are the CPU's,
        test_two_training_steps_match_cpu, and the CPU's match PyTorch's, tests/test_cli_test_gpt2.py.)"""
        from numbagpt.cli import test as test_gpt2
        fixtures = os.path.join(ROOT, "tests", "fixtures")
        with open(os.path.join(fixtures, "nano_losses.txt")) as f:
            (tmp_path / "first_loss.txt").write_text(f.readline())
        code = test_gpt2.main(["--device", "cuda", "-e", os.path.join(fixtures, "nano_model.bin"),
                               "-s", os.path.join(fixtures, "nano_debug_state.bin"),
                               "--expected-losses", str(tmp_path / "first_loss.txt")])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "overall okay: 1" in out and "NOT OK" not in out and "device cuda" in out
        assert "step  0:" in out and "step  1:" not in out
