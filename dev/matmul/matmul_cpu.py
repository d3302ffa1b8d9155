"""The CPU matmul lab, in the manner of llm.c's dev/cuda: numbered versions of one product, each
checked against NumPy float64 before it is timed next to np.dot (OpenBLAS) in the same process.

    python dev/matmul/matmul_cpu.py 6                        # version 6, all three products
    python dev/matmul/matmul_cpu.py 3 6 --op forward --shape 2048,128,50304 --threads 2
    python dev/matmul/matmul_cpu.py --microkernel            # micro-kernels alone, in L1
    python dev/matmul/matmul_cpu.py --blocking 288,128,2048,0 288,256,512,1 --shape 2048,128,50304
                                   # v6 at other blockings MC,KC,NC,along_rows (0: strip by strip)
    python dev/matmul/matmul_cpu.py --kernel avx512bf16 --blocking 288,1024,1024,0 288,512,1024,0
                                   # the same for the bf16 GEMM (numbagpt/cpu/matmul_bf16.py), each
                                   # blocking checked against float64 of the rounded operands

Versions (M, N, K and the operands of each product as in numbagpt/cpu/matmul.py):
  1  dot4x4: dot-product form, 4x4 scalar accumulators, LLVM vectorises k (forward only, whole tiles:
     BT % 4 == 0, OC % 4 == 0; loops.py)
  2  bcast 4x16: outer-product form on scalar accumulators, hoping for SLP (forward only, whole tiles:
     BT % 4 == 0, OC % 16 == 0; loops.py)
  3  the portable loops (numbagpt/cpu/matmul_portable.py, the production fallback)
  4  packed GEMM, avx2 kernel: 6x16 on 8-lane ymm (production, numbagpt.cpu.matmul)
  5  packed GEMM, avx512 kernel with a 12x32 micro-tile (production code, blocking overridden)
  6  packed GEMM, avx512 kernel, 6x64 (production)

Measured on the 2-core AVX-512 machine, 1 thread, CPU time, ratio to OpenBLAS (SkylakeX kernel) in
the same run, while other jobs loaded the cores (absolute GF/s halve under that load; ratios hold):
  - v1, v2: 0.3-0.6 and 0.1-0.3 of BLAS (loops.py has the details); v3: 0.5-0.9, median ~0.75.
  - The packed GEMM's micro-kernel alone (--microkernel): every tile tried (12x32, 6x64, 8x48
    k-major; 6x64, 4x64, 8x32, 12x32 row-by-row) runs at ~107-115 GF/s in L1 with no stack access
    in its k loop. (An earlier form of the row-by-row 12x32 kernel, its 12 row offsets computed
    inside the loop, spilled: 41 stack accesses, 78 GF/s.) Yet inside the GEMM, v5 (12x32) runs
    0.6 of BLAS on forward/dinp at 512x128x1024 where v6 (6x64) runs 1.0: per k, 6x64 issues 4
    vector loads + 6 broadcasts for its 24 FMAs, 12x32 2 + 12 — not investigated further.
  - v5 first version (12x32, A always packed k-major by a transposing copy, B panel shared by the
    threads, two barriers per (jc, pc) block): 0.67-0.92 of BLAS at 1 thread, but 0.3-0.7 at 2
    threads on the loaded machine: a barrier waits for a descheduled thread. One task per thread
    with private buffers (no barrier inside a call) fixed that.
  - Transposing A for the forward/dinp was the rest of the gap (0.4-0.5 ns/element); v6 packs A as
    it lies (row by row for a row-major A, k-major for dweight's transposed one), so every A pack is
    a plain vector copy, with a 6x64 tile whose 6 address streams fit the registers: overall 0.89
    of BLAS at 1 thread (worst shapes: the 2048x128x128 products, 0.6-0.7, where packing both
    operands weighs most).
  - Issue #9, per phase (pack A, pack B, the rest): the forward's weight, packed by an element-by-
    element transposing copy, cost 5.5 ns/element, half of every d12 forward (0.5 of BLAS); packed
    by 16x16 register transposes (simd.transpose: 4 stages of 16 two-source shuffles) it costs
    0.3-0.7 ns (memory-bound) and the d12 forwards reach 0.9. The tiny products' 0.6 came from the
    benchmark: set_kernel asked llvmlite for the host features (0.35 ms) on every call.
  - Blocking (--blocking, ratios to BLAS in one run, noise about +-0.04): KC 128 beats 256 on most
    shapes (the 6x64 strip, 32 KiB, fits the 48 KiB L1; at 256 it is 64 KiB and streams from L2),
    MC 96/144/288/576 (multiples of 16: the k-major A pack of dweight needs no scalar tail) all
    within noise, 288 kept. For a Y far out of L2 (M*N > 2^20) the strip-by-strip order writes Y in
    6-row patches over hundreds of rows: going along Y's rows instead (A panel in L1, strips from a
    1 MiB B panel in L2, KC 256 so half the passes over Y) took the tiny lm_head forward from 0.8
    to 1.1-1.3 and the big-Y d12 products up ~5% (their dweights at 2 threads 0.8-1.1 -> 1.0-1.5;
    a 512 KiB panel was worse there); on small Y that order is 2-5% slower. Prefetching the Y tile
    before the k loop: +0-5% (most on the lm_head forwards). The k loop two k at a time (the
    generator emits the step twice, then a one-k tail): +2-13% inside the GEMM, bit-identical.
  - On AMD Zen 4 (32 KiB L1, 1 MiB L2 a core; OpenBLAS runs its Haswell kernel there), 1 thread:
    NC 1024 (a 512 KiB panel, half that L2) beats 2048 by 0-8% on the d12 and tiny products
    (e.g. tiny fcproj dinp 0.95 -> 1.08, d12 fcproj forward 0.98 -> 1.04); KC 64 and 96 lose
    5-15% to 128 even with the 32 KiB strip filling L1; MC 96/144 no better than 288. So NC
    follows the L2 the CPU reports (matmul._panel_columns); the along-rows blocking (KC_Y 256 or
    128, NC_Y 512-2048) was within noise (+-0.1) on the LM-head shapes and stays.
  - A read in place (no A pack; the micro-kernel reads whole panels of A where they lie, a ragged
    last panel packed): where a task has one or two strips of Y, packing A is as much traffic as
    the product's own reads of it. 2 threads, Zen 4: tiny lm_head dinp 0.90-1.00 -> 1.03-1.12,
    tiny qkv dweight 0.97-1.00 -> 1.06-1.19, other N = 128 products within noise; at d12's
    widths (6+ strips a task) no gain at KC 128, so only tasks of <= 2 strips do it (IN_PLACE_N).
    At KC 256, a row-major A in place at any width: d12 dinps +2-6% (1 and 2 threads), forwards
    within noise (7 of 10 a little faster); dweight's k-major A no change (IN_PLACE_ROWS).
  - KC with the L1: on Zen 4 the 128-long 6x64 strip (32 KiB) already fills L1, so it streams
    from L2 whatever KC is; KC 256 with NC 512 (the panel still half of L2) beat KC 128 / NC 1024
    on every d12 and tiny product at 2 threads (+0-8%; d12 dinps 0.88-0.94 -> 0.95-1.00) and on 5
    of 6 at 1 thread. KC 512 for the d12 dinps: within noise. So KC is 128 where its strip fits
    two thirds of L1 (Intel's 48 KiB), else 256 (matmul._reduction_block).
  - A small Y (the tiny model's weight gradients: 128-512 x 128, K = 2048), 2 threads, Zen 4: KC
    512 beats 128 by 5-12% on all four (256 in between), so Y <= 2^16 elements takes KC_S = 512.
  - Timing. The lab timed single calls by process CPU time; at 2 threads on the Zen 4 VM five copies
    of one blocking then ranged 0.62-1.00 of BLAS (d12 fc dinp, 256x768x3072, ~7 ms a call, whose
    wall time was 6.6-7.9 ms but once 9.4): the CPU time also counts the OpenMP threads that spin after a
    parallel loop, and the spin lands in whichever call comes next. The lab now times as
    bench/bench_matmul.py does (bench/timing.py: wall time, a block of calls of about --block-ms timed as one, the
    median of --reps rounds taken in turn): the five copies 0.90-0.95. The 2-thread ratios above
    (blocking, A in place) were taken the old way and may carry that error.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import timing  # noqa: E402  (bench/timing.py: the lab times as the benchmarks do)

DESCRIPTIONS = {1: "dot4x4 loops", 2: "bcast 4x16 scalar", 3: "portable loops", 4: "avx2 6x16",
                5: "avx512 12x32", 6: "avx512 6x64"}
WHOLE_TILES = {1: (4, 4), 2: (4, 16)}   # (BT, OC) multiples: the stage-1 loops have no edge code


def products(version, threads):
    """{op: f(Y, X, W, D, BT, C, OC)} for one version (op in forward, dinp, dweight)."""
    import numpy as np

    if version in (1, 2):
        import loops
        f = loops.fwd_dot4x4 if version == 1 else loops.gen_bcast(4, 16, "bc4x16", fastmath={"contract"})
        return {"forward": lambda Y, X, W, D, BT, C, OC: f(Y, X, W, BT, C, OC)}
    if version == 3:
        from numbagpt.cpu import matmul_portable as p
        return {"forward": lambda Y, X, W, D, BT, C, OC: p.forward(Y, X, W, None, BT, C, OC),
                "dinp": lambda Y, X, W, D, BT, C, OC: p.backward_dinp(Y, D, W, BT, C, OC),
                "dweight": lambda Y, X, W, D, BT, C, OC: p.backward_dweight(Y, D, X, BT, C, OC)}
    from numbagpt.cpu import matmul as mm
    isa = "avx2" if version == 4 else "avx512"
    if isa not in mm.supported_kernels():
        sys.exit(f"version {version} needs the {isa} kernel; this CPU runs {mm.supported_kernels()}")
    g = mm._Gemm(isa, MR=12, NR=32, MC=144) if version == 5 else mm._Gemm(isa)
    none = np.zeros(1, np.float32)
    return {"forward": lambda Y, X, W, D, BT, C, OC: g(Y, X, True, W, True, none, BT, OC, C, 1),
            "dinp": lambda Y, X, W, D, BT, C, OC: g(Y, D, True, W, False, none, BT, C, OC, 0),
            "dweight": lambda Y, X, W, D, BT, C, OC: g(Y, D, False, X, False, none, OC, C, BT, 0)}


def run_versions(args):
    import numpy as np
    BT, C, OC = args.shape
    rng = np.random.default_rng(0)
    X = rng.standard_normal((BT, C), dtype=np.float32)
    W = (rng.standard_normal((OC, C)) / np.sqrt(C)).astype(np.float32)
    D = (rng.standard_normal((BT, OC)) / np.sqrt(OC)).astype(np.float32)
    ref = {"forward": X.astype(np.float64) @ W.T.astype(np.float64),
           "dinp": D.astype(np.float64) @ W.astype(np.float64),
           "dweight": D.T.astype(np.float64) @ X.astype(np.float64)}
    blas = {"forward": lambda: np.dot(X, W.T), "dinp": lambda: np.dot(D, W), "dweight": lambda: np.dot(D.T, X)}
    flop = 2.0 * BT * C * OC
    print(f"BT={BT} C={C} OC={OC}, {args.threads} thread(s), {timing.describe(args)}")
    median_of = timing.timers(args)
    for op in args.op:
        fns = {}
        for v in args.versions:
            f = products(v, args.threads).get(op)
            if f is None:
                continue
            mr, nr = WHOLE_TILES.get(v, (1, 1))
            if BT % mr or OC % nr:
                print(f"  {op}: v{v} skipped: its {mr} x {nr} tiles need BT % {mr} == 0 and OC % {nr} == 0")
                continue
            Y = np.zeros(ref[op].shape, np.float32)   # zeros: v3's dinp and dweight accumulate
            f(Y.reshape(-1), X.reshape(-1), W.reshape(-1), D.reshape(-1), BT, C, OC)  # validate first
            timing.checked(f"version {v} {op}", Y, ref[op], 1e-5)
            fns[f"v{v} {DESCRIPTIONS[v]}"] = (lambda f=f, Y=Y: f(Y.reshape(-1), X.reshape(-1), W.reshape(-1),
                                                                 D.reshape(-1), BT, C, OC))
        if not fns:   # BLAS alone would be a line of no comparison
            print(f"  {op}: no version of {' '.join(map(str, args.versions))} timed")
            continue
        fns["BLAS"] = blas[op]
        t = dict(zip(fns, median_of(list(fns.values()), args.reps)))
        print(f"  {op}: " + "  ".join(f"{k} {flop / t[k] / 1e9:.1f} GF/s ({t['BLAS'] / t[k]:.2f})"
                                      for k in fns if k != "BLAS") + f"  BLAS {flop / t['BLAS'] / 1e9:.1f}")


def _blocking_gemm(kernel):
    """(the GEMM of `kernel`, the core's further arguments, the rounding of its operands)."""
    import numpy as np
    if kernel == "avx512":
        from numbagpt.cpu import matmul as mm
        if kernel not in mm.supported_kernels():
            sys.exit(f"--kernel {kernel}: this CPU runs the fp32 kernels {mm.supported_kernels()}")
        return mm._Gemm("avx512"), (), lambda x: x
    from numbagpt.cpu import matmul_bf16 as mb
    if kernel not in mb.supported_kernels():
        sys.exit(f"--kernel {kernel}: this CPU runs the bf16 kernels {mb.supported_kernels()}")
    return mb._make_gemm(kernel), (False,), lambda x: mb.round_to_bf16(x).astype(np.float64)


def run_blockings(args):
    """The packed GEMM core of --kernel (v6's avx512, or a bf16 one) at each of args.blocking (MC, KC,
    NC, along_rows), each checked against float64 (of the bf16-rounded operands for a bf16 kernel),
    then timed with BLAS as the benchmarks time (bench/timing.py): the ratio to BLAS of each, per product."""
    import numba
    import numpy as np
    g, extra, rnd = _blocking_gemm(args.kernel)
    var = [BLOCKING(b) for b in args.blocking]
    nt = args.threads
    slots = numba.config.NUMBA_NUM_THREADS   # a packing slot for every thread id, as matmul._Gemm
    Ap = np.empty(slots * max(v[0] * v[1] for v in var), np.float32)
    Bp = np.empty(slots * max(v[1] * v[2] for v in var), np.float32)
    BT, C, OC = args.shape
    rng = np.random.default_rng(0)
    X, W, D = (rng.standard_normal(n, dtype=np.float32) for n in (BT * C, OC * C, BT * OC))
    none = np.zeros(1, np.float32)
    print(f"{args.kernel}: BT={BT} C={C} OC={OC}, {nt} thread(s), {timing.describe(args)}; "
          f"ratio to BLAS of MC,KC,NC,along_rows = {args.blocking}")
    median_of = timing.timers(args)
    for op in args.op:
        Y, A, ak, B, bk, M, N, K, mode = {
            "forward": (np.empty(BT * OC, np.float32), X, True, W, True, BT, OC, C, 1),
            "dinp": (np.zeros(BT * C, np.float32), D, True, W, False, BT, C, OC, 1),
            "dweight": (np.zeros(OC * C, np.float32), D, False, X, False, OC, C, BT, 1)}[op]
        Yr = Y.reshape(M, N)
        blas = {"forward": lambda: np.dot(X.reshape(M, K), W.reshape(N, K).T, out=Yr),
                "dinp": lambda: np.dot(D.reshape(M, K), W.reshape(K, N), out=Yr),
                "dweight": lambda: np.dot(D.reshape(K, M).T, X.reshape(K, N), out=Yr)}[op]
        ref = {"forward": lambda: rnd(X).reshape(M, K) @ rnd(W).reshape(N, K).T,
               "dinp": lambda: rnd(D).reshape(M, K) @ rnd(W).reshape(K, N),
               "dweight": lambda: rnd(D).reshape(K, M).T @ rnd(X).reshape(K, N)}[op]()
        mp, np_ = g.split(M, N)
        fns = [lambda v=v: g.core(Y, A, ak, B, bk, none, M, N, K, mode, Ap, Bp, g.tile, mp, np_, *v[:3], bool(v[3]),
                                  False, *extra)
               for v in var]
        for v, f in zip(var, fns):   # validate first
            Y.fill(np.nan)   # Y is every blocking's: one that writes nothing must not pass on the last one's
            f()
            timing.checked(f"{args.kernel} {op} at {v}", Yr, ref, 1e-5)
        fns.append(blas)
        med = median_of(fns, args.reps)
        print(f"  {op:8s}" + "".join(f" {med[-1] / m:5.2f}" for m in med[:-1])
              + f"   BLAS {2.0 * M * N * K / med[-1] / 1e9:.1f} GF/s")


def run_microkernels(args):
    """Each micro-kernel (production generator) alone on L1-resident panels, checked against float64
    first: GF/s and stack accesses in its k loop."""
    import re

    import numpy as np
    from numba import njit

    from numbagpt.cpu import matmul as mm
    env = mm.vector_env(16)
    kc = 256
    for MR, NR, rows in [(12, 32, False), (6, 64, False), (8, 48, False), (6, 64, True), (4, 64, True),
                         (8, 32, True), (12, 32, True)]:
        name = f"uk_{MR}x{NR}_{'rows' if rows else 'kmajor'}"
        exec(mm._microkernel_source(name, MR, NR, 16, rows), env)
        uk = njit(env[name])
        Ap = np.random.rand(kc * MR).astype(np.float32)
        Bp = np.random.rand(kc * NR).astype(np.float32)
        Y = np.zeros(MR * NR, np.float32)
        sa = kc if rows else MR

        @njit
        def loop(n, Ap, Bp, Y):
            for _ in range(n):
                uk(kc, Ap, 0, sa, Bp, 0, Y, 0, NR, 0, Y, 0)

        loop(1, Ap, Bp, Y)   # Y = 0 + the tile: checked against float64 before it is timed
        A = Ap.reshape(MR, kc) if rows else Ap.reshape(kc, MR).T
        want = A.astype(np.float64) @ Bp.reshape(kc, NR).astype(np.float64)
        timing.checked(name, Y.reshape(MR, NR), want, 1e-5)
        asm = uk.inspect_asm(uk.signatures[0])
        body = max(re.split(r"\n(?=\.?[A-Za-z_0-9.]+:)", asm), key=lambda b: len(re.findall(r"vfmadd", b)))
        n = int(2e9 / (2 * MR * NR * kc))
        best = 0.0
        for _ in range(args.reps):
            t0 = time.process_time()
            loop(n, Ap, Bp, Y)
            best = max(best, 2 * MR * NR * kc * n / (time.process_time() - t0) / 1e9)
        print(f"{name:20s} {best:6.1f} GF/s   stack accesses in the k loop: {len(re.findall('rsp', body))}")


def ints(names, check):
    """argparse type of a comma list of the integers `names` (e.g. "BT,C,OC") that pass check, which
    returns None or what is wrong with them: one argparse line, not a traceback."""
    def parse(text):
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != len(names.split(",")):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {names}, {len(names.split(','))} integers")
        problem = check(values)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
        return values
    return parse


BLOCKING = ints("MC,KC,NC,ROWS", lambda v: (min(v[:3]) < 1 and "MC, KC and NC must be positive")
                or (v[3] not in (0, 1) and "ROWS must be 0 or 1"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("versions", nargs="*", type=int, help="versions to time (1-6; default 3 6)")
    ap.add_argument("--op", nargs="+", default=["forward", "dinp", "dweight"], choices=["forward", "dinp", "dweight"])
    ap.add_argument("--shape", default=(2048, 128, 6288),
                    type=ints("BT,C,OC", lambda v: min(v) < 1 and "every size must be positive"),
                    help="BT,C,OC (default: a tiny LM-head slice)")
    timing.add_threads(ap, default=1)
    timing.add_flags(ap)
    ap.add_argument("--microkernel", action="store_true", help="time the micro-kernels alone instead")
    # checked as parsed; kept as text, run_blockings' argument (the tests call it with text)
    ap.add_argument("--blocking", nargs="+", metavar="MC,KC,NC,ROWS", type=lambda text: BLOCKING(text) and text,
                    help="time --kernel's GEMM at these blockings instead (ROWS 1: tiles along Y's rows)")
    ap.add_argument("--kernel", choices=["avx512", "avx512bf16"], help="the GEMM of --blocking (default avx512: v6)")
    args = ap.parse_args()
    for v in args.versions:
        if v not in DESCRIPTIONS:
            ap.error(f"version {v}: expected one of {sorted(DESCRIPTIONS)}")
    # the modes time other things than the versions: a flag of another mode would be ignored
    if args.versions and (args.blocking or args.microkernel):
        ap.error(f"versions {' '.join(map(str, args.versions))}: --blocking and --microkernel time no version")
    if args.kernel and not args.blocking:
        ap.error("--kernel: only --blocking runs it (a version number picks the GEMM otherwise)")
    if args.microkernel and args.blocking:
        ap.error("--microkernel and --blocking: one at a time")
    args.versions = args.versions or [3, 6]
    args.kernel = args.kernel or "avx512"
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numba
    numba.set_num_threads(args.threads)
    if args.microkernel:
        run_microkernels(args)
    elif args.blocking:
        run_blockings(args)
    else:
        run_versions(args)


if __name__ == "__main__":
    main()
