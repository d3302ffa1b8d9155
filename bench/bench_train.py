"""Training-step time of numbagpt against idiomatic PyTorch (eager and torch.compile), each contender in
its own process.

    python bench/bench_train.py                      # tiny (B=8, T=256) and d12 (B=4, T=64), 2 threads
    python bench/bench_train.py --models d12_1k --rounds 1 --steps 1 --no-compile   # d12 at B=1, T=1024
    python bench/bench_train.py --models tiny --rounds 2 --steps 3 --kernels avx512,portable --no-compile
    python bench/bench_train.py --precision fp32,bf16 --autocast --no-compile    # mixed precision, both sides
    python bench/bench_train.py --before ../old_checkout --kernels avx512 --no-compile   # before / after
    python bench/bench_train.py --models seed --precision bf16 --autocast --no-compile   # the seed run's step
    /usr/bin/time -v python bench/bench_train.py --worker numbagpt --model d12_b4_1k --steps 1   # peak RSS

A step is forward + backward + AdamW update on a fixed random batch, the same for every contender:
  - numbagpt: numbagpt.train.step.train_step (the step every command takes, clipping at 1.0), once per
    matmul kernel in --kernels (NUMBAGPT_MATMUL in the worker; default: the one this CPU runs, then the
    portable loops as the "before" reference);
  - PyTorch eager, written the way a PyTorch user writes GPT-2: nn.Embedding, nn.LayerNorm, nn.Linear,
    F.scaled_dot_product_attention(is_causal=True), nn.GELU('tanh'), the head tied to wte,
    F.cross_entropy, torch.optim.AdamW(fused=True), clip_grad_norm_(1.0);
  - the same module under torch.compile (skipped with --no-compile; when compiling fails, e.g. no C
    compiler for inductor, the bench says why in one line and goes on without it);
  - with --autocast, eager under `torch.autocast("cpu", dtype=torch.bfloat16)` (the one line that gives
    a PyTorch user bf16 matmuls) and, unless --no-compile, the compiled module under it
    (compile_autocast), and with --precision bf16, numbagpt's bf16 mode (--precision);
  - with --before DIR, numbagpt as another checkout (DIR) has it: the same worker, that code.
Each contender runs in a process of its own (this script with --worker), because in one process
Numba's and PyTorch's thread pools fight over the cores and PyTorch runs 2-3.5x slower. A round starts
one worker per contender in turn (numbagpt, eager, compiled, numbagpt, ...: load from other processes
hits all alike); a worker builds the model from seed 0 (PyTorch gets numbagpt's initial weights copied
in: a random N(0,1) init would fill the softmax with denormals and slow PyTorch tenfold), takes the
same batch, sets --threads (NUMBA_NUM_THREADS, numba.set_num_threads, OMP_NUM_THREADS,
torch.set_num_threads), runs a warm-up step untimed (JIT / cache load, torch.compile tracing), then
times --steps steps (glibc told to keep freed memory: run_worker), printing their wall and CPU times
(process_time: all its threads) and every step's loss as JSON. The losses, step by step, must match
the reference's (PyTorch eager where it ran) within check_losses' bounds: a contender that computes
wrong is said so and left out of the table, and the bench exits 1, as it does when a worker fails. The
table gives each contender's medians over rounds x steps and the ratios numbagpt / PyTorch of the
medians (lower is better, 1.0 = parity). On a machine loaded by other processes wall time counts
their turns too, CPU time mostly not: compare the cpu columns there.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# model -> (B, T); "seed" is the README's seed run (llm.c's first from-scratch run: tiny at B=64, T=256)
SHAPES = {"tiny": (8, 256), "d12": (4, 64), "d12_1k": (1, 1024), "d12_b4_1k": (4, 1024), "seed": (64, 256)}
PRESETS = {"d12_1k": "d12", "d12_b4_1k": "d12", "seed": "tiny"}   # a shape's model preset, where its name is not one
DEFAULT_MODELS = ["tiny", "d12"]   # d12_1k (GPT-2's sequence length, attention ~1/3 of the step) on request
TORCH_MODES = ("eager", "compile", "autocast", "compile_autocast")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(SHAPES))
    timing.add_threads(p)
    p.add_argument("--rounds", type=timing.positive_int, default=3, help="worker processes per contender (alternating)")
    p.add_argument("--steps", type=timing.positive_int, default=3, help="timed steps per worker")
    p.add_argument("--kernels", default=None,
                   help="comma list of numbagpt matmul kernels (avx512, avx2, portable); default: this "
                        "CPU's, then portable")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--autocast", action="store_true",
                   help="also PyTorch under bf16 autocast: eager, and compiled unless --no-compile")
    p.add_argument("--precision", default="fp32", type=precision_list,
                   help="comma list of numbagpt precisions (fp32, bf16)")
    p.add_argument("--before", default=None, metavar="DIR",
                   help="also numbagpt from the checkout in DIR (this CPU's kernel, at each --precision)")
    p.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)   # the worker's numbagpt checkout
    p.add_argument("--worker", choices=("numbagpt",) + TORCH_MODES, help=argparse.SUPPRESS)
    p.add_argument("--model", choices=list(SHAPES), help=argparse.SUPPRESS)  # the worker's model
    args = p.parse_args(argv)
    # a worker given a directory that holds no numbagpt imports the one beside this script: it would
    # time this checkout as "before"
    if args.before is not None:
        if not os.path.isfile(os.path.join(args.before, "numbagpt", "model.py")):
            p.error(f"argument --before: {args.before}: not a numbagpt checkout (no numbagpt/model.py in it)")
        args.before = os.path.abspath(args.before)
    return args


def precision_list(text):
    """argparse type of --precision: refused as it is parsed, not by the first worker minutes later."""
    unknown = [w for w in text.split(",") if w not in ("fp32", "bf16")]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown))}: expected a comma list of fp32, bf16")
    return text


def numbagpt_step(model, x, y, train_step):
    """A function making one training step of numbagpt's model on the batch (x, y)."""
    t = [0]

    def step():
        t[0] += 1
        result = train_step(model, [(x, y)], lr=1e-4, t=t[0], weight_decay=0.0)
        return getattr(result, "loss", result)   # a float from a checkout before StepResult (--before)
    return step


