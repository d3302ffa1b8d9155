"""Independent NumPy float64 references for every kernel in docs/kernels.md, forward and backward.

These work on *shaped* arrays (not the kernels' flat buffers), return fresh float64 arrays and never
accumulate: a backward returns the gradient itself. They are written the "matrix" way (einsum,
broadcasting) rather than llm.c's loops, so they share no structure with the kernels they check, and
their backwards are checked in turn against `numerical_grad` (central finite differences).

    encoder_forward_ref(inp, wte, wpe) -> out                        inp (B,T) int
    encoder_backward_ref(dout, inp, Vp, maxT) -> dwte, dwpe
    layernorm_forward_ref(x, w, b) -> out, mean, rstd
    layernorm_backward_ref(dout, x, w) -> dx, dw, db
    matmul_forward_ref(inp, weight, bias) -> out                     weight (OC, C); bias may be None
    matmul_backward_ref(dout, inp, weight) -> dinp, dweight, dbias
    bf16_round_ref(x) -> x rounded to bfloat16 (nearest, ties to even), float64   (the bf16 matmuls:
                      matmul_*_ref of bf16-rounded inputs; dbias of the unrounded dout)
    attention_forward_ref(qkv, NH) -> out, preatt, att               preatt unmasked, att 0 above diagonal
    attention_lse_ref(qkv, NH) -> lse (B, NH, T)                     log Σ_{t2≤t} exp(preatt), natural log
    attention_backward_ref(dout, qkv, NH, scratch=False) -> dqkv (and dpreatt, datt with scratch)
    gelu_forward_ref(x) -> out;  gelu_backward_ref(dout, x) -> dx
    residual_forward_ref(a, b) -> out
    crossentropy_forward_ref(logits, targets, V) -> losses           logits (B,T,Vp)
    crossentropy_backward_ref(dlosses, logits, targets, V) -> dlogits  (columns V.. are 0)
    adamw_update_ref(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, grad_scale, t) -> params, m, v
    global_norm_squared_ref(grads) -> float
    numerical_grad(f, x, h=1e-6) -> df/dx of a scalar function f(x) by central differences
"""
import numpy as np

LN_EPS = 1e-5
GELU_S = np.sqrt(2.0 / np.pi)
GELU_K = 0.044715


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# ----------------------------------------------------------------------------- encoder
def encoder_forward_ref(inp, wte, wpe):
    inp = np.asarray(inp)
    T = inp.shape[1]
    return _f64(wte)[inp] + _f64(wpe)[None, :T]


def encoder_backward_ref(dout, inp, Vp, maxT):
    dout = _f64(dout)
    B, T, C = dout.shape
    dwte = np.zeros((Vp, C))
    np.add.at(dwte, np.asarray(inp).reshape(-1), dout.reshape(-1, C))
    dwpe = np.zeros((maxT, C))
    dwpe[:T] = dout.sum(axis=0)
    return dwte, dwpe


# ----------------------------------------------------------------------------- layernorm
def layernorm_forward_ref(x, w, b):
    x = _f64(x)
    mean = x.mean(axis=-1)
    var = ((x - mean[..., None]) ** 2).mean(axis=-1)
    rstd = 1.0 / np.sqrt(var + LN_EPS)
    norm = (x - mean[..., None]) * rstd[..., None]
    return norm * _f64(w) + _f64(b), mean, rstd


def layernorm_backward_ref(dout, x, w):
    dout, x, w = _f64(dout), _f64(x), _f64(w)
    C = x.shape[-1]
    _, mean, rstd = layernorm_forward_ref(x, w, np.zeros(C))
    norm = (x - mean[..., None]) * rstd[..., None]
    dnorm = dout * w
    dx = rstd[..., None] * (dnorm - dnorm.mean(-1, keepdims=True) - norm * (dnorm * norm).mean(-1, keepdims=True))
    dw = (dout * norm).reshape(-1, C).sum(axis=0)
    db = dout.reshape(-1, C).sum(axis=0)
    return dx, dw, db


# ----------------------------------------------------------------------------- matmul
def matmul_forward_ref(inp, weight, bias=None):
    out = _f64(inp) @ _f64(weight).T
    if bias is not None:
        out = out + _f64(bias)
    return out


def bf16_round_ref(x):
    """x rounded to the nearest bfloat16, ties to even, as float64: by arithmetic, not bits. A bf16
    has 8 significant bits and float32's exponents: x = m·2^e (0.5 <= |m| < 1) is a multiple of the
    quantum q = 2^(e-8), or of bf16's subnormal quantum 2^-133 below 2^-125; np.round rounds x/q
    (exact in float64) half to even. |result| >= 2^128 is ±inf; inf and NaN pass through."""
    x = _f64(x)
    out = x.copy()
    finite = np.isfinite(x) & (x != 0)
    _, e = np.frexp(x[finite])
    q = np.ldexp(1.0, np.maximum(e - 8, -133))
    r = np.round(x[finite] / q) * q
    out[finite] = np.where(np.abs(r) >= 2.0 ** 128, np.copysign(np.inf, r), r)
    return out


