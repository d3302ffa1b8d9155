"""The one place that imports Numba's CUDA target, plus what every CUDA kernel file shares.

- `cuda`: `numba.cuda` (provided by the numba-cuda package). Kernel files do `from .runtime import cuda`
  and always write `cuda.xxx` inside kernels (the simulator swaps module globals that *are* `numba.cuda`).
- `SIMULATOR`: True when `NUMBA_ENABLE_CUDASIM=1` was set before numba.cuda was first imported.
- `available()` / `require()`: is there a usable GPU (or the simulator)? `require` raises a RuntimeError
  that says what to do.
- Launch helpers (`cdiv`, `i64`, `f32`) and shared device functions (warp reductions).
- Under the simulator, the warp shuffle and barrier the kernels use (`cuda.shfl_xor_sync`,
  `cuda.syncwarp`) are missing; `_install_simulator_support` adds faithful emulations (a
  per-warp barrier and value exchange), so the kernels that use them run unchanged under the simulator;
  it also makes two of the simulator's hot spots cheaper (a block manager that does not spin while the
  simulated threads run, shared arrays looked up without a stack traceback).
"""
import sys
import threading
import time

import numpy as np
from numba import cuda, float32, int32, int64  # noqa: F401  (re-exported for kernel files)

try:
    from numba.cuda.core import config as _cuda_config
    SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)
except Exception:  # older numba-cuda layouts
    import os
    SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

# Argument types of the kernels as the launchers call them, for the per-module SIGNATURES tables
# (used by tests/test_cuda_ptx.py to compile every kernel to PTX): flat C-contiguous float32 / int32
# arrays, int64 sizes and float32 scalars (launchers convert with `i64` / `f32`).
F32A = float32[::1]
I32A = int32[::1]
I64 = int64
F32 = float32

FULL_MASK = 0xFFFFFFFF
WARP = 32

_checked = None


def available():
    """True if kernels can run: the CUDA simulator is on, or a CUDA driver and a GPU are present."""
    global _checked
    if SIMULATOR:
        return True
    if _checked is None:
        try:
            _checked = bool(cuda.is_available()) and len(cuda.gpus) > 0
        except Exception:
            _checked = False
    return _checked


def require():
    """Raise a RuntimeError with an actionable message unless `available()`."""
    if available():
        return
    reason = ""
    try:
        cuda.current_context()  # raises with the driver's own explanation
    except Exception as e:  # depends on the machine
        reason = " (" + " ".join(f"{type(e).__name__}: {e}".split()) + ")"
    raise RuntimeError(
        "numbagpt.cuda: no usable CUDA GPU/driver found" + reason + ". "
        "Run on a machine with an NVIDIA GPU and driver (check `nvidia-smi` and "
        "`python -c 'from numba import cuda; cuda.detect()'`), install numba-cuda with the CUDA "
        "toolkit wheels (`pip install \"numba-cuda[cu12]\"` or `[cu13]`), "
        "use the CPU backend (backend='cpu'), or set NUMBA_ENABLE_CUDASIM=1 before starting Python "
        "to run the CUDA kernels in Numba's (very slow) simulator.")


_sm_count = None


def sm_count():
    """Streaming multiprocessors of the current GPU (1 under the simulator), for grid heuristics."""
    global _sm_count
    if _sm_count is None:
        n = 1
        if not SIMULATOR:
            try:
                n = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
            except Exception:
                n = 1
        _sm_count = max(1, n)
    return _sm_count


def cdiv(a, b):
    """Ceiling division for grid sizes."""
    return (int(a) + int(b) - 1) // int(b)


def i64(x):
    """A size argument as the int64 the kernels are compiled for."""
    return np.int64(x)


def f32(x):
    """A float argument as float32: a Python float would make Numba type it (and the math) float64."""
    return np.float32(x)


# ----------------------------------------------------------------------------------------------
# Shared device functions

@cuda.jit(device=True, inline=True)
def warp_sum(v):
    """Butterfly sum over the 32 lanes of a warp; every lane gets the total. All lanes must call it."""
    off = 16
    while off > 0:
        v += cuda.shfl_xor_sync(FULL_MASK, v, off)
        off //= 2
    return v


@cuda.jit(device=True, inline=True)
def warp_max(v):
    """Butterfly max over the 32 lanes of a warp; every lane gets the result."""
    off = 16
    while off > 0:
        o = cuda.shfl_xor_sync(FULL_MASK, v, off)
        if o > v:
            v = o
        off //= 2
    return v


# ----------------------------------------------------------------------------------------------
# Memory helper kernel

BLOCK_FILL = 256


@cuda.jit(fastmath=False)
def fill_zero_kernel(arr, n):
    """arr[:n] = 0 (any numeric dtype; one thread per element)."""
    i = cuda.grid(1)
    if i < n:
        arr[i] = 0


SIGNATURES = {
    "fill_zero_kernel": [(F32A, I64), (I32A, I64)],
}


# ----------------------------------------------------------------------------------------------
# Simulator support: warp intrinsics

_sim_lock = threading.Lock()


