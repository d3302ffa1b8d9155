"""Causal multi-head self-attention: flash attention (FlashAttention-2's algorithm) for training, and
the KV-cache attention of generation.

Shapes (row-major, flat float32 buffers), hs = C / NH:
    inp, dinp   (B, T, 3C)  each row is [q | k | v], head h owning channels h·hs .. (h+1)·hs−1 of each
    out, dout   (B, T, C)   heads concatenated along C
    lse         (B, NH, T)  per query row, the log-sum-exp of its scaled scores

    attention_forward(out, lse, inp, B, T, C, NH), for each b, h and query t (keys t2 ≤ t):
        s[t, t2]  = q_t · k_t2 / sqrt(hs)
        lse[t]    = log Σ_t2 exp(s[t, t2])                    (natural log)
        out_t     = Σ_t2 exp(s[t, t2] − lse[t])·v_t2
    attention_backward(dinp, dout, inp, out, lse, B, T, C, NH), dinp accumulated (+=):
        D[t]      = dout_t · out_t
        p[t, t2]  = exp(s[t, t2] − lse[t])                    (recomputed from q, k and lse)
        dp[t, t2] = dout_t · v_t2;    ds[t, t2] = p·(dp − D[t])
        dv_t2 += Σ_t p[t, t2]·dout_t; dk_t2 += Σ_t ds[t, t2]·q_t / sqrt(hs); dq_t += Σ_t2 ds[t, t2]·k_t2 / sqrt(hs)

No (T, T) buffer exists: the forward keeps, per block of BR queries, the running row max m, row sum l
(online softmax) and the output block Oᵀ in a thread-local tile, and stores only out and lse; the
backward recomputes every score tile from q, k and lse. Blocks above the diagonal are skipped, not
masked (only the tiles that straddle it are masked).

How it is laid out (dev/attention.py has the variants and their timings):
  - Every tile is held transposed, keys × queries, with the queries along the vector lanes (BR = 2L
    of them: 32 with AVX-512). The softmax statistics (m, l, lse, D) are then per lane: the row max,
    the rescaling, exp(s − m) and ds are element-wise, two vectors a tile row (simd.py's max, sub,
    mul and exp, the latter fastmath.exp_nonpos lane by lane), with no horizontal reduction anywhere.
  - Every product is a register-blocked micro-kernel on explicit `<L x float>` vectors of
    numbagpt/cpu/simd.py, generated per ISA as matmul's: Y (rows × nvec·L) (+)= A (rows × kc) ·
    Bm (kc × nvec·L), MR rows × 2 vectors of accumulators (16 zmm with AVX-512), A read one value at
    a time and broadcast, in two forms, A by rows (`_mkr`) and A k-major (`_mkk`), so that all five
    products read the tiles as they lie:
        forward   Sᵀ (keys × BR) = K·(scale·Q)ᵀ   _mkr        Oᵀ (hs × BR) += Vᵀ·Pᵀ   _mkk
        backward  Sᵀ, dPᵀ = V·dOᵀ (keys × BR)   _mkr;   dV (keys × hs) += Pᵀ·dO, dK += dSᵀ·Q   _mkr;
                  dQ (BR × hs) += dS·K   _mkk
    Q, K, V, dO are packed per head (once per parallel unit) with hs padded with zeros to HP, a
    multiple of L (odd head sizes run the same code), the sequence padded to whole key blocks.
  - Masking: only a tile that straddles the diagonal is masked (its scores −inf in the forward, whose
    exp is 0; its P and dS zeroed in the backward), and its keys past the block's last query are not
    computed at all.
  - Parallel units: (b, h, g) for g < G. The forward's unit does the query blocks qb ≡ g (mod G);
    the backward's does the key blocks kb ≡ g (mod G) (FA2's split: dk, dv of a key block are its
    own), and its dq into its own (T, HP) buffer: with G = 1 the unit adds it into dinp itself, with
    G > 1 the G partial sums are added after, in order. G is 1 when the B·NH heads spread evenly over
    the threads, else enough for 4 units a thread. No two units write the same cell: results are
    deterministic at a fixed thread count (and, for the forward, at any).
  - fastmath 'reassoc' and 'contract' only, float32 throughout (as llm.c).

Which code runs follows numbagpt/cpu/matmul.py's choice of kernel (avx512: L = 16, avx2: L = 8,
portable: L = 4, vectors LLVM lowers on any CPU); `set_kernel` overrides it (the tests use it).
"""
import math

