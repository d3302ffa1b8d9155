"""bin/profile_gpt2: where a GPT-2 training step's time, FLOPs and memory go, kernel by kernel.

Builds a model (a preset from scratch, or a model file), draws seeded random tokens, runs warm-up steps
(the first compiles every kernel; its time is reported apart), then timed steps — forward, zero_grad,
backward, grad norm, AdamW update: numbagpt.step.train_step, as bin/train_gpt2 takes it — with every
kernel call timed through numbagpt.profiler.TimingBackend. Then builds the report from those
measurements (`build_report`; its JSON schema is REPORT_KEYS) and prints it (`format_report`).
docs/profiling.md explains the columns and the formulas.
"""
import argparse
import json
import os
import textwrap

from numbagpt.cli import HelpFormatter, run_command, use_threads
from numbagpt.config import DESCRIPTOR_HELP
from numbagpt.costs import family, model_flops_per_token
from numbagpt.layout import allocated_bytes, memory_estimate, mib


def build_parser():
    p = argparse.ArgumentParser(
        prog="profile_gpt2",
        description="Profile GPT-2 training steps kernel by kernel: calls, time, FLOPs, bytes, GFLOP/s, "
                    "GB/s per kernel and phase; step time, tokens/s, model FLOPs per token, MFU against a "
                    "measured peak; and memory (parameters, gradients, AdamW state, activations) next to "
                    "the measured RSS. See docs/profiling.md.",
        formatter_class=HelpFormatter)
    p.add_argument("-e", "--model", default="tiny",
                   help="model .bin file, or a descriptor built from scratch: " + DESCRIPTOR_HELP)
    p.add_argument("-b", "--batch-size", type=int, default=8, help="B, sequences per step")
    p.add_argument("-t", "--seq-len", type=int, default=256, help="T, tokens per sequence")
    p.add_argument("-r", "--recompute", type=int, choices=(0, 1, 2), default=1,
                   help="as train_gpt2's: 0 stores every activation; 1 recomputes GELU's output in the backward "
                        "pass; 2 also the layernorm outputs")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="backend that runs the kernels")
    p.add_argument("--omp-threads", type=int, default=None, help="Numba threads (default: all cores)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--warmup", type=int, default=1,
                   help="warm-up steps before the timed ones (>= 1: the first compiles)")
    p.add_argument("--baseline-steps", type=int, default=None,
                   help="untimed steps (the proxy passes every call straight through), interleaved with the "
                        "timed ones, to measure the proxy's cost and the unprofiled tokens/s (default: "
                        "--steps; 0: none)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the whole profile as JSON here")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="peak GFLOP/s for the MFU (default: measured with numbagpt's own matmul_forward)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip the peak calibration matmuls (no MFU unless --peak-gflops is given)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the init and of the random tokens")
    p.add_argument("--no-memory-check", action="store_true",
                   help="allocate even when the memory estimate exceeds the memory available")
    return p


