"""Where a training step's time, FLOPs and memory go: per-kernel timing, FLOP and byte counts,
memory accounting. `bin/profile_gpt2` (numbagpt/cli/profile.py) is the command line; docs/profiling.md
explains every number.

How it measures: `TimingBackend` wraps a backend module (`numbagpt.cpu` or `numbagpt.cuda`) and is
handed to `GPT2(config, backend=proxy)` in its place. The model calls kernels only through
`self.backend.<kernel>(...)`, so every call passes through the proxy, which times it (CPU: a
`time.perf_counter_ns` pair around the call, the kernels are synchronous; GPU: CUDA events recorded
around the launch and read after the step; CUDA simulator: synchronize + clock) and adds the call's
FLOPs and bytes, computed from its size arguments by `kernel_cost`, to the row (kernel, phase).

Counting conventions (`kernel_cost`; the formulas are in docs/profiling.md and in each cost function):
- FLOPs: each +, −, ×, ÷, exp, tanh and sqrt of the kernel's math as written in docs/kernels.md counts
  1 (a multiply-add is 2); comparisons (max) and per-row constants (one division per row) are not
  counted. Causal attention counts only the T(T+1)/2 (query, key) pairs it computes.
- Bytes: every input is read once and every output written once (4 bytes a float32 or int32 element);
  an accumulating output (`+=`, every backward but crossentropy's) is read and written (2×). This is
  the compulsory traffic of a perfect cache; a kernel that re-reads its inputs moves more.
- Embedding gathers (encoder) count the B·T rows looked up, not the whole table.
"""
import math
import os
import sys
import time

import numpy as np

from .backend import BUFFERS, TRAINING_KERNELS
from .layout import F32, memory_estimate, mib, parameter_shapes
from .step import train_step

# ---------------------------------------------------------------------------------------------------
# FLOP and byte counts of each kernel, from its size arguments (argument names as in docs/kernels.md).
# Each returns (flops, bytes) as Python ints.


def _causal_pairs(T):
    """(query, key) pairs of causal attention per (b, h): Σ_t (t+1) = T(T+1)/2."""
    return T * (T + 1) // 2


def _encoder_forward(out, inp, wte, wpe, B, T, C):
    # out = wte[tok] + wpe[t]: 1 add per element. Reads tokens, B·T rows of wte, T rows of wpe.
    return B * T * C, F32 * (B * T + B * T * C + T * C + B * T * C)


def _encoder_backward(dwte, dwpe, dout, inp, B, T, C):
    # dwte[tok] += dout; dwpe[t] += dout: 2 adds per element; both accumulate (read + write).
    return 2 * B * T * C, F32 * (B * T * C + B * T + 2 * B * T * C + 2 * T * C)


def _layernorm_forward(out, mean, rstd, inp, weight, bias, B, T, C):
    # mean: 1 (add); variance: 3 (sub, square, add); out = (x-mean)·rstd·w + b: 4.
    return 8 * B * T * C, F32 * (B * T * C + 2 * C + B * T * C + 2 * B * T)


def _layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, T, C):
    # norm = (x-mean)·rstd: 2; dnorm = w·dout: 1; Σdnorm: 1; Σdnorm·norm: 2; dbias += dout: 1;
    # dweight += norm·dout: 2; dval = (dnorm − Σ1 − norm·Σ2)·rstd: 4; dinp += dval: 1. Total 14.
    reads = 2 * B * T * C + C + 2 * B * T             # dout, inp, weight, mean, rstd
    accum = 2 * (B * T * C + 2 * C)                   # dinp, dweight, dbias read + written
    return 14 * B * T * C, F32 * (reads + accum)


def _matmul_forward(out, inp, weight, bias, B, T, C, OC):
    # out = inp·Wᵀ (+ bias): 2·C per output element, +1 with a bias.
    has_bias = bias is not None
    flops = 2 * B * T * C * OC + (B * T * OC if has_bias else 0)
    nbytes = F32 * (B * T * C + OC * C + (OC if has_bias else 0) + B * T * OC)
    return flops, nbytes


