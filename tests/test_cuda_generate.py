"""Generation on the CUDA backend (in Numba's CUDA simulator) against the CPU backend: the decoder of a
micro model (prefill, then one row per step). The cached attention and one-position matmul kernels are
checked against the float64 reference in tests/test_cpu_attention_cached.py and tests/test_cpu_matvec.py
(their CUDA cases run under the simulator from tests/test_cuda_kernels.py).

Runs like tests/test_cuda_kernels.py: in a normal pytest run this module spawns itself with
NUMBA_ENABLE_CUDASIM=1; to run it directly:  NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_generate.py -q
On a machine with a GPU it also runs directly on the GPU in this process.
"""
import numpy as np
from simulator import RUN_HERE, SIM, run_module_under_simulator

if not SIM:

    def test_cuda_generate_under_simulator():
        run_module_under_simulator("test_cuda_generate.py", "CUDA generation tests")

if RUN_HERE:
    from numbagpt.config import GPT2Config
    from numbagpt.generate import Decoder
    from numbagpt.model import GPT2

    def test_decoder_matches_cpu():
        cfg = GPT2Config(max_seq_len=6, vocab_size=37, num_layers=1, num_heads=2, channels=8)
        cpu = GPT2(cfg, backend="cpu")
        cpu.init_weights(seed=0)
        params = cpu.parameters_host() * 10
        cpu.load_parameters(params)
        gpu = GPT2(cfg, backend="cuda")
        gpu.load_parameters(params)
        tokens = np.random.default_rng(1).integers(0, 37, (2, 6)).astype(np.int32)
        dc, dg = Decoder(cpu, 2), Decoder(gpu, 2)
        for chunk in (slice(0, 4), slice(4, 5), slice(5, 6)):
            want = dc.forward(tokens[:, chunk], "all")
            got = dg.forward(tokens[:, chunk], "all")
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
