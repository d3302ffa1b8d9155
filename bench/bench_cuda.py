"""Time every numbagpt.cuda kernel on a GPU with CUDA events: ms, GFLOP/s and GB/s per kernel, for the
`tiny` (L4 C128 NH4, B=8 T=256) and `d12` (C768 NH12, B=4 T=64) shapes, and — when CuPy or torch with
CUDA is installed — each matmul against cuBLAS (FP32, TF32 off) with the ratio. Optionally (--model) a
whole training step; --matmul-only times just the matmuls (bench/gpu_check.py uses it).

    python bench/bench_cuda.py [--shapes tiny d12] [--iters 20] [--model] [--matmul-only]

FLOPs and bytes of each call are the profiler's cost model, numbagpt.costs.kernel_cost (conventions in
docs/profiling.md; bytes = the compulsory traffic: every input read once, every output written once,
an accumulated one read and written), so GB/s is an effective bandwidth; the training step's FLOPs are
costs.model_flops_per_token (llm.c's estimate). Without a GPU (or under the CUDA simulator) it prints
"no GPU: skipped" and exits 0.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {"tiny": (8, 256), "d12": (4, 64)}  # model preset: (B, T)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--model", action="store_true", help="also time a full GPT2 training step")
    ap.add_argument("--matmul-only", action="store_true", help="only the matmuls (and their cuBLAS reference)")
    args = ap.parse_args()

    from numbagpt.cuda import runtime
    if runtime.SIMULATOR or not runtime.available():
        print("no GPU: skipped" + (" (NUMBA_ENABLE_CUDASIM is set)" if runtime.SIMULATOR else ""))
        return 0
    import numbagpt.cuda as K
    from numbagpt.config import preset
    from numbagpt.costs import kernel_cost, model_flops_per_token
    from numbagpt.layout import num_parameters
    from numbagpt.model import GPT2
    cuda = runtime.cuda
    reference_ms, ref = cublas_timer()
    name = getattr(cuda.get_current_device(), "name", "?")
    print(f"device: {name.decode() if isinstance(name, bytes) else name}, "
          f"{runtime.sm_count()} SMs; cuBLAS through: {ref or 'nothing (install cupy or torch with CUDA to compare)'}")

    rng = np.random.default_rng(0)

    def rand(n, scale=1.0):
        return K.to_device((rng.standard_normal(n) * scale).astype(np.float32))

    def time_ms(fn, iters):
        fn()  # warm-up: JIT compilation
        cuda.synchronize()
        start, stop = cuda.event(timing=True), cuda.event(timing=True)
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        return cuda.event_elapsed_time(start, stop) / iters

    def report(label, ms, flops, nbytes=None, extra=""):
        rate = f"{flops / ms / 1e6:10.1f} GFLOP/s" + (f" {nbytes / ms / 1e6:9.1f} GB/s" if nbytes is not None else "")
        print(f"  {label:34s} {ms:9.4f} ms {rate} {extra}")

    def bench(name, *call_args, label=None, ref=None):
        """Time K.<name>(*call_args); report it with its cost-model FLOPs and bytes (and a cuBLAS (ms, name))."""
        kernel = getattr(K, name)
        ms = time_ms(lambda: kernel(*call_args), args.iters)
        extra = f"{ref[1]} {ref[0]:.4f} ms, ours/{ref[1]} {ms / ref[0]:.2f}x" if ref and ref[1] else ""
        report(label or name, ms, *kernel_cost(name, *call_args), extra=extra)

    for shape in args.shapes:
        B, T = SHAPES[shape]
        cfg = preset(shape)
        C, NH, V, Vp, BT = cfg.channels, cfg.num_heads, cfg.vocab_size, cfg.padded_vocab_size, B * T
        BTC = BT * C
        print(f"\n{shape}: B={B} T={T} C={C} NH={NH} V={V} Vp={Vp}")

        tokens = K.to_device(rng.integers(0, V, BT).astype(np.int32))
        if not args.matmul_only:
            wte, wpe = rand(Vp * C, 0.02), rand(T * C, 0.02)
            x, y, dout = rand(BTC), K.zeros(BTC), rand(BTC)
            bench("encoder_forward", y, tokens, wte, wpe, B, T, C)
            bench("encoder_backward", K.zeros(Vp * C), K.zeros(T * C), dout, tokens, B, T, C)
            w, b, mean, rstd = rand(C), rand(C), K.zeros(BT), K.zeros(BT)
            bench("layernorm_forward", y, mean, rstd, x, w, b, B, T, C)
            bench("layernorm_backward", K.zeros(BTC), K.zeros(C), K.zeros(C), dout, x, w, mean, rstd, B, T, C)
            bench("fused_residual_layernorm_forward", K.zeros(BTC), y, mean, rstd, x, dout, w, b, B, T, C)

        for label, Cin, OC in (("qkv", C, 3 * C), ("attproj", C, C), ("fc", C, 4 * C), ("fcproj", 4 * C, C),
                               ("logits", C, Vp)):
            inp, wt = rand(BT * Cin), rand(OC * Cin, 0.02)
            bias = None if label == "logits" else rand(OC)
            bench("matmul_forward", K.zeros(BT * OC), inp, wt, bias, B, T, Cin, OC,
                  label=f"matmul_forward {label} ({BT}x{OC}x{Cin})", ref=reference_ms(BT, OC, Cin, args.iters))
            dbias = None if bias is None else K.zeros(OC)
            bench("matmul_backward", K.zeros(BT * Cin), K.zeros(OC * Cin), dbias, rand(BT * OC), inp, wt,
                  B, T, Cin, OC, label=f"matmul_backward {label}")

        if not args.matmul_only:
            qkv, att, nTT = rand(3 * BTC), K.zeros(B * NH * T * T), B * NH * T * T
            bench("attention_forward", K.zeros(BTC), K.zeros(nTT), att, qkv, B, T, C, NH)
            bench("attention_backward", K.zeros(3 * BTC), K.zeros(nTT), K.zeros(nTT), dout, qkv, att, B, T, C, NH)
            N4 = 4 * BTC
            h = rand(N4)
            bench("gelu_forward", K.zeros(N4), h, N4)
            bench("gelu_backward", K.zeros(N4), rand(N4), h, N4)
            logits = rand(BT * Vp, 2.0)
            bench("crossentropy_forward", K.zeros(BT), logits, tokens, B, T, V, Vp)
            dlosses = K.to_device(np.full(BT, 1.0 / BT, np.float32))
            bench("crossentropy_backward", K.zeros(BT * Vp), dlosses, logits, tokens, B, T, V, Vp)
            P = num_parameters(cfg)
            grads = rand(P, 1e-3)
            bench("adamw_update", rand(P, 0.02), K.zeros(P), K.zeros(P), grads, 1e-4, 0.9, 0.999, 1e-8, 0.0, 1.0,
                  1, P, label=f"adamw_update (N={P})")
            bench("global_norm_squared", K.zeros(1), grads, P)

        if args.model and not args.matmul_only:
            model = GPT2.from_preset(shape, seed=0, backend="cuda")
            toks = rng.integers(0, V, (B, T + 1)).astype(np.int32)

            def step():
                model.forward(toks[:, :-1], toks[:, 1:])
                model.zero_grad()
                model.backward()
                model.update(lr=1e-4, t=1)
            report(f"GPT2 training step ({shape})", time_ms(step, max(3, args.iters // 4)),
                   model_flops_per_token(cfg, T)["llmc"] * BT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