def _sim_warp_exchange(value):
    """All lanes of the calling thread's warp deposit `value`; every lane gets the list of 32 values.

    One barrier per exchange: the warp's two slot lists take turns, so a lane writes a list again only
    after the next exchange's barrier, which every lane reaches only once it has read that list."""
    th = threading.current_thread()
    warp = getattr(th, "_numbagpt_warp", None)
    if warp is None:
        mgr = th._manager
        w = th.thread_id // WARP
        with _sim_lock:
            state = mgr.__dict__.setdefault("_numbagpt_warps", {})
            if w not in state:
                nthreads = int(np.prod(mgr._block_dim))
                parties = min(WARP, nthreads - WARP * w)
                state[w] = (threading.Barrier(parties, timeout=120.0), ([None] * WARP, [None] * WARP))
            warp = th._numbagpt_warp = state[w]
        th._numbagpt_turn = 0
    barrier, lists = warp
    slots = lists[th._numbagpt_turn]
    th._numbagpt_turn ^= 1
    lane = th.thread_id % WARP
    slots[lane] = value
    barrier.wait()
    return list(slots), lane


def _sim_shfl_xor_sync(self, mask, value, lane_mask):
    vals, lane = _sim_warp_exchange(value)
    src = lane ^ int(lane_mask)
    return vals[src] if src < WARP and vals[src] is not None else value


def _sim_syncwarp(self, mask=FULL_MASK):
    _sim_warp_exchange(None)  # a barrier of the warp's lanes


def _sim_block_run(self, grid_point, *args):
    """numba-cuda's simulator BlockManager.run (numba/cuda/simulator/kernel.py, 0.30) with one change:
    its loop, which polls the block's threads until all have finished or all wait in syncthreads,
    yields the GIL once a round (time.sleep(0)) instead of spinning through its switch interval, so
    the simulated threads run meanwhile (a GEMM launch takes about 40% less CPU time)."""
    from numba.cuda.simulator.kernel import BlockThread
    threads = set()
    livethreads = set()
    blockedthreads = set()
    for block_point in np.ndindex(*self._block_dim):

        def target():
            self._f(*args)

        t = BlockThread(target, self, grid_point, block_point, self._debug)
        t.start()
        threads.add(t)
        livethreads.add(t)
    while livethreads:
        for t in livethreads:
            if t.syncthreads_blocked:
                blockedthreads.add(t)
            elif t.exception:
                for t_other in threads:  # abort the other threads, do not join them
                    t_other.abort = True
                    t_other.syncthreads_blocked = False
                    t_other.syncthreads_event.set()
                raise t.exception[0].with_traceback(t.exception[1])
        if livethreads == blockedthreads:
            for t in blockedthreads:
                t.syncthreads_blocked = False
                t.syncthreads_event.set()
            blockedthreads = set()
        livethreads = set([t for t in livethreads if t.is_alive()])
        time.sleep(0)
    for t in threads:
        if t.exception:
            raise t.exception[0].with_traceback(t.exception[1])


_upstream_shared_array = None


def _sim_shared_array(self, shape, dtype, alignment=None):
    """numba-cuda's simulator FakeCUDAShared.array (kernelapi.py, 0.30), which identifies a block's
    shared array by the (file, line) of its cuda.shared.array call, taking that from the caller's frame
    instead of a traceback of the whole stack with its source lines (a stat() per frame, a third of a
    simulated GEMM thread's time). Dynamic shared memory (shape 0) and alignment go upstream."""
    if shape == 0 or alignment is not None:
        return _upstream_shared_array(self, shape, dtype, alignment)
    frame = sys._getframe(1)
    caller = (frame.f_code.co_filename, frame.f_lineno)
    res = self._allocations.get(caller)
    if res is None:
        from numba.cuda.simulator.kernelapi import numpy_support, types  # upstream's conversion
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        res = self._allocations.setdefault(caller, np.empty(shape, dtype))  # the first thread's
    return res


def _install_simulator_support():
    global _upstream_shared_array
    from numba.cuda.simulator.kernel import BlockManager
    from numba.cuda.simulator.kernelapi import FakeCUDAModule, FakeCUDAShared
    if _upstream_shared_array is None:
        _upstream_shared_array = FakeCUDAShared.array
        FakeCUDAShared.array = _sim_shared_array
    if not hasattr(FakeCUDAModule, "shfl_xor_sync"):
        FakeCUDAModule.shfl_xor_sync = _sim_shfl_xor_sync
    if not hasattr(FakeCUDAModule, "syncwarp"):
        FakeCUDAModule.syncwarp = _sim_syncwarp
    BlockManager.run = _sim_block_run


if SIMULATOR:
    _install_simulator_support()


# bfloat16 rounding (the bf16 matmul: numbagpt/cuda/matmul.py, make_gemm(bf16=True)). On the GPU the
# float's bits come from libdevice; the simulator, which has no libdevice, takes them from NumPy.
if SIMULATOR:
    def _f32_bits(x):
        return int(np.float32(x).view(np.uint32))

    def _bits_f32(u):
        return np.uint32(u).view(np.float32)
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def _f32_bits(x):
        return libdevice.float_as_int(x) & 0xFFFFFFFF

    @cuda.jit(device=True, inline=True)
    def _bits_f32(u):
        return libdevice.int_as_float(int32(u))


@cuda.jit(device=True, inline=True)
def bf16_round(x):
    """float32 x rounded to the nearest bfloat16 (ties to even), as float32: on the bits u,
    (u + 0x7FFF + bit 16 of u) with the low 16 bits cleared. Subnormals round as any value (none is
    flushed), ±inf stays, a finite value from 0x7F7F8000 up rounds to ±inf, a NaN stays a NaN (quiet
    bit set). The same rounding as numbagpt/cpu/matmul_bf16.py's."""
    u = _f32_bits(x)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        r = (u | 0x400000) & 0xFFFF0000
    else:
        r = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return _bits_f32(r)