def to_bf16_rows(x, W):
    """float32 array x of rows of W (W even) in the kernels' bf16 rows: each row's W values rounded
    (bf16_round_ref), two to a word in its first W/2 float32 slots (element j in the low half of word
    j // 2 for even j, the high half for odd j), the rest of the row NaN (the kernels never read it)."""
    r = bf16_round_ref(x).astype(np.float32).reshape(-1, W).view(np.uint32) >> 16
    out = np.full(r.shape, np.nan, np.float32)
    out.view(np.uint32)[:, :W // 2] = r[:, 0::2] | (r[:, 1::2] << 16)
    return out.reshape(-1)


def from_bf16_rows(x, W):
    """The values of bf16 rows of W (to_bf16_rows' layout) as float64, rows × W, flat."""
    u = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, W).view(np.uint32)[:, :W // 2]
    out = np.empty(u.shape[:1] + (W,), np.uint32)
    out[:, 0::2] = u << 16
    out[:, 1::2] = u & 0xFFFF0000
    return out.view(np.float32).astype(np.float64).reshape(-1)


def matmul_backward_ref(dout, inp, weight):
    dout, inp, weight = _f64(dout), _f64(inp), _f64(weight)
    OC, C = weight.shape
    d2 = dout.reshape(-1, OC)
    dinp = dout @ weight
    dweight = d2.T @ inp.reshape(-1, C)
    dbias = d2.sum(axis=0)
    return dinp, dweight, dbias


# ----------------------------------------------------------------------------- attention
def _split_heads(qkv, NH):
    qkv = _f64(qkv)
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    # (B, T, 3, NH, hs) -> three (B, NH, T, hs)
    q, k, v = qkv.reshape(B, T, 3, NH, hs).transpose(2, 0, 3, 1, 4)
    return q, k, v, hs


def attention_forward_ref(qkv, NH):
    q, k, v, hs = _split_heads(qkv, NH)
    B, _, T, _ = q.shape
    preatt = np.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(hs)
    causal = np.tril(np.ones((T, T), dtype=bool))
    masked = np.where(causal, preatt, -np.inf)
    att = np.exp(masked - masked.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)
    out = np.einsum("bhts,bhsd->bhtd", att, v)
    return out.transpose(0, 2, 1, 3).reshape(B, T, NH * hs), preatt, att


def attention_lse_ref(qkv, NH):
    """Flash attention's per-row log-sum-exp of the scaled causal scores (B, NH, T)."""
    _, preatt, _ = attention_forward_ref(qkv, NH)
    T = preatt.shape[-1]
    z = np.where(np.tril(np.ones((T, T), dtype=bool)), preatt, -np.inf)
    m = z.max(axis=-1)
    return m + np.log(np.exp(z - m[..., None]).sum(axis=-1))


def attention_backward_ref(dout, qkv, NH, scratch=False):
    """dqkv; with scratch, also the intermediates dpreatt = ∂loss/∂(scaled scores) and datt = ∂loss/∂att
    (B, NH, T, T), as the kernels' scratch buffers hold them (their causal part)."""
    q, k, v, hs = _split_heads(qkv, NH)
    B, _, T, _ = q.shape
    _, _, att = attention_forward_ref(qkv, NH)
    do = _f64(dout).reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    datt = np.einsum("bhtd,bhsd->bhts", do, v)
    dv = np.einsum("bhts,bhtd->bhsd", att, do)
    dpre = att * (datt - (att * datt).sum(axis=-1, keepdims=True))
    dq = np.einsum("bhts,bhsd->bhtd", dpre, k) / np.sqrt(hs)
    dk = np.einsum("bhts,bhtd->bhsd", dpre, q) / np.sqrt(hs)
    dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * NH * hs)  # (3,B,NH,T,hs) -> (B,T,3C)
    return (dqkv, dpre, datt) if scratch else dqkv


# ----------------------------------------------------------------------------- gelu, residual
def gelu_forward_ref(x):
    x = _f64(x)
    return 0.5 * x * (1.0 + np.tanh(GELU_S * (x + GELU_K * x**3)))


def gelu_backward_ref(dout, x):
    x = _f64(x)
    u = GELU_S * (x + GELU_K * x**3)
    th = np.tanh(u)
    du = GELU_S * (1.0 + 3.0 * GELU_K * x**2)
    return _f64(dout) * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th**2) * du)


def residual_forward_ref(a, b):
    return _f64(a) + _f64(b)


# ----------------------------------------------------------------------------- crossentropy
def _logsumexp(z):
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def crossentropy_forward_ref(logits, targets, V):
    z = _f64(logits)[..., :V]
    tgt = np.take_along_axis(z, np.asarray(targets)[..., None].astype(np.int64), axis=-1)[..., 0]
    return _logsumexp(z) - tgt


def crossentropy_backward_ref(dlosses, logits, targets, V):
    logits = _f64(logits)
    z = logits[..., :V]
    p = np.exp(z - _logsumexp(z)[..., None])
    onehot = np.zeros_like(z)
    np.put_along_axis(onehot, np.asarray(targets)[..., None].astype(np.int64), 1.0, axis=-1)
    dlogits = np.zeros_like(logits)
    dlogits[..., :V] = (p - onehot) * _f64(dlosses)[..., None]
    return dlogits


# ----------------------------------------------------------------------------- adamw
def adamw_update_ref(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, grad_scale, t):
    p, m, v = _f64(params), _f64(m), _f64(v)
    g = grad_scale * _f64(grads)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    m_hat = m / (1.0 - beta1**t)
    v_hat = v / (1.0 - beta2**t)
    p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p)
    return p, m, v


def global_norm_squared_ref(grads):
    g = _f64(grads)
    return float(np.dot(g.ravel(), g.ravel()))


# ----------------------------------------------------------------------------- finite differences
def numerical_grad(f, x, h=1e-6):
    """Central differences of the float64 scalar function f at x (any shape), one coordinate at a time."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2.0 * h)
    return g
