"""The attention lab (numbagpt/cpu/attention.py): numbered variants of attention_forward and
attention_backward, each checked against the float64 reference, then timed side by side (dev/lab.py).

    python dev/attention.py [attention_forward|attention_backward] [N ...] [--threads 2] [--shapes tiny,d12]

    attention_forward   1 base (the kernel production replaced)   2 production (fwd_hyb with TH = hs)
    attention_backward  1 base                                   2 production (bwd_colsh4 with TH = hs)

The variants measured on the way (below: dot, axpy, hyb; axpy, cols, axpy4, colsh, colsh4) share
their per-(b, h) gathers and loops with the kernels they led to, which live on in
numbagpt/cpu/attention.py with TH = hs and which the lab imports instead of keeping copies. A new
variant goes in as number 2, before production, and must pass the same check.

Findings (1 thread, CPU time, best of 10, 2 shared cores under load: +-15% noise between runs):
  * The baseline (one prange unit per (b, t, h) row, flat indexing into qkv with stride 3C, dots
    summed in float64): tiny fwd 74-78 ms, bwd 107-122; d12 fwd 12-13, bwd 19-23.
  * Per (b, h) pair with the head's k, v copied into contiguous thread-local (T, hs) arrays and
    row views indexed from 0 (vectorisable), float32 accumulation:
      fwd_dot  (scores as dots over hs, att.v over hs):      tiny  9.4-9.8   d12 1.7-1.9
      fwd_axpy (scores vectorised over t2 against k^T (hs,T), 4 channels per pass; att.v with
               4 keys per pass):                             tiny  7.9-8.0   d12 2.3-2.5
    Dots over hs pay a horizontal sum per key, which dominates at hs = 32; the transposed form
    pays loop entry (runtime alias checks) per channel, which dominates on short rows (d12 T=64).
      fwd_hyb  (per row: dots when n = t+1 < TH, else transposed): TH = hs is as good as the best
               of both on both shapes (tiny 8.1, d12 1.9)  -> production forward.
  * Backward:
      bwd_axpy  (per query: datt, dv^T, dk^T rows vectorised over t2; dq over hs): tiny 14-17,
                d12 4.6-5.5; bwd_axpy4 (4 channels per pass): tiny 13.5-15, d12 4.6-8.
      bwd_cols  (phase 1 per query: datt by dots, softmax backward into the dpreatt scratch, dq;
                phase 2 per key t2: dk, dv as sums over queries t >= t2 into hs buffers):
                tiny 17-20, d12 3.0-3.5.
      bwd_colsh (datt by the hybrid rule, 4 keys per pass for dq, 2 queries per pass in phase 2)
                and bwd_colsh4 (4 queries per pass): tiny 15.4-17.7, d12 3.1-4.9 with TH from 16
                to inf, all within noise of each other; colsh4 with TH = hs -> production
                backward (within ~10% of axpy4 at tiny, 1.5x faster at d12).
  * Accuracy: float32 dots instead of float64: max |out - base| ~6e-7, |dinp - base| ~1e-6
    (|dinp| ~5); the model still matches PyTorch as before (bin/test_gpt2 on tiny T=256 and d12:
    same max abs diffs, 1e-6 logits / 1e-7 grads, as the baseline kernels).
  Result (bench/bench_kernels.py, 2 threads, wall): tiny fwd ~8-10x, bwd ~7-8x; d12 ~6-9x.
"""
import math

import numpy as np
from numba import njit, prange

import lab  # (puts the repository and tests/ on sys.path)

_FM = {'reassoc', 'contract'}


# ------------------------------------------------------------------ baseline (the original kernels)
@njit(parallel=True, cache=True, fastmath=_FM)
def fwd_base(out, preatt, att, inp, B, T, C, NH):
    C3 = C * 3
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    for bth in prange(B * T * NH):
        h = bth % NH
        b = bth // (NH * T)
        p = (bth // NH) % T
        t = p >> 1 if p & 1 == 0 else T - 1 - (p >> 1)
        q = b * T * C3 + t * C3 + h * hs
        row = b * NH * T * T + h * T * T + t * T
        maxval = np.float32(-np.inf)
        for t2 in range(t + 1):
            k = b * T * C3 + t2 * C3 + h * hs + C
            dot = 0.0
            for i in range(hs):
                dot += inp[q + i] * inp[k + i]
            val = np.float32(dot) * scale
            if val > maxval:
                maxval = val
            preatt[row + t2] = val
        expsum = 0.0
        for t2 in range(t + 1):
            e = math.exp(preatt[row + t2] - maxval)
            expsum += e
            att[row + t2] = e
        inv = np.float32(1.0 / expsum)
        for t2 in range(T):
            if t2 <= t:
                att[row + t2] *= inv
            else:
                att[row + t2] = 0.0
        o = b * T * C + t * C + h * hs
        for i in range(hs):
            out[o + i] = 0.0
        for t2 in range(t + 1):
            v = b * T * C3 + t2 * C3 + h * hs + C * 2
            a = att[row + t2]
            for i in range(hs):
                out[o + i] += a * inp[v + i]


@njit(parallel=True, cache=True, fastmath=_FM)
def bwd_base(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    C3 = C * 3
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        for t in range(T):
            row = b * NH * T * T + h * T * T + t * T
            q = b * T * C3 + t * C3 + h * hs
            do = b * T * C + t * C + h * hs
            for t2 in range(t + 1):
                v = b * T * C3 + t2 * C3 + h * hs + C * 2
                a = att[row + t2]
                dot = 0.0
                for i in range(hs):
                    dot += inp[v + i] * dout[do + i]
                    dinp[v + i] += a * dout[do + i]
                datt[row + t2] = dot
            s = 0.0
            for t2 in range(t + 1):
                s += att[row + t2] * datt[row + t2]
            s32 = np.float32(s)
            for t3 in range(t + 1):
                dpreatt[row + t3] = att[row + t3] * (datt[row + t3] - s32)
            for t2 in range(t + 1):
                k = b * T * C3 + t2 * C3 + h * hs + C
                d = dpreatt[row + t2] * scale
                for i in range(hs):
                    dinp[q + i] += inp[k + i] * d
                    dinp[k + i] += inp[q + i] * d


# ------------------------------------------------------------------ the lab
from numbagpt.cpu.attention import attention_backward, attention_forward  # noqa: E402

SHAPES = {"tiny": (8, 256, 128, 4), "d12": (4, 64, 768, 12)}   # (B, T, C, NH)


def _forward_args(shape, rng):
    B, T, C, NH = shape
    N = B * NH * T * T
    return dict(out=B * T * C, preatt=N, att=N, inp=rng.standard_normal(B * T * 3 * C).astype(np.float32),
                B=B, T=T, C=C, NH=NH)


def _backward_args(shape, rng):
    from reference import attention_forward_ref
    B, T, C, NH = shape
    N = B * NH * T * T
    qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
    att = attention_forward_ref(qkv.reshape(B, T, 3 * C), NH)[2].astype(np.float32)
    return dict(dinp=B * T * 3 * C, dpreatt=N, datt=N, dout=rng.standard_normal(B * T * C).astype(np.float32),
                inp=qkv, att=att, B=B, T=T, C=C, NH=NH)


KERNELS = [
    lab.Kernel("attention_forward", [("base (per row, float64 dots)", fwd_base), ("production", attention_forward)],
               _forward_args),
    lab.Kernel("attention_backward", [("base (per row, float64 dots)", bwd_base), ("production", attention_backward)],
               _backward_args),
]

if __name__ == "__main__":
    lab.main(__doc__, KERNELS, SHAPES)
