"""The CUDA kernels (numbagpt.cuda) in Numba's CUDA simulator, against the NumPy float64 reference.

How it runs without a GPU: the simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is
first imported, but the main pytest process keeps the real CUDA target (tests/test_cuda_ptx.py compiles
every kernel to PTX with it, and other tests import numba normally). So:

- in a normal pytest run (simulator off) this module holds one test, `test_cuda_kernels_under_simulator`,
  which runs this module and the kernel test files (KERNEL_FILES: their `cuda` cases, tests/harness.py)
  in a subprocess with NUMBA_ENABLE_CUDASIM=1 and fails with the subprocess's pytest output if anything
  fails inside. To run or debug them directly:
      NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_kernels.py tests/test_cpu_layernorm.py -q
- on a machine with a GPU (simulator off) the kernel files run their `cuda` cases on the GPU in this
  process as well.

The kernels are launched with their real launch configurations (block sizes, tiles) on tiny shapes that
are not multiples of the tiles/blocks (B=2, T=5, C=12, NH=3, OC=20, V=37, Vp=64) plus a few multi-tile
shapes (several GEMM tiles and K steps, T > 64 in the attention, a row longer than a crossentropy block).
The simulator runs each CUDA thread as a Python thread (numbagpt.cuda.runtime adds warp-shuffle
emulation to it), so the shapes stay tiny. This file holds the memory helpers, and matmul and GELU
(whose CPU files test the CPU's own kernel variants).
"""
import numpy as np
import pytest
from harness import cases, check, rnd, tolerance
from reference import matmul_forward_ref
from simulator import RUN_HERE, SIM, under_simulator

# the kernel test files whose `cuda` cases run under the simulator
KERNEL_FILES = ("test_cpu_encoder.py", "test_cpu_layernorm.py", "test_cpu_attention.py", "test_cpu_residual.py",
                "test_cpu_crossentropy.py", "test_cpu_adamw.py", "test_cpu_attention_cached.py", "test_cpu_matvec.py")

if not SIM:
    test_cuda_kernels_under_simulator = under_simulator(("test_cuda_kernels.py",) + KERNEL_FILES, "CUDA kernel tests")

