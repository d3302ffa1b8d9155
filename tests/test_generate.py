"""Generation with the key/value cache: the decoder's logits are the full forward's at every position,
and sampling draws from the distribution it says."""
import re

import numpy as np
import pytest

from numbagpt import generate as gen
from numbagpt.config import GPT2Config
from numbagpt.model import GPT2



def assert_logits_close(got, want):
    """Equal up to float32 rounding, which scales with the logits' magnitude (~20 here)."""
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-6 * np.abs(want).max())


def tiny_model(maxT=16, V=50, seed=1):
    cfg = GPT2Config(max_seq_len=maxT, vocab_size=V, num_layers=2, num_heads=2, channels=8)
    model = GPT2(cfg)
    model.init_weights(seed)
    # larger weights than the init's 0.02 so the logits differ visibly between positions
    model.load_parameters(model.parameters_host() * 20)
    return model


def full_logits(model, tokens):
    model.forward(tokens)
    return model.logits_host().copy()


def test_decoder_logits_equal_full_forward_at_every_position():
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 50, (3, 16)).astype(np.int32)
    want = full_logits(model, tokens)
    assert np.abs(want[:, 1:] - want[:, :-1]).max() > 0.1  # a test that can fail
    dec = gen.Decoder(model, 3)
    got = [dec.forward(tokens[:, :1], "all")[:, 0]]
    for t in range(1, 16):
        got.append(dec.forward(tokens[:, t:t + 1], "last"))  # one row per step, like sampling
    assert_logits_close(np.stack(got, 1), want)
    assert dec.pos == 16
    with pytest.raises(ValueError, match="exceed the model's maxT"):
        dec.forward(tokens[:, :1])


@pytest.mark.parametrize("chunk", [3, 256])
def test_prefill_then_decode(monkeypatch, chunk):
    monkeypatch.setattr(gen, "PREFILL_CHUNK", chunk)  # 3: the prompt goes in several chunks
    model = tiny_model()
    tokens = np.random.default_rng(1).integers(0, 50, (2, 16)).astype(np.int32)
    want = full_logits(model, tokens)
    dec = gen.Decoder(model, 2)
    assert_logits_close(dec.forward(tokens[:, :10], "all"), want[:, :10])
    dec.reset()
    assert_logits_close(dec.forward(tokens[:, :10], "last"), want[:, 9])
    assert dec.forward(tokens[:, 10:13], None) is None
    assert_logits_close(dec.forward(tokens[:, 13:], "all"), want[:, 13:])


def test_generate_with_and_without_cache_agree_beyond_max_seq_len():
    # 40 tokens from a maxT = 8 model: the context restarts several times; both paths see the same
    model = tiny_model(maxT=8)
    a = list(gen.generate(model, [1, 2, 3], 40, np.random.default_rng(5), top_k=20, temperature=3.0))
    b = list(gen.generate(model, [1, 2, 3], 40, np.random.default_rng(5), top_k=20, temperature=3.0, use_cache=False))
    assert a == b and len(set(a)) > 5
    # a batch of two prompts: each row as when generated alone
    batch = list(gen.generate(model, [[1, 2, 3], [4, 5, 6]], 12, np.random.default_rng(0), temperature=0))
    alone = list(gen.generate(model, [4, 5, 6], 12, np.random.default_rng(0), temperature=0))
    assert [int(ids[1]) for ids in batch] == alone


@pytest.mark.parametrize("chunk", [5, 256])
def test_sampling_bytes_are_what_sampling_allocates(monkeypatch, chunk):
    """sampling_bytes (sample_gpt2's memory check) = the buffers sampling holds at most: the parameters,
    and the caches with the scratch of a whole context's prefill (in chunks) or of a decoding step,
    or else a whole forward's activations and tokens at maxT."""
    from numbagpt.layout import allocated_bytes
    monkeypatch.setattr(gen, "PREFILL_CHUNK", chunk)
    model = tiny_model()
    dec = gen.Decoder(model, 1)
    dec.forward(np.ones((1, 16), np.int32), None)   # chunks of min(chunk, maxT) positions
    dec.reset()
    dec.forward(np.ones((1, 1), np.int32), "last")  # a decoding step
    held = model.params_flat.nbytes + dec.kcache.nbytes + dec.vcache.nbytes + dec.scratch_flat.nbytes
    assert gen.sampling_bytes(model.config, use_cache=True) == held
    model.forward(np.ones((1, 16), np.int32))   # --no-cache's forward of a full context
    held = sum(n for n in allocated_bytes(model).values() if n)
    assert gen.sampling_bytes(model.config, use_cache=False) == held


