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
