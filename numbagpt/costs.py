"""The cost model of the kernel contract (docs/kernels.md): the FLOPs and bytes of one call of each
kernel, from its size arguments, and the usual model-level estimates of FLOPs per token. The
profiler (numbagpt/profiler.py) adds them up per kernel and phase; docs/profiling.md explains them.

Counting conventions (the formulas are in each cost function; tests/test_profiler.py writes them out):
- FLOPs: each +, −, ×, ÷, exp, tanh and sqrt of the kernel's math as written in docs/kernels.md counts
  1 (a multiply-add is 2); comparisons (max) and per-row constants (one division per row) are not
  counted. Causal attention counts only the T(T+1)/2 (query, key) pairs it computes.
- Bytes: every input is read once and every output written once (4 bytes a float32 or int32 element,
  2 a bf16 value of a bf16 step's dlogits, which it keeps in bf16 rows);
  an accumulating output (`+=`, every backward but crossentropy's, and matmul_backward's dweight and
  dbias only with accumulate) is read and written (2×). This is
  the compulsory traffic of a perfect cache; a kernel that re-reads its inputs moves more.
- Embedding gathers (encoder) count the B·T rows looked up, not the whole table.
"""
import math

import numpy as np

from .backend import BUFFERS
from .kernels import BY_NAME, CONTRACT, cost_function_name
from .layout import F32, nbytes as _nbytes, parameter_shapes

# Each cost function takes a kernel's arguments (names as in docs/kernels.md) and returns
# (flops, bytes) as Python ints.


def _causal_pairs(T):
    """(query, key) pairs of causal attention per (b, h): Σ_t (t+1) = T(T+1)/2."""
    return T * (T + 1) // 2


def _encoder_forward(out, inp, wte, wpe, B, T, C):
    # out = wte[tok] + wpe[t]: 1 add per element. Reads tokens, B·T rows of wte, T rows of wpe.
    return B * T * C, F32 * (B * T + B * T * C + T * C + B * T * C)


def _encoder_backward(dwte, dwpe, dout, inp, B, T, C):
    # dwte[tok] += dout; dwpe[t] += dout: 2 adds per element; both accumulate (read + write).
    return 2 * B * T * C, F32 * (B * T * C + B * T + 2 * B * T * C + 2 * T * C)


def _layernorm_forward(out, mean, rstd, inp, weight, bias, B, T, C):
    # mean: 1 (add); variance: 3 (sub, square, add); out = (x-mean)·rstd·w + b: 4.
    return 8 * B * T * C, F32 * (B * T * C + 2 * C + B * T * C + 2 * B * T)


def _layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, T, C):
    # norm = (x-mean)·rstd: 2; dnorm = w·dout: 1; Σdnorm: 1; Σdnorm·norm: 2; dbias += dout: 1;
    # dweight += norm·dout: 2; dval = (dnorm − Σ1 − norm·Σ2)·rstd: 4; dinp += dval: 1. Total 14.
    reads = 2 * B * T * C + C + 2 * B * T             # dout, inp, weight, mean, rstd
    accum = 2 * (B * T * C + 2 * C)                   # dinp, dweight, dbias read + written
    return 14 * B * T * C, F32 * (reads + accum)


def _fused_residual_layernorm_forward(residual, ln, mean, rstd, inp1, inp2, weight, bias, B, T, C):
    # residual = inp1 + inp2: 1; then layernorm_forward's 8. Reads inp1, inp2 (not the residual
    # again), weight, bias; writes residual, ln, mean, rstd.
    return 9 * B * T * C, F32 * (2 * B * T * C + 2 * C + 2 * B * T * C + 2 * B * T)


def _matmul_forward(out, inp, weight, bias, B, T, C, OC):
    # out = inp·Wᵀ (+ bias): 2·C per output element, +1 with a bias.
    has_bias = bias is not None
    flops = 2 * B * T * C * OC + (B * T * OC if has_bias else 0)
    nbytes = F32 * (B * T * C + OC * C + (OC if has_bias else 0) + B * T * OC)
    return flops, nbytes


def _matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True):
    # dinp += dout·W (2·BT·OC·C); dweight += doutᵀ·inp (2·OC·BT·C); dbias += Σ_bt dout (BT·OC).
    # dinp accumulates; dweight and dbias too, unless accumulate is false (then written once).
    return _matmul_backward_bf16(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate)


def _matmul_backward_bf16(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate=True, dout_bf16=False):
    # matmul_backward's; a dout in bf16 rows (dout_bf16) is 2 bytes an element
    has_bias = dbias is not None
    flops = 4 * B * T * C * OC + (B * T * OC if has_bias else 0)
    reads = B * T * OC / (2 if dout_bf16 else 1) + B * T * C + OC * C           # dout, inp, weight
    grads = (2 if accumulate else 1) * (OC * C + (OC if has_bias else 0))
    return flops, F32 * (reads + 2 * B * T * C + grads)


def _attention_forward(out, lse, inp, B, T, C, NH):
    # flash attention, per causal pair: s = q·k 2·hs (the scale folded into q), online softmax
    # (s − m 1, exp 1, Σ 1), p·v 2·hs → 4·hs + 3; per row, the rescaling by exp(m_old − m_new) of
    # l and out (once per key block) and the final 1/l are not counted (per-row work, as the max).
    # Reads q, k, v (3·BTC); writes out (BTC) and lse (B·NH·T). No (T, T) buffer.
    hs = C // NH
    P = B * NH * _causal_pairs(T)
    return P * (4 * hs + 3), F32 * (3 * B * T * C + B * T * C + B * NH * T)