import numba
import numpy as np
from numba import njit, prange

from . import matmul as _matmul
from .fastmath import exp_nonpos, max_f32
from .simd import compile_source, source_tag, vector_ops

_FASTMATH = {'reassoc', 'contract'}

# per ISA: lanes L, the query block BR = 2L (the tile's lanes), the key block BC, and the micro-kernel's
# rows MR (MR·2 accumulators; MR divides L, so any multiple of L rows is whole micro-tiles)
_BLOCKING = {
    "avx512": dict(L=16, BR=32, BC=64, MR=8),
    "avx2": dict(L=8, BR=16, BC=32, MR=4),
    "portable": dict(L=4, BR=8, BC=16, MR=4),
}


def _microkernel_source(name, MR, a_rows):
    """Y[py + m·ldy + c] (+)= Σ_{k<kc} a(m, k) · Bm[pb + k·ldb + c] for m < rows (a multiple of MR),
    c < nvec·L, with a(m, k) = A[pa + m·sa + k] if a_rows, else A[pa + k·sa + m] (k-major): MR rows ×
    2 vectors of accumulators per pass (1 vector for an odd last one). The two forms keep every
    broadcast's address a loop-invariant base plus a constant or the loop index (a strided form made
    LLVM chain the MR addresses through serial adds)."""
    def block(nv):
        acc = [[f"c{r}_{v}" for v in range(nv)] for r in range(MR)]
        s = [" = ".join(row) + " = zero()" for row in acc]
        s += ["pk = pb + c * L", "pa2 = pa + m" if not a_rows else "pass"]

        def step(k):  # one k: nv loads of Bm, MR broadcasts of A, MR·nv FMAs
            body = [f"b{v} = load(Bm, pk + {v} * L)" for v in range(nv)]
            for r in range(MR):
                body += [f"a = bcast(A, q{r} + {k})" if a_rows else f"a = bcast(A, pa2 + {r})"]
                body += [f"{acc[r][v]} = fma(a, b{v}, {acc[r][v]})" for v in range(nv)]
            return ["    " + line for line in body + ["pk += ldb"] + ([] if a_rows else ["pa2 += sa"])]

        # k two at a time (as matmul's micro-kernel: half the loop overhead), then the odd k
        s += ["for k in range(0, kc - 1, 2):"] + step("k") + step("k + 1")
        s += ["for k in range(kc - kc % 2, kc):"] + step("k")
        s += ["y = py + m * ldy + c * L", "if accumulate:"]
        s += [f"    store(Y, y + {r} * ldy + {v} * L, add(load(Y, y + {r} * ldy + {v} * L), {acc[r][v]}))"
              for r in range(MR) for v in range(nv)]
        s += ["else:"]
        s += [f"    store(Y, y + {r} * ldy + {v} * L, {acc[r][v]})" for r in range(MR) for v in range(nv)]
        return ["        " + line for line in s]

    src = [f"def {name}(rows, kc, A, pa, sa, Bm, pb, ldb, nvec, Y, py, ldy, accumulate):",
           "    for m in range(0, rows, MR):"]
    if a_rows:
        src += [f"        q{r} = pa + (m + {r}) * sa" for r in range(MR)]
    src += ["        for c in range(0, nvec - 1, 2):"] + ["    " + line for line in block(2)]
    src += ["        if nvec % 2:", "            c = nvec - 1"] + ["    " + line for line in block(1)]
    return "\n".join(src) + "\n"


