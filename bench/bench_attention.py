"""Attention forward + backward at GPT-2 d12's heads (C=768, NH=12, hs=64), causal, B=1, T = 64, 256, 1024:
numbagpt's flash attention against the (T, T) kernels it replaced (dev/attention.py variant 2) and
PyTorch's F.scaled_dot_product_attention(is_causal=True) forward + backward, on the same shapes and
threads, in float32 (sdpa) and on bfloat16 tensors (sdpa_bf16: what SDPA runs under
torch.autocast("cpu", dtype=torch.bfloat16)). Each contender runs in a process of its own (this script
with --worker), torch imported before Numba (as bench/bench_train.py: the two thread pools must not share a process).

    python bench/bench_attention.py [--threads 2] [--T 64,256,1024] [--B 1] [--rounds 3] [--reps 5] [--clock cpu]

A worker first checks its contender's output and input gradient against float64 NumPy (on the
bf16-rounded inputs for sdpa_bf16), at every T, and stops in one line where one is off; then it times
forward and backward separately (best of --reps, after a warm-up call) and prints
JSON; a round starts one worker per contender in turn (flash, old, sdpa, flash, ...), and the table
gives each contender's best over rounds. GFLOP/s use one count for all: the attention's math over the
P = T(T+1)/2 causal pairs per head, 4·hs·P forward and 8·hs·P backward (flash attention executes
10·hs·P in its backward: it recomputes the scores and dP; numbagpt/costs.py counts that).
Wall time by default; --clock cpu times process CPU time (all threads), steadier on a machine loaded
by other processes but unkind to threads that spin while they wait (PyTorch's OpenMP threads, and
Numba's at more than one thread: the CPU time counts the spinning). Compare ratios of one run.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENDERS = ("flash", "old", "sdpa", "sdpa_bf16")
C, NH = 768, 12


def lengths(text):
    """argparse type of --T: a comma list of sequence lengths, each >= 1."""
    return [timing.positive_int(t) for t in text.split(",")]


def contenders(text):
    """argparse type of --contenders: checked here, not in a worker's usage message after the fact."""
    names = text.split(",")
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown))}: expected a comma list of "
                                         f"{', '.join(CONTENDERS)}")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.add_threads(p)
    p.add_argument("--T", type=lengths, default="64,256,1024", help="comma list of sequence lengths")
    p.add_argument("--B", type=timing.positive_int, default=1)
    p.add_argument("--rounds", type=timing.positive_int, default=3)
    p.add_argument("--reps", type=timing.positive_int, default=5)
    p.add_argument("--contenders", type=contenders, default=",".join(CONTENDERS))
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: CPU time of the process ("
                        "exact with one thread; with more it also counts threads spinning after a parallel loop)")
    p.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


CLOCK = [time.perf_counter]
# timing.checked's tolerance of each contender against float64: float32 (2e-6 seen), bf16 tensors (7e-3)
TOL = {"flash": 2e-5, "old": 2e-5, "sdpa": 2e-5, "sdpa_bf16": 2e-2}


