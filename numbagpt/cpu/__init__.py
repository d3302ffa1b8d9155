"""The CPU backend: llm.c's kernels as Numba `@njit(parallel=True)` prange loops over flat float32 buffers.

See docs/kernels.md for the contract shared with `numbagpt.cuda`.
"""
import numpy as np

from .adamw import adamw_update, global_norm_squared
from .attention import attention_backward, attention_forward, attention_forward_cached
from .crossentropy import crossentropy_backward, crossentropy_forward
from .encoder import encoder_backward, encoder_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .matmul import matmul_backward, matmul_forward
from .residual import residual_backward, residual_forward

NAME = "cpu"


def zeros(n, dtype=np.float32):
    return np.zeros(n, dtype=dtype)


def to_device(host_array):
    return np.array(host_array, copy=True)


def to_host(array):
    return np.asarray(array)


def copy_to_device(dst, host_array):
    dst[:] = host_array


def fill_zero(array):
    array[:] = 0


def synchronize():
    pass