def _attention_backward(dinp, dout, inp, out, lse, B, T, C, NH):
    # flash attention's backward recomputes the scores: per causal pair, five products of 2·hs
    # (s = q·k, dp = dout·v, dv += p·dout, dk += ds·q, dq += ds·k) and p = exp(s − lse) 2,
    # ds = p·(dp − D) 2 → 10·hs + 4; per row D = dout·out 2·hs and the scale of dq, dk (not counted).
    # Reads dout, qkv, out, lse; dinp (B,T,3C) accumulates (read + write).
    hs = C // NH
    P = B * NH * _causal_pairs(T)
    return P * (10 * hs + 4), F32 * (B * T * C + 3 * B * T * C + B * T * C + B * NH * T + 2 * 3 * B * T * C)


def _gelu_forward(out, inp, N):
    # x³ 2, 0.044715·x³ 1, x + 1, ·√(2/π) 1, tanh 1, 1 + 1, 0.5·x 1, × 1 → 9.
    return 9 * N, F32 * 2 * N


def _gelu_backward(dinp, dout, inp, N):
    # x², x³ 2; tanh argument 3; tanh 1; sech² = 1 − tanh² 2; 0.5·(1+tanh) 2;
    # 0.5·x·sech²·√(2/π)·(1 + 3·0.044715·x²) 6; sum 1; dinp += local·dout 2 → 19.
    return 19 * N, F32 * (2 * N + 2 * N)


def _crossentropy_forward(losses, logits, targets, B, T, V, Vp):
    # per logit i < V: x − max 1, exp 1, Σ 1 (the max's comparisons and the row's log not counted).
    return 3 * B * T * V, F32 * (B * T * V + B * T + B * T)


def _crossentropy_backward(dlogits, dlosses, logits, targets, B, T, V, Vp, dlogits_bf16=False):
    # softmax again 3 per logit, then (p − [i=target])·dloss: ·(1/Σ) 1, ·dloss 1 → 5 per logit i < V.
    # Reads the first V logits, targets, dlosses; writes all Vp columns of dlogits (padding = 0), 2 bytes
    # each in bf16 rows (dlogits_bf16).
    return 5 * B * T * V, F32 * (B * T * V + 2 * B * T + B * T * Vp / (2 if dlogits_bf16 else 1))


def _crossentropy_forward_backward(losses, dlogits, dlosses, logits, targets, B, T, V, Vp, dlogits_bf16=False):
    # the backward's 5 per logit (the loss from its max and sum: not counted); one read of the logits
    return 5 * B * T * V, F32 * (B * T * V + 3 * B * T + B * T * Vp / (2 if dlogits_bf16 else 1))


def _adamw_update(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, grad_scale, t, N):
    # g 1; m 3; v 4; m̂ 1; v̂ 1; sqrt 1; +eps 1; ÷ 1; wd·p 1; + 1; lr· 1; p − 1 → 17.
    # Reads grads; params, m, v are read and written.
    return 17 * N, F32 * (N + 2 * 3 * N)


def _global_norm_squared(out, grads, N):
    return 2 * N, F32 * (N + 1)


# kernel name -> its cost function (the contract's `cost`): every kernel a training step runs (a bf16
# step's matmul pair counts as the fp32 one: the same FLOPs, the same float32 buffers read and written,
# but for the LM head's dout in bf16 rows).
KERNEL_COSTS = {k.name: globals()["_" + cost_function_name(k)] for k in CONTRACT if k.role != "generation"}

# The backends' buffer helpers (docs/kernels.md, "Memory helpers"): timed too, with 0 FLOPs and the
# bytes they move.
HELPERS = tuple(name for name in BUFFERS if name != "synchronize")


def family(name):
    """The kernel family (the file a kernel lives in, from the contract), or "memory" for a buffer helper."""
    if name in HELPERS:
        return "memory"
    return BY_NAME[name].family if name in BY_NAME else name


def _helper_cost(name, args, kwargs):
    """Bytes a memory helper moves: fill_zero writes its array; copies read and write theirs."""
    args = list(args) + list(kwargs.values())
    if name == "fill_zero":
        return 0, _nbytes(args[0])
    if name == "zeros":
        n = int(args[0])
        dtype = args[1] if len(args) > 1 else np.float32
        return 0, n * np.dtype(dtype).itemsize
    if name in ("copy_to_device", "copy"):
        return 0, 2 * _nbytes(args[1])
    return 0, 2 * _nbytes(args[0])  # to_device, to_host


def kernel_cost(name, *args, **kwargs):
    """(flops, bytes) of one call `name(*args)` under the conventions of this module's docstring."""
    if name in HELPERS:
        return _helper_cost(name, args, kwargs)
    flops, nbytes = KERNEL_COSTS[name](*args, **kwargs)
    return int(flops), int(nbytes)



def model_flops_per_token(config, T):
    """The usual estimates of training FLOPs per token (forward + backward, no optimizer).

    palm: PaLM appendix B / nanoGPT's estimate_mfu: 6·N + 12·L·C·T, with N = get_num_params() =
          all parameters but wpe (wte counts: it is the tied output head). nanoGPT uses T = block_size;
          here T is the run's sequence length. The attention term counts the full T×T scores.
    llmc: llm.c's gpt2_estimate_mfu: 6·N + 6·L·C·T with N = all parameters (wpe included); its
          attention term is half PaLM's, i.e. causal (only t2 ≤ t computed)."""
    n_all = sum(math.prod(s) for _, s in parameter_shapes(config))
    n_no_wpe = n_all - config.max_seq_len * config.channels
    L, C = config.num_layers, config.channels
    return {"palm": 6 * n_no_wpe + 12 * L * C * T, "palm_N": n_no_wpe,
            "llmc": 6 * n_all + 6 * L * C * T, "llmc_N": n_all}
