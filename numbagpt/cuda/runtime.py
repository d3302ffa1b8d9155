"""The one place that imports Numba's CUDA target, plus what every CUDA kernel file shares.

- `cuda`: `numba.cuda` (provided by the numba-cuda package). Kernel files do `from .runtime import cuda`
  and always write `cuda.xxx` inside kernels (the simulator swaps module globals that *are* `numba.cuda`).
- `SIMULATOR`: True when `NUMBA_ENABLE_CUDASIM=1` was set before numba.cuda was first imported.
- `NUMBA_CUDA`: `numba.cuda` is the numba-cuda package's. Without that package Numba falls back to its
  own deprecated CUDA target, which lacks what the kernels use (warp shuffles in its simulator among them).
- `available()` / `require()`: is there a usable GPU (or the simulator), and numba-cuda? `require`
  raises a RuntimeError that says what to do.
- Launch helpers (`cdiv`, `i64`, `f32`) and shared device functions (warp reductions).
- Under the simulator (only), numbagpt/cuda/simulator.py is loaded: it adds the warp intrinsics the
  simulator lacks and makes two of its hot spots cheaper.
"""
import os

import numpy as np
from numba import cuda, float32, int32, int64  # noqa: F401  (re-exported for kernel files)

NUMBA_CUDA = f"{os.sep}numba_cuda{os.sep}" in (getattr(cuda, "__file__", None) or "")

try:
    from numba.cuda.core import config as _cuda_config
    SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)
except Exception:  # older numba-cuda layouts
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
    """True if kernels can run: numba-cuda is installed, and the CUDA simulator is on or a CUDA driver
    and a GPU are present."""
    global _checked
    if not NUMBA_CUDA:
        return False
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
    if not NUMBA_CUDA:
        raise RuntimeError(
            "numbagpt.cuda needs the numba-cuda package, which is not installed (numba.cuda is Numba's own "
            "deprecated CUDA target, which lacks what the kernels use): pip install -e '.[cuda]' in "
            "numbagpt's checkout, or pip install \"numba-cuda[cu13]\" (cu12 for CUDA 12); or --device cpu")
    reason = ""
    try:
        cuda.current_context()  # raises with the driver's own explanation
    except Exception as e:  # depends on the machine
        reason = " (" + " ".join(f"{type(e).__name__}: {e}".split()) + ")"
    raise RuntimeError(
        "numbagpt.cuda: no usable CUDA GPU/driver found" + reason + ". "
        "Run on a machine with an NVIDIA GPU and driver (check `nvidia-smi` and "
        "`python -c 'from numba import cuda; cuda.detect()'`), install numba-cuda with the CUDA "
        "toolkit wheels (`pip install -e '.[cuda]'` in numbagpt's checkout, or `pip install \"numba-cuda[cu12]\"` "
        "for CUDA 12), "
        "use the CPU backend (--device cpu; backend='cpu' in Python), or set NUMBA_ENABLE_CUDASIM=1 "
        "before starting Python to run the CUDA kernels in Numba's (very slow) simulator.")


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


if SIMULATOR:  # the simulator lacks the warp intrinsics the kernels use: numbagpt/cuda/simulator.py
    from .simulator import install as _install_simulator_support
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