if RUN_HERE:
    import numbagpt.cuda as GPU

    def dev(x):
        return GPU.to_device(x)

    def host(d):
        return GPU.to_host(d)

    from numbagpt.cuda.runtime import bf16_round, cuda   # module globals: the simulator swaps `cuda`

    @cuda.jit
    def bf16_round_kernel(out, x, n):
        i = cuda.threadIdx.x
        if i < n:
            out[i] = bf16_round(x[i])

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

    # ------------------------------------------------------------------------- matmul
    # (2, 37, 20, 67): M=74, N=67 -> 2x2 output tiles of 64; K=20 -> 2 K steps; dweight K=74 -> 5
    # (1, 3, 8, 520): dinp K=520 is split in 2 (split-K, atomics); (1, 520, 8, 20): dweight K=520
    # split in 2, dbias over 3 row chunks. The backward runs twice: accumulating into random gradients,
    # then writing (accumulate=False) over NaN dweight and dbias: by the plain-store kernels, and where
    # split-K or row chunks add up with atomics, (1, 520, 8, 20), by zeroing them first
    @pytest.mark.parametrize("backend,B,T,C,OC,use_bias", cases(cuda=[
        (2, 5, 12, 20, True), (2, 5, 12, 20, False), (2, 37, 20, 67, True), (1, 3, 8, 520, True),
        (1, 520, 8, 20, True)]))
    def test_matmul(backend, B, T, C, OC, use_bias):
        rng = np.random.default_rng(3)
        inp, w, b = rnd(rng, B, T, C), rnd(rng, OC, C), rnd(rng, OC)
        check(backend, "matmul_forward", out=B * T * OC, inp=inp, weight=w, bias=b if use_bias else None,
              B=B, T=T, C=C, OC=OC)
        dout = rnd(rng, B, T, OC)
        for accumulate in (True, False):
            check(backend, "matmul_backward", dinp=B * T * C, dweight=OC * C, dbias=OC if use_bias else None,
                  dout=dout, inp=inp, weight=w, B=B, T=T, C=C, OC=OC, accumulate=accumulate)

    # the bf16 variants (the same GEMM kernels with each operand rounded as it is loaded): K odd in every
    # product, (2, 37, 21, 67) several tiles and K steps, (1, 3, 8, 520) split-K in dinp
    @pytest.mark.parametrize("backend,B,T,C,OC,use_bias", cases(cuda=[
        (1, 3, 5, 7, True), (2, 37, 21, 67, False), (1, 3, 8, 520, True)]))
    def test_matmul_bf16(backend, B, T, C, OC, use_bias):
        rng = np.random.default_rng(8)
        inp, w, b = rnd(rng, B, T, C), rnd(rng, OC, C, scale=C ** -0.5), rnd(rng, OC)
        got = check(backend, "matmul_forward_bf16", out=B * T * OC, inp=inp, weight=w, bias=b if use_bias else None,
                    B=B, T=T, C=C, OC=OC)
        # and the CPU's bf16 matmul agrees (both: products of the same rounded operands, float32 sums)
        import numbagpt.cpu as CPU
        out = np.empty(B * T * OC, np.float32)
        CPU.matmul_forward_bf16(out, inp, w, b if use_bias else None, B, T, C, OC)
        np.testing.assert_allclose(got["out"], out, rtol=1e-5, atol=2e-5)
        dout = rnd(rng, B, T, OC, scale=OC ** -0.5)
        for accumulate in (True, False):
            check(backend, "matmul_backward_bf16", dinp=B * T * C, dweight=OC * C, dbias=OC if use_bias else None,
                  dout=dout, inp=inp, weight=w, B=B, T=T, C=C, OC=OC, accumulate=accumulate)

    # dout in bf16 rows (the LM head's dlogits in a bf16 step): OC even; (2, 37, 21, 68) several tiles,
    # (1, 3, 8, 520) split-K in dinp, (1, 520, 8, 20) split-K in dweight; against float64 of the rows'
    # values, and bit for bit the float32 dout's bf16 products where no sum order differs (unsplit)
    @pytest.mark.parametrize("backend,B,T,C,OC", cases(cuda=[(1, 3, 5, 6), (2, 37, 21, 68), (1, 3, 8, 520),
                                                             (1, 520, 8, 20)]))
    def test_matmul_bf16_dout_in_bf16_rows(backend, B, T, C, OC):
        from reference import to_bf16_rows
        rng = np.random.default_rng(9)
        inp, w = rnd(rng, B, T, C), rnd(rng, OC, C, scale=C ** -0.5)
        dout = rnd(rng, B, T, OC, scale=OC ** -0.5)
        for accumulate in (True, False):
            args = dict(dinp=B * T * C, dweight=OC * C, dbias=None, inp=inp, weight=w, B=B, T=T, C=C, OC=OC,
                        accumulate=accumulate, seed=2)
            got = check(backend, "matmul_backward_bf16", dout=to_bf16_rows(dout, OC), dout_bf16=True, **args)
            want = check(backend, "matmul_backward_bf16", dout=dout, **args)
            if max(B * T, OC) < 256:
                for name in ("dinp", "dweight"):
                    np.testing.assert_array_equal(got[name], want[name])

    def test_bf16_round_device_function():
        """runtime.bf16_round in a kernel: the reference's round to nearest even, subnormals rounded
        (not flushed), overflow to inf, inf kept, NaN a NaN."""
        from reference import bf16_round_ref
        u = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x0000FFFF, 0x00018000, 0x00008000, 0x80017FFF,
                      0x7F7F8000, 0x7F7F7FFF, 0xFF7F8000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFF800001,
                      0x00000000, 0x80000000, 0x12345678, 0xC0490FDB], np.uint32)
        x = u.view(np.float32)
        d = dev(np.zeros_like(x))
        bf16_round_kernel[1, 32](d, dev(x), np.int64(x.size))
        got = host(d)
        with np.errstate(invalid="ignore"):
            want = bf16_round_ref(x)
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        np.testing.assert_array_equal(got[~nan].astype(np.float64), want[~nan])

    def test_matmul_backward_write_plans():
        """Writing, dweight and dbias get the plain-store kernels where one block owns each output, and a
        fill_zero launch before the atomic kernels where split-K slices or row chunks add up."""
        from numbagpt.cuda import matmul as mm
        from numbagpt.cuda.runtime import fill_zero_kernel
        kernels = [launch.kernel for launch in mm.matmul_backward_launches(2, 5, 12, 20, True, False)]
        assert kernels == [mm.gemm_backward_dinp, mm.gemm_backward_dweight_write, mm.matmul_backward_dbias_write_kernel]
        kernels = [launch.kernel for launch in mm.matmul_backward_launches(1, 520, 8, 20, True, False)]
        assert kernels == [mm.gemm_backward_dinp, fill_zero_kernel, mm.gemm_backward_dweight_splitk,
                           fill_zero_kernel, mm.matmul_backward_dbias_kernel]
        kernels = [launch.kernel for launch in mm.matmul_backward_launches(1, 520, 8, 20, True, True)]
        assert kernels == [mm.gemm_backward_dinp, mm.gemm_backward_dweight_splitk, mm.matmul_backward_dbias_kernel]

    def test_split_k_heuristic():
        from numbagpt.cuda import matmul as mm
        assert mm.split_k_count(3, 8, 520) == 2 and mm.split_k_count(520, 8, 20) == 1
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
        want = matmul_forward_ref(inp.reshape(-1, C), w.reshape(OC, C), b)
        rtol, atol = tolerance("matmul_forward", "out")
        np.testing.assert_allclose(got[o_out:o_out + B * T * OC], want.reshape(-1), rtol=rtol, atol=atol)
        np.testing.assert_array_equal(got[:o_out], big[:o_out])
        assert got[o_out - 1] == 0 and got[-1] == 0

    # ------------------------------------------------------------------------- gelu
    @pytest.mark.parametrize("backend,N", cases(cuda=[120, 300]))
    def test_gelu(backend, N):
        rng = np.random.default_rng(6)
        x = rnd(rng, N, scale=3.0)
        x[:4] = [0.0, 12.0, -12.0, 100.0]
        check(backend, "gelu_forward", out=N, inp=x, N=N)
        check(backend, "gelu_backward", dinp=N, dout=rnd(rng, N), inp=x, N=N)
