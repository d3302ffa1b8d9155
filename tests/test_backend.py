"""The backend interface (numbagpt/backend.py): numbagpt.cpu and numbagpt.cuda provide every name of
it, the kernels with the same arguments in the same order; and nothing outside the two packages
imports a backend module or asks which backend it has."""
import inspect
import os
import re

import pytest

import numbagpt.cpu as CPU
import numbagpt.cuda as GPU
from numbagpt import backend, profiler
from numbagpt.kernels import CONTRACT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", [CPU, GPU], ids=["cpu", "cuda"])
def test_backend_provides_the_whole_interface(module):
    missing = [name for name in backend.INTERFACE if not hasattr(module, name)]
    assert not missing, f"{module.__name__} lacks {missing}"
    for name in backend.KERNELS + backend.BUFFERS:
        assert callable(getattr(module, name)), name
    assert module.NAME in backend.BACKENDS and module.TIMER in ("cpu", "events", "sync")


def signature(fn):
    """[(argument, default or None)] of a kernel (a Numba dispatcher's Python function)."""
    params = inspect.signature(getattr(fn, "py_func", fn)).parameters.values()
    return [(p.name, None if p.default is p.empty else p.default) for p in params]


@pytest.mark.parametrize("module", [CPU, GPU], ids=["cpu", "cuda"])
def test_kernels_take_the_contracts_arguments(module):
    for k in CONTRACT:
        want = [(a, k.defaults.get(a)) for a in k.args]
        assert signature(getattr(module, k.name)) == want, f"{module.NAME}.{k.name} against the contract"


def test_kernels_take_the_same_arguments():
    for name in backend.KERNELS:
        assert signature(getattr(GPU, name)) == signature(getattr(CPU, name)), name
    for name in backend.BUFFERS + ("select_device", "device_name", "memory_info", "event"):
        cp = list(inspect.signature(getattr(CPU, name)).parameters)
        gp = list(inspect.signature(getattr(GPU, name)).parameters)
        assert gp == cp, f"{name}: cuda {gp} != cpu {cp}"


def test_one_list_of_kernels():
    assert set(profiler.KERNEL_COSTS) == set(backend.TRAINING_KERNELS + backend.BF16_KERNELS) <= set(backend.KERNELS)
    assert len(set(backend.INTERFACE)) == len(backend.INTERFACE)


def test_cpu_device_and_event():
    import numpy as np
    assert CPU.select_device(3) == "cpu" and CPU.memory_info() is None and CPU.device_name()
    start, end = CPU.event(), CPU.event()
    start.record()
    end.record()
    end.synchronize()
    assert start.elapsed_time(end) >= 0
    dst = np.zeros(4, np.float32)
    CPU.copy(dst[1:3], np.array([1, 2], np.float32))
    assert dst.tolist() == [0, 1, 2, 0]


def test_the_cuda_backend_needs_numba_cuda(monkeypatch):
    """numba.cuda is numba-cuda's where that package is installed; Numba's own deprecated target (numba
    0.60-0.68 keep one) lacks what the kernels use: without the package, no kernel runs and require()
    says to install it, before it looks for a GPU."""
    import importlib.util

    from numbagpt.cuda import runtime
    assert runtime.NUMBA_CUDA == (importlib.util.find_spec("numba_cuda") is not None)
    monkeypatch.setattr(runtime, "NUMBA_CUDA", False)
    monkeypatch.setattr(runtime, "SIMULATOR", True)   # even the simulator: Numba's own lacks warp shuffles
    assert not runtime.available()
    with pytest.raises(RuntimeError, match=r"^numbagpt.cuda needs the numba-cuda package, which is not installed .*"
                                           r"pip install -e '\.\[cuda\]'"):
        runtime.require()


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.get_backend("tpu")
    assert backend.get_backend(CPU) is CPU


# A backend module named, imported, or a backend identified, outside numbagpt/cpu and numbagpt/cuda;
# and in the modules that handle backend buffers, a buffer asked whether it is a NumPy array.
LEAK = re.compile(r"numbagpt\.(cpu|cuda)\b|from \.+(cpu|cuda)\b|import (cpu|cuda)\b|\bfrom numba import cuda\b"
                  r"|numba\.cuda|== *[\"']cuda[\"']|(device|NAME) *== *[\"']cpu[\"']")
BUFFER_TYPE = re.compile(r"isinstance\([^)]*np\.ndarray")
BUFFER_MODULES = ("dist.py", "model.py", "step.py", "profiler.py", "checkpoint.py")


def test_nothing_outside_the_backends_asks_which_backend_it_has():
    leaks = []
    pkg = os.path.join(ROOT, "numbagpt")
    for folder, _, files in os.walk(pkg):
        rel = os.path.relpath(folder, pkg)
        if rel.split(os.sep)[0] in ("cpu", "cuda"):
            continue
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            with open(path) as fh:
                code = [ln for ln in fh if not ln.lstrip().startswith("#")]
            for line in code:
                # docstrings may name the packages; code may not import or test them
                leak = LEAK.search(line) and ("import" in line or "==" in line)
                if leak or (f in BUFFER_MODULES and BUFFER_TYPE.search(line)):
                    leaks.append(f"{os.path.relpath(path, ROOT)}: {line.strip()}")
    assert not leaks, "\n".join(leaks)
