"""The CPU backend: llm.c's kernels as Numba `@njit(parallel=True)` prange loops over flat float32 buffers.

See docs/kernels.md for the contract shared with `numbagpt.cuda`, and numbagpt/backend.py for the
interface both packages provide. Buffers are NumPy arrays; every kernel returns when it is done.
"""
import platform
import time

import numpy as np

from . import kernel_cache  # noqa: F401  (first: the kernels below are cached through its locators)
from .adamw import adamw_update, global_norm_squared
from .attention import attention_backward, attention_forward, attention_forward_cached
from .crossentropy import crossentropy_backward, crossentropy_forward, crossentropy_forward_backward
from .encoder import encoder_backward, encoder_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import fused_residual_layernorm_forward, layernorm_backward, layernorm_forward
from . import matmul, matmul_bf16
from .matmul import matmul_backward, matmul_forward
from .matmul_bf16 import matmul_backward_bf16, matmul_forward_bf16
from .matvec import matvec_forward
from .residual import residual_forward

NAME = "cpu"
SIMULATOR = False
HOST_MEMORY = True   # buffers are NumPy arrays: MPI reads and writes them in place
TIMER = "cpu"        # the kernels are synchronous: a clock around the call times them


# ---------------------------------------------------------------- device

def available():
    """True: kernels can always run on the CPU (no driver or device to check, unlike CUDA's)."""
    return True


def require():
    """Nothing to check: `available()` is always True on the CPU, so this never raises."""
    pass


def select_device(local_rank):
    """Nothing to select: every rank runs on its host's cores. Returns the description."""
    return "cpu"


def device_name():
    """The CPU model and the matmul kernels chosen for it (fp32, then bf16's), e.g.
    'AMD EPYC, matmul avx512 6x64 (bf16: avx512bf16 6x64)'."""
    return f"{_cpu_model()}, matmul {matmul.kernel()} (bf16: {matmul_bf16.kernel()})"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_info():
    """None: there is no device memory apart from the process's own (see profiler.process_memory)."""
    return None


class HostEvent:
    """A point in time on the host clock, with the interface of a CUDA event."""

    def __init__(self):
        self.ns = None

    def record(self):
        self.ns = time.perf_counter_ns()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        """Milliseconds from this event to `end`."""
        return (end.ns - self.ns) / 1e6


def event():
    """A HostEvent that records host timestamps (time.perf_counter_ns): record(), synchronize() (a no-op),
    elapsed_time(end) in ms."""
    return HostEvent()


# ---------------------------------------------------------------- buffers

def zeros(n, dtype=np.float32):
    """A zero-filled 1-D NumPy array of n elements."""
    return np.zeros(n, dtype=dtype)


def to_device(host_array):
    """Always a new NumPy array copying the host array (np.array(copy=True), never the same object); its
    shape is kept, not flattened to 1-D as on CUDA."""
    return np.array(host_array, copy=True)


def to_host(array):
    """`array` itself, not a copy (np.asarray of a NumPy array: it shares memory with the buffer, unlike CUDA's
    copy); anything else is converted to a NumPy array."""
    return np.asarray(array)


def copy_to_device(dst, host_array):
    """Copy a host array into the existing array `dst` (dst[:] = host_array: cast to dst's dtype; the shapes
    must broadcast: a host array of another shape is not flattened as on CUDA, NumPy raises a ValueError)."""
    dst[:] = host_array


def copy(dst, src):
    """dst ← src, two buffers (or views) of the same size that do not overlap."""
    dst[:] = src


def fill_zero(array):
    """Zero an array, or a view of one, in place (array[:] = 0; done when it returns, no kernel)."""
    array[:] = 0


def synchronize():
    """Nothing to wait for: the CPU kernels return when they are done (a no-op)."""
    pass
