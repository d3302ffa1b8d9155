"""The CUDA flash attention (numbagpt/cuda/attention.py) against a float64 NumPy reference written here.

    attention_forward(out, lse, inp, B, T, C, NH)                        out (B,T,C), lse (B,NH,T) written
    attention_backward(dinp, dout, inp, out, lse, B, T, C, NH)           dinp (B,T,3C) accumulated

Runs in Numba's CUDA simulator (the normal pytest run re-runs this module in a subprocess with
NUMBA_ENABLE_CUDASIM=1, as tests/simulator.py describes) or directly on a GPU. The shapes cover T = 1, 2,
odd, the 32-row tile ±1 and several query tiles (the causal loops, the masked diagonal tile, rows and keys
past T), odd head sizes and hs = 1, hs = 64 (two 32-channel score chunks), hs = 128 and 130 (several
64-channel output slices, a partial last chunk), B and NH > 1 (the per-(b, h) offsets). Outputs start as
NaN (every element must be written) and carry a guard tail that must stay untouched; dinp starts random (accumulation).
Also (simulator off): the three kernels compile to PTX for sm_80 and sm_90 without float64 or local memory,
and to cubins without spills (nvJitLink, as dev/cuda_resources.py does).
"""
import math

import numpy as np
import pytest
from simulator import RUN_HERE, SIM, under_simulator

RTOL, ATOL = 1e-5, 1e-5  # tests/harness.py's attention tolerances
GUARD = 3                # extra elements after every output buffer, which must keep their value
GUARD_VALUE = np.float32(-12345.0)

# (B, T, C, NH); hs = C // NH
SHAPES = [
    (1, 1, 8, 2),     # T = 1
    (2, 2, 6, 2),     # T = 2, hs = 3, B = 2
    (1, 7, 10, 2),    # odd T, hs = 5
    (1, 31, 4, 1),    # one tile less one row
    (1, 33, 6, 2),    # one tile plus one row: a second query/key tile of one row
    (2, 65, 3, 1),    # three query tiles, hs = 3
    (1, 40, 64, 1),   # hs = 64: two score chunks, one output pass
    (1, 9, 66, 2),    # hs = 33: a one-channel second chunk
    (1, 6, 2, 2),     # hs = 1
    (1, 3, 256, 2),   # hs = 128: two full output slices, four chunks
    (1, 5, 130, 1),   # hs = 130: three 64-channel output slices (blockIdx.z), five chunks (the last of 2)
]

if not SIM:
    test_flash_attention_under_simulator = under_simulator("test_cuda_flash_attention.py", "CUDA flash attention tests")


# ----------------------------------------------------------------------------- float64 reference

def _heads(x, B, T, NH, hs):
    """(B, T, NH·hs) → (B, NH, T, hs)."""
    return x.reshape(B, T, NH, hs).transpose(0, 2, 1, 3)


