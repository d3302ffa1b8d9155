"""Benchmark numbagpt.cpu.matmul's kernels against np.dot (OpenBLAS sgemm) in the same process.

For each GPT-2 shape: forward (out = inp·Wᵀ + b), dinp (dout·W) and dweight (doutᵀ·inp), each
2·BT·C·OC FLOP; prints GFLOP/s of each numbagpt kernel (--kernels, default: the one this CPU runs,
and the portable loops it replaced) and of BLAS, and each kernel's ratio to BLAS (time_BLAS /
time_ours: >= 1 is as fast as BLAS or faster). Before a kernel is timed on a shape, each of its
products is run once and checked against float64 (of the bf16-rounded operands for a bf16 kernel):
a wrong one stops the bench in one line (check_product). Timings are medians of --reps rounds, each round
a block of back-to-back calls lasting about --block-ms (at least one call) timed as one, the rounds taken
in turn (kernel 1, kernel 2, BLAS, kernel 1, ...) so that load from other processes hits all alike; with
more than one thread each contender's calls come after a pause, so that neither runs against the other's
thread pool spinning on the same cores (median_of). On a shared machine compare the ratio columns rather
than absolute numbers.

The bf16 GEMM (numbagpt/cpu/matmul_bf16.py, --precision bf16) is timed beside them (--bf16-kernels,
default: the one this CPU runs; "none" to skip): its GF/s, its ratio to BLAS's sgemm and, column
"xfp32", its speed-up over the first fp32 kernel (time_fp32 / time_bf16). Its LM-head backward reads
a dout in bf16 rows, as a bf16 step's does (the classifier writes the dlogits so). With --torch (when torch is
installed) `torch.mm` on float32 tensors (MKL, in PyTorch's x86 builds) and on bfloat16 tensors
(oneDNN; bf16 out) is timed afterwards in its own process, the same way, so that its thread pool never
shares the cores with Numba's or OpenBLAS's: a second table gives its GF/s, our first fp32 kernel's
ratio to it and to the faster of it and OpenBLAS (/best), and our bf16 GEMM's ratio to torch's bf16
(time_torch / time_ours, across processes: noisier ratios than the others).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_matmul.py [--threads 2]
        [--reps 5] [--block-ms 25] [--shapes tiny,d12,seed,BTxCxOC] [--kernels avx512,portable] [--quick] [--clock cpu]
        [--bf16-kernels avx512bf16,portable|none] [--torch]

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, where set, can pin OpenBLAS to a slower kernel: unset them for
this command alone (as above) to compare with BLAS at its best; the header names the kernel OpenBLAS
runs (via threadpoolctl, when installed). OPENBLAS_NUM_THREADS is set to --threads before NumPy loads.
"""
import argparse
import os
import re
import sys
import time