_CORE_SOURCE = '''
def _forward(out, lse, inp, B, T, C, NH, G):
    hs = C // NH
    HP = (hs + L - 1) // L * L
    C3 = 3 * C
    scale = np.float32(1.0 / math.sqrt(hs))
    nqb = (T + BR - 1) // BR
    for u in prange(B * NH * G):
        g = u % G
        h = (u // G) % NH
        b = u // (G * NH)
        if g >= nqb:
            continue
        last = g + (nqb - 1 - g) // G * G                  # the unit's last query block
        kend = ((last + 1) * BR + BC - 1) // BC * BC       # keys it needs, in whole key blocks
        # K and V of the head, rows of HP (zero padded: channels ≥ hs, positions ≥ T)
        K = np.empty(kend * HP, np.float32)
        V = np.empty(kend * HP, np.float32)
        for t in range(min(T, kend)):
            x = inp[(b * T + t) * C3 + h * hs:(b * T + t) * C3 + h * hs + C3 - h * hs]
            kr = K[t * HP:t * HP + HP]
            vr = V[t * HP:t * HP + HP]
            for i in range(hs):                            # (one array a loop: each vectorises)
                kr[i] = x[C + i]
            for i in range(hs):
                vr[i] = x[2 * C + i]
            for i in range(hs, HP):
                kr[i] = 0.0
                vr[i] = 0.0
        for i in range(min(T, kend) * HP, kend * HP):
            K[i] = 0.0
            V[i] = 0.0
        QT = np.zeros(HP * BR, np.float32)
        OT = np.empty(HP * BR, np.float32)
        S = np.empty(BC * BR, np.float32)
        MQ = np.empty(BR, np.float32)
        LQ = np.empty(BR, np.float32)
        SC = np.full(1, scale, np.float32)
        sc = bcast(SC, 0)
        M = np.full(BR, -np.inf, np.float32)              # the running row max and row sum
        LSUM = np.zeros(BR, np.float32)
        for qb in range(g, nqb, G):
            q0 = qb * BR
            nq = min(BR, T - q0)
            if nq == BR and hs == HP:                      # (scale·q)ᵀ: hs × BR, by L × L transposes
                for i0 in range(0, hs, L):
                    for r0 in range(0, BR, L):
                        transpose(QT, i0 * BR + r0, BR, inp, (b * T + q0 + r0) * C3 + h * hs + i0, C3)
                for i in range(HP):
                    store(QT, i * BR, mul(load(QT, i * BR), sc))
                    store(QT, i * BR + L, mul(load(QT, i * BR + L), sc))
            else:                                          # a ragged last block, or hs < HP
                for r in range(nq):
                    x = inp[(b * T + q0 + r) * C3 + h * hs:(b * T + q0 + r) * C3 + h * hs + hs]
                    for i in range(hs):
                        QT[i * BR + r] = x[i] * scale
                for r in range(nq, BR):
                    for i in range(hs):
                        QT[i * BR + r] = 0.0
            for i in range(HP * BR):
                OT[i] = 0.0
            m0 = load(M, 0)
            m1 = load(M, L)
            l0 = load(LSUM, 0)
            l1 = load(LSUM, L)
            qend = q0 + BR
            for k0 in range(0, qend, BC):
                nk = min(BC, qend - k0)
                _mkr(nk, HP, K, k0 * HP, HP, QT, 0, BR, 2, S, 0, BR, False)       # Sᵀ = K·Qᵀ
                if k0 + nk - 1 > q0:                       # the tile straddles the diagonal:
                    for j in range(nk):                    # key k0 + j is masked for queries q0 + r < it
                        for r in range(min(BR, k0 + j - q0)):
                            S[j * BR + r] = -np.inf
                x0 = m0
                x1 = m1
                for j in range(nk):
                    x0 = vmax(x0, load(S, j * BR))
                    x1 = vmax(x1, load(S, j * BR + L))
                a0 = vexp(sub(m0, x0))                     # exp(m_old − m_new): 0 on the first tile
                a1 = vexp(sub(m1, x1))
                l0 = mul(l0, a0)
                l1 = mul(l1, a1)
                m0 = x0
                m1 = x1
                if k0 > 0:
                    for d in range(HP):
                        store(OT, d * BR, mul(load(OT, d * BR), a0))
                        store(OT, d * BR + L, mul(load(OT, d * BR + L), a1))
                for j in range(nk):
                    p0 = vexp(sub(load(S, j * BR), x0))
                    p1 = vexp(sub(load(S, j * BR + L), x1))
                    store(S, j * BR, p0)
                    store(S, j * BR + L, p1)
                    l0 = add(l0, p0)
                    l1 = add(l1, p1)
                _mkk(HP, nk, V, k0 * HP, HP, S, 0, BR, 2, OT, 0, BR, True)       # Oᵀ += Vᵀ·Pᵀ
            store(MQ, 0, m0)
            store(MQ, L, m1)
            store(LQ, 0, l0)
            store(LQ, L, l1)
            for r in range(nq):
                lse[(b * NH + h) * T + q0 + r] = MQ[r] + np.log(LQ[r])
            if nq == BR and hs == HP:                      # out = (Oᵀ / l)ᵀ, by L × L transposes
                for r in range(BR):
                    LQ[r] = np.float32(1.0) / LQ[r]
                i0v = load(LQ, 0)
                i1v = load(LQ, L)
                for i in range(HP):
                    store(OT, i * BR, mul(load(OT, i * BR), i0v))
                    store(OT, i * BR + L, mul(load(OT, i * BR + L), i1v))
                for i0 in range(0, hs, L):
                    for r0 in range(0, BR, L):
                        transpose(out, (b * T + q0 + r0) * C + h * hs + i0, C, OT, i0 * BR + r0, BR)
            else:
                for r in range(nq):
                    inv = np.float32(1.0) / LQ[r]
                    o = out[(b * T + q0 + r) * C + h * hs:(b * T + q0 + r) * C + h * hs + hs]
                    for i in range(hs):
                        o[i] = OT[i * BR + r] * inv


def _backward(dinp, dout, inp, out, lse, B, T, C, NH, G, dqp):
    hs = C // NH
    HP = (hs + L - 1) // L * L
    NV = HP // L
    C3 = 3 * C
    scale = np.float32(1.0 / math.sqrt(hs))
    nkb = (T + BC - 1) // BC
    TP = nkb * BC
    nqb = (T + BR - 1) // BR
    for u in prange(B * NH * G):
        g = u % G
        h = (u // G) % NH
        b = u // (G * NH)
        if g >= nkb:                                   # no key block: no dq either
            if G > 1:
                for i in range(T * HP):
                    dqp[u * T * HP + i] = 0.0
            continue
        # the head packed: Q, K, V, dO as rows of HP; (scale·Q)ᵀ and dOᵀ per query block (HP × BR);
        # lse and D = rowsum(dO ∘ O); zero past T and past hs
        Q = np.empty(TP * HP, np.float32)
        K = np.empty(TP * HP, np.float32)
        V = np.empty(TP * HP, np.float32)
        DO = np.empty(TP * HP, np.float32)
        QT = np.empty(TP * HP, np.float32)
        DOT = np.empty(TP * HP, np.float32)
        LS = np.empty(TP, np.float32)
        DD = np.empty(TP, np.float32)
        SC = np.full(1, scale, np.float32)
        for t in range(T):
            x = inp[(b * T + t) * C3 + h * hs:(b * T + t) * C3 + h * hs + C3 - h * hs]
            do = dout[(b * T + t) * C + h * hs:(b * T + t) * C + h * hs + hs]
            o = out[(b * T + t) * C + h * hs:(b * T + t) * C + h * hs + hs]
            qr = Q[t * HP:t * HP + HP]
            kr = K[t * HP:t * HP + HP]
            vr = V[t * HP:t * HP + HP]
            dr = DO[t * HP:t * HP + HP]
            dsum = np.float32(0.0)
            for i in range(hs):                        # (one array a loop: each vectorises)
                qr[i] = x[i]
            for i in range(hs):
                kr[i] = x[C + i]
            for i in range(hs):
                vr[i] = x[2 * C + i]
            for i in range(hs):
                dr[i] = do[i]
            for i in range(hs):
                dsum += do[i] * o[i]
            for i in range(hs, HP):
                qr[i] = 0.0
                kr[i] = 0.0
                vr[i] = 0.0
                dr[i] = 0.0
            LS[t] = lse[(b * NH + h) * T + t]
            DD[t] = dsum
        for i in range(T * HP, TP * HP):                # positions T .. TP−1
            Q[i] = 0.0
            K[i] = 0.0
            V[i] = 0.0
            DO[i] = 0.0
        for t in range(T, TP):
            LS[t] = 0.0
            DD[t] = 0.0
        for qb in range(TP // BR):                     # the transposed blocks, from the padded rows
            for i0 in range(0, HP, L):                  # by L × L register transposes
                for r0 in range(0, BR, L):
                    transpose(QT, (qb * HP + i0) * BR + r0, BR, Q, (qb * BR + r0) * HP + i0, HP)
                    transpose(DOT, (qb * HP + i0) * BR + r0, BR, DO, (qb * BR + r0) * HP + i0, HP)
        sc = bcast(SC, 0)
        for i in range(0, TP * HP, L):
            store(QT, i, mul(load(QT, i), sc))
        dQ = np.zeros(TP * HP, np.float32)
        dK = np.empty(BC * HP, np.float32)
        dV = np.empty(BC * HP, np.float32)
        P = np.empty(BC * BR, np.float32)
        dS = np.empty(BC * BR, np.float32)
        for kb in range(g, nkb, G):
            k0 = kb * BC
            for i in range(BC * HP):
                dK[i] = 0.0
                dV[i] = 0.0
            for qb in range(k0 // BR, nqb):
                q0 = qb * BR
                nk = min(BC, q0 + BR - k0)                 # keys past the block's last query: all masked
                _mkr(nk, HP, K, k0 * HP, HP, QT, q0 * HP, BR, 2, P, 0, BR, False)    # Sᵀ = K·(scale·Q)ᵀ
                _mkr(nk, HP, V, k0 * HP, HP, DOT, q0 * HP, BR, 2, dS, 0, BR, False)  # dPᵀ = V·dOᵀ
                l0 = load(LS, q0)
                l1 = load(LS, q0 + L)
                d0 = load(DD, q0)
                d1 = load(DD, q0 + L)
                for j in range(nk):                        # P = exp(S − lse), dS = P ∘ (dP − D)
                    p0 = vexp(sub(load(P, j * BR), l0))
                    p1 = vexp(sub(load(P, j * BR + L), l1))
                    store(P, j * BR, p0)
                    store(P, j * BR + L, p1)
                    store(dS, j * BR, mul(p0, sub(load(dS, j * BR), d0)))
                    store(dS, j * BR + L, mul(p1, sub(load(dS, j * BR + L), d1)))
                if k0 + nk - 1 > q0:                       # the tile straddles the diagonal:
                    for j in range(nk):                    # key k0 + j is masked for queries q0 + r < it
                        for r in range(min(BR, k0 + j - q0)):
                            P[j * BR + r] = 0.0            # (what was computed there is discarded,
                            dS[j * BR + r] = 0.0           # whatever it was: exp of s − lse > 0)
                _mkr(nk, BR, P, 0, BR, DO, q0 * HP, HP, NV, dV, 0, HP, True)         # dV += Pᵀ·dO
                _mkr(nk, BR, dS, 0, BR, Q, q0 * HP, HP, NV, dK, 0, HP, True)         # dK += dSᵀ·Q
                _mkk(BR, nk, dS, 0, BR, K, k0 * HP, HP, NV, dQ, q0 * HP, HP, True)   # dQ += dS·K
            for j in range(min(BC, T - k0)):
                x = dinp[(b * T + k0 + j) * C3 + h * hs:(b * T + k0 + j) * C3 + h * hs + C3 - h * hs]
                kr = dK[j * HP:j * HP + HP]
                vr = dV[j * HP:j * HP + HP]
                for i in range(hs):
                    x[C + i] += kr[i] * scale
                    x[2 * C + i] += vr[i]
        if G == 1:
            for t in range(T):
                x = dinp[(b * T + t) * C3 + h * hs:(b * T + t) * C3 + h * hs + hs]
                qr = dQ[t * HP:t * HP + HP]
                for i in range(hs):
                    x[i] += qr[i] * scale
        else:
            dst = dqp[u * T * HP:(u + 1) * T * HP]
            for i in range(T * HP):
                dst[i] = dQ[i]
    if G > 1:                                          # the partial dq, summed in order of g
        for bh in prange(B * NH):
            h = bh % NH
            b = bh // NH
            for t in range(T):
                x = dinp[(b * T + t) * C3 + h * hs:(b * T + t) * C3 + h * hs + hs]
                for i in range(hs):
                    s = np.float32(0.0)
                    for g in range(G):
                        s += dqp[((bh * G + g) * T + t) * HP + i]
                    x[i] += s * scale
'''