def torch_step(args, model, x, y):
    """A function making one training step on (x, y) of the PyTorch GPT-2 holding `model`'s weights, in
    --worker's mode (eager, compile, under autocast): forward, backward, clip, fused AdamW."""
    import numpy as np
    import torch
    m = torch_gpt(torch, model.config, model.param_layout.host_views(model.parameters_host()))
    if args.worker.startswith("compile"):
        m = torch.compile(m)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        if args.worker.endswith("autocast"):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = m(xt, yt)
        else:
            loss = m(xt, yt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        return loss.detach()   # read after the timing (.item() would wait here under compile)
    return step


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


def worker(args):
    """One contender on one model: a warm-up step, then --steps timed ones; prints {"ms": [...]}."""
    if args.worker != "numbagpt":
        # torch before numba: Numba's OpenMP pool loads the system's libgomp.so.1, and a torch
        # imported after it links to that one instead of its own; eager then ran 3.6x slower (d12,
        # 6.3 s a step against 1.7 s) and the ratios flattered numbagpt.
        import torch
        torch.set_num_threads(args.threads)
    import numba
    import numpy as np

    sys.path.insert(0, args.root)
    from numbagpt.model import GPT2
    try:
        from numbagpt.train.step import train_step
    except ImportError:   # a checkout from before numbagpt/train/ (--before)
        from numbagpt.step import train_step

    if args.worker == "numbagpt":
        numba.set_num_threads(args.threads)
    B, T = SHAPES[args.model]
    extra = {} if args.precision == "fp32" else {"precision": args.precision}
    model = GPT2.from_preset(PRESETS.get(args.model, args.model), seed=0, **extra)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (B, T + 1)).astype(np.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    if args.worker == "numbagpt":
        step = numbagpt_step(model, x, y, train_step)
    else:
        step = torch_step(args, model, x, y)
        del model   # numbagpt's buffers: PyTorch's step runs without them in memory
    try:
        losses = [step()]  # warm-up: JIT compilation or cache load; torch.compile tracing
    except Exception as e:  # torch.compile without a working C compiler, unsupported platform, ...
        print(json.dumps({"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:150]}"}))
        return
    wall, cpu = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
    print(json.dumps({"wall": wall, "cpu": cpu, "loss": [float(v) for v in losses]}))


def run_worker(args, model, who, kernel, precision="fp32", root=ROOT):
    """{"wall": [ms...], "cpu": [ms...]} of one worker process, or the one-line reason it gave none."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    # glibc gives large freed blocks back to the OS, so PyTorch's activations of every step (tiny's
    # 412 MB of logits among them) come back as fresh pages: 2.5 million page faults in a 3-step
    # tiny worker, eager 2.7 s a step. Keeping freed memory in the process (as jemalloc or tcmalloc
    # would) brings it to about 1.9 s; every worker gets the same setting, numbagpt's too.
    env.update(MALLOC_MMAP_THRESHOLD_=str(1 << 34), MALLOC_TRIM_THRESHOLD_=str(1 << 34))
    if kernel:
        env["NUMBAGPT_MATMUL"] = kernel
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", who, "--model", model,
           "--threads", str(args.threads), "--steps", str(args.steps), "--precision", precision, "--root", root]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"worker exited {proc.returncode}: {err[:150]}"
    return out.get("error", out)


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, ROOT)
    from numbagpt.cpu import matmul as mm
    supported = mm.supported_kernels()
    kernels = args.kernels.split(",") if args.kernels else list(dict.fromkeys([supported[0], "portable"]))
    for k in kernels:
        if k not in supported:
            sys.exit(f"bench_train.py: --kernels: {k!r} is not one this CPU runs ({', '.join(supported)})")
    try:
        import torch
        torch_modes = tuple(m for m in TORCH_MODES if (not m.startswith("compile") or not args.no_compile)
                            and (not m.endswith("autocast") or args.autocast))
        version = torch.__version__
    except ImportError:
        torch_modes, version = (), "-"
        print("PyTorch not installed (pip install torch): numbagpt timings only")
    print(f"threads {args.threads}, {args.rounds} rounds x {args.steps} steps per contender, one process "
          f"each; torch {version}", flush=True)
    contenders = list_contenders(args, kernels, torch_modes)
    rows = [(name, time_model(args, name, contenders)) for name in args.models]
    print_table(args, rows)
    return 1 if any(len(med) < len(contenders) for _, med in rows) else 0   # a contender failed or was wrong


def list_contenders(args, kernels, torch_modes):
    """[(label, who, kernel, precision, checkout)]: numbagpt at every kernel and precision, the --before
    checkout, the PyTorch modes."""
    precisions = args.precision.split(",")
    out = [(f"numbagpt {k}" + ("" if p == "fp32" else f" {p}"), "numbagpt", k, p, ROOT)
           for p in precisions for k in kernels]
    if args.before:   # the other checkout at each precision asked for (fp32 only: a checkout before bf16)
        out += [(f"before {kernels[0]}" + ("" if p == "fp32" else f" {p}"), "numbagpt", kernels[0], p,
                 args.before) for p in precisions]
    return out + [(m, m, None, "fp32", ROOT) for m in torch_modes]


def time_model(args, name, contenders):
    """{label: {"wall": ms, "cpu": ms}}: the medians of each contender's steps over --rounds rounds, the
    contenders in turn within a round, each in its own process; one that fails, or whose losses
    disagree with the reference's (check_losses), is dropped, saying so."""
    import numpy as np
    times = {c[0]: {"wall": [], "cpu": []} for c in contenders}
    losses = {}
    for r in range(args.rounds):
        done = []
        for label, who, kernel, precision, root in contenders:
            if label not in times:
                continue  # failed in an earlier round
            out = run_worker(args, name, who, kernel, precision, root)
            if isinstance(out, str):
                print(f"  {name} {label} failed ({out}): skipped", flush=True)
                del times[label]
                continue
            losses.setdefault(label, out.pop("loss"))
            for clock in out:
                times[label][clock] += out[clock]
            done.append(f"{label} {np.median(out['wall']):.0f}/{np.median(out['cpu']):.0f}")
        print(f"  {name} round {r + 1} (wall/cpu ms): " + ", ".join(done), flush=True)
    for label in check_losses(name, losses, {c[0]: c for c in contenders}):
        del times[label]
    return {label: {c: float(np.median(ts)) for c, ts in t.items()} for label, t in times.items()}


# The largest relative difference of a step's loss from the reference's, over the 1 + --steps steps
# (the same weights, batch and AdamW): float32 contenders differ by their sums' order (up to 1e-7
# seen), bf16 ones (numbagpt's --precision bf16, PyTorch's autocast) by their operands' rounding (up to
# 6e-5 seen: autocast on d12). A GELU backward off by half in float32 was 3e-4 off on tiny.
LOSS_TOL = {"fp32": 1e-5, "bf16": 5e-4}


def check_losses(name, losses, contenders):
    """The labels whose losses step by step differ from the reference contender's beyond LOSS_TOL, each
    said in a line; the reference is PyTorch eager in float32 where it ran, else numbagpt's first
    float32 contender (else the first). A kernel that computes a wrong gradient trains a different
    model, whose losses part from the others' from the second step on."""
    import numpy as np
    fp32 = [k for k in losses if contenders[k][3] == "fp32" and not k.endswith("autocast")]
    ref = "eager" if "eager" in losses else (fp32 or list(losses) or [None])[0]
    wrong, worst = [], {}
    for label, got in losses.items():
        bf16 = contenders[label][3] == "bf16" or label.endswith("autocast") or ref not in fp32
        tol = LOSS_TOL["bf16" if bf16 else "fp32"]
        err = float(np.max(np.abs(np.subtract(got, losses[ref])) / np.abs(losses[ref])))   # NaN stays NaN
        if not err <= tol:   # a NaN loss fails too
            print(f"  {name} {label}: losses {', '.join(f'{v:.5f}' for v in got)} against {ref}'s "
                  f"{', '.join(f'{v:.5f}' for v in losses[ref])} (relative {err:.1e} > {tol:g}): wrong, not "
                  f"in the table", flush=True)
            wrong.append(label)
        elif label != ref:
            worst[label] = err
    if worst:
        print(f"  {name}: every step's loss as {ref}'s within " +
              ", ".join(f"{k} {v:.0e}" for k, v in worst.items()) + " (relative)", flush=True)
    return wrong


def print_table(args, rows):
    """The table of [(model, time_model's medians)]: ms a step and numbagpt's ratio to each PyTorch mode."""
    heads = [m for m in TORCH_MODES if any(m in med for _, med in rows)]
    widths = {m: max(11, len(m) + 3) for m in heads}   # a ratio column, wide enough for its heading
    ratios = "".join(f"{'/ ' + m:>{widths[m]}}" for m in heads)
    print(f"\n{'model':<6} {'B':>3} {'T':>4} {'contender':<22} {'wall ms':>8} {ratios} {'cpu ms':>8} {ratios}")
    for name, med in rows:
        B, T = SHAPES[name]
        for label, ms in med.items():
            row = f"{name:<6} {B:>3} {T:>4} {label:<22}"
            for clock in ("wall", "cpu"):
                row += f" {ms[clock]:8.0f} "
                for m in heads:  # ratios on the numbagpt rows only
                    ours = label.startswith(("numbagpt", "before")) and m in med
                    row += f" {ms[clock] / med[m][clock]:{widths[m] - 1}.2f}" if ours else " " * widths[m]
            print(row.rstrip())
    print(f"medians of {args.rounds} rounds x {args.steps} steps, each contender in its own process; / eager, "
          f"/ compile, / autocast, / compile_autocast = numbagpt / PyTorch (lower is better, 1.0 = parity);\n"
          f"cpu = the worker's CPU "
          f"time (all its threads): other processes' load inflates it less than wall")


if __name__ == "__main__":
    sys.exit(main())
