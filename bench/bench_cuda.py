"""Time every numbagpt.cuda kernel on a GPU with CUDA events: ms, GFLOP/s and GB/s per kernel, for the
`tiny` (L4 C128 NH4, B=8 T=256) and `d12` (C768 NH12, B=4 T=64) shapes, and — when CuPy or torch with
CUDA is installed — each matmul against cuBLAS (FP32, TF32 off) with the ratio. Optionally (--model) a
whole training step; --matmul-only times just the matmuls (bench/gpu_check.py uses it).

    python bench/bench_cuda.py [--shapes tiny d12] [--iters 20] [--model] [--matmul-only]
    NUMBA_ENABLE_CUDASIM=1 python bench/bench_cuda.py --simulator --shapes micro --iters 1 --model

The second line makes every call in Numba's CUDA simulator, untimed: that the bench still matches the
kernels' signatures (tests/test_bench.py runs it).

FLOPs and bytes of each call are the profiler's cost model, numbagpt.costs.kernel_cost (conventions in
docs/profiling.md; bytes = the compulsory traffic: every input read once, every output written once,
an accumulated one read and written), so GB/s is an effective bandwidth; the training step's FLOPs are
costs.model_flops_per_token (llm.c's estimate), the step being numbagpt.train.step.train_step. Without
a GPU (or under the CUDA simulator without --simulator) it prints "no GPU: skipped" and exits 0.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.timing import positive_int  # noqa: E402  (run as a script or imported as bench.bench_cuda)

SHAPES = {"tiny": (8, 256), "d12": (4, 64), "micro": (2, 8)}  # model preset (micro: shape_config): (B, T)


def cublas_timer():
    """(fn(M, N, K, iters) -> (ms, name) of C = A·Bᵀ in float32 through cuBLAS, name) using CuPy or else
    torch (with CUDA); (fn returning (nan, None), None) when neither is installed."""
    try:
        import cupy as cp

        def run_cupy(M, N, K, iters):
            a = cp.random.standard_normal((M, K), dtype=cp.float32)
            w = cp.random.standard_normal((N, K), dtype=cp.float32)
            o = cp.empty((M, N), dtype=cp.float32)
            cp.matmul(a, w.T, out=o)
            cp.cuda.Device().synchronize()
            s, e = cp.cuda.Event(), cp.cuda.Event()
            s.record()
            for _ in range(iters):
                cp.matmul(a, w.T, out=o)
            e.record()
            e.synchronize()
            return cp.cuda.get_elapsed_time(s, e) / iters, "cuBLAS(cupy)"
        return run_cupy, "cupy"
    except Exception:
        pass
    try:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch without CUDA")
        torch.backends.cuda.matmul.allow_tf32 = False  # FP32 like ours, not TF32 tensor cores

        def run_torch(M, N, K, iters):
            a = torch.randn(M, K, device="cuda")
            w = torch.randn(N, K, device="cuda")
            o = torch.empty(M, N, device="cuda")
            torch.matmul(a, w.T, out=o)
            torch.cuda.synchronize()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(iters):
                torch.matmul(a, w.T, out=o)
            e.record()
            e.synchronize()
            return s.elapsed_time(e) / iters, "cuBLAS(torch)"
        return run_torch, "torch"
    except Exception:
        pass
    return (lambda M, N, K, iters: (float("nan"), None)), None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny", "d12"], choices=list(SHAPES),
                    help="model presets at their (B, T); micro: a 2-layer C=16 model at B=2 T=8 (a smoke "
                         "test of every call, cheap enough for the simulator; default: tiny d12)")
    ap.add_argument("--iters", type=positive_int, default=20, help="timed calls of each kernel (default: 20)")
    ap.add_argument("--model", action="store_true", help="also time a full GPT2 training step")
    ap.add_argument("--matmul-only", action="store_true", help="only the matmuls (and their cuBLAS reference)")
    ap.add_argument("--simulator", action="store_true",
                    help="run under NUMBA_ENABLE_CUDASIM=1 too: every call is made and checked to run, "
                         "but the simulator keeps no time (its times print as nan)")
    return ap.parse_args(argv)


def shape_config(shape):
    """(GPT2Config, B, T) of a --shapes name."""
    from numbagpt.config import GPT2Config, preset
    B, T = SHAPES[shape]
    if shape == "micro":
        return GPT2Config(max_seq_len=T, vocab_size=37, num_layers=2, num_heads=2, channels=16), B, T
    return preset(shape), B, T


class Bench:
    """Times numbagpt.cuda's kernels with CUDA events and prints one line per call."""

    def __init__(self, iters, simulator):
        import numbagpt.cuda as K
        from numbagpt.cuda import runtime
        self.K, self.cuda, self.iters, self.simulator = K, runtime.cuda, iters, simulator
        self.rng = np.random.default_rng(0)

    def rand(self, n, scale=1.0):
        return self.K.to_device((self.rng.standard_normal(n) * scale).astype(np.float32))

    def time_ms(self, fn, iters):
        """ms per call of fn over `iters` calls after one warm-up call (JIT compilation); under the
        simulator, which keeps no time, the warm-up call alone and nan."""
        fn()
        self.cuda.synchronize()
        if self.simulator:
            return float("nan")
        start, stop = self.K.event(), self.K.event()
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / iters

    @staticmethod
    def report(label, ms, flops, nbytes=None, extra=""):
        rate = f"{flops / ms / 1e6:10.1f} GFLOP/s" + (f" {nbytes / ms / 1e6:9.1f} GB/s" if nbytes is not None else "")
        print(f"  {label:34s} {ms:9.4f} ms {rate} {extra}", flush=True)

    def __call__(self, name, *call_args, label=None, ref=None):
        """Time K.<name>(*call_args); report it with its cost-model FLOPs and bytes (and a cuBLAS (ms, name))."""
        from numbagpt.costs import kernel_cost
        kernel = getattr(self.K, name)
        ms = self.time_ms(lambda: kernel(*call_args), self.iters)
        extra = f"{ref[1]} {ref[0]:.4f} ms, ours/{ref[1]} {ms / ref[0]:.2f}x" if ref and ref[1] else ""
        self.report(label or name, ms, *kernel_cost(name, *call_args), extra=extra)