def _compile(isa, product=None):
    """The micro-kernel and the forward and backward of one ISA's blocking, as Numba dispatchers,
    compiled under this file's name so that Numba's on-disk cache keeps them. `product`, a jitted
    function with the micro-kernels' signature, replaces both (dev/attention.py --products times the
    kernels without their products that way); such a core is not cached (Numba's cache keys an entry on
    the function's own bytecode, not on the functions it calls: it would be taken for this one)."""
    b = _BLOCKING[isa]
    ops = vector_ops(b["L"])
    env = dict(np=np, math=math, prange=prange, exp_nonpos=exp_nonpos, L=b["L"], BR=b["BR"], BC=b["BC"],
               MR=b["MR"], load=ops.load, store=ops.store, bcast=ops.bcast, fma=ops.fma, add=ops.add,
               zero=ops.zero, sub=ops.sub, mul=ops.mul, vmax=ops.max, vexp=ops.exp, transpose=ops.transpose,
               __name__=__name__)
    for key, a_rows in (("_mkr", True), ("_mkk", False)):
        name = f"{key}_{isa}_{source_tag()}"
        exec(compile_source(_microkernel_source(name, b["MR"], a_rows), __file__), env)
        env[key] = product or njit(cache=True, fastmath=_FASTMATH)(env[name])
    fwd_name, bwd_name = f"_forward_{isa}_{source_tag()}", f"_backward_{isa}_{source_tag()}"
    core = _CORE_SOURCE.replace("def _forward(", f"def {fwd_name}(").replace("def _backward(", f"def {bwd_name}(")
    exec(compile_source(core, __file__), env)
    cache = product is None
    fwd = njit(parallel=True, cache=cache, fastmath=_FASTMATH)(env[fwd_name])
    bwd = njit(parallel=True, cache=cache, fastmath=_FASTMATH)(env[bwd_name])
    return fwd, bwd


