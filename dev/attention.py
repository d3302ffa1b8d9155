"""The attention lab: numbered variants of attention_forward and attention_backward, each checked
against the float64 reference, then timed side by side (dev/lab.py).

    python dev/attention.py [attention_forward|attention_backward] [N ...] [--threads 2] [--shapes tiny,d12,d12_1k]
    python dev/attention.py --products [--threads 2]     # flash attention at d12 T=1024 with and without
                                                         # its products (what a bf16 attention could save)

    attention_forward   1 base (per row)  2 per head (the (T, T) kernels flash attention replaced)  3 production (flash)
    attention_backward  1 base            2 per head                                                3 production (flash)

Variants 1 and 2 keep the contract flash attention replaced (tests/harness.py's "attention_forward_v1" /
"attention_backward_v1": preatt, att (B, NH, T, T) written by the forward, read back by the backward
with its dpreatt, datt scratch) and are checked against that contract's reference; variant 3 is
numbagpt/cpu/attention.py's, checked against the current one (out, lse). A backward variant gets the
forward outputs its contract reads (att, or out and lse) from the reference, not timed.

Flash attention (variant 3; the design is in numbagpt/cpu/attention.py's docstring). Measured on the
way (2-core AMD Zen 4, AVX-512, d12 B=1 T=1024, shared and loaded machine: ratios of best-of runs):
  * First version: one strided micro-kernel for every product (A(m, k) at pa + m·sm + k·sk), the
    softmax steps as scalar loops over the 32 query lanes on slices: fwd 48 ms, bwd 95 ms wall
    (34 / 42 GFLOP/s), 2.5x the (T, T) kernels. The micro-kernel alone ran at 52-80 GFLOP/s on one
    thread: LLVM strength-reduced the MR broadcast addresses into one chain of serial adds.
  * Two micro-kernel forms (A by rows: q_r + k; A k-major: pa + k·sa + r): 93-114 GFLOP/s on one
    thread, at the FMA peak of one Zen 4 core, and as fast streaming K / V from L2.
  * The softmax steps (row max, exp(s − m), the rescaling of l and Oᵀ, P = exp(s − lse), dS) as scalar
    loops on slices were 1.1-1.5 us per 64 x 32 tile (a slice per row costs more than its 2 vectors of
    work): 40-50% on top of the two products. On explicit vectors (simd.py's sub, mul, max and exp,
    the latter fastmath.exp_nonpos lane by lane, bit-identical): 0.66 us per tile, ~10%.
  * One thread, CPU time, d12 B=1 T=1024: forward 24-27 ms (the score product 9, P·V 9, softmax 2.7,
    packing and the rest 3.4), backward 51-53 ms (the five products 37-43, packing 4.6 after
    np.empty + zeroing only the padding instead of np.zeros: 7.5 before; P and dS in one pass).
    Then: the forward's (scale·q)ᵀ and out = (Oᵀ/l)ᵀ by 16 x 16 register transposes (simd.py's
    transpose; the scalar strided loops were 2.6 ms of 21.8): forward 20-21 ms; the packing copies
    one array a loop (one loop writing four arrays did not vectorise): backward packing 5.4 -> 3.3 ms,
    backward 48-50 ms. Allocating the per-unit buffers once per process (malloc kept from mmap) made
    no measurable difference.
    The products run at ~90-97 GFLOP/s in place against 112-115 alone (their operands no longer all
    fit in L1); key blocks of 32, 64 and 128 time the same.
  * Result, bench/bench_attention.py (2 threads, wall, best of 5 rounds x 5, load average ~2 on the
    2 cores): fwd+bwd at T = 64 / 256 / 1024: flash 0.29 / 2.44 / 35.5 ms (136 GFLOP/s at 1024 on
    12·hs FLOPs a pair, 159 on the 14·hs it executes), the (T, T) kernels 0.36 / 4.81 / 85.4, PyTorch
    SDPA 0.57 / 5.22 / 55.9: 1.2x / 2.0x / 2.4x the (T, T) kernels, 2.0x / 2.1x / 1.6x SDPA. The 4x
    over the (T, T) kernels at T = 1024 is out of reach here: flash attention's backward does 10·hs
    FLOPs a pair (it recomputes the scores and dP) against their 8·hs, so 4x would take 7 products at
    ~240 GFLOP/s on 2 cores, the FMA peak of two Zen 4 cores.

The (T, T) kernels' record (before flash attention):
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
  Result (bench/bench_kernels.py as it was then, against the per-row kernels these replaced, 2 threads,
  wall): tiny fwd ~8-10x, bwd ~7-8x; d12 ~6-9x. Since flash attention, bench_kernels times it
  against these (T, T) kernels: tiny fwd 4.1x, bwd 1.6x; d12 fwd 1.6x, bwd 1.1x (2 threads, Zen 4 VM).
"""
import math
import sys