def bench_layer_kernels(bench, cfg, B, T, tokens):
    """encoder, layernorm, attention and GELU, forward and backward (inputs random)."""
    K, rand = bench.K, bench.rand
    C, NH, Vp, BT = cfg.channels, cfg.num_heads, cfg.padded_vocab_size, B * T
    BTC = BT * C
    x, y, dout = rand(BTC), K.zeros(BTC), rand(BTC)
    bench("encoder_forward", y, tokens, rand(Vp * C, 0.02), rand(T * C, 0.02), B, T, C)
    bench("encoder_backward", K.zeros(Vp * C), K.zeros(T * C), dout, tokens, B, T, C)
    w, b, mean, rstd = rand(C), rand(C), K.zeros(BT), K.zeros(BT)
    bench("layernorm_forward", y, mean, rstd, x, w, b, B, T, C)
    bench("layernorm_backward", K.zeros(BTC), K.zeros(C), K.zeros(C), dout, x, w, mean, rstd, B, T, C)
    bench("fused_residual_layernorm_forward", K.zeros(BTC), y, mean, rstd, x, dout, w, b, B, T, C)
    qkv, out, lse = rand(3 * BTC), K.zeros(BTC), K.zeros(B * NH * T)
    bench("attention_forward", out, lse, qkv, B, T, C, NH)
    bench("attention_backward", K.zeros(3 * BTC), dout, qkv, out, lse, B, T, C, NH)
    N4 = 4 * BTC
    h = rand(N4)
    bench("gelu_forward", K.zeros(N4), h, N4)
    bench("gelu_backward", K.zeros(N4), rand(N4), h, N4)


