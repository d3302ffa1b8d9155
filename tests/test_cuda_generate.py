"""Generation on the CUDA backend (in Numba's CUDA simulator) against the CPU backend: the decoder of a
micro model (prefill, then one row per step). The cached attention and one-position matmul kernels are
checked against the float64 reference in tests/test_cpu_attention_cached.py and tests/test_cpu_matvec.py
(their CUDA cases run under the simulator from tests/test_cuda_kernels.py).

Runs under the simulator from a normal pytest run (tests/simulator.py); on a machine with a GPU it also
runs directly on the GPU in this process.
"""
import numpy as np
from simulator import RUN_HERE, SIM, cpu_and_cuda_models, under_simulator

if not SIM:
    test_cuda_generate_under_simulator = under_simulator("test_cuda_generate.py", "CUDA generation tests")

if RUN_HERE:
    from numbagpt.config import GPT2Config
    from numbagpt.generate import Decoder

    def test_decoder_matches_cpu():
        # Vp = 40 > V: the padded logits too; the LM head's matvec (a warp per column) dominates here
        cfg = GPT2Config(max_seq_len=5, vocab_size=37, num_layers=1, num_heads=2, channels=8,
                         padded_vocab_size=40)
        cpu, gpu, _ = cpu_and_cuda_models(cfg, lambda p: p * 10)
        tokens = np.random.default_rng(1).integers(0, 37, (2, 5)).astype(np.int32)
        dc, dg = Decoder(cpu, 2), Decoder(gpu, 2)
        for chunk in (slice(0, 3), slice(3, 4), slice(4, 5)):
            want = dc.forward(tokens[:, chunk], "all")
            got = dg.forward(tokens[:, chunk], "all")
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
