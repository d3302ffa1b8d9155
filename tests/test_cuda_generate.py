"""Generation on the CUDA backend (in Numba's CUDA simulator) against the CPU backend: the cached
attention and one-position matmul kernels on tiny shapes, and the decoder of a micro model (prefill,
then one row per step).

Runs like tests/test_cuda_kernels.py: in a normal pytest run this module spawns itself with
NUMBA_ENABLE_CUDASIM=1; to run it directly:  NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_generate.py -q
On a machine with a GPU it also runs directly on the GPU in this process.
"""
import numpy as np
import pytest
from simulator import RUN_HERE, SIM, run_module_under_simulator

if not SIM:

    def test_cuda_generate_under_simulator():
        run_module_under_simulator("test_cuda_generate.py", "CUDA generation tests")

if RUN_HERE:
    import numbagpt.cpu as CPU
    import numbagpt.cuda as GPU
    from numbagpt.config import GPT2Config
    from numbagpt.generate import Decoder
    from numbagpt.model import GPT2

    # (B, t0, T, C, NH, maxT): a decoding row, a prefill, a row of more than 32 keys (lanes loop)
    @pytest.mark.parametrize("B,t0,T,C,NH,maxT", [(2, 3, 1, 12, 3, 6), (1, 0, 5, 8, 2, 7), (1, 36, 1, 4, 1, 40)])
    def test_attention_forward_cached(B, t0, T, C, NH, maxT):
        rng = np.random.default_rng(t0)
        hs = C // NH
        inp = rng.standard_normal(B * T * 3 * C).astype(np.float32)
        kc = rng.standard_normal(B * NH * maxT * hs).astype(np.float32)  # rows < t0: earlier positions
        vc = rng.standard_normal(B * NH * maxT * hs).astype(np.float32)
        BNTM = B * NH * T * maxT
        out_c, att_c, kc_c, vc_c = np.zeros(B * T * C, np.float32), np.zeros(BNTM, np.float32), kc.copy(), vc.copy()
        CPU.attention_forward_cached(out_c, att_c, kc_c, vc_c, inp, B, T, t0, C, NH, maxT)
        out_g, att_g, kc_g, vc_g = GPU.zeros(B * T * C), GPU.to_device(np.full(BNTM, 7, np.float32)), \
            GPU.to_device(kc), GPU.to_device(vc)
        GPU.attention_forward_cached(out_g, att_g, kc_g, vc_g, GPU.to_device(inp), B, T, t0, C, NH, maxT)
        np.testing.assert_array_equal(GPU.to_host(kc_g), kc_c)
        np.testing.assert_array_equal(GPU.to_host(vc_g), vc_c)
        np.testing.assert_allclose(GPU.to_host(att_g), att_c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(GPU.to_host(out_g), out_c, rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize("M,C,OC,bias", [(1, 40, 9, True), (3, 70, 5, False)])
    def test_matvec_forward(M, C, OC, bias):
        # C = 70: lanes loop over the row more than once; OC = 9: a block with idle warps
        rng = np.random.default_rng(M)
        inp, w = rng.standard_normal(M * C).astype(np.float32), rng.standard_normal(OC * C).astype(np.float32)
        b = rng.standard_normal(OC).astype(np.float32) if bias else None
        out_c = np.zeros(M * OC, np.float32)
        CPU.matvec_forward(out_c, inp, w, b, M, C, OC)
        out_g = GPU.to_device(np.full(M * OC, 7, np.float32))
        GPU.matvec_forward(out_g, GPU.to_device(inp), GPU.to_device(w), None if b is None else GPU.to_device(b), M, C, OC)
        np.testing.assert_allclose(GPU.to_host(out_g), out_c, rtol=1e-5, atol=1e-5)

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
