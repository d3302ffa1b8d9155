"""Every CUDA kernel (numbagpt.cuda) against the CPU backend (numbagpt.cpu), run in Numba's CUDA simulator.

How it runs without a GPU: the simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is
first imported, but the main pytest process keeps the real CUDA target (tests/test_cuda_ptx.py compiles
every kernel to PTX with it, and other tests import numba normally). So this module has two faces:

- in a normal pytest run (simulator off) it holds one test, `test_cuda_kernels_under_simulator`, which runs
  `python -m pytest tests/test_cuda_kernels.py` in a subprocess with NUMBA_ENABLE_CUDASIM=1 and fails with
  the subprocess's pytest output (the inner failures and tracebacks) if anything fails inside;
- with NUMBA_ENABLE_CUDASIM=1 in the environment it holds the real tests below. To run or debug them
  directly:  NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_kernels.py -q [-k NAME]
- on a machine with a GPU (simulator off) it holds both: the simulator run in a subprocess, and the same
  tests run directly on the GPU in this process.

The kernels are launched with their real launch configurations (block sizes, tiles) on tiny shapes that
are not multiples of the tiles/blocks (B=2, T=5, C=12, NH=3, OC=20, V=37, Vp=64) plus a few multi-tile
shapes (several GEMM tiles and K steps, T > 64 in the attention, a row longer than a crossentropy block).
The simulator runs each CUDA thread as a Python thread (numbagpt.cuda.runtime adds warp-shuffle
emulation to it), so the shapes stay tiny. Every backward starts from random non-zero gradients to check
that it accumulates (+=), and crossentropy_backward is also run in place (dlogits is logits).
"""
import numpy as np
import pytest
from simulator import RUN_HERE, SIM, run_module_under_simulator

if not SIM:

    def test_cuda_kernels_under_simulator():
        run_module_under_simulator("test_cuda_kernels.py", "CUDA kernel tests")