def check_args(args):
    for name in ("batch_size", "seq_len", "steps", "warmup"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"profile_gpt2: error: --{name.replace('_', '-')} must be positive, "
                             f"got {getattr(args, name)}")
    if args.omp_threads is not None and args.omp_threads <= 0:
        raise SystemExit(f"profile_gpt2: error: --omp-threads must be positive, got {args.omp_threads}")
    if args.baseline_steps is not None and args.baseline_steps < 0:
        raise SystemExit(f"profile_gpt2: error: --baseline-steps must be >= 0, got {args.baseline_steps}")
    if args.peak_gflops is not None and not args.peak_gflops > 0:
        raise SystemExit(f"profile_gpt2: error: --peak-gflops must be positive, got {args.peak_gflops}")
    if args.seed < 0:
        raise SystemExit(f"profile_gpt2: error: --seed must be >= 0, got {args.seed}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    return run_command("profile_gpt2", run, args, errors=(ValueError, OSError, RuntimeError, ImportError))


def run(args):
    import numba

    from numbagpt import atomic, formats, memory, profiler
    from numbagpt.backend import get_backend
    from numbagpt.config import is_descriptor, preset
    from numbagpt.layout import format_memory
    from numbagpt.model import GPT2

    if args.omp_threads is not None:
        use_threads(args.omp_threads)
    rss_before = profiler.process_memory()["rss_bytes"]

    proxy = profiler.TimingBackend(get_backend(args.device))

    if is_descriptor(args.model):
        config = preset(args.model)
    elif os.path.exists(args.model):
        config = formats.read_model_header(args.model)[0]   # the parameters once the memory check passed
    else:
        raise ValueError(f"-e {args.model!r}: neither a preset ({DESCRIPTOR_HELP}) nor an existing model file")
    if args.seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's max_seq_len {config.max_seq_len}")

    est = memory_estimate(config, args.batch_size, args.seq_len, recompute=args.recompute)
    print(f"profile_gpt2: {args.model} ({config.describe()}), B={args.batch_size} T={args.seq_len}, "
          f"device {args.device}, {numba.get_num_threads()} threads")
    saved = memory_estimate(config, args.batch_size, args.seq_len)["total"] - est["total"]
    print(format_memory(est) + f" | -r {args.recompute}: {saved / 2**20:.1f} MiB less than -r 0")
    if not args.no_memory_check:  # before anything big is allocated (on the device, for a GPU)
        memory.check_fits(lambda b: memory_estimate(config, b, args.seq_len, recompute=args.recompute)["total"],
                          args.batch_size, f"{args.model} with B={args.batch_size} T={args.seq_len}", backend=proxy)
    params = None if is_descriptor(args.model) else formats.read_model(args.model)[1]
    print(f"warm-up {args.warmup} step(s), the first compiles; then {args.steps} timed step(s)...", flush=True)

    model = GPT2(config, backend=proxy, recompute=args.recompute)
    if params is None:
        model.init_weights(args.seed)
    else:
        model.load_parameters(params)
        del params

    report = profiler.profile_model(
        model, proxy, args.batch_size, args.seq_len, steps=args.steps, warmup=args.warmup,
        baseline_steps=args.baseline_steps, seed=args.seed, peak_gflops=args.peak_gflops,
        calibrate=not args.no_calibrate, model_name=args.model, rss_before=rss_before)
    print()
    print(format_report(report))
    if args.json:
        atomic.write_text(args.json, report_to_json(report) + "\n")
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------------
# The report: numbagpt.profiler.measure's measurements, per step, with the model's FLOPs and memory


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _load_average():
    """The 1-minute load average and the core count: a busy machine makes the timings noisy."""
    try:
        return {"1min": os.getloadavg()[0], "cores": os.cpu_count()}
    except (OSError, AttributeError):
        return {"1min": None, "cores": os.cpu_count()}


def _kernel_rows(stats, steps, step):
    """One row per (kernel, phase), per step, slowest first; whole numbers stay ints in the JSON."""
    kernels = []
    for (name, phase), (calls, ns, flops, nbytes) in stats.items():
        ms, sec = ns / 1e6 / steps, ns / 1e9 / steps
        k = {"name": name, "phase": phase, "calls": calls / steps, "ms": ms,
             "pct": 100.0 * ms / step if step else 0.0, "flops": flops / steps, "bytes": nbytes / steps,
             "gflops": (flops / steps) / sec / 1e9 if sec > 0 else 0.0,
             "gbps": (nbytes / steps) / sec / 1e9 if sec > 0 else 0.0}
        for key in ("calls", "flops", "bytes"):
            if float(k[key]).is_integer():
                k[key] = int(k[key])
        kernels.append(k)
    return sorted(kernels, key=lambda k: -k["ms"])


def _family_rows(kernels):
    fams = {}
    for k in kernels:
        f = fams.setdefault(family(k["name"]), {"family": family(k["name"]), "calls": 0, "ms": 0.0,
                                                "pct": 0.0, "flops": 0, "bytes": 0})
        for key in ("calls", "ms", "pct", "flops", "bytes"):
            f[key] += k[key]
    return sorted(fams.values(), key=lambda f: -f["ms"])


def build_report(model, B, T, m, model_name=None):
    """The profile (docs/profiling.md) of `model` from the measurements `m` of numbagpt.profiler."""
    cfg, L, C = model.config, model.config.num_layers, model.config.channels
    step, base = _mean(m["step_ms"]), _mean(m["base_ms"])
    kernels = _kernel_rows(m["stats"], m["steps"], step)
    kernel_sum = sum(k["ms"] for k in kernels)
    tokens = B * T
    tokens_per_s = tokens / ((base if base is not None else step) / 1e3)
    fpt = model_flops_per_token(cfg, T)
    achieved = fpt["palm"] * tokens_per_s / 1e9
    calls_per_step = sum(k["calls"] for k in kernels)
    peak = m["peak"]
    return {
        "schema": "numbagpt.profile/1",
        "model": model_name,
        "config": {"max_seq_len": cfg.max_seq_len, "vocab_size": cfg.vocab_size, "num_layers": L,
                   "num_heads": cfg.num_heads, "channels": C, "padded_vocab_size": cfg.padded_vocab_size},
        "num_parameters": model.num_parameters,
        "batch": {"B": B, "T": T, "tokens": tokens},
        "device": m["device"],
        "device_name": m["device_name"],
        "timer": m["timer"],
        "threads": m["threads"],
        "threading_layer": m["threading_layer"],
        "load_average": _load_average(),
        "warmup": m["warmup"],
        "steps": m["steps"],
        "compile_ms": m["warmup_ms"][0],
        "warmup_ms": m["warmup_ms"],
        "compile_by_kernel": dict(sorted(m["compile_by_kernel"].items(), key=lambda kv: -kv[1])),
        "step_ms": step,
        "step_ms_all": m["step_ms"],
        "step_ms_unprofiled": base,
        "step_ms_unprofiled_all": m["base_ms"],
        "kernel_ms": kernel_sum,
        "kernel_ms_all": m["kernel_ms"],
        "host_ms": step - kernel_sum,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_basis": "unprofiled step" if base is not None else "profiled step",
        "flops_per_token": fpt["palm"],
        "flops_per_token_formula": (f"6*N + 12*L*C*T, N = {fpt['palm_N']} (all parameters but wpe), "
                                    f"L = {L}, C = {C}, T = {T}"),
        "flops_per_token_llmc": fpt["llmc"],
        "flops_per_token_llmc_formula": (f"6*N + 6*L*C*T, N = {fpt['llmc_N']} (all parameters), "
                                         f"L = {L}, C = {C}, T = {T}"),
        "kernel_flops_per_token": sum(k["flops"] for k in kernels) / tokens,
        "achieved_gflops": achieved,
        "peak_gflops": peak,
        "peak_source": m["peak_source"],
        "calibration_shape": list(m["calibration_shape"]) if m["calibration_shape"] else None,
        "reference_peaks": m["reference_peaks"],
        "mfu": achieved / peak if peak else None,
        "mfu_llmc": fpt["llmc"] * tokens_per_s / 1e9 / peak if peak else None,
        "overhead": {
            "proxy_ns_per_call": m["overhead_ns"],
            "calls_per_step": calls_per_step,
            "estimated_ms_per_step": m["overhead_ns"] * calls_per_step / 1e6,
            "measured_ms_per_step": (step - base) if base is not None else None,
        },
        "losses": m["losses"],
        "kernels": kernels,
        "families": _family_rows(kernels),
        "memory": {
            "estimate": memory_estimate(cfg, B, T, training=True, recompute=getattr(model, "recompute", 0)),
            "allocated": allocated_bytes(model),
            "measured": {"rss_before_model_bytes": m["rss_before"], **m["mem_after"], **m["dev_mem"]},
        },
    }


# The exact top-level keys of a report and of each kernel row: the JSON's stable schema.
REPORT_KEYS = frozenset((
    "schema", "model", "config", "num_parameters", "batch", "device", "device_name", "timer", "threads",
    "threading_layer", "load_average", "warmup", "steps", "compile_ms", "warmup_ms", "compile_by_kernel", "step_ms",
    "step_ms_all", "step_ms_unprofiled", "step_ms_unprofiled_all", "kernel_ms", "kernel_ms_all",
    "host_ms", "tokens_per_s", "tokens_per_s_basis", "flops_per_token", "flops_per_token_formula",
    "flops_per_token_llmc", "flops_per_token_llmc_formula", "kernel_flops_per_token",
    "achieved_gflops", "peak_gflops", "peak_source", "calibration_shape", "reference_peaks", "mfu",
    "mfu_llmc", "overhead", "losses", "kernels", "families", "memory"))
KERNEL_KEYS = ("name", "phase", "calls", "ms", "pct", "flops", "bytes", "gflops", "gbps")


def report_to_json(report):
    return json.dumps(report, indent=1, default=float)


# ---------------------------------------------------------------------------------------------------
# The printed table


def _fmt_bytes(n):
    return "n/a" if n is None else f"{mib(n):,.1f} MiB"


def _header(r):
    cfg, step = r["config"], r["step_ms"]
    lines = [f"numbagpt profile | model {r['model']} | L={cfg['num_layers']} NH={cfg['num_heads']} "
             f"C={cfg['channels']} maxT={cfg['max_seq_len']} V={cfg['vocab_size']} "
             f"Vp={cfg['padded_vocab_size']} | {r['num_parameters']:,} parameters",
             f"device {r['device']} ({r['device_name']}) | {r['threads']} threads ({r['threading_layer']}) "
             f"| B={r['batch']['B']} T={r['batch']['T']} ({r['batch']['tokens']} tokens/step) | warm-up "
             f"{r['warmup']}, timed steps {r['steps']} | timer {r['timer']}"]
    first = r["compile_ms"]
    lines.append(f"first step: {first / 1e3:.2f} s, of which about {max(0.0, first - step) / 1e3:.2f} s JIT compile "
                 "or cache load (first step - mean timed step)"
                 + (f"; later warm-up steps {', '.join(f'{x:.0f}' for x in r['warmup_ms'][1:])} ms"
                    if len(r["warmup_ms"]) > 1 else ""))
    top = list(r["compile_by_kernel"].items())[:4]
    if top:
        lines.append("  slowest kernels in the first step: " + ", ".join(f"{n} {ms / 1e3:.2f} s" for n, ms in top))
    load = r["load_average"]
    if load["1min"] is not None and load["cores"] and load["1min"] > load["cores"]:
        lines.append(f"WARNING: load average {load['1min']:.1f} on {load['cores']} cores: other processes "
                     "compete for the CPU, the timings are noisy (compare the min step with the mean)")
    return lines


def _kernel_table(r):
    step = r["step_ms"]
    hdr = (f"{'kernel':<22} {'phase':<9} {'calls':>6} {'ms/step':>10} {'%step':>6} {'GFLOP':>10} "
           f"{'MB':>10} {'GFLOP/s':>8} {'GB/s':>7}")
    lines = [hdr, "-" * len(hdr)]
    for k in r["kernels"]:
        calls = f"{k['calls']:d}" if isinstance(k["calls"], int) else f"{k['calls']:.1f}"
        lines.append(f"{k['name']:<22} {k['phase']:<9} {calls:>6} {k['ms']:>10.3f} {k['pct']:>5.1f}% "
                     f"{k['flops'] / 1e9:>10.4f} {k['bytes'] / 1e6:>10.2f} {k['gflops']:>8.2f} {k['gbps']:>7.2f}")
    lines.append("-" * len(hdr))
    tot_flops = sum(k["flops"] for k in r["kernels"])
    tot_bytes = sum(k["bytes"] for k in r["kernels"])
    ksec = r["kernel_ms"] / 1e3
    kg = tot_flops / ksec / 1e9 if ksec else 0.0
    kb = tot_bytes / ksec / 1e9 if ksec else 0.0
    lines.append(f"{'sum of kernels':<22} {'':<9} {r['overhead']['calls_per_step']:>6.0f} {r['kernel_ms']:>10.3f} "
                 f"{100 * r['kernel_ms'] / step:>5.1f}% {tot_flops / 1e9:>10.4f} {tot_bytes / 1e6:>10.2f} "
                 f"{kg:>8.2f} {kb:>7.2f}")
    lines.append(f"{'host / Python gap':<22} {'':<9} {'':>6} {r['host_ms']:>10.3f} {100 * r['host_ms'] / step:>5.1f}%")
    lines.append(f"{'measured step':<22} {'':<9} {'':>6} {step:>10.3f} {100.0:>5.1f}%")
    return lines


def _throughput(r):
    step, base, ov = r["step_ms"], r["step_ms_unprofiled"], r["overhead"]
    lines = ["by family: " + " | ".join(f"{f['family']} {f['pct']:.1f}%" for f in r["families"])]
    line = f"step: profiled {step:.1f} ms (min {min(r['step_ms_all']):.1f})"
    if base is not None:
        line += f" | unprofiled {base:.1f} ms (min {min(r['step_ms_unprofiled_all']):.1f})"
    lines.append(line)
    line = (f"proxy overhead: {ov['proxy_ns_per_call'] / 1e3:.2f} us/call x {ov['calls_per_step']:.0f} calls = "
            f"{ov['estimated_ms_per_step']:.3f} ms/step estimated")
    if ov["measured_ms_per_step"] is not None:
        line += f"; profiled - unprofiled step = {ov['measured_ms_per_step']:+.1f} ms measured"
    lines.append(line)
    lines.append(f"throughput: {r['tokens_per_s']:,.1f} tokens/s ({r['tokens_per_s_basis']})")
    lines.append(f"model FLOPs/token (PaLM / nanoGPT): {r['flops_per_token'] / 1e9:.4f} GFLOP = "
                 f"{r['flops_per_token_formula']}")
    lines.append(f"  llm.c's estimate: {r['flops_per_token_llmc'] / 1e9:.4f} GFLOP = "
                 f"{r['flops_per_token_llmc_formula']}")
    lines.append(f"  counted by the kernels above (incl. elementwise, softmax, AdamW): "
                 f"{r['kernel_flops_per_token'] / 1e9:.4f} GFLOP/token")
    if r["peak_gflops"]:
        lines.append(f"achieved {r['achieved_gflops']:.2f} GFLOP/s of model FLOPs | MFU {100 * r['mfu']:.1f}% "
                     f"(llm.c formula {100 * r['mfu_llmc']:.1f}%) of peak {r['peak_gflops']:.2f} GFLOP/s")
        lines.append(f"  peak: {r['peak_source']}")
    else:
        lines.append(f"achieved {r['achieved_gflops']:.2f} GFLOP/s of model FLOPs | no peak, so no MFU "
                     "(calibration off, or the CUDA simulator; give --peak-gflops)")
    g = r["reference_peaks"].get("numpy_sgemm")
    if g is not None:
        lines.append(f"  reference only: NumPy/BLAS sgemm, same shape, BLAS's own threads: {g:.2f} GFLOP/s "
                     f"(model FLOPs at {100 * r['achieved_gflops'] / g:.1f}% of it)")
    return lines


def _memory(r):
    est, alloc, meas = r["memory"]["estimate"], r["memory"]["allocated"], r["memory"]["measured"]
    lines = ["memory, from the config (float32):"]
    for key in ("parameters", "gradients", "adamw_m", "adamw_v", "activations", "activation_grads", "tokens"):
        a = alloc.get(key)
        lines.append(f"  {key:<17} {_fmt_bytes(est[key]):>14}"
                     + (f"   (allocated {_fmt_bytes(a)})" if a is not None else ""))
    lines.append(f"  {'total':<17} {_fmt_bytes(est['total']):>14}")
    acts = ", ".join(f"{n} {mib(b):.2f}" for n, b in est["activation_tensors"].items())
    lines.extend(textwrap.wrap("activations per tensor, MiB (the activation-grad buffer holds those of layout.GRAD_ACTIVATIONS): " + acts,
                               width=110, initial_indent="  ", subsequent_indent="    "))
    before, peak = meas["rss_before_model_bytes"], meas["peak_rss_bytes"]
    lines.append(f"measured: RSS before the model {_fmt_bytes(before)}, after the steps "
                 f"{_fmt_bytes(meas['rss_bytes'])}, peak {_fmt_bytes(peak)} ({meas['peak_rss_source']})")
    if before is not None and peak is not None:
        lines.append(f"  peak - before = {_fmt_bytes(peak - before)} against the {_fmt_bytes(est['total'])} estimated")
    if meas.get("device_used_bytes") is not None:
        lines.append(f"device memory in use {_fmt_bytes(meas['device_used_bytes'])} of "
                     f"{_fmt_bytes(meas['device_total_bytes'])}")
    return lines


def format_report(r):
    """The printed profile: header, the kernel table, totals, FLOPs and MFU, memory."""
    return "\n".join(_header(r) + [""] + _kernel_table(r) + [""] + _throughput(r) + [""] + _memory(r))


if __name__ == "__main__":
    raise SystemExit(main())
