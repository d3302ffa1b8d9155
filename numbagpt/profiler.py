"""Timing of a training step, kernel by kernel: the timing proxy, the process's memory, the peak
calibration and the profile's measurement loop. The cost model (FLOPs and bytes per kernel call) is
numbagpt/costs.py, the memory accounting numbagpt/layout.py, and the report and its printed table
numbagpt/cli/profile.py (`bin/profile_gpt2`); docs/profiling.md explains every number.

How it measures: `TimingBackend` wraps a backend module (`numbagpt.cpu` or `numbagpt.cuda`) and is
handed to `GPT2(config, backend=proxy)` in its place. The model calls kernels only through
`self.backend.<kernel>(...)`, so every call passes through the proxy, which times it (CPU: a
`time.perf_counter_ns` pair around the call, the kernels are synchronous; GPU: CUDA events recorded
around the launch and read after the step; CUDA simulator: synchronize + clock) and adds the call's
FLOPs and bytes (`costs.kernel_cost`) to the row (kernel, phase).
"""
import sys
import time
import types

import numpy as np

# The cost model and the memory accounting, importable from here too (numbagpt.profiler.kernel_cost).
from .flags import NONNEG, POSITIVE, check_value
from .costs import HELPERS, KERNEL_COSTS, family, kernel_cost, model_flops_per_token  # noqa: F401
from .layout import allocated_bytes  # noqa: F401
from .model import PRECISIONS
from .report import REPORT_KEYS, build_report, format_report, report_to_json  # noqa: F401 (the report, here too)
from .train.step import train_step

TIMERS = ("cpu", "events", "sync")