def reference(q, k, v, do):
    """Causal attention in float64 over q, k, v, do (B, NH, T, hs): out = softmax(q·kᵀ/√hs, causal)·v
    and the gradients dq, dk, dv of Σ out·do."""
    import numpy as np
    q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
    T, hs = q.shape[-2:]
    s = q @ k.swapaxes(-1, -2) / np.sqrt(hs)
    s[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = do @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(hs)
    return p @ v, ds @ k, ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ do


def check(name, T, got, want):
    """got, want: (out, dq, dk, dv); timing.checked on each, before anything is timed."""
    for what, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        timing.checked(f"bench_attention.py: {name} at T={T}: {what}", g, w, TOL[name])


def best_of(reps, setup, call):
    setup()
    call()
    best = float("inf")
    for _ in range(reps):
        setup()
        t = CLOCK[0]()
        call()
        best = min(best, CLOCK[0]() - t)
    return best


def numbagpt_calls(name, out, dinp, qkv, dout, B, T):
    """The forward and backward calls of numbagpt's flash attention or of the (T, T) kernels it
    replaced (dev/attention.py), over the layout of numbagpt/cpu/attention.py."""
    import numpy as np
    if name == "flash":
        from numbagpt.cpu import attention_backward, attention_forward
        lse = np.zeros(B * NH * T, np.float32)
        return (lambda: attention_forward(out, lse, qkv, B, T, C, NH),
                lambda: attention_backward(dinp, dout, qkv, out, lse, B, T, C, NH))
    from attention import bwd_head, fwd_head
    preatt, att, dpre, datt = (np.zeros(B * NH * T * T, np.float32) for _ in range(4))
    return (lambda: fwd_head(out, preatt, att, qkv, B, T, C, NH),
            lambda: bwd_head(dinp, dpre, datt, dout, qkv, att, B, T, C, NH))


def sdpa_times(args, T):
    """PyTorch's SDPA at T, in float32 or on bfloat16 tensors: checked, then [fwd_s, bwd_s]."""
    import torch
    F = torch.nn.functional
    dtype = torch.bfloat16 if args.worker == "sdpa_bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.B, NH, T, C // NH, generator=g).to(dtype).requires_grad_() for _ in range(3))
    do = torch.randn(args.B, NH, T, C // NH, generator=g).to(dtype)
    o = [None]

    def fwd():
        o[0] = F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def bwd():
        o[0].backward(do)

    fwd()
    bwd()
    check(args.worker, T, [x.detach().float().numpy() for x in (o[0], q.grad, k.grad, v.grad)],
          reference(*(x.detach().float().numpy() for x in (q, k, v, do))))
    return [best_of(args.reps, lambda: None, fwd),
            best_of(args.reps, lambda: (fwd(), [x.grad.zero_() for x in (q, k, v)]), bwd)]


def numbagpt_times(args, T):
    """numbagpt's flash attention or the old (T, T) kernels at T: checked, then [fwd_s, bwd_s]."""
    import numpy as np
    B = args.B
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
    dout = rng.standard_normal(B * T * C).astype(np.float32)
    out = np.full(B * T * C, np.nan, np.float32)   # a kernel that writes nothing fails the check
    dinp = np.zeros(B * T * 3 * C, np.float32)      # the backward adds to it
    fwd, bwd = numbagpt_calls(args.worker, out, dinp, qkv, dout, B, T)
    fwd()
    bwd()

    def heads(x, n):   # (B, T, n·C) -> (n, B, NH, T, hs)
        return x.reshape(B, T, n, NH, C // NH).transpose(2, 0, 3, 1, 4)
    check(args.worker, T, [heads(out, 1)[0], *heads(dinp, 3)], reference(*heads(qkv, 3), heads(dout, 1)[0]))
    return [best_of(args.reps, lambda: None, fwd), best_of(args.reps, lambda: dinp.fill(0), bwd)]


def worker(args):
    """Times one contender at every T; prints {T: [fwd_s, bwd_s]} as JSON."""
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.worker in ("sdpa", "sdpa_bf16"):
        import torch   # before Numba (see the module docstring)
        torch.set_num_threads(args.threads)
        times = sdpa_times
    else:
        import numba
        sys.path[:0] = [ROOT, os.path.join(ROOT, "dev")]
        numba.set_num_threads(args.threads)
        times = numbagpt_times
    print(json.dumps({T: times(args, T) for T in args.T}))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    Ts, names = args.T, args.contenders
    best = {n: {T: [float("inf")] * 2 for T in Ts} for n in names}
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    failed = set()
    for _ in range(args.rounds):
        for n in names:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", n, "--threads", str(args.threads),
                   "--T", ",".join(map(str, Ts)), "--B", str(args.B), "--reps", str(args.reps), "--clock", args.clock]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode:
                print(f"{n}: worker failed:\n{r.stderr[-2000:]}")
                failed.add(n)
                continue
            for T, (tf, tb) in json.loads(r.stdout.strip().splitlines()[-1]).items():
                b = best[n][int(T)]
                b[0], b[1] = min(b[0], tf), min(b[1], tb)
    names = [n for n in names if n not in failed]   # no row of inf for a worker that failed
    hs = C // NH
    print(f"attention, d12 heads (C={C}, NH={NH}, hs={hs}), B={args.B}, {args.threads} threads, {args.clock} time, "
          f"best of {args.rounds} rounds x {args.reps}")
    print(f"{'T':>5s} {'contender':10s} {'fwd ms':>8s} {'bwd ms':>8s} {'total ms':>9s} {'GFLOP/s':>8s} "
          f"{'old/x':>6s} {'sdpa/x':>7s}")
    for T in Ts:
        P = args.B * NH * T * (T + 1) // 2
        flops = 12 * hs * P
        tot = {n: sum(best[n][T]) for n in names}
        for n in names:
            tf, tb = best[n][T]
            old = f"{tot['old'] / tot[n]:6.2f}" if "old" in tot else "     -"
            sdpa = f"{tot['sdpa'] / tot[n]:7.2f}" if "sdpa" in tot else "      -"
            print(f"{T:5d} {n:10s} {tf * 1e3:8.2f} {tb * 1e3:8.2f} {tot[n] * 1e3:9.2f} "
                  f"{flops / tot[n] / 1e9:8.1f} {old} {sdpa}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
