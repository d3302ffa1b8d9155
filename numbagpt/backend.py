"""The backend interface: what `numbagpt.cpu` and `numbagpt.cuda` both provide, and the one place a
backend is chosen (`get_backend`). Everything outside the two packages uses a backend only through
these names, so nothing else imports a backend module or asks which one it has.

    KERNELS   llm.c's kernels over flat float32 buffers, the names of numbagpt/kernels.py's contract
              table (their arguments, outputs, costs and tolerances are there): TRAINING_KERNELS, the
              ones a training step runs, and generation's: the residual add (training fuses it with
              the layernorm after it), attention with a KV cache, the one-position matmul
    BUFFERS   allocate, copy and zero buffers:  zeros(n, dtype), to_device(host), to_host(buf),
              copy_to_device(dst, host), copy(dst, src) (buffer to buffer), fill_zero(buf), synchronize()
    DEVICE    NAME; SIMULATOR (CUDA simulator: kernels run as Python threads); HOST_MEMORY (buffers are
              NumPy arrays that MPI and NumPy read in place); TIMER (how the profiler times a kernel:
              "cpu", "events" or "sync"); available(), require() (raise a RuntimeError saying what to
              do); select_device(local_rank) -> description; device_name(); memory_info() -> (used,
              total) bytes or None; event() -> a timing event: record(), synchronize(), elapsed_time(end) ms
tests/test_backend.py checks that both packages provide all of INTERFACE, kernels with the same arguments.
"""
import importlib

from . import kernels

BACKENDS = ("cpu", "cuda")

TRAINING_KERNELS = kernels.names("training")
BF16_KERNELS = kernels.names("bf16")   # --precision bf16: the matmul pair a step runs instead
KERNELS = tuple(k.name for k in kernels.CONTRACT)
BUFFERS = ("zeros", "to_device", "to_host", "copy_to_device", "copy", "fill_zero", "synchronize")
DEVICE = ("NAME", "SIMULATOR", "HOST_MEMORY", "TIMER", "available", "require", "select_device",
          "device_name", "memory_info", "event")
INTERFACE = KERNELS + BUFFERS + DEVICE


def get_backend(name):
    """The backend package for `name` ("cpu" or "cuda"), imported only when asked for; raises a
    RuntimeError with instructions when it can't run here. A backend object passes through."""
    if not isinstance(name, str):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(BACKENDS)}")
    backend = importlib.import_module(f"numbagpt.{name}")
    backend.require()
    return backend
