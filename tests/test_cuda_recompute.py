"""-r 2 (GELU and layernorm outputs recomputed in backward) on the CUDA backend, in Numba's CUDA
simulator: the gradients are bitwise those of -r 0 there too (the recompute path zeroes and refills
device views of shared per-layer buffers). Runs like tests/test_cuda_model.py: a normal pytest run
re-runs this module with NUMBA_ENABLE_CUDASIM=1; on a machine with a GPU it also runs directly."""
import numpy as np
from simulator import RUN_HERE, SIM, run_module_under_simulator

if not SIM:

    def test_cuda_recompute_under_simulator():
        run_module_under_simulator("test_cuda_recompute.py", "CUDA recompute test")

if RUN_HERE:
    from numbagpt.config import GPT2Config
    from numbagpt.model import GPT2

    def test_recompute_gradients_bitwise_on_cuda():
        cfg = GPT2Config(max_seq_len=8, vocab_size=37, num_layers=2, num_heads=2, channels=16)
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, cfg.vocab_size, (2, 5)).astype(np.int32)
        grads, losses = [], []
        for r in (0, 2):
            m = GPT2(cfg, backend="cuda", recompute=r)
            m.init_weights(seed=0)
            losses.append(m.forward(tokens[:, :-1], tokens[:, 1:]))
            m.zero_grad()
            m.backward()
            grads.append(m.grads_host())
        assert losses[0] == losses[1]
        np.testing.assert_array_equal(grads[1], grads[0])
        assert np.abs(grads[0]).max() > 0
