"""Text generation: a forward pass with a key/value cache, and sampling (temperature, top-k, top-p).

llm.c samples by running the whole training forward over the context for every new token: O(T²) work
per token, O(T³) for a sample of T tokens. Here each layer keeps the keys and values of the positions
seen so far (`kcache`, `vcache`, (L, B, NH, maxT, hs) each), so a new token costs one row through
every matmul (`matvec_forward`) and one query row of attention against the cache
(`attention_forward_cached`), kernels of both backends. The prompt fills the cache in chunks of
several positions at once (prefill).

    Decoder(model, B)             the cache of B sequences, decoded in lockstep
      .forward(tokens, logits)    tokens (B, T) int32 at positions pos .. pos+T−1; returns the logits
                                  (B, Vp) of the last position, all of them (B, T, Vp), or nothing
    generate(model, prompt, n, rng, ...)   yields n sampled token ids after the prompt, one at a time

Context longer than the model's maxT: positions are absolute (wpe), so a cache cannot slide. When the
context reaches maxT tokens, it restarts from its last maxT/2 tokens (one prefill), and goes on
growing from there; `generate(..., use_cache=False)` (the full forward per token) uses exactly the
same context, so the two agree token for token.
"""
import numpy as np

from .flags import NONNEG, POSITIVE, Check, check_value
from .layout import F32, Layout, memory_estimate

MATVEC_ROWS = 8     # up to this many rows per matmul (B sequences × 1 new position) use matvec_forward
PREFILL_CHUNK = 256  # positions per prefill call: bounds the scratch (att is B·NH·chunk·maxT floats)


def scratch_shapes(config, B, T, logit_rows):
    """[(name, shape)] of the decoder's activations for B sequences × T new positions (one layer's
    worth: nothing is kept for a backward), and logits for `logit_rows` rows."""
    C, NH, maxT, Vp = config.channels, config.num_heads, config.max_seq_len, config.padded_vocab_size
    return [("x", (B, T, C)), ("x2", (B, T, C)), ("ln", (B, T, C)), ("mean", (B, T)), ("rstd", (B, T)),
            ("qkv", (B, T, 3 * C)), ("atty", (B, T, C)), ("att", (B, NH, T, maxT)), ("attproj", (B, T, C)),
            ("fch", (B, T, 4 * C)), ("fch_gelu", (B, T, 4 * C)), ("fcproj", (B, T, C)),
            ("logits", (logit_rows, Vp))]


def sampling_bytes(config, use_cache=True):
    """Bytes that sampling one sequence of up to maxT positions allocates: the parameters, and the
    key/value cache with the scratch of a prefill chunk (at most PREFILL_CHUNK positions, no logits)
    or of a decoding step (one position and its logits), whichever is larger (use_cache), else the
    activations of a whole forward at T = maxT."""
    est = memory_estimate(config, 1, config.max_seq_len, training=False)
    if not use_cache:
        return est["total"]
    L, C, maxT = config.num_layers, config.channels, config.max_seq_len
    scratch = max(Layout(scratch_shapes(config, 1, min(PREFILL_CHUNK, maxT), 0)).total,
                  Layout(scratch_shapes(config, 1, 1, 1)).total)
    return est["parameters"] + F32 * (2 * L * maxT * C + scratch)


