"""Generation speed: tokens/s with the key/value cache against the full recompute per token (llm.c's way),
at several context lengths, side by side in one process.

    python bench/bench_generate.py                          # d12, contexts 64, 256, 1024, 2 threads
    python bench/bench_generate.py --model tiny --contexts 64 256
    python bench/bench_generate.py --device cuda            # on a GPU

At context length T a token costs, with the cache, one decoding step at position T−1 (the cache holds the
T−1 before it: one row through every matmul, one query row of attention against the cache); without it,
the training forward over all T positions (model.forward with B=1). The cache is filled (prefill) before
the timed steps. Weights are the preset's random init; the two contenders alternate, and the figure is
the median of --reps rounds. A first round per contender (the JIT compile or the cache load) is not timed.
"""
import argparse
import os
import sys
import time

import timing


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="d12", help="preset (tiny, d12, ...) or a model .bin file (default: d12)")
    p.add_argument("--contexts", type=timing.positive_int, nargs="+", default=[64, 256, 1024],
                   help="context lengths T, each at least 2 (default 64 256 1024)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    timing.add_threads(p)
    p.add_argument("--steps", type=timing.positive_int, default=4,
                   help="decoding steps per timed round with the cache (default: 4)")
    p.add_argument("--reps", type=timing.positive_int, default=3,
                   help="timed rounds per contender and context (default: 3)")
    args = p.parse_args()
    if min(args.contexts) < 2:   # a timed step decodes after at least one cached token
        p.error(f"argument --contexts: a context length is at least 2, got {min(args.contexts)}")
    return args


def main():
    args = parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from numbagpt.cli import error_text
    from numbagpt.config import PRESETS
    from numbagpt.generate import Decoder
    from numbagpt.model import GPT2

    numba.set_num_threads(args.threads)
    try:
        model = (GPT2.from_preset(args.model, backend=args.device) if args.model in PRESETS
                 else GPT2.from_file(args.model, backend=args.device))
    except (ValueError, OSError, RuntimeError) as e:   # the commands' errors (numbagpt/cli: run_command)
        sys.exit(f"bench_generate.py: error: --model {args.model} --device {args.device}: {error_text(e)}")
    cfg, k = model.config, model.backend
    rng = np.random.default_rng(0)
    print(f"{args.model}: {cfg.describe()} | device {args.device} | threads {numba.get_num_threads()}")
    dec = Decoder(model, 1)

    def cached(T):
        """seconds per token of `steps` decoding steps ending at position T−1"""
        steps = min(args.steps, T - 1)
        tokens = rng.integers(0, cfg.vocab_size, (1, T)).astype(np.int32)
        dec.reset()
        dec.forward(tokens[:, :T - steps], None)
        k.synchronize()
        t0 = time.perf_counter()
        for t in range(T - steps, T):
            dec.forward(tokens[:, t:t + 1], "last")  # the logits come to the host, as when sampling
        return (time.perf_counter() - t0) / steps

    def recompute(T):
        tokens = rng.integers(0, cfg.vocab_size, (1, T)).astype(np.int32)
        t0 = time.perf_counter()
        model.forward(tokens)
        model.logits_host()[0, -1]  # the last position's logits to the host
        return time.perf_counter() - t0

    rows = []
    for T in args.contexts:
        if T > cfg.max_seq_len:
            print(f"skipping T={T}: above maxT {cfg.max_seq_len}")
            continue
        cached(T), recompute(T)  # warm-up: compile / cache load, buffers
        times = {"cache": [], "full": []}
        for _ in range(args.reps):
            times["cache"].append(cached(T))
            times["full"].append(recompute(T))
        c, f = (sorted(v)[len(v) // 2] for v in (times["cache"], times["full"]))
        rows.append((T, 1 / c, 1 / f))
        print(f"T={T:5d}  KV cache {1 / c:8.2f} tok/s   full recompute {1 / f:8.3f} tok/s   speed-up {f / c:6.1f}x",
              flush=True)
    print("\n| context T | KV cache tok/s | full recompute tok/s | speed-up |\n|---:|---:|---:|---:|")
    for T, c, f in rows:
        print(f"| {T} | {c:.2f} | {f:.3f} | {c / f:.1f}x |")


if __name__ == "__main__":
    main()