def bench_matmuls(bench, cfg, B, T, reference_ms):
    """The five matmuls of a step (qkv, attproj, fc, fcproj, the LM head), forward and backward."""
    K, rand, C, BT = bench.K, bench.rand, cfg.channels, B * T
    for label, Cin, OC in (("qkv", C, 3 * C), ("attproj", C, C), ("fc", C, 4 * C), ("fcproj", 4 * C, C),
                           ("logits", C, cfg.padded_vocab_size)):
        inp, wt = rand(BT * Cin), rand(OC * Cin, 0.02)
        bias = None if label == "logits" else rand(OC)
        bench("matmul_forward", K.zeros(BT * OC), inp, wt, bias, B, T, Cin, OC,
              label=f"matmul_forward {label} ({BT}x{OC}x{Cin})", ref=reference_ms(BT, OC, Cin, bench.iters))
        dbias = None if bias is None else K.zeros(OC)
        bench("matmul_backward", K.zeros(BT * Cin), K.zeros(OC * Cin), dbias, rand(BT * OC), inp, wt,
              B, T, Cin, OC, label=f"matmul_backward {label}")


def bench_classifier_and_update(bench, cfg, B, T, tokens):
    """The loss (forward, backward, and the fused pass a training step makes) and AdamW."""
    from numbagpt.layout import num_parameters
    K, rand = bench.K, bench.rand
    V, Vp, BT = cfg.vocab_size, cfg.padded_vocab_size, B * T
    logits = rand(BT * Vp, 2.0)
    dlosses = K.to_device(np.full(BT, 1.0 / BT, np.float32))
    bench("crossentropy_forward", K.zeros(BT), logits, tokens, B, T, V, Vp)
    bench("crossentropy_backward", K.zeros(BT * Vp), dlosses, logits, tokens, B, T, V, Vp)
    bench("crossentropy_forward_backward", K.zeros(BT), K.zeros(BT * Vp), dlosses, logits, tokens, B, T, V, Vp)
    P = num_parameters(cfg)
    grads = rand(P, 1e-3)
    bench("adamw_update", rand(P, 0.02), K.zeros(P), K.zeros(P), grads, 1e-4, 0.9, 0.999, 1e-8, 0.0, 1.0,
          1, P, label=f"adamw_update (N={P})")
    bench("global_norm_squared", K.zeros(1), grads, P)


def bench_step(bench, cfg, B, T, shape):
    """A whole training step (forward, backward, AdamW) of the model, from random tokens."""
    from numbagpt.costs import model_flops_per_token
    from numbagpt.model import GPT2
    from numbagpt.train.step import train_step
    model = GPT2(cfg, backend="cuda")
    model.init_weights(0)
    toks = bench.rng.integers(0, cfg.vocab_size, (B, T + 1)).astype(np.int32)

    batch = [(toks[:, :-1], toks[:, 1:])]
    bench.report(f"GPT2 training step ({shape})", bench.time_ms(lambda: train_step(model, batch, lr=1e-4, t=1),
                                                                max(3, bench.iters // 4)),
                 model_flops_per_token(cfg, T)["llmc"] * B * T)


def main(argv=None):
    args = parse_args(argv)
    from numbagpt.cuda import runtime
    if (runtime.SIMULATOR and not args.simulator) or not runtime.available():
        print("no GPU: skipped" + (" (NUMBA_ENABLE_CUDASIM is set; --simulator runs every call there, untimed)"
                                   if runtime.SIMULATOR else ""))
        return 0
    bench = Bench(args.iters, runtime.SIMULATOR)
    reference_ms, ref = cublas_timer()
    if runtime.SIMULATOR:
        print("device: Numba's CUDA simulator (every call is made; no times: they print as nan)")
    else:
        name = getattr(bench.cuda.get_current_device(), "name", "?")
        cublas = ref or "nothing (install cupy or torch with CUDA to compare)"
        print(f"device: {name.decode() if isinstance(name, bytes) else name}, {runtime.sm_count()} SMs; "
              f"cuBLAS through: {cublas}")
    for shape in args.shapes:
        cfg, B, T = shape_config(shape)
        print(f"\n{shape}: B={B} T={T} C={cfg.channels} NH={cfg.num_heads} V={cfg.vocab_size} "
              f"Vp={cfg.padded_vocab_size}")
        tokens = bench.K.to_device(bench.rng.integers(0, cfg.vocab_size, B * T).astype(np.int32))
        if not args.matmul_only:
            bench_layer_kernels(bench, cfg, B, T, tokens)
        bench_matmuls(bench, cfg, B, T, reference_ms)
        if not args.matmul_only:
            bench_classifier_and_update(bench, cfg, B, T, tokens)
        if args.model and not args.matmul_only:
            bench_step(bench, cfg, B, T, shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