import timing


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    timing.add_threads(ap)
    timing.add_flags(ap)
    ap.add_argument("--shapes", default="tiny,d12",
                    help="comma list of: tiny, d12, seed (tiny at B·T = 16384), BTxCxOC (a layer with a bias), "
                         "lm_head:BTxCxOC (no bias; in bf16 its dout in bf16 rows, as the LM head's)")
    ap.add_argument("--kernels", default=None,
                    help="comma list of numbagpt matmul kernels (avx512, avx2, portable) to time; "
                         "default: the one this CPU runs, then portable")
    ap.add_argument("--bf16-kernels", default=None,
                    help="comma list of bf16 matmul kernels (avx512bf16, portable) to time, or none; "
                         "default: the one this CPU runs")
    ap.add_argument("--torch", action="store_true",
                    help="also time torch.mm on fp32 (MKL) and bf16 tensors (own process)")
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="LM-head shapes only")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    shapes = bench_shapes(args)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # before numpy is imported
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.torch_child:
        return torch_child(args)
    import numba
    numba.set_num_threads(args.threads)
    t0 = time.perf_counter()
    kernels, bf16, names = chosen_kernels(args)
    print(f"import numbagpt.cpu.matmul: {time.perf_counter() - t0:.2f} s; threads {args.threads}; "
          f"clock {args.clock}; kernels: {', '.join(names)}; BLAS: {blas_name()}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    t0 = time.perf_counter()
    warm_up(kernels, bf16)
    print(f"first calls (compile or cache load): {time.perf_counter() - t0:.2f} s")
    ours_times = run_table(args, shapes, kernels, bf16)
    if args.torch:
        torch_table(args, shapes, kernels[0], bf16, ours_times)


def chosen_kernels(args):
    """(fp32 kernels, bf16 kernels, their names as the header prints them) of --kernels and
    --bf16-kernels; one that this CPU does not run stops the bench in one line."""
    from numbagpt.cpu import matmul as mm
    from numbagpt.cpu import matmul_bf16 as mb
    kernels = args.kernels.split(",") if args.kernels else list(dict.fromkeys([mm.supported_kernels()[0], "portable"]))
    if args.bf16_kernels is None:
        bf16 = mb.supported_kernels()[:1]
    else:
        bf16 = [] if args.bf16_kernels == "none" else args.bf16_kernels.split(",")
    names = []
    for flag, module, chosen in (("--kernels", mm, kernels), ("--bf16-kernels", mb, bf16)):
        for k in chosen:
            if k not in module.supported_kernels():
                sys.exit(f"bench_matmul.py: {flag}: {k!r} is not one this CPU runs "
                         f"({', '.join(module.supported_kernels())})")
            module.set_kernel(k)
            names.append(("bf16 " if module is mb else "") + module.kernel())
    mm.set_kernel(kernels[0])
    return kernels, bf16, names


def blas_name():
    """The BLAS NumPy calls, as threadpoolctl reports it (when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl to see which)"
    return ", ".join(f"{i['internal_api']} {i['version']} {i.get('architecture', '')} {i['num_threads']} threads"
                     for i in threadpool_info() if i["user_api"] == "blas")


def warm_up(kernels, bf16):
    """Every kernel's three products once on a small problem (compiled, or loaded from Numba's cache)."""
    import numpy as np

    from numbagpt.cpu import matmul as mm
    from numbagpt.cpu import matmul_bf16 as mb
    x, w, o = np.ones(6 * 5, np.float32), np.ones(7 * 5, np.float32), np.zeros(6 * 7, np.float32)
    for module, chosen, forward, backward in ((mm, kernels, mm.matmul_forward, mm.matmul_backward),
                                              (mb, bf16, mb.matmul_forward_bf16, mb.matmul_backward_bf16)):
        for k in chosen:
            module.set_kernel(k)
            forward(o, x, w, np.ones(7, np.float32), 2, 3, 5, 7)
            forward(o, x, w, None, 2, 3, 5, 7)
            backward(np.zeros_like(x), np.zeros_like(w), np.zeros(7, np.float32), o, x, w, 2, 3, 5, 7)
    mm.set_kernel(kernels[0])


def products(name, BT, C, OC, rng):
    """(call, check): call(op, contender) -> a function that runs one product of one shape on one
    contender: op in forward, dinp, dweight; contender an fp32 kernel ("avx512"), a bf16 one ("bf16
    avx512bf16") or "blas" (np.dot). The function switches to the contender's kernel first.
    check(op, contender): that product run once and checked (check_product)."""
    import numpy as np

    from numbagpt.cpu import matmul as mm
    from numbagpt.cpu import matmul_bf16 as mb
    inp = rng.standard_normal(BT * C, dtype=np.float32)
    weight = rng.standard_normal(OC * C, dtype=np.float32) * 0.02
    bias = rng.standard_normal(OC, dtype=np.float32) if "lm_head" not in name else None
    out = np.empty(BT * OC, np.float32)
    dout = rng.standard_normal(BT * OC, dtype=np.float32)
    dinp, dweight = np.zeros(BT * C, np.float32), np.zeros(OC * C, np.float32)
    # the LM head's dout: in a bf16 step the classifier writes it in bf16 rows, which the bf16 GEMM
    # reads as they lie (matmul_backward_bf16's dout_bf16); the other douts are float32
    dout_bf16 = "lm_head" in name and OC % 2 == 0
    bf16_dout = bf16_rows(dout, OC) if dout_bf16 else dout
    X, W, D = inp.reshape(BT, C), weight.reshape(OC, C), dout.reshape(BT, OC)
    Y, DX, DW = out.reshape(BT, OC), dinp.reshape(BT, C), dweight.reshape(OC, C)
    # matmul_backward does dinp and dweight in one call: each is timed through its half,
    # _backward_dinp / _backward_dweight
    fp32 = {"forward": lambda: mm.matmul_forward(out, inp, weight, bias, 1, BT, C, OC),
            "dinp": lambda: mm._backward_dinp(dinp, dout, weight, BT, C, OC),
            "dweight": lambda: mm._backward_dweight(dweight, dout, inp, BT, C, OC, True)}
    bf16 = {"forward": lambda: mb.matmul_forward_bf16(out, inp, weight, bias, 1, BT, C, OC),
            "dinp": lambda: mb._backward_dinp(dinp, bf16_dout, weight, BT, C, OC, dout_bf16),
            "dweight": lambda: mb._backward_dweight(dweight, bf16_dout, inp, BT, C, OC, True, dout_bf16)}
    blas = {"forward": ((lambda: np.dot(X, W.T, out=Y)) if bias is None
                        else (lambda: np.add(np.dot(X, W.T, out=Y), bias, out=Y))),
            "dinp": lambda: np.dot(D, W, out=DX),
            "dweight": lambda: np.dot(D.T, X, out=DW)}

    def call(op, k):
        if k == "blas":
            return blas[op]
        module, calls, kernel = (mb, bf16, k[5:]) if k.startswith("bf16 ") else (mm, fp32, k)

        def run():
            module.set_kernel(kernel)
            calls[op]()
        return run

    def check(op, k):
        # dinp and dweight accumulate: from zero; the forward writes: from NaN, so that an element it
        # skips fails
        output, rows = {"forward": (Y, X), "dinp": (DX, D), "dweight": (DW, D.T)}[op]
        output.fill(np.nan if op == "forward" else 0.0)
        call(op, k)()
        other = {"forward": W.T, "dinp": W, "dweight": X}[op]
        check_product(f"{k} on {name} ({BT}x{C}x{OC}) {op}", output, rows, other, bias if op == "forward" else None,
                      mb.round_to_bf16 if k.startswith("bf16 ") else None)
    return call, check


def check_product(what, got, a, b, bias=None, rounding=None):
    """got (M, N) against a (M, K) · b (K, N) (+ bias) in float64, of the operands rounded by
    `rounding` where given (a bf16 kernel's), row block by row block (an LM head's float64 product is
    GBs), each block within tol of its largest magnitude (bench/timing.py's checked: one line naming
    `what` and the error, and the bench stops). tol grows as sqrt(K): the float32 sum's rounding errors
    add up as a random walk. A product of two bf16 values is exact in float32: a bf16 kernel is held to
    the same tolerance against its rounded operands."""
    import numpy as np
    rounding = rounding or (lambda x: x)
    tol = 1e-6 * max(16.0, np.sqrt(a.shape[1]))
    b64 = rounding(b).astype(np.float64)
    step = max(1, (1 << 22) // b.shape[1])
    for r in range(0, a.shape[0], step):
        want = rounding(a[r:r + step]).astype(np.float64) @ b64
        timing.checked(f"bench_matmul.py: {what}", got[r:r + step], want if bias is None else want + bias, tol)


def run_table(args, shapes, kernels, bf16):
    """Times every product of every shape on every contender and prints the table and its summary;
    returns {(contender, shape, op): seconds} for torch_table (contender "fp32" (the first fp32
    kernel), "blas" or a bf16 kernel)."""
    import numpy as np
    median_of = timing.timers(args)
    rng = np.random.default_rng(0)
    contenders = kernels + ["bf16 " + k for k in bf16]
    cols = "".join(f" {k + ' GF/s':>13s} {'ratio':>6s}" for k in contenders) + "".join(f" {'xfp32':>6s}" for _ in bf16)
    wid = name_width(shapes)
    hdr = f"{'shape':{wid}s} {'BT':>5s} {'C':>5s} {'OC':>6s} {'op':8s}{cols} {'BLAS GF/s':>10s}"
    print(hdr)
    print("-" * len(hdr))
    totals = [0.0] * (len(contenders) + 1)
    ratios, speedups, ours_times = {k: [] for k in contenders}, {k: [] for k in bf16}, {}
    for name, BT, C, OC in shapes:
        call, check = products(name, BT, C, OC, rng)
        flop = 2.0 * BT * C * OC
        for op in ("forward", "dinp", "dweight"):
            for k in contenders:
                check(op, k)
            t = median_of([call(op, k) for k in contenders] + [call(op, "blas")], args.reps)
            totals = [a + b for a, b in zip(totals, t)]
            ours_times[("fp32", name, op)], ours_times[("blas", name, op)] = t[0], t[-1]
            row = ""
            for n, k in enumerate(contenders):
                ratios[k].append(t[-1] / t[n])
                row += f" {flop / t[n] / 1e9:13.1f} {t[-1] / t[n]:6.2f}"
            for n, k in enumerate(bf16):
                speedups[k].append(t[0] / t[len(kernels) + n])
                row += f" {speedups[k][-1]:6.2f}"
                ours_times[(k, name, op)] = t[len(kernels) + n]
            print(f"{name:{wid}s} {BT:5d} {C:5d} {OC:6d} {op:8s}{row} {flop / t[-1] / 1e9:10.1f}", flush=True)
    for n, k in enumerate(contenders):
        print(f"{k}: total {totals[n] * 1e3:.1f} ms vs BLAS {totals[-1] * 1e3:.1f} ms "
              f"(ratio {totals[-1] / totals[n]:.2f}); "
              f"worst shape ratio {min(ratios[k]):.2f}, median {float(np.median(ratios[k])):.2f}")
    for n, k in enumerate(bf16):
        print(f"bf16 {k} over fp32 {kernels[0]}: total {totals[0] / totals[len(kernels) + n]:.2f}x; "
              f"worst shape {min(speedups[k]):.2f}x, median {float(np.median(speedups[k])):.2f}x")
    print("ratio = BLAS time / kernel time (>= 1: as fast as BLAS or faster); forward includes the bias add "
          "(BLAS: np.dot then np.add)" + ("; xfp32 = fp32 kernel time / bf16 kernel time" if bf16 else "")
          + "; every kernel's products checked against float64 first")
    return ours_times


def bf16_rows(x, W):
    """Float32 array x of rows of W (W even) as bf16 rows, as a bf16 step's classifier writes the LM
    head's dlogits (docs/kernels.md): row r's W values rounded to bf16 (matmul_bf16.bf16_bits), in
    order, in the first W/2 float32 slots of row r; the rest of the row zero."""
    import numpy as np

    from numbagpt.cpu import matmul_bf16 as mb
    out = np.zeros(x.size, np.float32)
    out.view(np.uint16).reshape(-1, 2 * W)[:, :W] = mb.bf16_bits(x.reshape(-1, W))
    return out


SHAPES = {
    "tiny": [("tiny lm_head", 2048, 128, 50304), ("tiny qkv", 2048, 128, 384), ("tiny attproj", 2048, 128, 128),
             ("tiny fc", 2048, 128, 512), ("tiny fcproj", 2048, 512, 128)],
    "d12": [("d12 qkv", 256, 768, 2304), ("d12 attproj", 256, 768, 768), ("d12 fc", 256, 768, 3072),
            ("d12 fcproj", 256, 3072, 768), ("d12 lm_head", 256, 768, 50304)],
    # README's seed run: tiny at B=64 T=256
    "seed": [("seed lm_head", 16384, 128, 50304), ("seed qkv", 16384, 128, 384), ("seed attproj", 16384, 128, 128),
             ("seed fc", 16384, 128, 512), ("seed fcproj", 16384, 512, 128)],
}


def bench_shapes(args):
    """[(name, BT, C, OC)] of --shapes (and --quick): named sets, or BTxCxOC (a layer with a bias),
    lm_head:BTxCxOC (no bias; in bf16 its dout in bf16 rows, as the LM head's)."""
    shapes = []
    for word in args.shapes.split(","):
        m = re.fullmatch(r"(lm_head:)?([1-9]\d*)x([1-9]\d*)x([1-9]\d*)", word)
        if m:
            BT, C, OC = (int(g) for g in m.groups()[1:])
            shapes.append(((m.group(1) or "").replace(":", " ") + f"{BT}x{C}x{OC}", BT, C, OC))
        elif word in SHAPES:
            shapes += SHAPES[word]
        else:
            sys.exit(f"bench_matmul.py: --shapes: {word!r} is neither {', '.join(SHAPES)} nor BTxCxOC (sizes >= 1)")
    if args.quick:
        shapes = [s for s in shapes if "lm_head" in s[0]]
        if not shapes:
            sys.exit(f"bench_matmul.py: --quick: no LM-head shape in --shapes {args.shapes} to time")
    return shapes


def name_width(shapes):
    """Width of the tables' shape column."""
    return max([14] + [len(s[0]) for s in shapes])


def torch_table(args, shapes, fp32, bf16, ours_times):
    """Run this script with --torch-child (torch.mm on float32 tensors, MKL in PyTorch's x86 builds, and
    on bf16 tensors, oneDNN; same shapes and timing) in its own process, and print its GF/s beside our
    fp32 GEMM's (and OpenBLAS's) and our bf16 GEMM's."""
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-child", "--threads", str(args.threads),
           "--reps", str(args.reps), "--block-ms", str(args.block_ms), "--shapes", args.shapes,
           "--clock", args.clock] + (["--quick"] if args.quick else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"torch.mm: not timed ({(r.stderr.strip().splitlines() or ['?'])[-1]})")
        return
    torch_times = {}
    for line in r.stdout.splitlines():
        if line.startswith("T "):   # T dtype name... op seconds
            parts = line.split()
            torch_times[(parts[1], " ".join(parts[2:-2]), parts[-2])] = float(parts[-1])
    print(next((line for line in r.stdout.splitlines() if line.startswith("torch")), "torch"))
    wid = name_width(shapes)
    hdr = (f"{'shape':{wid}s} {'op':8s} {'torch fp32':>10s} {fp32:>8s} {'ratio':>6s} {'/best':>6s}"
           f" {'torch bf16':>10s}" + "".join(f" {'bf16 ' + k:>16s} {'ratio':>6s}" for k in bf16))
    print(hdr + "   (GF/s)")
    print("-" * len(hdr))
    worst = []
    for name, BT, C, OC in shapes:
        flop = 2.0 * BT * C * OC
        for op in ("forward", "dinp", "dweight"):
            tf, tb = torch_times[("fp32", name, op)], torch_times[("bf16", name, op)]
            ours = ours_times[("fp32", name, op)]
            best = min(tf, ours_times[("blas", name, op)])   # the faster of MKL (torch) and OpenBLAS
            worst.append(best / ours)
            row = (f"{name:{wid}s} {op:8s} {flop / tf / 1e9:10.1f} {flop / ours / 1e9:8.1f} {tf / ours:6.2f}"
                   f" {best / ours:6.2f} {flop / tb / 1e9:10.1f}")
            for k in bf16:
                to = ours_times[(k, name, op)]
                row += f" {flop / to / 1e9:16.1f} {tb / to:6.2f}"
            print(row)
    print(f"{fp32} against the faster of torch fp32 (MKL) and OpenBLAS: worst {min(worst):.2f}, median "
          f"{sorted(worst)[len(worst) // 2]:.2f}")
    print("ratio = torch time / ours (>= 1: ours as fast or faster); /best = the faster of torch fp32 and "
          "OpenBLAS / ours; torch timed in its own process")


def torch_child(args):
    """--torch-child: time torch.mm on float32 tensors (MKL) and on bf16 tensors (oneDNN) for every shape
    and product; print 'T dtype name op seconds'."""
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    median_of = timing.timers(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 mm (MKL: "
          f"{torch.backends.mkl.is_available()}), bf16 mm (oneDNN: {torch.backends.mkldnn.is_available()})",
          flush=True)
    rng = np.random.default_rng(0)
    for name, BT, C, OC in bench_shapes(args):
        arrays = dict(X=rng.standard_normal((BT, C), dtype=np.float32),
                      W=rng.standard_normal((OC, C), dtype=np.float32) * 0.02,
                      D=rng.standard_normal((BT, OC), dtype=np.float32),
                      bias=rng.standard_normal(OC, dtype=np.float32) if "lm_head" not in name else None)
        for dtype in ("fp32", "bf16"):
            tdt = torch.float32 if dtype == "fp32" else torch.bfloat16
            X, W, D, bias = (None if a is None else torch.from_numpy(a).to(tdt) for a in arrays.values())
            Y = torch.empty((BT, OC), dtype=tdt)
            DX = torch.empty((BT, C), dtype=tdt)
            DW = torch.empty((OC, C), dtype=tdt)
            fns = {
                "forward": ((lambda: torch.mm(X, W.t(), out=Y)) if bias is None
                            else (lambda: torch.addmm(bias, X, W.t(), out=Y))),
                "dinp": lambda: torch.mm(D, W, out=DX),
                "dweight": lambda: torch.mm(D.t(), X, out=DW),
            }
            for op in ("forward", "dinp", "dweight"):
                (sec,) = median_of([fns[op]], args.reps)
                print(f"T {dtype} {name} {op} {sec:.9g}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
