"""The profile report: numbagpt.profiler.measure's measurements, per step, with the model's FLOPs and
memory (`build_report`; its JSON schema is REPORT_KEYS), and the table bin/profile_gpt2 prints
(`format_report`). docs/profiling.md explains the columns and the formulas.
"""
import json
import os
import textwrap

from .costs import family, model_flops_per_token
from .layout import allocated_bytes, memory_estimate, mib

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
        "precision": getattr(model, "precision", "fp32"),
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
    "schema", "model", "config", "num_parameters", "batch", "device", "device_name", "precision", "timer", "threads",
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
    model = f"model {r['model']} | " if r["model"] else ""   # profile_model(..., model_name=None): unnamed
    lines = [f"numbagpt profile | {model}L={cfg['num_layers']} NH={cfg['num_heads']} "
             f"C={cfg['channels']} maxT={cfg['max_seq_len']} V={cfg['vocab_size']} "
             f"Vp={cfg['padded_vocab_size']} | {r['num_parameters']:,} parameters",
             f"device {r['device']} ({r['device_name']}) | precision {r['precision']} | {r['threads']} threads "
             f"({r['threading_layer']}) "
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
    w = max([22] + [len(k["name"]) for k in r["kernels"]])   # the name column fits the longest name
    hdr = (f"{'kernel':<{w}} {'phase':<9} {'calls':>6} {'ms/step':>10} {'%step':>6} {'GFLOP':>10} "
           f"{'MB':>10} {'GFLOP/s':>8} {'GB/s':>7}")
    lines = [hdr, "-" * len(hdr)]
    for k in r["kernels"]:
        calls = f"{k['calls']:d}" if isinstance(k["calls"], int) else f"{k['calls']:.1f}"
        lines.append(f"{k['name']:<{w}} {k['phase']:<9} {calls:>6} {k['ms']:>10.3f} {k['pct']:>5.1f}% "
                     f"{k['flops'] / 1e9:>10.4f} {k['bytes'] / 1e6:>10.2f} {k['gflops']:>8.2f} {k['gbps']:>7.2f}")
    lines.append("-" * len(hdr))
    tot_flops = sum(k["flops"] for k in r["kernels"])
    tot_bytes = sum(k["bytes"] for k in r["kernels"])
    ksec = r["kernel_ms"] / 1e3
    kg = tot_flops / ksec / 1e9 if ksec else 0.0
    kb = tot_bytes / ksec / 1e9 if ksec else 0.0
    lines.append(f"{'sum of kernels':<{w}} {'':<9} {r['overhead']['calls_per_step']:>6.0f} {r['kernel_ms']:>10.3f} "
                 f"{100 * r['kernel_ms'] / step:>5.1f}% {tot_flops / 1e9:>10.4f} {tot_bytes / 1e6:>10.2f} "
                 f"{kg:>8.2f} {kb:>7.2f}")
    lines.append(f"{'host / Python gap':<{w}} {'':<9} {'':>6} {r['host_ms']:>10.3f} "
                 f"{100 * r['host_ms'] / step:>5.1f}%")
    lines.append(f"{'measured step':<{w}} {'':<9} {'':>6} {step:>10.3f} {100.0:>5.1f}%")
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
    lines.extend(textwrap.wrap("activations per tensor, MiB (the activation-grad buffer holds those of "
                               "layout.GRAD_ACTIVATIONS): " + acts,
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