def _matmul_backward(dinp, dweight, dbias, dout, inp, weight, B, T, C, OC):
    # dinp += dout·W (2·BT·OC·C); dweight += doutᵀ·inp (2·OC·BT·C); dbias += Σ_bt dout (BT·OC).
    has_bias = dbias is not None
    flops = 4 * B * T * C * OC + (B * T * OC if has_bias else 0)
    reads = B * T * OC + B * T * C + OC * C           # dout, inp, weight
    accum = 2 * (B * T * C + OC * C + (OC if has_bias else 0))
    return flops, F32 * (reads + accum)


def _attention_forward(out, preatt, att, inp, B, T, C, NH):
    # per causal pair: q·k 2·hs, scale 1, exp(x−max) 2, Σ 1, normalise 1, att·v 2·hs → 4·hs + 5.
    # Reads q, k, v (3·BTC); writes preatt (causal part), att (all of it: masked entries are 0), out.
    hs = C // NH
    P = B * NH * _causal_pairs(T)
    return P * (4 * hs + 5), F32 * (3 * B * T * C + P + B * NH * T * T + B * T * C)


def _attention_backward(dinp, dpreatt, datt, dout, inp, att, B, T, C, NH):
    # per causal pair: datt = dout·v 2·hs; dv += att·dout 2·hs; Σ att·datt 2; dpreatt = att·(datt−Σ) 2;
    # ·scale 1; dq += k·d 2·hs; dk += q·d 2·hs → 8·hs + 5.
    # Reads dout, qkv, att (causal part); dinp (B,T,3C) accumulates; writes dpreatt, datt (causal part).
    hs = C // NH
    P = B * NH * _causal_pairs(T)
    return P * (8 * hs + 5), F32 * (B * T * C + 3 * B * T * C + P + 2 * 3 * B * T * C + 2 * P)


def _gelu_forward(out, inp, N):
    # x³ 2, 0.044715·x³ 1, x + 1, ·√(2/π) 1, tanh 1, 1 + 1, 0.5·x 1, × 1 → 9.
    return 9 * N, F32 * 2 * N


def _gelu_backward(dinp, dout, inp, N):
    # x², x³ 2; tanh argument 3; tanh 1; sech² = 1 − tanh² 2; 0.5·(1+tanh) 2;
    # 0.5·x·sech²·√(2/π)·(1 + 3·0.044715·x²) 6; sum 1; dinp += local·dout 2 → 19.
    return 19 * N, F32 * (2 * N + 2 * N)


def _residual_forward(out, inp1, inp2, N):
    return N, F32 * 3 * N


def _residual_backward(dinp1, dinp2, dout, N):
    # two accumulations: dinp1 += dout, dinp2 += dout.
    return 2 * N, F32 * (N + 2 * 2 * N)


def _crossentropy_forward(losses, logits, targets, B, T, V, Vp):
    # per logit i < V: x − max 1, exp 1, Σ 1 (the max's comparisons and the row's log not counted).
    return 3 * B * T * V, F32 * (B * T * V + B * T + B * T)


def _crossentropy_backward(dlogits, dlosses, logits, targets, B, T, V, Vp):
    # softmax again 3 per logit, then (p − [i=target])·dloss: ·(1/Σ) 1, ·dloss 1 → 5 per logit i < V.
    # Reads the first V logits, targets, dlosses; writes all Vp columns of dlogits (padding = 0).
    return 5 * B * T * V, F32 * (B * T * V + 2 * B * T + B * T * Vp)


def _adamw_update(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, grad_scale, t, N):
    # g 1; m 3; v 4; m̂ 1; v̂ 1; sqrt 1; +eps 1; ÷ 1; wd·p 1; + 1; lr· 1; p − 1 → 17.
    # Reads grads; params, m, v are read and written.
    return 17 * N, F32 * (N + 2 * 3 * N)


def _global_norm_squared(out, grads, N):
    return 2 * N, F32 * (N + 1)


KERNEL_COSTS = {
    "encoder_forward": _encoder_forward, "encoder_backward": _encoder_backward,
    "layernorm_forward": _layernorm_forward, "layernorm_backward": _layernorm_backward,
    "matmul_forward": _matmul_forward, "matmul_backward": _matmul_backward,
    "attention_forward": _attention_forward, "attention_backward": _attention_backward,
    "gelu_forward": _gelu_forward, "gelu_backward": _gelu_backward,
    "residual_forward": _residual_forward, "residual_backward": _residual_backward,
    "crossentropy_forward": _crossentropy_forward, "crossentropy_backward": _crossentropy_backward,
    "adamw_update": _adamw_update, "global_norm_squared": _global_norm_squared,
}