_COMPILED = {}
_kernel = None


def set_kernel(name):
    """Use the attention code of ISA `name` (one of matmul.KERNELS this CPU supports) from now on."""
    global _kernel
    if name not in _BLOCKING:
        raise ValueError(f"unknown attention kernel {name!r}: expected one of {', '.join(_BLOCKING)}")
    if name not in _matmul.supported_kernels():
        raise ValueError(f"attention kernel {name!r}: this CPU runs {', '.join(_matmul.supported_kernels())}")
    _kernel = name


def kernel():
    """The ISA in use and its tile, e.g. 'avx512 32x64'."""
    b = _BLOCKING[_kernel]
    return f"{_kernel} {b['BR']}x{b['BC']}"


def _impl():
    if _kernel not in _COMPILED:
        _COMPILED[_kernel] = _compile(_kernel)
    return _COMPILED[_kernel]


def _groups(B, NH, T, block):
    """G, the parallel units per head: 1 when the B·NH heads spread evenly over the threads, else
    enough for about 4 units a thread (at most one per block of the sequence)."""
    nt = numba.get_num_threads()
    heads = B * NH
    if heads % nt == 0:
        return 1
    return max(1, min(-(-T // block), -(-4 * nt // heads)))


_NO_PARTIALS = np.zeros(1, np.float32)


def attention_forward(out, lse, inp, B, T, C, NH):
    """out (B,T,C) and lse (B,NH,T) of causal attention over inp = qkv (B,T,3C); both written."""
    b = _BLOCKING[_kernel]
    _impl()[0](out, lse, inp, B, T, C, NH, _groups(B, NH, T, b["BR"]))


def attention_backward(dinp, dout, inp, out, lse, B, T, C, NH):
    """dinp (B,T,3C) += the gradient of attention_forward's out, from dout (B,T,C), its inputs inp and
    its outputs out, lse."""
    b = _BLOCKING[_kernel]
    G = _groups(B, NH, T, b["BC"])
    hp = -(-(C // NH) // b["L"]) * b["L"]
    dqp = np.empty(B * NH * G * T * hp, np.float32) if G > 1 else _NO_PARTIALS
    _impl()[1](dinp, dout, inp, out, lse, B, T, C, NH, G, dqp)


def _set_default_kernel():
    set_kernel(_matmul.kernel().split()[0])


_set_default_kernel()


# ---------------------------------------------------------------- generation: attention with a KV cache

@njit(fastmath=_FASTMATH, inline='always')
def _dots(s, x, rows, n, hs):
    """s[t2] = x · rows[t2] for t2 < n (rows: (≥n, hs)); dot products over hs."""
    for t2 in range(n):
        r = rows[t2]
        dot = np.float32(0.0)
        for i in range(hs):
            dot += x[i] * r[i]
        s[t2] = dot


@njit(fastmath=_FASTMATH, inline='always')
def _combo(o, c, rows, n, hs):
    """o[i] = Σ_{t2<n} c[t2]·rows[t2, i] (o: hs floats, overwritten): vectorised over hs, 4 rows
    per pass."""
    for i in range(hs):
        o[i] = 0.0
    t2 = 0
    while t2 + 4 <= n:
        c0, c1, c2, c3 = c[t2], c[t2 + 1], c[t2 + 2], c[t2 + 3]
        r0, r1, r2, r3 = rows[t2], rows[t2 + 1], rows[t2 + 2], rows[t2 + 3]
        for i in range(hs):
            o[i] = o[i] + c0 * r0[i] + c1 * r1[i] + c2 * r2[i] + c3 * r3[i]
        t2 += 4
    while t2 < n:
        c0 = c[t2]
        r0 = rows[t2]
        for i in range(hs):
            o[i] += c0 * r0[i]
        t2 += 1


@njit(fastmath=_FASTMATH, inline='always')
def _causal_softmax(a, p, scale, n, width):
    """p[:n] *= scale, then a[:n] = softmax(p[:n]) and a[n:width] = 0
    (a may be p). The max is subtracted so exp never overflows; the row's own key t2 = t is always
    among the n, so the sum is ≥ exp(0) = 1. The zeros make att a full causal matrix."""
    for t2 in range(n):
        p[t2] *= scale
    m = max_f32(p, n)
    expsum = 0.0
    for t2 in range(n):
        e = exp_nonpos(p[t2] - m)
        a[t2] = e
        expsum += e
    inv = np.float32(1.0 / expsum)
    for t2 in range(n):
        a[t2] *= inv
    for t2 in range(n, width):
        a[t2] = 0.0


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def attention_forward_cached(out, att, kcache, vcache, inp, B, T, t0, C, NH, maxT):
    """Attention of T new positions t0 .. t0+T−1 against a key/value cache (generation).

        inp            (B, T, 3C)         q, k, v of the new positions
        kcache, vcache (B, NH, maxT, hs)  rows t0 .. t0+T−1 written here from inp; rows < t0 hold
                                          the earlier positions' keys and values
        att            (B, NH, T, maxT)   softmax weights of query t over cache rows ≤ t0+t, 0 beyond
        out            (B, T, C)

    It computes what attention_forward computes for those rows of a sequence of t0+T positions, with
    the keys and values of the earlier positions read from the cache instead of recomputed. T = 1 is
    the one-query-row step of decoding; t0 = 0 with the whole prompt fills the cache (prefill).
    """
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    X = inp.reshape(B, T, 3 * C)
    O = out.reshape(B, T, C)
    A = att.reshape(B, NH, T, maxT)
    K = kcache.reshape(B, NH, maxT, hs)
    V = vcache.reshape(B, NH, maxT, hs)
    # the cache rows first (a query of this call may attend to a key of an earlier new position)
    for bh in prange(B * NH):
        h = bh % NH
        b = bh // NH
        for t in range(T):
            kr = X[b, t, C + h * hs:C + (h + 1) * hs]
            vr = X[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
            krow = K[b, h, t0 + t]
            vrow = V[b, h, t0 + t]
            for i in range(hs):
                krow[i] = kr[i]
                vrow[i] = vr[i]
    # then one parallel unit per query row (b, h, t): scores, softmax and the weighted sum as in
    # attention_forward, over the n = t0+t+1 cached rows
    for bht in prange(B * NH * T):
        t = bht % T
        h = (bht // T) % NH
        b = bht // (T * NH)
        n = t0 + t + 1
        q = X[b, t, h * hs:(h + 1) * hs]
        a = A[b, h, t]
        _dots(a, q, K[b, h], n, hs)
        _causal_softmax(a, a, scale, n, maxT)
        o = np.empty(hs, np.float32)
        _combo(o, a, V[b, h], n, hs)
        orow = O[b, t, h * hs:(h + 1) * hs]
        for i in range(hs):
            orow[i] = o[i]
