"""Training-step time of numbagpt against PyTorch eager, side by side in one process.

    python bench/bench_train.py                      # tiny (B=8, T=256) and d12 (B=4, T=64), 2 threads
    python bench/bench_train.py --models tiny --steps 5

A step is forward + backward + AdamW update on a fixed random batch. numbagpt's first step (the JIT
compile, or the cache load) is a warm-up and not timed. PyTorch (`pip install torch==2.13.0`) runs the
independent reference model of dev/pytorch_reference.py with the same weights, threads and batch; the
ratio numbagpt/PyTorch is the figure to compare across machines (timings here are noisy, ratios less so).
"""
import argparse
import os
import sys
import time

SHAPES = {"tiny": (8, 256), "d12": (4, 64)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model and framework")
    return p.parse_args()


def time_steps(step, n):
    """Median seconds of n calls of step()."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    args = parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from numbagpt.model import GPT2

    numba.set_num_threads(args.threads)
    try:
        import torch
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dev"))
        import pytorch_reference as ref
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch not installed (pip install torch==2.13.0): numbagpt timings only")

    print(f"threads {args.threads}, {args.steps} timed steps (median)")
    print(f"{'model':<6} {'B':>3} {'T':>4} {'numbagpt ms':>12} {'tok/s':>8} {'PyTorch ms':>11} {'ratio':>7}")
    for name in args.models:
        B, T = SHAPES[name]
        model = GPT2.from_preset(name, seed=0)
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, model.config.vocab_size, (B, T + 1)).astype(np.int32)
        x, y = tokens[:, :-1], tokens[:, 1:]
        t = [0]

        def ours():
            t[0] += 1
            model.forward(x, y)
            model.zero_grad()
            model.backward()
            model.update(lr=1e-4, t=t[0])

        ours()  # JIT compile (or load from Numba's cache)
        ms = 1000 * time_steps(ours, args.steps)
        theirs = ratio = ""
        if torch is not None:
            cfg = ref.Config(**{k: getattr(model.config, k) for k in
                                ("max_seq_len", "vocab_size", "num_layers", "num_heads", "channels",
                                 "padded_vocab_size")})
            tensors = {n: torch.from_numpy(v.copy()) for n, v in
                       model.param_layout.host_views(model.parameters_host()).items()}
            tmodel = ref.GPT(cfg, tensors)
            opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4)
            xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))

            def pytorch():
                opt.zero_grad(set_to_none=True)
                _, loss = tmodel(xt, yt)
                loss.backward()
                opt.step()

            pytorch()
            tms = 1000 * time_steps(pytorch, args.steps)
            theirs, ratio = f"{tms:11.0f}", f"{ms / tms:7.2f}"
        print(f"{name:<6} {B:>3} {T:>4} {ms:12.0f} {B * T / ms * 1000:8.0f} {theirs:>11} {ratio:>7}", flush=True)

    print("ratio = numbagpt step time / PyTorch step time (lower is better, 1.0 = parity)")


if __name__ == "__main__":
    main()