class Decoder:
    """The key/value cache of B sequences of a model, and the forward pass that uses it.

    Works on any backend: every buffer is allocated by `model.backend` and every number computed by its
    kernels; only the token ids go to the device and only the logits come back."""

    def __init__(self, model, B=1):
        cfg = model.config
        self.model, self.B, self.k = model, B, model.backend
        self.capacity = cfg.max_seq_len
        L, NH, C = cfg.num_layers, cfg.num_heads, cfg.channels
        self.layer_cache = B * NH * self.capacity * (C // NH)  # one layer's K (or V) cache
        self.kcache = self.k.zeros(L * self.layer_cache)
        self.vcache = self.k.zeros(L * self.layer_cache)
        self.scratch_flat, self.scratch_capacity = None, 0
        self.pos = 0  # positions in the cache

    def reset(self):
        self.pos = 0

    def _scratch(self, T, logit_rows):
        layout = Layout(scratch_shapes(self.model.config, self.B, T, logit_rows))
        if layout.total > self.scratch_capacity:
            self.scratch_flat = self.k.zeros(layout.total)
            self.scratch_capacity = layout.total
        return layout.views(self.scratch_flat[:layout.total])

    def _matmul(self, rows):
        """out (rows, OC) = inp · weightᵀ + bias: matvec_forward for a decoding step's few rows (it
        streams the weights once), the tiled matmul_forward for a prefill's many."""
        k = self.k
        if rows <= MATVEC_ROWS:
            return lambda out, inp, w, b, C, OC: k.matvec_forward(out, inp, w, b, rows, C, OC)
        return lambda out, inp, w, b, C, OC: k.matmul_forward(out, inp, w, b, 1, rows, C, OC)

    def forward(self, tokens, logits="last"):
        """Run tokens (B, T) at positions pos .. pos+T−1 and add them to the cache. logits: "last" →
        (B, Vp) NumPy logits of the last position; "all" → (B, T, Vp); None → nothing returned."""
        if logits not in ("last", "all", None):
            raise ValueError(f"logits must be 'last', 'all' or None, got {logits!r}")
        tokens = self.model._tokens(tokens, "tokens")   # integers in [0, V), checked before any cast
        if tokens.shape[0] != self.B:
            raise ValueError(f"tokens must be ({self.B}, T>0), got shape {tokens.shape}")
        T = tokens.shape[1]
        if self.pos + T > self.capacity:
            raise ValueError(f"{self.pos} cached + {T} new positions exceed the model's maxT {self.capacity}")
        if T > PREFILL_CHUNK or (logits == "last" and T > 1):
            # the last position alone makes the logits: (B, 1, C) rows are contiguous, (B, T, C) not
            split = min(PREFILL_CHUNK, T - 1) if logits == "last" else PREFILL_CHUNK
            self.forward(tokens[:, :split], "all" if logits == "all" else None)
            head = self.logits_rows if logits == "all" else None
            rest = self.forward(tokens[:, split:], logits)
            return np.concatenate([head, rest], axis=1) if logits == "all" else rest
        return self._forward(tokens, logits)

    def _forward(self, tokens, logits):
        cfg, k, B = self.model.config, self.k, self.B
        T = tokens.shape[1]
        C, NH, Vp, t0 = cfg.channels, cfg.num_heads, cfg.padded_vocab_size, self.pos
        BTC = B * T * C
        rows = B * T if logits == "all" else B
        a = self._scratch(T, rows if logits else 0)
        p = self.model.params
        k.encoder_forward(a["x"], k.to_device(tokens.reshape(-1)), p["wte"], p["wpe"][t0 * C:], B, T, C)
        mm = self._matmul(B * T)
        for l, w in enumerate(self.model.layer_params):
            kc = self.kcache[l * self.layer_cache:(l + 1) * self.layer_cache]
            vc = self.vcache[l * self.layer_cache:(l + 1) * self.layer_cache]
            k.layernorm_forward(a["ln"], a["mean"], a["rstd"], a["x"], w.ln1w, w.ln1b, B, T, C)
            mm(a["qkv"], a["ln"], w.qkvw, w.qkvb, C, 3 * C)
            k.attention_forward_cached(a["atty"], a["att"], kc, vc, a["qkv"], B, T, t0, C, NH, self.capacity)
            mm(a["attproj"], a["atty"], w.attprojw, w.attprojb, C, C)
            k.residual_forward(a["x2"], a["x"], a["attproj"], BTC)
            k.layernorm_forward(a["ln"], a["mean"], a["rstd"], a["x2"], w.ln2w, w.ln2b, B, T, C)
            mm(a["fch"], a["ln"], w.fcw, w.fcb, C, 4 * C)
            k.gelu_forward(a["fch_gelu"], a["fch"], 4 * BTC)
            mm(a["fcproj"], a["fch_gelu"], w.fcprojw, w.fcprojb, 4 * C, C)
            k.residual_forward(a["x"], a["x2"], a["fcproj"], BTC)
        self.pos += T
        if not logits:
            return None
        # T == 1 or "all": the rows of x to project are its first B·T·C floats, contiguous
        k.layernorm_forward(a["ln"], a["mean"], a["rstd"], a["x"], p["lnfw"], p["lnfb"], B, rows // B, C)
        self._matmul(rows)(a["logits"], a["ln"], p["wte"], None, C, Vp)
        out = np.array(k.to_host(a["logits"]), copy=True)
        self.logits_rows = out.reshape(B, rows // B, Vp)
        return self.logits_rows if logits == "all" else out.reshape(B, Vp)


# ------------------------------------------------------------------------------------------ sampling

TOP_P = Check(low=0, high=1, low_open=True)   # --top-p's range: a probability mass, 1 keeps all ids


def check_sampling(tokens, temperature, top_k, top_p, seed):
    """Raise ValueError naming bin/sample_gpt2's flag unless the sampling arguments are what its flags
    accept (numbagpt.api.sample checks its arguments so; the command's parser already has)."""
    check_value("-g", tokens, int, POSITIVE, optional=False)
    check_value("--temperature", temperature, float, NONNEG, optional=False)
    check_value("--top-k", top_k, int, NONNEG)
    check_value("--top-p", top_p, float, TOP_P)
    check_value("--seed", seed, int, NONNEG, optional=False)


def check_generation(max_new_tokens, rng, temperature, top_k, top_p):
    """Raise ValueError naming generate()'s argument unless it is what sample_next can use."""
    check_value("generate: max_new_tokens", max_new_tokens, int, NONNEG, optional=False)
    check_value("generate: temperature", temperature, float, NONNEG, optional=False)
    check_value("generate: top_k", top_k, int, NONNEG)
    check_value("generate: top_p", top_p, float, TOP_P)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"generate: rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}")


def prompt_ids(tok, text):
    """The token ids generation starts from: `text` encoded, or the end-of-text token (id 0 where the
    tokenizer has none) when `text` is empty."""
    if not text:
        return [tok.eot_token if tok.eot_token is not None else 0]
    if not tok.can_encode:
        raise ValueError("this model's tokenizer can only decode: sample without a prompt (--prompt)")
    return tok.encode(text)


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """One token id per row of logits (B, V) (float64 maths): softmax(logits / temperature) cut to the
    top_k most likely ids and then to the smallest set whose probability reaches top_p, renormalised.
    temperature 0 picks the argmax. rng: a numpy Generator (one uniform draw per row)."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1)
    with np.errstate(over="ignore"):
        z = logits / temperature
    B, V = z.shape
    out = np.empty(B, dtype=np.int64)
    for b in range(B):
        zb = z[b]
        if not np.isfinite(zb).all():   # a temperature so small that logits / it overflows: its limit, the argmax
            out[b] = logits[b].argmax()
            continue
        if top_k and top_k < V:  # the k largest, then in descending order
            part = np.argpartition(-zb, top_k - 1)[:top_k]
            order = part[np.argsort(-zb[part], kind="stable")]
        elif top_p is not None and top_p < 1.0:
            order = np.argsort(-zb, kind="stable")
        else:
            order = np.arange(V)
        p = np.exp(zb[order] - zb[order].max())
        p /= p.sum()
        if top_p is not None and top_p < 1.0:  # order is descending here
            keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1
            p = p[:keep] / p[:keep].sum()
        cdf = np.cumsum(p)
        out[b] = order[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(p) - 1)]
    return out


def prompt_seen(length, capacity):
    """How many of a prompt's `length` tokens the first token's context holds: all of a prompt shorter
    than the model's context (`capacity`, maxT), else its last capacity/2 (context_start)."""
    return length - context_start(length, 0, capacity)


def warm_up(model, decoder=None):
    """Run every kernel that sampling from `model` calls, once, on dummy tokens: on a cold Numba cache
    they compile here (sample_gpt2 does this before it prints the sample, so that the compile notice
    on stderr does not land inside the text). With `decoder` (the KV cache): a prefill of up to
    MATVEC_ROWS + 2 positions (the tiled matmul, as a prefill after the context slides) and a decoding
    step (matvec), the cache emptied after; without: one forward of the model."""
    if decoder is None:
        model.forward(np.zeros((1, 1), np.int32))
        return
    decoder.reset()
    decoder.forward(np.zeros((decoder.B, min(MATVEC_ROWS + 2, decoder.capacity)), np.int32), "last")
    decoder.reset()


def context_start(length, start, capacity):
    """Where the context of the next token starts: `start` until the context (length − start) fills
    the capacity, then the last capacity/2 tokens."""
    return length - max(1, capacity // 2) if length - start >= capacity else start


def generate(model, prompt, max_new_tokens, rng, temperature=1.0, top_k=None, top_p=None, use_cache=True,
             decoder=None):
    """Yield `max_new_tokens` ids sampled after `prompt` (a non-empty list of ids, or B lists of one
    length: then each step yields B ids). use_cache=False runs model.forward over the whole context
    per token, llm.c's way (the same context, so the same logits up to float32 rounding)."""
    check_generation(max_new_tokens, rng, temperature, top_k, top_p)
    try:
        single = np.ndim(prompt) == 1
        batch = np.atleast_2d(np.asarray(prompt))
    except ValueError:   # ragged lists
        raise ValueError("generate: the prompt is a list of token ids, or B lists of one length") from None
    if batch.shape[1] == 0:
        raise ValueError("generate: the prompt needs at least one token (e.g. the end-of-text token)")
    batch = model._tokens(batch, "generate: the prompt")   # integers in [0, V), no silent cast
    B, cap, Vp = batch.shape[0], model.config.max_seq_len, model.config.padded_vocab_size
    V = model.config.vocab_size
    tokens = [list(row) for row in batch]
    start = context_start(len(tokens[0]), 0, cap)
    if use_cache:
        dec = decoder if decoder is not None and decoder.B == B else Decoder(model, B)
        dec.reset()
        logits = dec.forward(batch[:, start:], "last")
    for i in range(max_new_tokens):
        if not use_cache:
            model.forward(np.array([row[start:] for row in tokens], dtype=np.int32))
            logits = model.logits_host()[:, -1].reshape(B, Vp)
        ids = sample_next(logits[:, :V], rng, temperature, top_k, top_p)
        for row, t in zip(tokens, ids):
            row.append(int(t))
        yield int(ids[0]) if single else ids
        if i + 1 == max_new_tokens:
            break
        new_start = context_start(len(tokens[0]), start, cap)
        if use_cache:
            if new_start != start:
                dec.reset()
                logits = dec.forward(np.array([row[new_start:] for row in tokens], dtype=np.int32), "last")
            else:
                logits = dec.forward(ids.reshape(B, 1).astype(np.int32), "last")
        start = new_start
