"""The first generation of matmul experiments (plain Numba loops, before the explicit-SIMD GEMM):
the variants that are not production code, and the record of what was measured. The driver is
dev/matmul/matmul_cpu.py (versions 1 and 2 are defined here; version 3, the loops that won, is
numbagpt/cpu/matmul_portable.py, imported there).

Variants (all GF/s below: 1 thread, CPU time, best of 4-5, next to OpenBLAS 1 thread in the same
run; the 2 cores are shared with other jobs, so absolute numbers swing by +-30% between runs and
only same-run ratios mean much):

  dot4x4 (stage 1)   dot-product form: a 4x4 block of outputs in 16 scalar accumulators, the C loop
                     innermost and contiguous in both operands; LLVM vectorises it as 16 lane-wise
                     reductions (fastmath 'reassoc') and pays a horizontal sum per output.
  bcMRxNR (stage 1)  broadcast / outer-product form, MR*NR named scalar accumulators, hoping LLVM's
                     SLP vectoriser packs them into vectors. It does not: Numba runs with SLP
                     vectorisation off (NUMBA_SLP_VECTORIZE=0); with 'reassoc' the loop vectoriser
                     turns the C loop into MR*NR gathered reductions instead (22-33 GF/s at 2
                     threads), without it the code stays scalar (6-8 GF/s).
  dotgemm            (removed: a near-copy of the production loops) the dot form as a tiled GEMM
                     for all three products (tiles MT x NT of Y, KT reduction chunks, transposed
                     operands packed per task) -- the first production version.
  prod               numbagpt/cpu/matmul_portable.py: dot form forward, register-blocked axpy
                     backward (dinp in the dot form on a transposed weight when C <= 256, OC >= 256).

Findings
  * Index arithmetic matters most: arr[base + k] on a flat array keeps Numba's negative-index
    wraparound (a select per element), so LLVM emits gathers: dot4x4 ran 20 GF/s (2 threads) that
    way, 75-93 GF/s with row views (X[i, c], or X[i, k0:k1][k]). All kernels index slices with a
    loop index that starts at 0.
  * Forward (dot form, K = C): 2048x128x6288: 45-48 GF/s (BLAS 88-97); 256x768x6288: 52-62 (BLAS
    ~120). Micro-block shapes 4x4, 4x3, 8x2, 6x4, 4x6, 5x5 are within noise; 2x8, 3x8 worse. Tile
    sizes (MT 64-1024, NT 32-128, KT 256-1024) change < 10%. At K = 128 the horizontal sums cost
    ~30-40% (hence 45 vs 60 at K = 768).
  * Forward in the axpy form (W^T tile packed per task): 22 GF/s with MT = 64 (the scattered-store
    packing dominates), 39 with MT = 256, 48 with MT = BT = 2048 (= dot form) at C = 128; 43 vs 58
    (dot) at C = 768. Not used.
  * dinp / dweight in the dot form need W^T / dout^T packed: 41-42 / 29-52 GF/s, against 57-61 /
    58-62 with the operand pre-transposed outside the timing: packing (scalar scattered stores, or
    gathers) costs ~30%.
  * The register-blocked axpy form needs no transpose: acc(4, NT) += 16 broadcast A scalars x 4 rows
    of B. First 35-65 GF/s; then
      - c[j] += (p0*w0 + ... + p3*w3) compiles to mul + 3 fma + add per row; writing
        c[j] = c[j] + p0*w0 + ... gives 4 chained FMAs: +15-20%.
      - dweight read dout^T in place: 4 floats from each of 4 rows OC floats apart per step, a new
        page each (TLB misses); copying each chunk's (KT, MT) block of dout densely first (row runs,
        vectorised copy): tiny dweight 31-35 -> 39-45 GF/s; the same copy for dinp's A block: +0-15%.
      - NT = all of N (<= 1024) and MT = 128 were best (NT 256 -> 512 where N > 256: +5-15%).
    Now: dinp 2048x128x6288 35-48, 256x768x6288 42-51, 256x3072x768 49-60; dweight 40-45, 55-61,
    58-64 (BLAS 95-130).
  * dinp at C <= 256 in the dot form on a transposed copy of W (K = OC long, so the horizontal sums
    are amortised): 2048x128x25152 37.5 (axpy) -> 52-62 GF/s (tiles MT,NT,KT = 256,128,1024 best),
    2048x128x512 43 -> 67, 2048x128x384 50 -> 69; the NumPy transpose of W costs 1-5% there. At
    BT = 256 (d12) the transpose costs as much as it saves (2·BT flops per copied float) and at
    OC = 128 the dot form loses (51 vs 68: short K), hence the rule C <= 256 and OC >= 256. Full
    shapes, production, 1 thread: tiny LM-head dinp 43 -> 62, qkv 30 -> 72, fc 31 -> 74 GF/s.
  * The axpy micro-kernel in isolation (data in L1/L2), nn = width of the j loop: 4 rows x 4 k:
    32-44 / 42-54 / 45-55 / 55-60 GF/s at nn = 128 / 256 / 512 / 768 -- each pass over j costs ~100
    instructions of runtime alias checks (LLVM cannot prove acc and B rows disjoint) plus 16
    broadcasts, paid per 4 k; 4 rows x 8 k: 49 / 62 / 73 / 74 in isolation, but no faster (10%
    slower) inside the full kernel, so 4x4 stays.
  * NUMBA_CPU_FEATURES=<host features>,-prefer-256-bit (512-bit vectors): dot4x4 +15-30% in
    isolation, the production kernels +0-15% (ratio to BLAS 0.41-0.59 -> 0.48-0.70 in one run,
    nothing in another). A process-wide setting, read before Numba compiles anything: not set by
    the library.
"""
import numpy as np
from numba import njit, prange


