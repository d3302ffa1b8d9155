"""Training-step time of numbagpt against idiomatic PyTorch (eager and torch.compile), in one process.

    python bench/bench_train.py                      # tiny (B=8, T=256) and d12 (B=4, T=64), 2 threads
    python bench/bench_train.py --models tiny --steps 7 --kernels avx512,portable --no-compile

A step is forward + backward + AdamW update on a fixed random batch, the same for every contender:
  - numbagpt: numbagpt.step.train_step (the step every command takes, clipping at 1.0), once per
    matmul kernel in --kernels (default: the one this CPU runs, and the portable loops);
  - PyTorch eager, written the way a PyTorch user writes GPT-2: nn.Embedding, nn.LayerNorm, nn.Linear,
    F.scaled_dot_product_attention(is_causal=True), nn.GELU('tanh'), the head tied to wte,
    F.cross_entropy, torch.optim.AdamW(fused=True), clip_grad_norm_(1.0);
  - the same module under torch.compile (skipped with --no-compile, or when compiling fails).
PyTorch gets numbagpt's initial weights copied in (a random N(0,1) init would fill the softmax with
denormals and slow PyTorch tenfold), and the same threads. The contenders' steps are interleaved
(numbagpt, eager, compiled, numbagpt, ...) after a warm-up step each (JIT / cache load, torch.compile
tracing); each time is the median of --steps, and the ratios (numbagpt / PyTorch, lower is better,
1.0 = parity) come from the same rounds, so load from other processes hits all alike.
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
    p.add_argument("--steps", type=int, default=5, help="timed steps per contender (median)")
    p.add_argument("--kernels", default=None,
                   help="comma list of numbagpt matmul kernels (avx512, avx2, portable); default: this "
                        "CPU's, then portable")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    return p.parse_args()


def torch_gpt(torch, cfg, params):
    """Idiomatic GPT-2 (nanoGPT's shape) with numbagpt's weights copied in."""
    nn, F = torch.nn, torch.nn.functional
    C, NH, L = cfg.channels, cfg.num_heads, cfg.num_layers

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
            self.gelu = nn.GELU(approximate="tanh")

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (z.view(B, T, NH, C // NH).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.fcproj(self.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.padded_vocab_size, C)
            self.wpe = nn.Embedding(cfg.max_seq_len, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.lnf = nn.LayerNorm(C)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T))
            for block in self.h:
                x = block(x)
            logits = self.lnf(x) @ self.wte.weight.t()
            V = cfg.vocab_size
            return F.cross_entropy(logits[:, :, :V].reshape(-1, V), targets.reshape(-1))

    m = GPT()
    t = {k: torch.from_numpy(v.copy()) for k, v in params.items()}
    with torch.no_grad():
        m.wte.weight.copy_(t["wte"])
        m.wpe.weight.copy_(t["wpe"])
        m.lnf.weight.copy_(t["lnfw"])
        m.lnf.bias.copy_(t["lnfb"])
        for l, b in enumerate(m.h):
            for mod, w, bias in ((b.ln1, "ln1w", "ln1b"), (b.ln2, "ln2w", "ln2b"), (b.qkv, "qkvw", "qkvb"),
                                 (b.proj, "attprojw", "attprojb"), (b.fc, "fcw", "fcb"),
                                 (b.fcproj, "fcprojw", "fcprojb")):
                mod.weight.copy_(t[w][l])
                mod.bias.copy_(t[bias][l])
    return m


def main():
    args = parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from numbagpt.cpu import matmul as mm
    from numbagpt.model import GPT2
    from numbagpt.step import train_step

    numba.set_num_threads(args.threads)
    kernels = args.kernels.split(",") if args.kernels else list(dict.fromkeys([mm.supported_kernels()[0], "portable"]))
    for k in kernels:
        if k not in mm.supported_kernels():
            sys.exit(f"bench_train.py: --kernels: {k!r} is not one this CPU runs ({', '.join(mm.supported_kernels())})")
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch not installed (pip install torch): numbagpt timings only")

    print(f"threads {args.threads}, median of {args.steps} interleaved steps per contender; "
          f"torch {torch.__version__ if torch else '-'}")
    cols = ["numbagpt " + k for k in kernels] + (["eager"] + ([] if args.no_compile else ["compile"]) if torch else [])
    hdr = f"{'model':<6} {'B':>3} {'T':>4} " + " ".join(f"{c + ' ms':>17}" for c in cols)
    ratio_cols = [f"{k}/{p}" for k in kernels for p in cols[len(kernels):]]
    hdr += " " + " ".join(f"{r:>17}" for r in ratio_cols)
    print(hdr)
    for name in args.models:
        B, T = SHAPES[name]
        model = GPT2.from_preset(name, seed=0)
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, model.config.vocab_size, (B, T + 1)).astype(np.int32)
        x, y = tokens[:, :-1], tokens[:, 1:]
        params = model.param_layout.host_views(model.parameters_host())
        t = [0]

        def ours(k):
            def step():
                mm.set_kernel(k)
                t[0] += 1
                train_step(model, [(x, y)], lr=1e-4, t=t[0], weight_decay=0.0)
            return step

        steps = [ours(k) for k in kernels]
        if torch is not None:
            xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))

            def torch_step(m):
                opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.0, fused=True)

                def step():
                    opt.zero_grad(set_to_none=True)
                    m(xt, yt).backward()
                    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                    opt.step()
                return step

            steps.append(torch_step(torch_gpt(torch, model.config, params)))
            if not args.no_compile:
                try:
                    compiled = torch.compile(torch_gpt(torch, model.config, params))
                    s = torch_step(compiled)
                    s()
                    steps.append(s)
                except Exception as e:  # no C compiler, unsupported platform, ...
                    print(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:100]}): skipped")
                    cols = [c for c in cols if c != "compile"]
        for s in steps:
            s()  # warm-up: JIT compile or cache load; torch.compile tracing
        times = [[] for _ in steps]
        for _ in range(args.steps):
            for n, s in enumerate(steps):
                t0 = time.perf_counter()
                s()
                times[n].append(time.perf_counter() - t0)
        med = [1000 * float(np.median(ts)) for ts in times]
        row = f"{name:<6} {B:>3} {T:>4} " + " ".join(f"{m:17.0f}" for m in med)
        nk = len(kernels)
        row += " " + " ".join(f"{med[i] / med[j]:17.2f}" for i in range(nk) for j in range(nk, len(med)))
        print(row, flush=True)
    print("ratio = numbagpt step time / PyTorch step time (lower is better, 1.0 = parity)")


if __name__ == "__main__":
    main()
