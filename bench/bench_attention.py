"""Attention forward + backward at GPT-2 d12's heads (C=768, NH=12, hs=64), causal, B=1, T = 64, 256, 1024:
numbagpt's flash attention against the (T, T) kernels it replaced (dev/attention.py variant 2) and
PyTorch's F.scaled_dot_product_attention(is_causal=True) forward + backward, on the same shapes and
threads, in float32 (sdpa) and on bfloat16 tensors (sdpa_bf16: what SDPA runs under
torch.autocast("cpu", dtype=torch.bfloat16)). Each contender runs in a process of its own (this script
with --worker), torch imported before Numba (as bench/bench_train.py: the two thread pools must not share a process).

    python bench/bench_attention.py [--threads 2] [--T 64,256,1024] [--B 1] [--rounds 3] [--reps 5] [--clock cpu]

A worker times forward and backward separately (best of --reps, after a warm-up call) and prints
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


def worker(args):
    """Times one contender at every T; prints {T: [fwd_s, bwd_s]} as JSON."""
    Ts = args.T
    B = args.B
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    res = {}
    if args.worker in ("sdpa", "sdpa_bf16"):
        import torch   # before Numba (see the module docstring)
        torch.set_num_threads(args.threads)
        F = torch.nn.functional
        hs = C // NH
        dtype = torch.bfloat16 if args.worker == "sdpa_bf16" else torch.float32
        for T in Ts:
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(B, NH, T, hs, generator=g).to(dtype).requires_grad_() for _ in range(3))
            do = torch.randn(B, NH, T, hs, generator=g).to(dtype)
            o = [None]

            def fwd():
                o[0] = F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def bwd():
                o[0].backward(do)

            tf = best_of(args.reps, lambda: None, fwd)
            tb = best_of(args.reps, lambda: (fwd(), [x.grad.zero_() for x in (q, k, v) if x.grad is not None]), bwd)
            res[T] = [tf, tb]
        print(json.dumps(res))
        return
    import numba
    import numpy as np
    sys.path[:0] = [ROOT, os.path.join(ROOT, "dev")]
    numba.set_num_threads(args.threads)
    for T in Ts:
        rng = np.random.default_rng(0)
        qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
        dout = rng.standard_normal(B * T * C).astype(np.float32)
        out = np.zeros(B * T * C, np.float32)
        dinp = np.zeros(B * T * 3 * C, np.float32)
        if args.worker == "flash":
            from numbagpt.cpu import attention_backward, attention_forward
            lse = np.zeros(B * NH * T, np.float32)
            tf = best_of(args.reps, lambda: None, lambda: attention_forward(out, lse, qkv, B, T, C, NH))
            tb = best_of(args.reps, lambda: dinp.fill(0),
                         lambda: attention_backward(dinp, dout, qkv, out, lse, B, T, C, NH))
        else:
            from attention import bwd_head, fwd_head
            N = B * NH * T * T
            preatt, att, dpre, datt = (np.zeros(N, np.float32) for _ in range(4))
            tf = best_of(args.reps, lambda: None, lambda: fwd_head(out, preatt, att, qkv, B, T, C, NH))
            tb = best_of(args.reps, lambda: dinp.fill(0),
                         lambda: bwd_head(dinp, dpre, datt, dout, qkv, att, B, T, C, NH))
        res[T] = [tf, tb]
    print(json.dumps(res))


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