assert set(KERNEL_COSTS) == set(TRAINING_KERNELS)   # the kernels a training step runs

# The backends' buffer helpers (docs/kernels.md, "Memory helpers"): timed too, with 0 FLOPs and the
# bytes they move.
HELPERS = tuple(name for name in BUFFERS if name != "synchronize")

# kernel name -> family (the file it lives in).
FAMILIES = ("encoder", "layernorm", "matmul", "attention", "gelu", "residual", "crossentropy", "adamw")


def family(name):
    if name in HELPERS:
        return "memory"
    if name == "global_norm_squared":
        return "adamw"
    for suffix in ("_forward", "_backward", "_update"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _nbytes(a):
    n = getattr(a, "nbytes", None)
    if n is None:
        a = np.asarray(a)
        n = a.nbytes
    return int(n)


def _helper_cost(name, args, kwargs):
    """Bytes a memory helper moves: fill_zero writes its array; copies read and write theirs."""
    args = list(args) + list(kwargs.values())
    if name == "fill_zero":
        return 0, _nbytes(args[0])
    if name == "zeros":
        n = int(args[0])
        dtype = args[1] if len(args) > 1 else np.float32
        return 0, n * np.dtype(dtype).itemsize
    if name in ("copy_to_device", "copy"):
        return 0, 2 * _nbytes(args[1])
    return 0, 2 * _nbytes(args[0])  # to_device, to_host


def kernel_cost(name, *args, **kwargs):
    """(flops, bytes) of one call `name(*args)` under the conventions of this module's docstring."""
    if name in HELPERS:
        return _helper_cost(name, args, kwargs)
    flops, nbytes = KERNEL_COSTS[name](*args, **kwargs)
    return int(flops), int(nbytes)


# ---------------------------------------------------------------------------------------------------
# The timing proxy


class TimingBackend:
    """A stand-in for a backend module that times every kernel and memory-helper call.

    Calls are recorded only while `phase` is not None (numbagpt.step.train_step sets it, through
    `set_phase`, to "forward", "zero_grad", "backward" or "update"); otherwise they pass straight
    through. `stats` maps
    (name, phase) to [calls, ns, flops, bytes], summed until `reset()`. Every other attribute (NAME,
    synchronize, ...) is the wrapped backend's own.

    timer: "cpu" (perf_counter_ns around the call), "events" (CUDA events around the launch, read by
    `collect()` after a synchronize) or "sync" (synchronize before and after, then the clock: the
    CUDA simulator, or any backend whose timing is otherwise unclear). Default: the backend's TIMER.
    """

    def __init__(self, backend, timer=None):
        self._backend = backend
        if timer is None:
            timer = backend.TIMER
        if timer not in ("cpu", "events", "sync"):
            raise ValueError(f"unknown timer {timer!r}")
        self.timer = timer
        self.phase = None
        self.stats = {}
        self._pending = []   # (key, start event, end event), read by collect()
        self._events = []    # free CUDA events, reused

    def __getattr__(self, name):
        attr = getattr(self._backend, name)
        if callable(attr) and (name in KERNEL_COSTS or name in HELPERS):
            wrapped = self._wrap(name, attr)
            self.__dict__[name] = wrapped   # cached: later lookups skip __getattr__
            return wrapped
        return attr

    def set_phase(self, name):
        self.phase = name

    def reset(self):
        self.collect()
        self.stats = {}

    def _add(self, key, ns, flops, nbytes):
        row = self.stats.get(key)
        if row is None:
            self.stats[key] = [1, ns, flops, nbytes]
        else:
            row[0] += 1
            row[1] += ns
            row[2] += flops
            row[3] += nbytes

    def _event(self):
        if self._events:
            return self._events.pop()
        return self._backend.event()

    def _wrap(self, name, fn):
        clock = time.perf_counter_ns
        cost = kernel_cost
        backend = self._backend

        if self.timer == "cpu":
            def timed(*args, **kwargs):
                if self.phase is None:
                    return fn(*args, **kwargs)
                t0 = clock()
                out = fn(*args, **kwargs)
                t1 = clock()
                flops, nbytes = cost(name, *args, **kwargs)
                self._add((name, self.phase), t1 - t0, flops, nbytes)
                return out
        elif self.timer == "sync":
            def timed(*args, **kwargs):
                if self.phase is None:
                    return fn(*args, **kwargs)
                backend.synchronize()
                t0 = clock()
                out = fn(*args, **kwargs)
                backend.synchronize()
                t1 = clock()
                flops, nbytes = cost(name, *args, **kwargs)
                self._add((name, self.phase), t1 - t0, flops, nbytes)
                return out
        else:
            def timed(*args, **kwargs):
                if self.phase is None:
                    return fn(*args, **kwargs)
                start, end = self._event(), self._event()
                start.record()
                out = fn(*args, **kwargs)
                end.record()
                flops, nbytes = cost(name, *args, **kwargs)
                key = (name, self.phase)
                self._add(key, 0, flops, nbytes)
                self._pending.append((key, start, end))
                return out
        timed.__name__ = name
        timed.__wrapped__ = fn
        return timed

    def collect(self):
        """Read the CUDA events of the calls since the last collect (synchronizes); no-op otherwise."""
        if not self._pending:
            return
        self._backend.synchronize()
        for key, start, end in self._pending:
            end.synchronize()
            self.stats[key][1] += int(round(start.elapsed_time(end) * 1e6))
            self._events.extend((start, end))
        self._pending = []

    def total_ns(self):
        self.collect()
        return sum(row[1] for row in self.stats.values())


def measure_proxy_overhead(timer="cpu", backend=None, n=20000):
    """Nanoseconds one recorded call through a TimingBackend adds to a call of a no-op function
    (the median of 5 rounds of n calls, direct vs proxied)."""
    import types

    def noop(out, inp1, inp2, N):
        return None

    fake = types.SimpleNamespace(NAME=getattr(backend, "NAME", "fake"), residual_forward=noop,
                                 synchronize=getattr(backend, "synchronize", lambda: None))
    proxy = TimingBackend(fake, timer=timer)
    proxy.phase = "overhead"
    a = np.zeros(4, dtype=np.float32)
    wrapped = proxy.residual_forward
    diffs = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            noop(a, a, a, 4)
        t1 = time.perf_counter_ns()
        for _ in range(n):
            wrapped(a, a, a, 4)
        t2 = time.perf_counter_ns()
        proxy.reset()
        diffs.append(((t2 - t1) - (t1 - t0)) / n)
    diffs.sort()
    return max(0.0, diffs[len(diffs) // 2])


# ---------------------------------------------------------------------------------------------------
# Memory accounting


def allocated_bytes(model):
    """Bytes of the buffers `model` actually holds (None where not allocated yet), same keys as
    memory_estimate's buffers."""
    def nb(a):
        return None if a is None else _nbytes(a)
    tokens = 0
    for a in (getattr(model, "inputs", None), getattr(model, "targets", None)):
        if a is not None:
            tokens += _nbytes(a)
    return {"parameters": nb(model.params_flat), "gradients": nb(model.grads_flat),
            "adamw_m": nb(model.m_flat), "adamw_v": nb(model.v_flat),
            "activations": nb(model.acts_flat), "activation_grads": nb(model.grads_acts_flat),
            "tokens": tokens}


def process_memory():
    """{rss_bytes, peak_rss_bytes, peak_rss_source}: this process's resident set now (psutil) and its
    peak (psutil's peak_wset on Windows, else getrusage ru_maxrss, else /proc VmHWM)."""
    out = {"rss_bytes": None, "peak_rss_bytes": None, "peak_rss_source": None}
    try:
        import psutil
        info = psutil.Process().memory_info()
        out["rss_bytes"] = int(info.rss)
        if getattr(info, "peak_wset", None):
            out["peak_rss_bytes"], out["peak_rss_source"] = int(info.peak_wset), "psutil peak_wset"
    except ImportError:
        pass
    if out["peak_rss_bytes"] is None:
        try:
            import resource
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # Linux reports KiB, macOS bytes
            out["peak_rss_bytes"] = int(peak if sys.platform == "darwin" else peak * 1024)
            out["peak_rss_source"] = "getrusage ru_maxrss"
        except (ImportError, OSError):
            pass
    if out["rss_bytes"] is None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out["rss_bytes"] = int(line.split()[1]) * 1024
        except OSError:
            pass
    return out


def device_memory(backend):
    """{device_used_bytes, device_total_bytes} of the backend's device; Nones where it has none
    (the CPU), or it won't say (the CUDA simulator)."""
    used, total = backend.memory_info() or (None, None)
    return {"device_used_bytes": used, "device_total_bytes": total}


# ---------------------------------------------------------------------------------------------------
# Model FLOPs per token


def model_flops_per_token(config, T):
    """The usual estimates of training FLOPs per token (forward + backward, no optimizer).

    palm: PaLM appendix B / nanoGPT's estimate_mfu: 6·N + 12·L·C·T, with N = get_num_params() =
          all parameters but wpe (wte counts: it is the tied output head). nanoGPT uses T = block_size;
          here T is the run's sequence length. The attention term counts the full T×T scores.
    llmc: llm.c's gpt2_estimate_mfu: 6·N + 6·L·C·T with N = all parameters (wpe included); its
          attention term is half PaLM's, i.e. causal (only t2 ≤ t computed)."""
    n_all = sum(math.prod(s) for _, s in parameter_shapes(config))
    n_no_wpe = n_all - config.max_seq_len * config.channels
    L, C = config.num_layers, config.channels
    return {"palm": 6 * n_no_wpe + 12 * L * C * T, "palm_N": n_no_wpe,
            "llmc": 6 * n_all + 6 * L * C * T, "llmc_N": n_all}


# ---------------------------------------------------------------------------------------------------
# Peak calibration

CALIBRATION_SHAPE = (1024, 768, 3072)   # (B·T, C, OC): GPT-2 small's fc layer over 1024 tokens


def calibrate_matmul(backend, shape=CALIBRATION_SHAPE, repeats=5):
    """GFLOP/s of the backend's own matmul_forward on (BT, C) × (OC, C)ᵀ + bias: the best of
    `repeats` timed calls after one untimed call."""
    BT, C, OC = shape
    rng = np.random.default_rng(0)
    inp = backend.to_device(rng.standard_normal(BT * C, dtype=np.float32))
    weight = backend.to_device(rng.standard_normal(OC * C, dtype=np.float32) * np.float32(0.02))
    bias = backend.to_device(np.zeros(OC, dtype=np.float32))
    out = backend.zeros(BT * OC)
    backend.matmul_forward(out, inp, weight, bias, 1, BT, C, OC)
    backend.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.matmul_forward(out, inp, weight, bias, 1, BT, C, OC)
        backend.synchronize()
        best = min(best, time.perf_counter() - t0)
    flops = 2 * BT * C * OC + BT * OC
    return flops / best / 1e9


def calibrate_numpy_sgemm(shape=CALIBRATION_SHAPE, repeats=5):
    """GFLOP/s of NumPy's float32 matmul (its BLAS, with the BLAS's own threads) on the same shape."""
    BT, C, OC = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((BT, C), dtype=np.float32)
    w = rng.standard_normal((OC, C), dtype=np.float32)
    out = np.empty((BT, OC), dtype=np.float32)
    np.matmul(a, w.T, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, w.T, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * BT * C * OC / best / 1e9


# ---------------------------------------------------------------------------------------------------
# The profile


def _threads():
    try:
        import numba
        layer = None
        try:
            layer = numba.threading_layer()
        except ValueError:   # no parallel region has run yet
            layer = numba.config.THREADING_LAYER
        return numba.get_num_threads(), layer
    except ImportError:
        return None, None


def _step(model, inputs, targets, t, proxy=None):
    """One step as bin/train_gpt2 takes it (lr 1e-4, clipping at 1), the phases marked when `proxy`
    (a TimingBackend) is given, else untimed. Returns the loss."""
    phase = proxy.set_phase if proxy is not None else None
    return train_step(model, [(inputs, targets)], lr=1e-4, t=t, phase=phase).loss


def profile_model(model, proxy, B, T, *, steps=3, warmup=1, baseline_steps=None, seed=1337,
                  peak_gflops=None, calibrate=True, calibration_shape=CALIBRATION_SHAPE,
                  model_name=None, rss_before=None):
    """Profile training steps of `model`, built with backend=`proxy` (a TimingBackend), on random
    tokens (seeded). Returns the report dict (see docs/profiling.md; `report_to_json` is its JSON)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (the first step compiles), got {warmup}")
    if B < 1 or T < 1:
        raise ValueError(f"B and T must be positive, got B={B} T={T}")
    cfg = model.config
    if T > cfg.max_seq_len:
        raise ValueError(f"sequence length T={T} exceeds the model's max_seq_len {cfg.max_seq_len}")
    if baseline_steps is None:
        baseline_steps = steps
    raw = proxy._backend
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, size=(B, T + 1), dtype=np.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if rss_before is None:
        rss_before = process_memory()["rss_bytes"]

    # Warm-up: the first step compiles (or loads from Numba's cache) every kernel; its per-kernel
    # time is kept as the compile time of each kernel.
    step_no = 0
    warmup_ms = []
    compile_by_kernel = {}
    losses = []
    for i in range(warmup):
        proxy.reset()
        step_no += 1
        t0 = time.perf_counter()
        losses.append(_step(model, inputs, targets, step_no, proxy))
        warmup_ms.append((time.perf_counter() - t0) * 1e3)
        if i == 0:
            proxy.collect()
            for (name, _), row in proxy.stats.items():
                compile_by_kernel[name] = compile_by_kernel.get(name, 0.0) + row[1] / 1e6

    # Timed steps, interleaved with untimed ones (the proxy passes the calls straight through; same
    # model, same buffers) so the two step times see the same machine state.
    proxy.reset()
    step_ms, kernel_ms, base_ms = [], [], []
    for i in range(max(steps, baseline_steps)):
        if i < steps:
            before = proxy.total_ns()
            step_no += 1
            t0 = time.perf_counter()
            losses.append(_step(model, inputs, targets, step_no, proxy))
            step_ms.append((time.perf_counter() - t0) * 1e3)
            kernel_ms.append((proxy.total_ns() - before) / 1e6)
        if i < baseline_steps:
            step_no += 1
            t0 = time.perf_counter()
            losses.append(_step(model, inputs, targets, step_no))
            base_ms.append((time.perf_counter() - t0) * 1e3)
    proxy.collect()
    stats = {key: list(row) for key, row in proxy.stats.items()}

    mem_after = process_memory()
    dev_mem = device_memory(raw)
    threads, layer = _threads()

    # Peaks: measured with the backend's own matmul unless given.
    reference_peaks = {}
    calib_gflops = None
    if calibrate and raw.SIMULATOR:
        calibrate = False   # the simulator's speed says nothing about a GPU, and it would take hours
    if calibrate:
        calib_gflops = calibrate_matmul(raw, calibration_shape)
        reference_peaks["numbagpt_matmul_forward"] = calib_gflops
        if raw.HOST_MEMORY:   # a host backend: compare with the host's BLAS too
            reference_peaks["numpy_sgemm"] = calibrate_numpy_sgemm(calibration_shape)
    if peak_gflops is not None:
        peak, peak_source = float(peak_gflops), "given (--peak-gflops)"
    elif calib_gflops is not None:
        BT, C, OC = calibration_shape
        peak = calib_gflops
        peak_source = f"measured: numbagpt matmul_forward, (BT={BT}, C={C}) x (OC={OC}, C)^T + bias, best of 5"
    else:
        peak, peak_source = None, None

    return build_report(model, B, T, stats, steps=steps, warmup=warmup, warmup_ms=warmup_ms,
                        compile_by_kernel=compile_by_kernel, step_ms=step_ms, kernel_ms=kernel_ms,
                        base_ms=base_ms, peak=peak, peak_source=peak_source,
                        reference_peaks=reference_peaks, threads=threads, threading_layer=layer,
                        rss_before=rss_before, mem_after=mem_after, dev_mem=dev_mem,
                        proxy=proxy, model_name=model_name, losses=losses,
                        calibration_shape=calibration_shape if calibrate else None)


def _load_average():
    """The 1-minute load average and the core count: a busy machine makes the timings noisy."""
    try:
        return {"1min": os.getloadavg()[0], "cores": os.cpu_count()}
    except (OSError, AttributeError):
        return {"1min": None, "cores": os.cpu_count()}


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def build_report(model, B, T, stats, *, steps, warmup, warmup_ms, compile_by_kernel, step_ms, kernel_ms,
                 base_ms, peak, peak_source, reference_peaks, threads, threading_layer, rss_before,
                 mem_after, dev_mem, proxy, model_name, losses, calibration_shape):
    cfg = model.config
    step = _mean(step_ms)
    base = _mean(base_ms)
    kernels = []
    for (name, phase), (calls, ns, flops, nbytes) in stats.items():
        ms = ns / 1e6 / steps
        sec = ns / 1e9 / steps
        kernels.append({
            "name": name, "phase": phase, "calls": calls / steps, "ms": ms,
            "pct": 100.0 * ms / step if step else 0.0,
            "flops": flops / steps, "bytes": nbytes / steps,
            "gflops": (flops / steps) / sec / 1e9 if sec > 0 else 0.0,
            "gbps": (nbytes / steps) / sec / 1e9 if sec > 0 else 0.0,
        })
    for k in kernels:   # whole numbers stay ints in the JSON
        for key in ("calls", "flops", "bytes"):
            if float(k[key]).is_integer():
                k[key] = int(k[key])
    kernels.sort(key=lambda k: -k["ms"])

    fams = {}
    for k in kernels:
        f = fams.setdefault(family(k["name"]), {"family": family(k["name"]), "calls": 0, "ms": 0.0,
                                                "pct": 0.0, "flops": 0, "bytes": 0})
        for key in ("calls", "ms", "pct", "flops", "bytes"):
            f[key] += k[key]
    families = sorted(fams.values(), key=lambda f: -f["ms"])

    kernel_sum = sum(k["ms"] for k in kernels)
    tokens = B * T
    basis_ms = base if base is not None else step
    tokens_per_s = tokens / (basis_ms / 1e3)
    fpt = model_flops_per_token(cfg, T)
    counted_flops = sum(k["flops"] for k in kernels)
    achieved = fpt["palm"] * tokens_per_s / 1e9
    calls_per_step = sum(k["calls"] for k in kernels)
    overhead_ns = measure_proxy_overhead(proxy.timer, proxy._backend)

    est = memory_estimate(cfg, B, T, training=True, recompute=getattr(model, "recompute", 0))
    memory = {
        "estimate": est,
        "allocated": allocated_bytes(model),
        "measured": {"rss_before_model_bytes": rss_before, **mem_after, **dev_mem},
    }

    return {
        "schema": "numbagpt.profile/1",
        "model": model_name,
        "config": {"max_seq_len": cfg.max_seq_len, "vocab_size": cfg.vocab_size,
                   "num_layers": cfg.num_layers, "num_heads": cfg.num_heads, "channels": cfg.channels,
                   "padded_vocab_size": cfg.padded_vocab_size},
        "num_parameters": model.num_parameters,
        "batch": {"B": B, "T": T, "tokens": tokens},
        "device": proxy._backend.NAME,
        "device_name": proxy._backend.device_name(),
        "timer": proxy.timer,
        "threads": threads,
        "threading_layer": threading_layer,
        "load_average": _load_average(),
        "warmup": warmup,
        "steps": steps,
        "compile_ms": warmup_ms[0],
        "warmup_ms": warmup_ms,
        "compile_by_kernel": dict(sorted(compile_by_kernel.items(), key=lambda kv: -kv[1])),
        "step_ms": step,
        "step_ms_all": step_ms,
        "step_ms_unprofiled": base,
        "step_ms_unprofiled_all": base_ms,
        "kernel_ms": kernel_sum,
        "kernel_ms_all": kernel_ms,
        "host_ms": step - kernel_sum,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_basis": "unprofiled step" if base is not None else "profiled step",
        "flops_per_token": fpt["palm"],
        "flops_per_token_formula": (f"6*N + 12*L*C*T, N = {fpt['palm_N']} (all parameters but wpe), "
                                    f"L = {cfg.num_layers}, C = {cfg.channels}, T = {T}"),
        "flops_per_token_llmc": fpt["llmc"],
        "flops_per_token_llmc_formula": (f"6*N + 6*L*C*T, N = {fpt['llmc_N']} (all parameters), "
                                         f"L = {cfg.num_layers}, C = {cfg.channels}, T = {T}"),
        "kernel_flops_per_token": counted_flops / tokens,
        "achieved_gflops": achieved,
        "peak_gflops": peak,
        "peak_source": peak_source,
        "calibration_shape": list(calibration_shape) if calibration_shape else None,
        "reference_peaks": reference_peaks,
        "mfu": achieved / peak if peak else None,
        "mfu_llmc": fpt["llmc"] * tokens_per_s / 1e9 / peak if peak else None,
        "overhead": {
            "proxy_ns_per_call": overhead_ns,
            "calls_per_step": calls_per_step,
            "estimated_ms_per_step": overhead_ns * calls_per_step / 1e6,
            "measured_ms_per_step": (step - base) if base is not None else None,
        },
        "losses": losses,
        "kernels": kernels,
        "families": families,
        "memory": memory,
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
    import json
    return json.dumps(report, indent=1, default=float)


# ---------------------------------------------------------------------------------------------------
# The printed table


def _fmt_bytes(n):
    if n is None:
        return "n/a"
    return f"{mib(n):,.1f} MiB"


def format_report(r):
    """The printed profile: header, the kernel table, totals, FLOPs and MFU, memory."""
    import textwrap
    cfg = r["config"]
    lines = []
    B, T = r["batch"]["B"], r["batch"]["T"]
    step = r["step_ms"]
    lines.append(f"numbagpt profile | model {r['model']} | L={cfg['num_layers']} NH={cfg['num_heads']} "
                 f"C={cfg['channels']} maxT={cfg['max_seq_len']} V={cfg['vocab_size']} "
                 f"Vp={cfg['padded_vocab_size']} | {r['num_parameters']:,} parameters")
    lines.append(f"device {r['device']} ({r['device_name']}) | {r['threads']} threads ({r['threading_layer']}) "
                 f"| B={B} T={T} ({r['batch']['tokens']} tokens/step) | warm-up {r['warmup']}, "
                 f"timed steps {r['steps']} | timer {r['timer']}")
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
    lines.append("")
    hdr = (f"{'kernel':<22} {'phase':<9} {'calls':>6} {'ms/step':>10} {'%step':>6} {'GFLOP':>10} "
           f"{'MB':>10} {'GFLOP/s':>8} {'GB/s':>7}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for k in r["kernels"]:
        calls = k["calls"]
        calls_s = f"{calls:d}" if isinstance(calls, int) else f"{calls:.1f}"
        lines.append(f"{k['name']:<22} {k['phase']:<9} {calls_s:>6} {k['ms']:>10.3f} {k['pct']:>5.1f}% "
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
    lines.append("")
    lines.append("by family: " + " | ".join(f"{f['family']} {f['pct']:.1f}%" for f in r["families"]))
    ov = r["overhead"]
    base = r["step_ms_unprofiled"]
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
    for name, g in r["reference_peaks"].items():
        if name == "numpy_sgemm":
            lines.append(f"  reference only: NumPy/BLAS sgemm, same shape, BLAS's own threads: {g:.2f} GFLOP/s "
                         f"(model FLOPs at {100 * r['achieved_gflops'] / g:.1f}% of it)")
    lines.append("")
    m = r["memory"]
    est, alloc, meas = m["estimate"], m["allocated"], m["measured"]
    lines.append("memory, from the config (float32):")
    for key in ("parameters", "gradients", "adamw_m", "adamw_v", "activations", "activation_grads", "tokens"):
        a = alloc.get(key)
        lines.append(f"  {key:<17} {_fmt_bytes(est[key]):>14}"
                     + (f"   (allocated {_fmt_bytes(a)})" if a is not None else ""))
    lines.append(f"  {'total':<17} {_fmt_bytes(est['total']):>14}")
    acts = ", ".join(f"{n} {mib(b):.2f}" for n, b in est["activation_tensors"].items())
    lines.extend(textwrap.wrap("activations per tensor, MiB (the activation-grad buffer is the same): " + acts,
                               width=110, initial_indent="  ", subsequent_indent="    "))
    before, peak = meas["rss_before_model_bytes"], meas["peak_rss_bytes"]
    lines.append(f"measured: RSS before the model {_fmt_bytes(before)}, after the steps "
                 f"{_fmt_bytes(meas['rss_bytes'])}, peak {_fmt_bytes(peak)} ({meas['peak_rss_source']})")
    if before is not None and peak is not None:
        lines.append(f"  peak - before = {_fmt_bytes(peak - before)} against the {_fmt_bytes(est['total'])} estimated")
    if meas.get("device_used_bytes") is not None:
        lines.append(f"device memory in use {_fmt_bytes(meas['device_used_bytes'])} of "
                     f"{_fmt_bytes(meas['device_total_bytes'])}")
    return "\n".join(lines)
