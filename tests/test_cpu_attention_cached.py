"""attention_forward_cached (generation with a key/value cache) against the NumPy float64 reference of
the full causal attention (tests/harness.py): positions t0 .. t0+T−1 of a sequence must come out as the
full attention's, and their keys and values must land in the cache."""
import numpy as np
import pytest

from harness import cases, check, tolerance
from reference import attention_forward_ref


def run_cached(backend, qkv, t0, NH, maxT, kcache=None, vcache=None):
    """The kernel on positions t0.. of qkv (B, t0+T, 3C), the cache holding rows < t0 from qkv (NaN
    beyond) unless given. Returns the outputs: out, att, kcache, vcache."""
    B, Tall, C3 = qkv.shape
    C, T, hs = C3 // 3, Tall - t0, C3 // 3 // NH
    if kcache is None:
        heads = qkv.reshape(B, Tall, 3, NH, hs)
        kcache = np.full((B, NH, maxT, hs), np.nan, np.float32)
        vcache = np.full((B, NH, maxT, hs), np.nan, np.float32)
        kcache[:, :, :t0] = heads[:, :t0, 1].transpose(0, 2, 1, 3)
        vcache[:, :, :t0] = heads[:, :t0, 2].transpose(0, 2, 1, 3)
    return check(backend, "attention_forward_cached", out=B * T * C, att=B * NH * T * maxT, kcache=kcache,
                 vcache=vcache, inp=qkv[:, t0:], B=B, T=T, t0=t0, C=C, NH=NH, maxT=maxT)


# (B, t0, T, C, NH, maxT): one decoding row at several depths, prefills, rows longer than hs,
# hs not a multiple of 4, a cache larger than the sequence
@pytest.mark.parametrize("backend,B,t0,T,C,NH,maxT", cases(cpu=[
    (2, 0, 1, 12, 3, 8), (2, 6, 1, 12, 3, 8), (1, 0, 9, 16, 2, 9), (2, 3, 4, 12, 3, 10), (1, 40, 1, 30, 2, 48),
    (1, 20, 21, 64, 2, 64)]))
def test_attention_forward_cached(backend, B, t0, T, C, NH, maxT):
    rng = np.random.default_rng(t0 + 10 * T)
    qkv = (2.0 * rng.standard_normal((B, t0 + T, 3 * C))).astype(np.float32)
    got = run_cached(backend, qkv, t0, NH, maxT)   # out and att against the full attention's rows t0..
    n = t0 + T
    np.testing.assert_array_equal(got["att"].reshape(B, NH, T, maxT)[..., n:], 0.0)
    # the new positions' keys and values are in the cache, in (B, NH, maxT, hs) order
    hs = C // NH
    heads = qkv.reshape(B, n, 3, NH, hs)
    kcache, vcache = got["kcache"].reshape(B, NH, maxT, hs), got["vcache"].reshape(B, NH, maxT, hs)
    np.testing.assert_array_equal(kcache[:, :, t0:n], heads[:, t0:, 1].transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(vcache[:, :, t0:n], heads[:, t0:, 2].transpose(0, 2, 1, 3))
    assert np.isnan(kcache[:, :, n:]).all()  # rows beyond are not touched


@pytest.mark.parametrize("backend", cases(cpu=[()]))
def test_cache_built_one_row_at_a_time_equals_the_full_attention(backend):
    # decode a whole sequence row by row from an empty cache: every row as in the full forward
    B, T, C, NH = 2, 11, 12, 3
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    rout, _, _ = attention_forward_ref(qkv, NH)
    kcache = np.zeros((B, NH, T, C // NH), np.float32)
    vcache = np.zeros_like(kcache)
    rtol, atol = tolerance("attention_forward_cached", "out")
    for t in range(T):
        got = run_cached(backend, qkv[:, :t + 1], t, NH, T, kcache, vcache)
        kcache, vcache = got["kcache"], got["vcache"]
        np.testing.assert_allclose(got["out"].reshape(B, C), rout[:, t], rtol=rtol, atol=atol)


# (B, t0, T, C, NH, maxT): a decoding row, a prefill, a row of more than 32 keys (the CUDA lanes loop)
RANDOM_CACHE = [(2, 3, 1, 12, 3, 6), (1, 0, 5, 8, 2, 7), (1, 36, 1, 4, 1, 40),
                (1, 5, 2, 128, 2, 8), (1, 3, 1, 66, 2, 8)]   # hs 64 (GPT-2's) and 33: past a warp's 32 lanes


@pytest.mark.parametrize("backend,B,t0,T,C,NH,maxT", cases(cpu=RANDOM_CACHE, cuda=RANDOM_CACHE))
def test_attention_forward_cached_over_any_cache(backend, B, t0, T, C, NH, maxT):
    # cache rows < t0 hold earlier positions (any values); rows past t0 + T must keep theirs
    rng = np.random.default_rng(t0)
    hs = C // NH
    check(backend, "attention_forward_cached", out=B * T * C, att=B * NH * T * maxT,
          kcache=rng.standard_normal(B * NH * maxT * hs).astype(np.float32),
          vcache=rng.standard_normal(B * NH * maxT * hs).astype(np.float32),
          inp=rng.standard_normal(B * T * 3 * C).astype(np.float32), B=B, T=T, t0=t0, C=C, NH=NH, maxT=maxT)