_FM_DOT = {"reassoc", "contract"}
_FM_AXPY = {"contract"}


# ---------------------------------------------------------------- stage 1: forward micro-kernels
@njit(parallel=True, fastmath=_FM_DOT)
def fwd_dot4x4(out, inp, weight, BT, C, OC):
    """Dot-product form: 4x4 block of outputs, C innermost; prange over 64-row W tiles."""
    OT = 64
    X = inp.reshape(BT, C)
    W = weight.reshape(OC, C)
    ntile = (OC + OT - 1) // OT
    for t in prange(ntile):
        o0 = t * OT
        o1 = min(o0 + OT, OC)
        for i in range(0, BT - 3, 4):
            for j in range(o0, o1 - 3, 4):
                a00 = a01 = a02 = a03 = np.float32(0)
                a10 = a11 = a12 = a13 = np.float32(0)
                a20 = a21 = a22 = a23 = np.float32(0)
                a30 = a31 = a32 = a33 = np.float32(0)
                for c in range(C):
                    i0 = X[i, c]
                    i1 = X[i + 1, c]
                    i2 = X[i + 2, c]
                    i3 = X[i + 3, c]
                    v0 = W[j, c]
                    v1 = W[j + 1, c]
                    v2 = W[j + 2, c]
                    v3 = W[j + 3, c]
                    a00 += i0 * v0
                    a01 += i0 * v1
                    a02 += i0 * v2
                    a03 += i0 * v3
                    a10 += i1 * v0
                    a11 += i1 * v1
                    a12 += i1 * v2
                    a13 += i1 * v3
                    a20 += i2 * v0
                    a21 += i2 * v1
                    a22 += i2 * v2
                    a23 += i2 * v3
                    a30 += i3 * v0
                    a31 += i3 * v1
                    a32 += i3 * v2
                    a33 += i3 * v3
                r = i * OC + j
                out[r] = a00
                out[r + 1] = a01
                out[r + 2] = a02
                out[r + 3] = a03
                r += OC
                out[r] = a10
                out[r + 1] = a11
                out[r + 2] = a12
                out[r + 3] = a13
                r += OC
                out[r] = a20
                out[r + 1] = a21
                out[r + 2] = a22
                out[r + 3] = a23
                r += OC
                out[r] = a30
                out[r + 1] = a31
                out[r + 2] = a32
                out[r + 3] = a33


def gen_bcast(MR, NR, name, fastmath=frozenset(_FM_DOT)):
    """Broadcast (outer-product) micro-kernel over a packed W^T tile (C, NR), MR rows of inp,
    NR named scalar accumulators per row, hoping LLVM's SLP vectoriser packs them."""
    L = []
    L.append("@njit(parallel=True, fastmath=FM_)")
    L.append(f"def {name}(out, inp, weight, BT, C, OC):")
    L.append(f"    NR = {NR}")
    L.append(f"    MR = {MR}")
    L.append("    ntile = OC // NR")
    L.append("    X = inp.reshape(BT, C)")
    L.append("    Y = out.reshape(BT, OC)")
    L.append("    for t in prange(ntile):")
    L.append("        o0 = t * NR")
    L.append("        wt = np.empty((C, NR), dtype=np.float32)")
    L.append("        for c in range(C):")
    L.append("            for j in range(NR):")
    L.append("                wt[c, j] = weight[(o0 + j) * C + c]")
    L.append("        for i in range(0, BT - MR + 1, MR):")
    for r in range(MR):
        L.append("            " + " = ".join(f"a{r}_{j}" for j in range(NR)) + " = np.float32(0)")
    L.append("            for c in range(C):")
    for r in range(MR):
        L.append(f"                x{r} = X[i + {r}, c]")
    for j in range(NR):
        L.append(f"                w{j} = wt[c, {j}]")
    for r in range(MR):
        for j in range(NR):
            L.append(f"                a{r}_{j} += x{r} * w{j}")
    for r in range(MR):
        L.append(f"            yr = Y[i + {r}, o0:o0 + NR]")
        for j in range(NR):
            L.append(f"            yr[{j}] = a{r}_{j}")
    src = "\n".join(L)
    g = {"njit": njit, "prange": prange, "np": np, "FM_": set(fastmath)}
    exec(src, g)
    return g[name]



# ---------------------------------------------------------------- dot-product GEMM (first version)