import numpy as np
from numba import njit, prange

import lab  # (puts the repository and tests/ on sys.path)
# the per-head kernels' helpers, which generation's attention_forward_cached still uses
from numbagpt.cpu.attention import _causal_softmax, _combo, _dots  # noqa: E402

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



# ------------------------------------------------------------------ per head (production until flash attention)
@njit(fastmath=_FM, inline='always')
def _dots_t(s, x, colsT, n, hs):
    """The same as _dots from the transposed operand colsT (hs, ≥n): s[t2] = Σ_i x[i]·colsT[i, t2],
    vectorised over t2, 4 rows of colsT per pass over s."""
    for t2 in range(n):
        s[t2] = 0.0
    i = 0
    while i + 4 <= hs:
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        c0, c1, c2, c3 = colsT[i, :n], colsT[i + 1, :n], colsT[i + 2, :n], colsT[i + 3, :n]
        for t2 in range(n):
            s[t2] = s[t2] + x0 * c0[t2] + x1 * c1[t2] + x2 * c2[t2] + x3 * c3[t2]
        i += 4
    while i < hs:
        x0 = x[i]
        c0 = colsT[i, :n]
        for t2 in range(n):
            s[t2] += x0 * c0[t2]
        i += 1


@njit(parallel=True, cache=True, fastmath=_FM)
def fwd_head(out, preatt, att, inp, B, T, C, NH):
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    O = out.reshape(B, T, C)
    P = preatt.reshape(B, NH, T, T)
    A = att.reshape(B, NH, T, T)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        k = np.empty((T, hs), np.float32)
        kT = np.empty((hs, T), np.float32)
        v = np.empty((T, hs), np.float32)
        for t in range(T):
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                k[t, i] = kr[i]
                kT[i, t] = kr[i]
                v[t, i] = vr[i]
        o = np.empty(hs, np.float32)
        for t in range(T):
            n = t + 1
            q = X[b, t, h * hs:(h + 1) * hs]
            p = P[b, h, t]
            # scores q·k (the dot form has a horizontal sum per key, the transposed form a pass
            # over the row per channel: the first wins on short rows, the second on long ones)
            if n < hs:
                _dots(p, q, k, n, hs)
            else:
                _dots_t(p, q, kT, n, hs)
            a = A[b, h, t]
            _causal_softmax(a, p, scale, n, T)
            # weighted sum of the values
            _combo(o, a, v, n, hs)
            orow = O[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                orow[i] = o[i]


@njit(parallel=True, cache=True, fastmath=_FM)
def bwd_head(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    # dk and dv at position t2 receive contributions from every query t ≥ t2, so a parallel unit
    # must own whole (b, h) pairs: each writes a disjoint set of channels of dinp.
    # datt and dpreatt rows t2 ≤ t are overwritten here (contents on entry don't matter);
    # dpreatt's are read back by the second phase.
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    D = dinp.reshape(B, T, 3 * C)
    DO = dout.reshape(B, T, C)
    A = att.reshape(B, NH, T, T)
    DA = datt.reshape(B, NH, T, T)
    DP = dpreatt.reshape(B, NH, T, T)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        q = np.empty((T, hs), np.float32)
        k = np.empty((T, hs), np.float32)
        v = np.empty((T, hs), np.float32)
        vT = np.empty((hs, T), np.float32)
        do = np.empty((T, hs), np.float32)
        for t in range(T):
            qr = X[b, t, h * hs:(h + 1) * hs]
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            dr = DO[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                q[t, i] = qr[i]
                k[t, i] = kr[i]
                v[t, i] = vr[i]
                vT[i, t] = vr[i]
                do[t, i] = dr[i]
        acc = np.empty(hs, np.float32)
        acc2 = np.empty(hs, np.float32)

        # phase 1, by query row t: datt = dout·v, the softmax backward, dq
        for t in range(T):
            n = t + 1
            a = A[b, h, t, :n]
            da = DA[b, h, t, :n]
            dp = DP[b, h, t, :n]
            if n < hs:
                _dots(da, do[t], v, n, hs)
            else:
                _dots_t(da, do[t], vT, n, hs)
            # softmax backward in its O(T) form: Σ_t2 att_t2·(δ_t2t3 − att_t3)·datt_t2
            # = att_t3·(datt_t3 − Σ_t2 att_t2·datt_t2); llm.c's double loop computes the same sum.
            s = 0.0
            for t2 in range(n):
                s += a[t2] * da[t2]
            s32 = np.float32(s)
            for t2 in range(n):
                dp[t2] = a[t2] * (da[t2] - s32)
            # preatt = q·k·scale: dq_t += scale·Σ_t2 dpreatt[t, t2]·k_t2
            _combo(acc, dp, k, n, hs)
            dqr = D[b, t, h * hs:(h + 1) * hs]
            for i in range(hs):
                dqr[i] += acc[i] * scale
        # phase 2, by key column t2: dk_t2 += scale·Σ_t dpreatt[t, t2]·q_t, dv_t2 += Σ_t att[t, t2]·dout_t
        for t2 in range(T):
            for i in range(hs):
                acc[i] = 0.0
                acc2[i] = 0.0
            t = t2
            while t + 4 <= T:
                p0, p1, p2, p3 = DP[b, h, t, t2], DP[b, h, t + 1, t2], DP[b, h, t + 2, t2], DP[b, h, t + 3, t2]
                a0, a1, a2, a3 = A[b, h, t, t2], A[b, h, t + 1, t2], A[b, h, t + 2, t2], A[b, h, t + 3, t2]
                q0, q1, q2, q3 = q[t], q[t + 1], q[t + 2], q[t + 3]
                o0, o1, o2, o3 = do[t], do[t + 1], do[t + 2], do[t + 3]
                for i in range(hs):
                    acc[i] = acc[i] + p0 * q0[i] + p1 * q1[i] + p2 * q2[i] + p3 * q3[i]
                    acc2[i] = acc2[i] + a0 * o0[i] + a1 * o1[i] + a2 * o2[i] + a3 * o3[i]
                t += 4
            while t < T:
                p0 = DP[b, h, t, t2]
                a0 = A[b, h, t, t2]
                q0 = q[t]
                o0 = do[t]
                for i in range(hs):
                    acc[i] += p0 * q0[i]
                    acc2[i] += a0 * o0[i]
                t += 1
            dkr = D[b, t2, C + h * hs:C + (h + 1) * hs]
            dvr = D[b, t2, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for i in range(hs):
                dkr[i] += acc[i] * scale
                dvr[i] += acc2[i]


# ------------------------------------------------------------------ the lab
from numbagpt.cpu.attention import attention_backward, attention_forward  # noqa: E402

SHAPES = {"tiny": (8, 256, 128, 4), "d12": (4, 64, 768, 12), "d12_1k": (1, 1024, 768, 12)}   # (B, T, C, NH)


def _forward_args(shape, rng):
    B, T, C, NH = shape
    N = B * NH * T * T
    return dict(out=B * T * C, lse=B * NH * T, preatt=N, att=N,
                inp=rng.standard_normal(B * T * 3 * C).astype(np.float32), B=B, T=T, C=C, NH=NH)


def _backward_args(shape, rng):
    from reference import attention_forward_ref, attention_lse_ref
    B, T, C, NH = shape
    N = B * NH * T * T
    qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
    out, _, att = attention_forward_ref(qkv.reshape(B, T, 3 * C), NH)
    lse = attention_lse_ref(qkv.reshape(B, T, 3 * C), NH)
    return dict(dinp=B * T * 3 * C, dpreatt=N, datt=N, dout=rng.standard_normal(B * T * C).astype(np.float32),
                inp=qkv, att=att.astype(np.float32), out=out.astype(np.float32), lse=lse.astype(np.float32),
                B=B, T=T, C=C, NH=NH)


KERNELS = [
    lab.Kernel("attention_forward", [("base (per row, (T,T))", lab.under("attention_forward_v1", fwd_base)),
                                     ("per head ((T,T), replaced)", lab.under("attention_forward_v1", fwd_head)),
                                     ("production (flash)", attention_forward)], _forward_args),
    lab.Kernel("attention_backward", [("base (per row, (T,T))", lab.under("attention_backward_v1", bwd_base)),
                                      ("per head ((T,T), replaced)", lab.under("attention_backward_v1", bwd_head)),
                                      ("production (flash)", attention_backward)], _backward_args),
]

def _no_product(lanes):
    """A function of the micro-kernels' signature (numbagpt/cpu/attention.py) that computes no product:
    Y's tile is written with zeros where the product would write it (so the softmax that follows sees
    no garbage), left as it is where the product adds to it."""
    @njit
    def no_product(rows, kc, A, pa, sa, Bm, pb, ldb, nvec, Y, py, ldy, accumulate):
        if not accumulate:
            for m in range(rows):
                for c in range(nvec * lanes):
                    Y[py + m * ldy + c] = 0.0
    return no_product


def products_split(shape, threads, reps=5):
    """Flash attention's forward and backward at `shape` (B, T, C, NH), timed as production and with
    its products replaced by _no_product: how much of its time the products take, and so what running
    them at twice the speed (a bf16 `vdpbf16ps` attention) could save at most."""
    import time

    import numba

    from numbagpt.cpu import attention as A
    numba.set_num_threads(threads)
    B, T, C, NH = shape
    rng = np.random.default_rng(0)
    args = _backward_args(shape, rng)
    qkv, dout = args["inp"], args["dout"]
    out, lse = np.zeros(B * T * C, np.float32), np.zeros(B * NH * T, np.float32)
    dinp = np.zeros(B * T * 3 * C, np.float32)
    isa = A.kernel().split()[0]
    blocking = A._BLOCKING[isa]
    Gf, Gb = A._groups(B, NH, T, blocking["BR"]), A._groups(B, NH, T, blocking["BC"])
    hp = -(-(C // NH) // blocking["L"]) * blocking["L"]
    dqp = np.empty(B * NH * Gb * T * hp, np.float32) if Gb > 1 else A._NO_PARTIALS
    timed = {}
    for label, (fwd, bwd) in (("production", A._impl()),
                              ("without products", A._compile(isa, _no_product(blocking["L"])))):
        best = [float("inf"), float("inf")]
        for _ in range(reps + 1):   # the first call compiles
            t0 = time.perf_counter()
            fwd(out, lse, qkv, B, T, C, NH, Gf)
            t1 = time.perf_counter()
            attention_forward(out, lse, qkv, B, T, C, NH)   # the true out and lse for the backward
            dinp[:] = 0.0
            t2 = time.perf_counter()
            bwd(dinp, dout, qkv, out, lse, B, T, C, NH, Gb, dqp)
            t3 = time.perf_counter()
            best = [min(best[0], t1 - t0), min(best[1], t3 - t2)]
        timed[label] = best
    (pf, pb), (rf, rb) = timed["production"], timed["without products"]
    print(f"flash attention {A.kernel()}, B={B} T={T} C={C} NH={NH}, {threads} threads, best of {reps}, ms:")
    print(f"{'':18s} {'forward':>8s} {'backward':>9s} {'total':>8s}")
    for label, (f, b) in timed.items():
        print(f"{label:18s} {f * 1e3:8.2f} {b * 1e3:9.2f} {(f + b) * 1e3:8.2f}")
    prod = pf + pb - rf - rb
    print(f"the products: {prod * 1e3:.2f} ms of {(pf + pb) * 1e3:.2f} ({prod / (pf + pb):.0%}); at twice their "
          f"speed the layer would save at most {prod / 2 * 1e3:.2f} ms ({prod / 2 / (pf + pb):.0%} of attention)")


if __name__ == "__main__":
    sys.exit(lab.main(__doc__, KERNELS, SHAPES, modes={"--products": (
        "instead of the variants: flash attention at d12 T=1024 with and without its products",
        lambda threads: products_split(SHAPES["d12_1k"], threads))}))