if RUN_HERE:
    import numbagpt.cpu as CPU
    import numbagpt.cuda as GPU

    RTOL = 1e-4
    ATOL = 1e-5

    def rnd(rng, *shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32).reshape(-1)

    def dev(x):
        return GPU.to_device(x)

    def host(d):
        return GPU.to_host(d)

    def close(got, want, rtol=RTOL, atol=ATOL, what=""):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)

    def test_backend_available():
        assert GPU.available()

    # ------------------------------------------------------------------------- memory helpers
    def test_memory_helpers():
        rng = np.random.default_rng(0)
        x = rnd(rng, 300)
        d = GPU.to_device(x)
        np.testing.assert_array_equal(GPU.to_host(d), x)
        z = GPU.zeros(300)
        np.testing.assert_array_equal(GPU.to_host(z), np.zeros(300, np.float32))
        GPU.copy_to_device(z, x)
        np.testing.assert_array_equal(GPU.to_host(z), x)
        GPU.fill_zero(z[10:290])  # a view: only the view is zeroed
        want = x.copy()
        want[10:290] = 0
        np.testing.assert_array_equal(GPU.to_host(z), want)
        # fill_zero's kernel (on a real GPU fill_zero launches it; the simulator path zeroes from the host)
        from numbagpt.cuda.runtime import BLOCK_FILL, fill_zero_kernel
        z2 = GPU.to_device(x)
        fill_zero_kernel[2, BLOCK_FILL](z2[5:295], np.int64(290))
        want = x.copy()
        want[5:295] = 0
        np.testing.assert_array_equal(GPU.to_host(z2), want)
        zi = GPU.zeros(5, dtype=np.int32)
        assert GPU.to_host(zi).dtype == np.int32
        GPU.synchronize()
        with pytest.raises(ValueError):
            GPU.copy_to_device(z, x[:10])

    # ------------------------------------------------------------------------- encoder
    def test_encoder():
        rng = np.random.default_rng(1)
        B, T, C, V, Vp, maxT = 2, 5, 12, 37, 64, 8
        inp = rng.integers(0, V, B * T).astype(np.int32)
        inp[3] = inp[7] = inp[0]  # repeated tokens: several positions add into one dwte row
        wte, wpe = rnd(rng, Vp, C), rnd(rng, maxT, C)
        out_c = np.zeros(B * T * C, np.float32)
        CPU.encoder_forward(out_c, inp, wte, wpe, B, T, C)
        out_g = GPU.zeros(B * T * C)
        GPU.encoder_forward(out_g, dev(inp), dev(wte), dev(wpe), B, T, C)
        close(host(out_g), out_c)

        dout = rnd(rng, B, T, C)
        dwte0, dwpe0 = rnd(rng, Vp, C), rnd(rng, maxT, C)
        dwte_c, dwpe_c = dwte0.copy(), dwpe0.copy()
        CPU.encoder_backward(dwte_c, dwpe_c, dout, inp, B, T, C)
        dwte_g, dwpe_g = dev(dwte0), dev(dwpe0)
        GPU.encoder_backward(dwte_g, dwpe_g, dev(dout), dev(inp), B, T, C)
        close(host(dwte_g), dwte_c, what="dwte")
        close(host(dwpe_g), dwpe_c, what="dwpe")

    # ------------------------------------------------------------------------- layernorm
    @pytest.mark.parametrize("B,T,C", [(2, 5, 12), (1, 6, 70), (3, 100, 3)])
    def test_layernorm(B, T, C):
        # (3, 100, 3): 300 rows -> two row chunks (atomics) in the dweight/dbias reduction
        rng = np.random.default_rng(2)
        x = rnd(rng, B, T, C, scale=2.0) + np.float32(0.5)
        w, b = rnd(rng, C), rnd(rng, C)
        out_c, mean_c, rstd_c = (np.zeros(n, np.float32) for n in (B * T * C, B * T, B * T))
        CPU.layernorm_forward(out_c, mean_c, rstd_c, x, w, b, B, T, C)
        out_g, mean_g, rstd_g = GPU.zeros(B * T * C), GPU.zeros(B * T), GPU.zeros(B * T)
        GPU.layernorm_forward(out_g, mean_g, rstd_g, dev(x), dev(w), dev(b), B, T, C)
        close(host(out_g), out_c, what="out")
        close(host(mean_g), mean_c, what="mean")
        close(host(rstd_g), rstd_c, what="rstd")

        dout = rnd(rng, B, T, C)
        dinp0, dw0, db0 = rnd(rng, B, T, C), rnd(rng, C), rnd(rng, C)
        dinp_c, dw_c, db_c = dinp0.copy(), dw0.copy(), db0.copy()
        CPU.layernorm_backward(dinp_c, dw_c, db_c, dout, x, w, mean_c, rstd_c, B, T, C)
        dinp_g, dw_g, db_g = dev(dinp0), dev(dw0), dev(db0)
        GPU.layernorm_backward(dinp_g, dw_g, db_g, dev(dout), dev(x), dev(w), mean_g, rstd_g, B, T, C)
        close(host(dinp_g), dinp_c, what="dinp")
        close(host(dw_g), dw_c, atol=1e-4, what="dweight")
        close(host(db_g), db_c, atol=1e-4, what="dbias")

    # ------------------------------------------------------------------------- matmul
    @pytest.mark.parametrize("B,T,C,OC,use_bias", [(2, 5, 12, 20, True), (2, 5, 12, 20, False),
                                                    (2, 37, 20, 67, True), (1, 3, 8, 600, True),
                                                    (1, 520, 8, 20, True)])
    def test_matmul(B, T, C, OC, use_bias):
        # (2, 37, 20, 67): M=74, N=67 -> 2x2 output tiles of 64; K=20 -> 2 K steps; dweight K=74 -> 5
        # (1, 3, 8, 600): dinp K=600 is split in 2 (split-K, atomics); (1, 520, 8, 20): dweight K=520
        # split in 2, dbias over 3 row chunks
        rng = np.random.default_rng(3)
        inp, w, b = rnd(rng, B, T, C), rnd(rng, OC, C), rnd(rng, OC)
        out_c = np.zeros(B * T * OC, np.float32)
        CPU.matmul_forward(out_c, inp, w, b if use_bias else None, B, T, C, OC)
        out_g = GPU.zeros(B * T * OC)
        GPU.matmul_forward(out_g, dev(inp), dev(w), dev(b) if use_bias else None, B, T, C, OC)
        close(host(out_g), out_c, what="out")

        dout = rnd(rng, B, T, OC)
        dinp0, dw0, db0 = rnd(rng, B, T, C), rnd(rng, OC, C), rnd(rng, OC)
        dinp_c, dw_c, db_c = dinp0.copy(), dw0.copy(), db0.copy()
        CPU.matmul_backward(dinp_c, dw_c, db_c if use_bias else None, dout, inp, w, B, T, C, OC)
        dinp_g, dw_g, db_g = dev(dinp0), dev(dw0), dev(db0)
        GPU.matmul_backward(dinp_g, dw_g, db_g if use_bias else None, dev(dout), dev(inp), dev(w), B, T, C, OC)
        close(host(dinp_g), dinp_c, what="dinp")
        close(host(dw_g), dw_c, what="dweight")
        close(host(db_g), db_c, what="dbias")  # unchanged (db0) when use_bias is False

    def test_split_k_heuristic():
        from numbagpt.cuda import matmul as mm
        assert mm.split_k_count(3, 8, 600) == 2 and mm.split_k_count(520, 8, 20) == 1
        assert mm.split_k_count(20, 8, 520) == 2 and mm.split_k_count(74, 20, 67) == 1

    def test_matmul_views_of_a_bigger_buffer():
        # the model passes 1-D slices of its flat buffers: offsets must be honoured
        rng = np.random.default_rng(4)
        B, T, C, OC = 1, 3, 8, 5
        inp, w, b = rnd(rng, B, T, C), rnd(rng, OC, C), rnd(rng, OC)
        big = np.concatenate([rnd(rng, 7), inp, rnd(rng, 3), w, b, np.zeros(B * T * OC + 2, np.float32)])
        d = dev(big)
        o_inp, o_w = 7, 7 + inp.size + 3
        o_b = o_w + w.size
        o_out = o_b + b.size + 1
        GPU.matmul_forward(d[o_out:o_out + B * T * OC], d[o_inp:o_inp + inp.size], d[o_w:o_w + w.size],
                           d[o_b:o_b + OC], B, T, C, OC)
        got = host(d)
        want = inp.reshape(-1, C) @ w.reshape(OC, C).T + b
        close(got[o_out:o_out + B * T * OC], want.reshape(-1))
        np.testing.assert_array_equal(got[:o_out], big[:o_out])
        assert got[o_out - 1] == 0 and got[-1] == 0

    # ------------------------------------------------------------------------- attention
    @pytest.mark.parametrize("B,T,C,NH", [(2, 5, 12, 3), (1, 70, 8, 2)])
    def test_attention(B, T, C, NH):
        # (1, 70, 8, 2): T > 64 -> 2x2 score tiles, one skipped above the diagonal; causal K ranges
        rng = np.random.default_rng(5)
        inp = rnd(rng, B, T, 3 * C)
        BNTT = B * NH * T * T
        out_c, preatt_c, att_c = np.zeros(B * T * C, np.float32), np.zeros(BNTT, np.float32), np.zeros(BNTT, np.float32)
        CPU.attention_forward(out_c, preatt_c, att_c, inp, B, T, C, NH)
        out_g, preatt_g, att_g = GPU.zeros(B * T * C), GPU.zeros(BNTT), GPU.zeros(BNTT)
        GPU.attention_forward(out_g, preatt_g, att_g, dev(inp), B, T, C, NH)
        lower = np.tril(np.ones((T, T), bool))[None, None].repeat(B, 0).repeat(NH, 1).reshape(-1)
        close(host(out_g), out_c, what="out")
        close(host(preatt_g)[lower], preatt_c[lower], what="preatt (t2 <= t)")
        close(host(att_g), att_c, what="att")
        assert np.all(host(att_g)[~lower] == 0)

        dout = rnd(rng, B, T, C)
        dinp0 = rnd(rng, B, T, 3 * C)
        dinp_c = dinp0.copy()
        dpreatt_c, datt_c = np.zeros(BNTT, np.float32), np.zeros(BNTT, np.float32)
        CPU.attention_backward(dinp_c, dpreatt_c, datt_c, dout, inp, att_c, B, T, C, NH)
        dinp_g, dpreatt_g, datt_g = dev(dinp0), GPU.zeros(BNTT), GPU.zeros(BNTT)
        GPU.attention_backward(dinp_g, dpreatt_g, datt_g, dev(dout), dev(inp), att_g, B, T, C, NH)
        close(host(dinp_g), dinp_c, what="dinp")
        close(host(datt_g)[lower], datt_c[lower], what="datt (t2 <= t)")
        close(host(dpreatt_g)[lower], dpreatt_c[lower], what="dpreatt (t2 <= t)")

    # ------------------------------------------------------------------------- gelu, residual
    @pytest.mark.parametrize("N", [120, 300])
    def test_gelu(N):
        rng = np.random.default_rng(6)
        x = rnd(rng, N, scale=3.0)
        x[:4] = [0.0, 12.0, -12.0, 100.0]
        out_c = np.zeros(N, np.float32)
        CPU.gelu_forward(out_c, x, N)
        out_g = GPU.zeros(N)
        GPU.gelu_forward(out_g, dev(x), N)
        close(host(out_g), out_c, rtol=1e-5, atol=1e-6)
        dout, dinp0 = rnd(rng, N), rnd(rng, N)
        dinp_c = dinp0.copy()
        CPU.gelu_backward(dinp_c, dout, x, N)
        dinp_g = dev(dinp0)
        GPU.gelu_backward(dinp_g, dev(dout), dev(x), N)
        close(host(dinp_g), dinp_c, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("N", [120, 300])
    def test_residual(N):
        rng = np.random.default_rng(7)
        a, b = rnd(rng, N), rnd(rng, N)
        out_g = GPU.zeros(N)
        GPU.residual_forward(out_g, dev(a), dev(b), N)
        out_c = np.zeros(N, np.float32)
        CPU.residual_forward(out_c, a, b, N)
        np.testing.assert_array_equal(host(out_g), out_c)
        dout, d1, d2 = rnd(rng, N), rnd(rng, N), rnd(rng, N)
        d1c, d2c = d1.copy(), d2.copy()
        CPU.residual_backward(d1c, d2c, dout, N)
        d1g, d2g = dev(d1), dev(d2)
        GPU.residual_backward(d1g, d2g, dev(dout), N)
        np.testing.assert_array_equal(host(d1g), d1c)
        np.testing.assert_array_equal(host(d2g), d2c)

    # ------------------------------------------------------------------------- crossentropy
    @pytest.mark.parametrize("B,T,V,Vp,scale", [(2, 5, 37, 64, 3.0), (1, 2, 300, 384, 30.0)])
    def test_crossentropy(B, T, V, Vp, scale):
        # (1, 2, 300, 384): rows longer than the 256-thread block, large logits (online max rescaling)
        rng = np.random.default_rng(8)
        logits = rnd(rng, B, T, Vp, scale=scale)
        targets = rng.integers(0, V, B * T).astype(np.int32)
        losses_c = np.zeros(B * T, np.float32)
        CPU.crossentropy_forward(losses_c, logits, targets, B, T, V, Vp)
        losses_g = GPU.zeros(B * T)
        GPU.crossentropy_forward(losses_g, dev(logits), dev(targets), B, T, V, Vp)
        close(host(losses_g), losses_c, what="losses")

        dlosses = rnd(rng, B * T)
        dlogits_c = np.zeros(B * T * Vp, np.float32)
        CPU.crossentropy_backward(dlogits_c, dlosses, logits, targets, B, T, V, Vp)
        # out of place, into a buffer full of garbage: dlogits is written (=), padding included
        dlogits_g = dev(rnd(rng, B * T * Vp))
        logits_g = dev(logits)
        GPU.crossentropy_backward(dlogits_g, dev(dlosses), logits_g, dev(targets), B, T, V, Vp)
        got = host(dlogits_g)
        close(got, dlogits_c, rtol=1e-4, atol=1e-6, what="dlogits")
        assert np.all(got.reshape(B * T, Vp)[:, V:] == 0)
        np.testing.assert_array_equal(host(logits_g), logits)  # input untouched
        # in place: dlogits is logits
        GPU.crossentropy_backward(logits_g, dev(dlosses), logits_g, dev(targets), B, T, V, Vp)
        np.testing.assert_array_equal(host(logits_g), got)

    # ------------------------------------------------------------------------- adamw
    @pytest.mark.parametrize("t,weight_decay,grad_scale", [(1, 0.0, 1.0), (3, 0.01, 0.5)])
    def test_adamw(t, weight_decay, grad_scale):
        rng = np.random.default_rng(9)
        N = 1000
        p, m, v, g = rnd(rng, N), rnd(rng, N, scale=0.1), np.abs(rnd(rng, N, scale=0.1)), rnd(rng, N)
        args = (1e-3, 0.9, 0.999, 1e-8, weight_decay, grad_scale, t, N)
        pc, mc, vc = p.copy(), m.copy(), v.copy()
        CPU.adamw_update(pc, mc, vc, g, *args)
        pg, mg, vg = dev(p), dev(m), dev(v)
        GPU.adamw_update(pg, mg, vg, dev(g), *args)
        close(host(mg), mc, rtol=1e-5, atol=1e-7, what="m")
        close(host(vg), vc, rtol=1e-5, atol=1e-7, what="v")
        close(host(pg), pc, rtol=1e-5, atol=1e-6, what="params")

    @pytest.mark.parametrize("N", [1, 1000, 9000])
    def test_global_norm_squared(N):
        # 9000: three stage-1 blocks
        rng = np.random.default_rng(10)
        g = rnd(rng, N)
        out_c = np.zeros(1, np.float32)
        CPU.global_norm_squared(out_c, g, N)
        out_g = dev(np.full(1, 123.0, np.float32))  # overwritten, not accumulated
        GPU.global_norm_squared(out_g, dev(g), N)
        close(host(out_g), out_c, rtol=1e-5)
