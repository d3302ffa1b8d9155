"""Time every numbagpt.cuda kernel on a GPU with CUDA events: ms, GFLOP/s and GB/s per kernel, for the
`tiny` (L4 C128 NH4, B=8 T=256) and `d12` (C768 NH12, B=4 T=64) shapes, and — when CuPy or torch with
CUDA is installed — each matmul against cuBLAS (FP32, TF32 off) with the ratio. Optionally (--model) a
whole training step; --matmul-only times just the matmuls (bench/gpu_check.py uses it).

    python bench/bench_cuda.py [--shapes tiny d12] [--iters 20] [--model] [--matmul-only]

FLOPs and bytes are the formulas of docs/cuda.md (bytes = the minimum DRAM traffic: every operand read
once and every result written once), so GB/s is an effective bandwidth. Without a GPU (or under the
CUDA simulator) it prints "no GPU: skipped" and exits 0.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

V_GPT2 = 50257
VP_GPT2 = 50304
SHAPES = {  # name: (B, T, C, NH)
    "tiny": (8, 256, 128, 4),
    "d12": (4, 64, 768, 12),
}


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

    def report(name, ms, flops, nbytes, extra=""):
        print(f"  {name:34s} {ms:9.4f} ms {flops / ms / 1e6:10.1f} GFLOP/s {nbytes / ms / 1e6:9.1f} GB/s {extra}")

    for shape in args.shapes:
        B, T, C, NH = SHAPES[shape]
        V, Vp, hs, BT = V_GPT2, VP_GPT2, C // NH, B * T
        BTC = BT * C
        print(f"\n{shape}: B={B} T={T} C={C} NH={NH} V={V} Vp={Vp}")
        it = args.iters

        tokens = K.to_device(rng.integers(0, V, BT).astype(np.int32))
        if not args.matmul_only:
            wte, wpe = rand(Vp * C, 0.02), rand(T * C, 0.02)
            x, y, dout = rand(BTC), K.zeros(BTC), rand(BTC)
            report("encoder_forward", time_ms(lambda: K.encoder_forward(y, tokens, wte, wpe, B, T, C), it),
                   BTC, 4 * (3 * BTC) + 4 * BT)
            dwte, dwpe = K.zeros(Vp * C), K.zeros(T * C)
            report("encoder_backward", time_ms(lambda: K.encoder_backward(dwte, dwpe, dout, tokens, B, T, C), it),
                   2 * BTC, 4 * (2 * BTC + 2 * BTC + 2 * T * C) + 4 * BT)

            w, b, mean, rstd = rand(C), rand(C), K.zeros(BT), K.zeros(BT)
            report("layernorm_forward",
                   time_ms(lambda: K.layernorm_forward(y, mean, rstd, x, w, b, B, T, C), it),
                   8 * BTC, 4 * (2 * BTC + 2 * C + 2 * BT))
            dx, dw, db = K.zeros(BTC), K.zeros(C), K.zeros(C)
            report("layernorm_backward",
                   time_ms(lambda: K.layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, B, T, C), it),
                   14 * BTC, 4 * (4 * BTC + 4 * C + 2 * BT))
            res = K.zeros(BTC)
            report("fused_residual_layernorm_forward",
                   time_ms(lambda: K.fused_residual_layernorm_forward(res, y, mean, rstd, x, dout, w, b, B, T, C), it),
                   9 * BTC, 4 * (4 * BTC + 2 * C + 2 * BT))

        for label, Cin, OC in (("qkv", C, 3 * C), ("attproj", C, C), ("fc", C, 4 * C), ("fcproj", 4 * C, C),
                               ("logits", C, Vp)):
            inp, wt = rand(BT * Cin), rand(OC * Cin, 0.02)
            bias = None if label == "logits" else rand(OC)
            out = K.zeros(BT * OC)
            M, N, Kd = BT, OC, Cin
            ms = time_ms(lambda: K.matmul_forward(out, inp, wt, bias, B, T, Cin, OC), it)
            ms_ref, ref_name = reference_ms(M, N, Kd, it)
            extra = f"{ref_name} {ms_ref:.4f} ms, ours/{ref_name} {ms / ms_ref:.2f}x" if ref_name else ""
            report(f"matmul_forward {label} ({M}x{N}x{Kd})", ms, 2 * M * N * Kd,
                   4 * (M * Kd + N * Kd + M * N + N), extra)
            dinp, dwt, dbias = K.zeros(BT * Cin), K.zeros(OC * Cin), (None if bias is None else K.zeros(OC))
            dO = rand(BT * OC)
            ms = time_ms(lambda: K.matmul_backward(dinp, dwt, dbias, dO, inp, wt, B, T, Cin, OC), it)
            report(f"matmul_backward {label}", ms, 4 * M * N * Kd + M * N,
                   4 * (2 * M * N + 3 * M * Kd + 3 * N * Kd))

        if not args.matmul_only:
            qkv, atty = rand(3 * BTC), K.zeros(BTC)
            nTT = B * NH * T * T
            preatt, att = K.zeros(nTT), K.zeros(nTT)
            causal = B * NH * T * (T + 1) // 2
            report("attention_forward",
                   time_ms(lambda: K.attention_forward(atty, preatt, att, qkv, B, T, C, NH), it),
                   4 * causal * hs + 5 * causal, 4 * (3 * BTC + 2 * causal + nTT + causal + BTC))
            dqkv, dpreatt, datt = K.zeros(3 * BTC), K.zeros(nTT), K.zeros(nTT)
            report("attention_backward",
                   time_ms(lambda: K.attention_backward(dqkv, dpreatt, datt, dout, qkv, att, B, T, C, NH), it),
                   8 * causal * hs + 4 * causal, 4 * (2 * 3 * BTC + BTC + 6 * causal + nTT))

            N4 = 4 * BTC
            h, g, dh = rand(N4), K.zeros(N4), rand(N4)
            report("gelu_forward", time_ms(lambda: K.gelu_forward(g, h, N4), it), 12 * N4, 8 * N4)
            dg = K.zeros(N4)
            report("gelu_backward", time_ms(lambda: K.gelu_backward(dg, dh, h, N4), it), 20 * N4, 16 * N4)
            report("residual_forward", time_ms(lambda: K.residual_forward(y, x, dout, BTC), it), BTC, 12 * BTC)

            logits, targets, losses = rand(BT * Vp, 2.0), tokens, K.zeros(BT)
            report("crossentropy_forward",
                   time_ms(lambda: K.crossentropy_forward(losses, logits, targets, B, T, V, Vp), it),
                   4 * BT * V, 4 * BT * V + 8 * BT)
            dlosses = K.to_device(np.full(BT, 1.0 / BT, np.float32))
            dlogits = K.zeros(BT * Vp)
            report("crossentropy_backward",
                   time_ms(lambda: K.crossentropy_backward(dlogits, dlosses, logits, targets, B, T, V, Vp), it),
                   7 * BT * V, 4 * BT * V + 4 * BT * Vp + 8 * BT)

            L = 12 if shape == "d12" else 4
            P = Vp * C + 1024 * C + L * (12 * C * C + 13 * C) + 2 * C
            params, m, v, grads = rand(P, 0.02), K.zeros(P), K.zeros(P), rand(P, 1e-3)
            report(f"adamw_update (N={P})",
                   time_ms(lambda: K.adamw_update(params, m, v, grads, 1e-4, 0.9, 0.999, 1e-8, 0.0, 1.0, 1, P), it),
                   15 * P, 28 * P)
            out = K.zeros(1)
            report("global_norm_squared", time_ms(lambda: K.global_norm_squared(out, grads, P), it), 2 * P, 4 * P)

        if args.model and not args.matmul_only:
            from numbagpt.config import GPT2Config
            from numbagpt.model import GPT2
            cfg = GPT2Config(max_seq_len=1024 if shape == "d12" else 256, vocab_size=V, num_layers=L,
                             num_heads=NH, channels=C)
            model = GPT2(cfg, backend="cuda")
            model.init_weights(seed=0)
            toks = rng.integers(0, V, (B, T + 1)).astype(np.int32)

            def step():
                model.forward(toks[:, :-1], toks[:, 1:])
                model.zero_grad()
                model.backward()
                model.update(lr=1e-4, t=1)
            report(f"GPT2 training step ({shape})", time_ms(step, max(3, it // 4)),
                   6 * model.num_parameters * BT, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
