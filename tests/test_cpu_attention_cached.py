"""attention_forward_cached (generation with a key/value cache) against the NumPy float64 reference of
the full causal attention: positions t0 .. t0+T−1 of a sequence must come out as the full attention's."""
import numpy as np
import pytest

from numbagpt.cpu import attention_forward_cached
from reference import attention_forward_ref


def run_cached(qkv, t0, NH, maxT, kcache=None, vcache=None):
    """The kernel on positions t0.. of qkv (B, t0+T, 3C), the cache holding rows < t0 from qkv."""
    B, Tall, C3 = qkv.shape
    C, T, hs = C3 // 3, Tall - t0, C3 // 3 // NH
    if kcache is None:
        heads = qkv.reshape(B, Tall, 3, NH, hs)
        kcache = np.full((B, NH, maxT, hs), np.nan, np.float32)
        vcache = np.full((B, NH, maxT, hs), np.nan, np.float32)
        kcache[:, :, :t0] = heads[:, :t0, 1].transpose(0, 2, 1, 3)
        vcache[:, :, :t0] = heads[:, :t0, 2].transpose(0, 2, 1, 3)
    out = np.full(B * T * C, np.nan, np.float32)
    att = np.full(B * NH * T * maxT, 7.0, np.float32)
    new = np.ascontiguousarray(qkv[:, t0:]).reshape(-1)
    attention_forward_cached(out, att, kcache.reshape(-1), vcache.reshape(-1), new, B, T, t0, C, NH, maxT)
    return out.reshape(B, T, C), att.reshape(B, NH, T, maxT), kcache, vcache


# (B, t0, T, C, NH, maxT): one decoding row at several depths, prefills, rows longer than hs,
# hs not a multiple of 4, a cache larger than the sequence
@pytest.mark.parametrize("B,t0,T,C,NH,maxT", [(2, 0, 1, 12, 3, 8), (2, 6, 1, 12, 3, 8), (1, 0, 9, 16, 2, 9),
                                               (2, 3, 4, 12, 3, 10), (1, 40, 1, 30, 2, 48), (1, 20, 21, 64, 2, 64)])
def test_attention_forward_cached(B, t0, T, C, NH, maxT):
    rng = np.random.default_rng(t0 + 10 * T)
    qkv = (2.0 * rng.standard_normal((B, t0 + T, 3 * C))).astype(np.float32)
    out, att, kcache, vcache = run_cached(qkv, t0, NH, maxT)
    rout, _, ratt = attention_forward_ref(qkv, NH)
    np.testing.assert_allclose(out, rout[:, t0:], rtol=1e-5, atol=1e-6)
    n = t0 + T
    np.testing.assert_allclose(att[..., :n], ratt[:, :, t0:, :], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(att[..., n:], 0.0)
    # the new positions' keys and values are in the cache, in (B, NH, maxT, hs) order
    hs = C // NH
    heads = qkv.reshape(B, t0 + T, 3, NH, hs)
    np.testing.assert_array_equal(kcache[:, :, t0:n], heads[:, t0:, 1].transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(vcache[:, :, t0:n], heads[:, t0:, 2].transpose(0, 2, 1, 3))
    assert np.isnan(kcache[:, :, n:]).all()  # rows beyond are not touched


def test_cache_built_one_row_at_a_time_equals_the_full_attention():
    # decode a whole sequence row by row from an empty cache: every row as in the full forward
    B, T, C, NH = 2, 11, 12, 3
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    rout, _, _ = attention_forward_ref(qkv, NH)
    kcache = np.zeros((B, NH, T, C // NH), np.float32)
    vcache = np.zeros_like(kcache)
    for t in range(T):
        out, _, kcache, vcache = run_cached(qkv[:, :t + 1], t, NH, T, kcache, vcache)
        np.testing.assert_allclose(out[:, 0], rout[:, t], rtol=1e-5, atol=1e-6)