def reference_forward(qkv, B, T, C, NH):
    """(out (B,T,C), lse (B,NH,T), P (B,NH,T,T)) in float64: causal softmax attention."""
    hs = C // NH
    x = qkv.astype(np.float64).reshape(B, T, 3 * C)
    q, k, v = (_heads(x[..., i * C:(i + 1) * C], B, T, NH, hs) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    l = e.sum(axis=-1, keepdims=True)
    p = e / l
    out = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    lse = (m + np.log(l))[..., 0]
    return out, lse, p


def reference_backward(dout, qkv, B, T, C, NH):
    """d(qkv) (B, T, 3C) in float64 of Σ out·dout."""
    hs = C // NH
    x = qkv.astype(np.float64).reshape(B, T, 3 * C)
    q, k, v = (_heads(x[..., i * C:(i + 1) * C], B, T, NH, hs) for i in range(3))
    out, _, p = reference_forward(qkv, B, T, C, NH)
    do = _heads(dout.astype(np.float64).reshape(B, T, C), B, T, NH, hs)
    o = _heads(out, B, T, NH, hs)
    dv = p.transpose(0, 1, 3, 2) @ do
    dp = do @ v.transpose(0, 1, 3, 2)
    D = (do * o).sum(axis=-1, keepdims=True)
    ds = p * (dp - D)
    dq = ds @ k / math.sqrt(hs)
    dk = ds.transpose(0, 1, 3, 2) @ q / math.sqrt(hs)
    back = [g.transpose(0, 2, 1, 3).reshape(B, T, C) for g in (dq, dk, dv)]
    return np.concatenate(back, axis=-1)


def test_reference_against_finite_differences():
    rng = np.random.default_rng(5)
    B, T, C, NH = 1, 4, 6, 2
    qkv = rng.standard_normal((B, T, 3 * C))
    g = rng.standard_normal((B, T, C))
    want = reference_backward(g, qkv, B, T, C, NH)
    h = 1e-6
    num = np.zeros_like(qkv)
    for idx in np.ndindex(*qkv.shape):
        qp, qm = qkv.copy(), qkv.copy()
        qp[idx] += h
        qm[idx] -= h
        num[idx] = ((reference_forward(qp, B, T, C, NH)[0] - reference_forward(qm, B, T, C, NH)[0]) * g).sum() / (2 * h)
    np.testing.assert_allclose(want, num, rtol=1e-6, atol=1e-7)
    # lse is log Σ exp of the scaled scores of the row
    _, lse, _ = reference_forward(qkv, B, T, C, NH)
    q, k = qkv[0, :, 0:3], qkv[0, :, C:C + 3]  # head 0: channels 0..2 (hs = 3)
    t = 2
    want_lse = np.log(np.exp(q[t] @ k[:t + 1].T / math.sqrt(3)).sum())
    assert abs(lse[0, 0, t] - want_lse) < 1e-12


# ----------------------------------------------------------------------------- the kernels

if RUN_HERE:
    import numbagpt.cuda as GPU
    from numbagpt.cuda import attention as A

    def _dev(x):
        return GPU.to_device(np.concatenate([np.asarray(x, np.float32).reshape(-1),
                                             np.full(GUARD, GUARD_VALUE, np.float32)]))

    def _host(d, n):
        h = GPU.to_host(d)
        np.testing.assert_array_equal(h[n:], GUARD_VALUE, err_msg="written past the end")
        return h[:n]

    def _forward(qkv, B, T, C, NH):
        out, lse = _dev(np.full(B * T * C, np.nan)), _dev(np.full(B * NH * T, np.nan))
        inp = _dev(qkv)
        GPU.attention_forward(out, lse, inp, B, T, C, NH)
        np.testing.assert_array_equal(_host(inp, qkv.size), qkv.reshape(-1))
        return _host(out, B * T * C), _host(lse, B * NH * T)

    @pytest.mark.parametrize("B,T,C,NH", SHAPES)
    def test_flash_attention(B, T, C, NH):
        rng = np.random.default_rng(B * 1000 + T * 10 + C)
        qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
        out, lse = _forward(qkv, B, T, C, NH)
        want_out, want_lse, _ = reference_forward(qkv, B, T, C, NH)
        np.testing.assert_allclose(out, want_out.reshape(-1), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(lse, want_lse.reshape(-1), rtol=RTOL, atol=ATOL)
        # backward from the reference's out and lse (float32), accumulating onto random dinp
        dout = rng.standard_normal(B * T * C).astype(np.float32)
        dinp0 = rng.standard_normal(B * T * 3 * C).astype(np.float32)
        args = [_dev(a) for a in (dinp0, dout, qkv, want_out.astype(np.float32), want_lse.astype(np.float32))]
        GPU.attention_backward(*args, B, T, C, NH)
        for d, a in zip(args[1:], (dout, qkv, want_out.astype(np.float32), want_lse.astype(np.float32))):
            np.testing.assert_array_equal(_host(d, a.size), a.reshape(-1), err_msg="an input changed")
        want = dinp0.astype(np.float64) + reference_backward(dout, qkv, B, T, C, NH).reshape(-1)
        np.testing.assert_allclose(_host(args[0], dinp0.size), want, rtol=RTOL, atol=ATOL)

    def test_flash_attention_backward_deterministic_and_from_its_forward():
        # the backward on the kernel's own out and lse, twice: bitwise the same (no atomics), and close to
        # the reference
        B, T, C, NH = 1, 34, 12, 2
        rng = np.random.default_rng(7)
        qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
        out, lse = _forward(qkv, B, T, C, NH)
        dout = rng.standard_normal(B * T * C).astype(np.float32)
        results = []
        for _ in range(2):
            dinp = _dev(np.zeros(B * T * 3 * C))
            GPU.attention_backward(dinp, _dev(dout), _dev(qkv), _dev(out), _dev(lse), B, T, C, NH)
            results.append(_host(dinp, B * T * 3 * C))
        np.testing.assert_array_equal(results[0], results[1])
        np.testing.assert_allclose(results[0], reference_backward(dout, qkv, B, T, C, NH).reshape(-1),
                                   rtol=RTOL, atol=ATOL)

    def test_flash_attention_large_scores():
        # scores of ~±50: the online softmax's rescaling (a later key tile with a larger max)
        B, T, C, NH = 1, 36, 4, 1
        rng = np.random.default_rng(8)
        qkv = (rng.standard_normal(B * T * 3 * C) * 6).astype(np.float32)
        qkv.reshape(T, 3 * C)[34, C:2 * C] *= 3  # key 34 (second tile) dominates rows 34, 35
        out, lse = _forward(qkv, B, T, C, NH)
        want_out, want_lse, _ = reference_forward(qkv, B, T, C, NH)
        np.testing.assert_allclose(out, want_out.reshape(-1), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(lse, want_lse.reshape(-1), rtol=RTOL, atol=ATOL * 10)

    def test_launch_plans():
        (fwd,) = A.attention_forward_launches(2, 65, 12, 3)
        assert fwd.kernel is A.flash_attention_forward_kernel
        assert fwd.grid3() == (6, 3, 1) and fwd.block == A.THREADS and fwd.shared == 0
        dkdv, dq = A.attention_backward_launches(2, 65, 12, 3)
        assert (dkdv.kernel, dq.kernel) == (A.flash_attention_dkdv_kernel, A.flash_attention_dq_kernel)
        assert dkdv.grid3() == dq.grid3() == (6, 3, 1)
        # hs = 130: three 64-channel slices of the output on blockIdx.z
        assert [launch.grid3() for launch in A.attention_forward_launches(1, 5, 130, 1)] == [(1, 1, 3)]
        assert [launch.grid3() for launch in A.attention_backward_launches(1, 5, 130, 1)] == [(1, 1, 3)] * 2


# ----------------------------------------------------------------------------- machine code (no GPU)

if not SIM:
    KERNELS = ("flash_attention_forward_kernel", "flash_attention_dkdv_kernel", "flash_attention_dq_kernel")

    @pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
    @pytest.mark.parametrize("name", KERNELS)
    def test_flash_kernels_compile_without_spills(name, arch):
        from dev import cuda_resources as R
        err = R.toolchain_error()
        if err:
            pytest.skip(f"cannot compile CUDA kernels here ({err})")
        from numbagpt.cuda import attention as A
        disp, sig = getattr(A, name), A.SIGNATURES[name][0]
        ptx = R.ptx(disp, sig, R.ARCHS[arch]["cc"])
        body = [ln for ln in ptx.splitlines() if not ln.lstrip().startswith("//")]
        assert not [ln for ln in body if ".f64" in ln], "float64 arithmetic in the PTX"
        assert not [ln for ln in body if ".local" in ln], "local memory in the PTX"
        res = R.resources(disp, sig, arch)
        assert not res.spills, res
        occ = R.occupancy(res, A.THREADS, 0, arch)
        assert not occ["errors"] and occ["blocks_per_sm"] >= 2, occ
