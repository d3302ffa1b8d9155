"""The CUDA backend: llm.c's kernels as Numba `@cuda.jit` kernels over flat float32 device arrays.

Same file names, function names and argument order as `numbagpt.cpu` (the contract: docs/kernels.md);
launch configurations and costs: docs/cuda.md. Each function launches on the default stream and returns
without synchronising; nothing is copied to the host.

The interface (kernels, buffers, device) is numbagpt/backend.py's, the same as `numbagpt.cpu`'s.
Importing this package never touches the GPU; the buffer helpers call `require()`, which raises a
RuntimeError with instructions when there is no usable GPU/driver (unless NUMBA_ENABLE_CUDASIM=1 was set
before Python started, which runs everything in Numba's CUDA simulator).
"""
import numpy as np

from .adamw import adamw_update, global_norm_squared
from .attention import attention_backward, attention_forward, attention_forward_cached
from .crossentropy import crossentropy_backward, crossentropy_forward, crossentropy_forward_backward
from .encoder import encoder_backward, encoder_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import fused_residual_layernorm_forward, layernorm_backward, layernorm_forward
from .matmul import matmul_backward, matmul_backward_bf16, matmul_forward, matmul_forward_bf16
from .matvec import matvec_forward
from .residual import residual_forward
from .launch import fill_zero_launch as _fill_zero_launch
from .runtime import SIMULATOR, available, cuda, require

NAME = "cuda"
HOST_MEMORY = False   # device arrays: MPI takes them only when it is CUDA-aware (numbagpt.dist)
# The kernels are queued on the default stream: CUDA events around a launch time it on the GPU; the
# simulator runs them as Python threads, so there a synchronize and a clock around the call do.
TIMER = "sync" if SIMULATOR else "events"


# ---------------------------------------------------------------- device

def select_device(local_rank):
    """Make GPU (local_rank % number of GPUs) current; call before any CUDA memory is allocated.
    Returns a description, e.g. 'cuda:1 NVIDIA H100 (2 GPUs here)'."""
    require()
    ngpus = len(cuda.gpus)
    index = local_rank % ngpus
    cuda.select_device(index)
    return f"cuda:{index} {device_name()}" + (f" ({ngpus} GPUs here)" if ngpus > 1 else "")


def device_name():
    """The current GPU's name, or 'Numba CUDA simulator'."""
    if SIMULATOR:
        return "Numba CUDA simulator"
    try:
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # a driver that won't say
        return "CUDA device"


def memory_info():
    """(used, total) bytes of the current GPU, or None (the simulator, or a driver that won't say)."""
    if SIMULATOR:
        return None
    try:
        free, total = cuda.current_context().get_memory_info()
        return int(total - free), int(total)
    except Exception:
        return None


def event():
    """A CUDA event that records timestamps: record(), synchronize(), elapsed_time(end) in ms."""
    require()
    return cuda.event(timing=True)


# ---------------------------------------------------------------- buffers

def zeros(n, dtype=np.float32):
    """A zero-filled 1-D device array of n elements."""
    require()
    arr = cuda.device_array(int(n), dtype=dtype)
    fill_zero(arr)
    return arr


def to_device(host_array):
    """A device copy of a host array (flattened to 1-D)."""
    require()
    return cuda.to_device(np.ascontiguousarray(host_array).reshape(-1))


def to_host(array):
    """A NumPy copy of a device array (synchronous)."""
    require()
    return array.copy_to_host()


def copy_to_device(dst, host_array):
    """Copy a host array into the existing device array `dst` (same number of elements)."""
    require()
    src = np.ascontiguousarray(host_array, dtype=dst.dtype).reshape(-1)
    if src.size != dst.size:
        raise ValueError(f"copy_to_device: {src.size} host elements into a device array of {dst.size}")
    dst.copy_to_device(src)


def copy(dst, src):
    """dst ← src, two device arrays (or views) of the same size that do not overlap; on the device."""
    require()
    if src.size != dst.size:
        raise ValueError(f"copy: {src.size} elements into a device array of {dst.size}")
    dst.copy_to_device(src)


def fill_zero(array):
    """Zero a (contiguous 1-D) device array, or a view of one, with a kernel on the default stream.

    Under the simulator the zeros are written from the host instead (the kernel, tested on its own in
    tests/test_cuda_kernels.py, would cost one Python thread per element there)."""
    require()
    n = array.size
    if n == 0:
        return
    if SIMULATOR:
        array.copy_to_device(np.zeros(n, dtype=array.dtype))
    else:
        _fill_zero_launch(n)(array, np.int64(n))


def synchronize():
    """Wait for all queued kernels on the device."""
    require()
    cuda.synchronize()