def test_context_start():
    assert gen.context_start(7, 0, 8) == 0
    assert gen.context_start(8, 0, 8) == 4       # full: restart from the last 4
    assert gen.context_start(11, 4, 8) == 4
    assert gen.context_start(12, 4, 8) == 8


def test_prompt_seen():
    """A prompt shorter than maxT is seen whole; one that fills it, its last maxT/2 (context_start)."""
    assert gen.prompt_seen(7, 8) == 7
    assert gen.prompt_seen(8, 8) == 4 and gen.prompt_seen(52, 16) == 8


def test_a_temperature_so_small_that_logits_overflow_is_the_argmax():
    """logits / 1e-310 overflows float64: the limit of the softmax, the argmax (it was NaN probabilities,
    so a meaningless id, with NumPy's overflow warnings)."""
    logits = np.array([[0.5, 3.0, -1.0, 2.9], [7.0, 0.0, 1.0, 6.5]])
    rng = np.random.default_rng(0)
    with np.errstate(over="raise", invalid="raise"):   # and no overflow or NaN on the way
        for t in (1e-310, 1e-300):
            assert list(gen.sample_next(logits, rng, temperature=t)) == [1, 0]
            assert list(gen.sample_next(logits, rng, temperature=t, top_k=2, top_p=0.5)) == [1, 0]


def test_greedy_is_the_argmax_of_the_full_forward():
    model = tiny_model()
    prompt = [3, 1, 4, 1, 5]
    out = list(gen.generate(model, prompt, 8, np.random.default_rng(0), temperature=0))
    ctx = list(prompt)
    for t in out:
        assert t == int(full_logits(model, np.array([ctx], np.int32))[0, -1, :50].argmax())
        ctx.append(t)


@pytest.mark.parametrize("use_cache", [True, False])
def test_never_a_padding_id(use_cache):
    # every real logit -8, the padded vocabulary's (zero rows of wte) 0: still only ids < V
    model = tiny_model()
    flat = model.parameters_host()
    p = model.param_layout.host_views(flat)
    p["lnfw"][:], p["lnfb"][:] = 0.0, 1.0   # the final layernorm's output: all ones
    p["wte"][:50], p["wte"][50:] = -1.0, 0.0
    model.load_parameters(flat)
    assert model.config.padded_vocab_size > 50
    for temperature in (0, 1.0):
        ids = list(gen.generate(model, [3, 1], 20, np.random.default_rng(0), temperature=temperature,
                                use_cache=use_cache))
        assert max(ids) < 50, ids


def _empirical(logits, n, **kw):
    rng = np.random.default_rng(0)
    draws = np.concatenate([gen.sample_next(np.tile(logits, (1000, 1)), rng, **kw) for _ in range(n // 1000)])
    return np.bincount(draws, minlength=logits.size) / draws.size


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.5), dict(top_k=3), dict(top_p=0.6),
                                dict(top_k=4, top_p=0.9, temperature=2.0)])
def test_sampling_distribution(kw):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 1.5])
    p = np.exp(logits / kw.get("temperature", 1.0))
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[:kw.get("top_k", 6)]
    q = p[keep] / p[keep].sum()
    if "top_p" in kw:  # the smallest prefix whose mass reaches top_p
        keep = keep[:np.searchsorted(np.cumsum(q), kw["top_p"]) + 1]
    want = np.zeros(6)
    want[keep] = p[keep] / p[keep].sum()
    got = _empirical(logits, 20000, **kw)
    np.testing.assert_allclose(got, want, atol=0.015)
    assert (got[want == 0] == 0).all()