class TimingBackend:
    """A stand-in for a backend module that times every kernel and memory-helper call.

    Calls are recorded only while `phase` is not None (numbagpt.train.step.train_step sets it, through
    `set_phase`, to "forward", "zero_grad", "backward" or "update"); otherwise they pass straight
    through. `stats` maps (name, phase) to [calls, ns, flops, bytes], summed until `reset()`. Every
    other attribute (NAME, synchronize, ...) is the wrapped backend's own.

    timer: "cpu" (perf_counter_ns around the call), "events" (CUDA events around the launch, read by
    `collect()` after a synchronize) or "sync" (synchronize before and after, then the clock: the
    CUDA simulator, or any backend whose timing is otherwise unclear). Default: the backend's TIMER.
    """

    def __init__(self, backend, timer=None):
        self._backend = backend
        self.timer = backend.TIMER if timer is None else timer
        if self.timer not in TIMERS:
            raise ValueError(f"unknown timer {self.timer!r}")
        self.phase = None
        self.stats = {}
        self._pending = []   # (key, start event, end event), read by collect()
        self._events = []    # free CUDA events, reused

    def __getattr__(self, name):
        attr = getattr(self._backend, name)
        if callable(attr) and (name in KERNEL_COSTS or name in HELPERS):
            attr = self.__dict__[name] = self._wrap(name, attr)   # cached: later lookups skip __getattr__
        return attr

    def set_phase(self, name):
        self.phase = name

    def reset(self):
        self.collect()
        self.stats = {}

    def _add(self, key, ns, flops, nbytes):
        row = self.stats.setdefault(key, [0, 0, 0, 0])
        row[0] += 1
        row[1] += ns
        row[2] += flops
        row[3] += nbytes

    def _event(self):
        return self._events.pop() if self._events else self._backend.event()

    def _wrap(self, name, fn):
        clock = time.perf_counter_ns
        sync = self._backend.synchronize if self.timer == "sync" else None
        events = self.timer == "events"

        def timed(*args, **kwargs):
            if self.phase is None:
                return fn(*args, **kwargs)
            key = (name, self.phase)
            flops, nbytes = kernel_cost(name, *args, **kwargs)
            if events:   # no synchronize between kernels: the events are read by collect()
                start, end = self._event(), self._event()
                start.record()
                out = fn(*args, **kwargs)
                end.record()
                self._pending.append((key, start, end))
                self._add(key, 0, flops, nbytes)
                return out
            if sync:
                sync()
            t0 = clock()
            out = fn(*args, **kwargs)
            if sync:
                sync()
            self._add(key, clock() - t0, flops, nbytes)
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
    def noop(out, inp, N):
        return None

    fake = types.SimpleNamespace(NAME=getattr(backend, "NAME", "fake"), gelu_forward=noop,
                                 synchronize=getattr(backend, "synchronize", lambda: None))
    proxy = TimingBackend(fake, timer=timer)
    proxy.phase = "overhead"
    a = np.zeros(4, dtype=np.float32)
    wrapped = proxy.gelu_forward
    diffs = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            noop(a, a, 4)
        t1 = time.perf_counter_ns()
        for _ in range(n):
            wrapped(a, a, 4)
        t2 = time.perf_counter_ns()
        proxy.reset()
        diffs.append(((t2 - t1) - (t1 - t0)) / n)
    return max(0.0, sorted(diffs)[len(diffs) // 2])


# ---------------------------------------------------------------------------------------------------
# The process's memory and threads


def process_memory():
    """{rss_bytes, peak_rss_bytes, peak_rss_source}: this process's resident set now (psutil) and its
    peak (psutil's peak_wset on Windows, else getrusage ru_maxrss, else None)."""
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


def threads():
    """(Numba's thread count, its threading layer)."""
    try:
        import numba
    except ImportError:
        return None, None
    try:
        layer = numba.threading_layer()
    except ValueError:   # no parallel region has run yet
        layer = numba.config.THREADING_LAYER
    return numba.get_num_threads(), layer


# ---------------------------------------------------------------------------------------------------
# Peak calibration

CALIBRATION_SHAPE = (1024, 768, 3072)   # (B·T, C, OC): GPT-2 small's fc layer over 1024 tokens


def _best_seconds(fn, repeats):
    """The fastest of `repeats` timed calls of fn() after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate_matmul(backend, shape=CALIBRATION_SHAPE, repeats=5, kernel="matmul_forward"):
    """GFLOP/s of the backend's own `kernel` (matmul_forward, or matmul_forward_bf16 for a bf16 model)
    on (BT, C) × (OC, C)ᵀ + bias: the best of `repeats` timed calls after one untimed call."""
    BT, C, OC = shape
    rng = np.random.default_rng(0)
    inp = backend.to_device(rng.standard_normal(BT * C, dtype=np.float32))
    weight = backend.to_device(rng.standard_normal(OC * C, dtype=np.float32) * np.float32(0.02))
    bias = backend.to_device(np.zeros(OC, dtype=np.float32))
    out = backend.zeros(BT * OC)

    def call():
        getattr(backend, kernel)(out, inp, weight, bias, 1, BT, C, OC)
        backend.synchronize()
    return (2 * BT * C * OC + BT * OC) / _best_seconds(call, repeats) / 1e9


def calibrate_numpy_sgemm(shape=CALIBRATION_SHAPE, repeats=5):
    """GFLOP/s of NumPy's float32 matmul (its BLAS, with the BLAS's own threads) on the same shape."""
    BT, C, OC = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((BT, C), dtype=np.float32)
    w = rng.standard_normal((OC, C), dtype=np.float32)
    out = np.empty((BT, OC), dtype=np.float32)
    return 2 * BT * C * OC / _best_seconds(lambda: np.matmul(a, w.T, out=out), repeats) / 1e9


def peak(backend, peak_gflops, calibrate, shape, kernel="matmul_forward"):
    """(peak GFLOP/s or None, where it comes from, {reference: GFLOP/s}, the calibration shape used):
    measured with the model's matmul `kernel` (its precision's)."""
    reference = {}
    if calibrate and not backend.SIMULATOR:   # the simulator's speed says nothing about a GPU
        reference[f"numbagpt_{kernel}"] = calibrate_matmul(backend, shape, kernel=kernel)
        if backend.HOST_MEMORY:   # a host backend: compare with the host's BLAS too
            reference["numpy_sgemm"] = calibrate_numpy_sgemm(shape)
    else:
        shape = None
    if peak_gflops is not None:
        return float(peak_gflops), "given (--peak-gflops)", reference, shape
    if shape is not None:
        BT, C, OC = shape
        return (reference[f"numbagpt_{kernel}"], f"measured: numbagpt {kernel}, (BT={BT}, C={C}) "
                f"x (OC={OC}, C)^T + bias, best of 5", reference, shape)
    return None, None, reference, shape


# ---------------------------------------------------------------------------------------------------
# The profile


def _step(model, inputs, targets, t, proxy=None):
    """One step as bin/train_gpt2 takes it (lr 1e-4, clipping at 1), the phases marked when `proxy`
    (a TimingBackend) is given, else untimed. Returns (the loss, its wall time in ms)."""
    t0 = time.perf_counter()
    phase = proxy.set_phase if proxy is not None else None
    loss = train_step(model, [(inputs, targets)], lr=1e-4, t=t, phase=phase).loss
    return loss, (time.perf_counter() - t0) * 1e3


def _check(model, B, T, steps, warmup):
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (the first step compiles), got {warmup}")
    if B < 1 or T < 1:
        raise ValueError(f"B and T must be positive, got B={B} T={T}")
    if T > model.config.max_seq_len:
        raise ValueError(f"sequence length T={T} exceeds the model's max_seq_len {model.config.max_seq_len}")


def measure(model, proxy, B, T, *, steps=3, warmup=1, baseline_steps=None, seed=1337):
    """Warm-up steps, then `steps` timed ones interleaved with `baseline_steps` untimed ones, on random
    tokens (seeded). Returns the measurements, the raw material of report.build_report."""
    _check(model, B, T, steps, warmup)
    baseline_steps = steps if baseline_steps is None else baseline_steps
    tokens = np.random.default_rng(seed).integers(0, model.config.vocab_size, size=(B, T + 1), dtype=np.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    m = {"steps": steps, "warmup": warmup, "warmup_ms": [], "compile_by_kernel": {}, "losses": [],
         "step_ms": [], "kernel_ms": [], "base_ms": []}
    t = 0
    # Warm-up: the first step compiles (or loads from Numba's cache) every kernel; its per-kernel
    # time is kept as the compile time of each kernel.
    for i in range(warmup):
        proxy.reset()
        t += 1
        loss, ms = _step(model, inputs, targets, t, proxy)
        m["losses"].append(loss)
        m["warmup_ms"].append(ms)
        if i == 0:
            proxy.collect()
            for (name, _), row in proxy.stats.items():
                m["compile_by_kernel"][name] = m["compile_by_kernel"].get(name, 0.0) + row[1] / 1e6
    # Timed steps, interleaved with untimed ones (the proxy passes the calls straight through; same
    # model, same buffers) so the two step times see the same machine state.
    proxy.reset()
    for i in range(max(steps, baseline_steps)):
        if i < steps:
            before = proxy.total_ns()
            t += 1
            loss, ms = _step(model, inputs, targets, t, proxy)
            m["losses"].append(loss)
            m["step_ms"].append(ms)
            m["kernel_ms"].append((proxy.total_ns() - before) / 1e6)
        if i < baseline_steps:
            t += 1
            loss, ms = _step(model, inputs, targets, t)
            m["losses"].append(loss)
            m["base_ms"].append(ms)
    proxy.collect()
    m["stats"] = {key: list(row) for key, row in proxy.stats.items()}
    return m


def profile_model(model, proxy, B, T, *, steps=3, warmup=1, baseline_steps=None, seed=1337,
                  peak_gflops=None, calibrate=True, calibration_shape=CALIBRATION_SHAPE,
                  model_name=None, rss_before=None):
    """Profile training steps of `model`, built with backend=`proxy` (a TimingBackend), on random
    tokens (seeded). Returns the report dict (see docs/profiling.md; `report_to_json` is its JSON).
    The steps are real AdamW steps: they change the model's weights (profile a copy of a model you
    want to keep: GPT2.from_file of its file)."""
    if not isinstance(proxy, TimingBackend):
        raise ValueError(f"proxy must be a TimingBackend (TimingBackend(get_backend('cpu'))), got {proxy!r}")
    if getattr(model, "backend", None) is not proxy:
        raise ValueError("the model must be built on the proxy (GPT2(config, backend=proxy)): its kernels "
                         "would run untimed and the report be empty")
    for flag, value, check in (("-b", B, POSITIVE), ("-t", T, POSITIVE), ("--steps", steps, POSITIVE),
                               ("--warmup", warmup, POSITIVE), ("--baseline-steps", baseline_steps, NONNEG),
                               ("--seed", seed, NONNEG)):   # the flags' checks, for a caller from Python
        check_value(flag, value, int, check, optional=flag == "--baseline-steps")
    check_value("--peak-gflops", peak_gflops, float, POSITIVE)
    if rss_before is None:
        rss_before = process_memory()["rss_bytes"]
    m = measure(model, proxy, B, T, steps=steps, warmup=warmup, baseline_steps=baseline_steps, seed=seed)
    raw = proxy._backend
    m["mem_after"] = process_memory()
    m["dev_mem"] = device_memory(raw)
    m["rss_before"] = rss_before
    m["threads"], m["threading_layer"] = threads()
    m["peak"], m["peak_source"], m["reference_peaks"], m["calibration_shape"] = peak(
        raw, peak_gflops, calibrate, calibration_shape, kernel=PRECISIONS[model.precision][0])
    m["overhead_ns"] = measure_proxy_overhead(proxy.timer, raw)
    m["timer"], m["device"], m["device_name"] = proxy.timer, raw.NAME, raw.device_name()
    return build_report(model, B, T, m, model_name=model_name)