def test_decoder_rejects_bad_tokens():
    dec = gen.Decoder(tiny_model(), 1)
    with pytest.raises(ValueError, match="out of range"):
        dec.forward(np.array([[50]]))
    with pytest.raises(ValueError, match=r"\(1, T>0\)"):
        dec.forward(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="at least one token"):
        list(gen.generate(dec.model, [], 3, np.random.default_rng(0)))
    # what model.forward refuses, the decoder refuses too: no silent cast of 1.9 or 2**32 + 3
    with pytest.raises(ValueError, match="token ids must be integers"):
        dec.forward(np.array([[1.9]]))
    with pytest.raises(ValueError, match="out of range"):
        dec.forward(np.array([[2**32 + 3]]))
    with pytest.raises(ValueError, match="logits must be 'last', 'all' or None, got 'bogus'"):
        dec.forward(np.array([[1]]), logits="bogus")


@pytest.mark.parametrize("kwargs, said", [
    (dict(prompt=[1.7, 2.2]), "token ids must be integers"),
    (dict(prompt=[[1, 2], [3]]), "a list of token ids, or B lists of one length"),
    (dict(temperature=-1), "generate: temperature must be >= 0, got -1"),
    (dict(top_k=-3), "generate: top_k must be >= 0, got -3"),
    (dict(top_p=2.0), "generate: top_p must be in (0, 1], got 2.0"),
    (dict(max_new_tokens=2.5), "generate: max_new_tokens must be an integer, got 2.5"),
    (dict(rng=42), "generate: rng must be a numpy Generator"),
], ids=lambda v: str(v)[:30])
def test_generate_refuses_what_it_cannot_use(kwargs, said):
    """generate() checks its arguments as api.sample does (a negative temperature sampled the inverted
    distribution; floats were truncated to ids; an int rng raised AttributeError)."""
    args = dict(prompt=[1, 2], max_new_tokens=3, rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(said)):
        list(gen.generate(tiny_model(), args.pop("prompt"), args.pop("max_new_tokens"), args.pop("rng"), **args))


def test_top_p_keeps_the_smallest_set_that_reaches_it():
    """Two equal logits (probabilities exactly .5 and .5, whatever exp's last bit) with top_p = 0.5: the
    first id in the sorted order alone reaches it, so one id is ever drawn (a right-sided search kept
    the second too)."""
    draws = gen.sample_next(np.zeros((1000, 2)), np.random.default_rng(0), top_p=0.5)
    assert len(set(draws.tolist())) == 1


def test_a_context_of_one_token_slides_by_one():
    """maxT = 1: the context restarts at the last token (capacity // 2 = 0 started it past the end,
    an empty context); generating with and without the cache agrees."""
    assert gen.context_start(5, 0, 1) == 4 and gen.context_start(5, 4, 1) == 4
    assert gen.prompt_seen(3, 1) == 1
    model = tiny_model(maxT=1)
    a = list(gen.generate(model, [1, 2, 3], 6, np.random.default_rng(5), temperature=3.0))
    b = list(gen.generate(model, [1, 2, 3], 6, np.random.default_rng(5), temperature=3.0, use_cache=False))
    assert a == b


def test_top_k_one_less_than_the_vocabulary_cuts_the_least_likely_id():
    """V = 4, top_k = 3: the least likely id is never drawn (a test of k < V - 1 left it in)."""
    logits = np.tile([2.0, 1.0, 0.5, 0.0], (2000, 1))   # id 3 has probability 0.09 without the cut
    draws = gen.sample_next(logits, np.random.default_rng(0), top_k=3)
    assert 3 not in draws and set(draws.tolist()) == {0, 1, 2}


def test_top_k_one_is_the_argmax_and_top_k_two_the_two_largest():
    """top_k = 1 draws the argmax only, however close the other logits (a cut that skipped k = 1
    sampled all four ids); top_k = 2 draws the two largest, both of them, nothing else."""
    logits = np.array([[1.8, 2.0, 1.7, 1.9]])   # without a cut each id has probability 0.21 to 0.29
    draws = gen.sample_next(np.tile(logits, (50, 1)), np.random.default_rng(0), top_k=1)
    assert set(draws.tolist()) == {1}
    draws = gen.sample_next(np.tile(logits, (200, 1)), np.random.default_rng(0), top_k=2)
    assert set(draws.tolist()) == {1, 3}
