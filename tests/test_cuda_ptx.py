"""Every CUDA kernel of numbagpt.cuda compiles to real PTX (sm_80 and sm_90), with no float64 arithmetic.

No GPU is needed: `numba.cuda.compile_ptx` only needs NVVM (the nvidia-nvvm wheel numba-cuda[cu12/cu13]
installs). The kernels are collected automatically — every `@cuda.jit` kernel (not device function)
found in the modules of numbagpt.cuda — and each module declares, next to its kernels, a `SIGNATURES`
dict {kernel name: [argument types as the launchers pass them]}; a kernel without an entry fails
`test_every_kernel_has_signatures`, so a new kernel cannot be forgotten.

Checked for each kernel, signature and target:
- it compiles (typing errors, unsupported features, constant shared-memory shapes, ...);
- no `.f64` instruction or register appears: a Python float literal or an int·float32 mix would have
  promoted the arithmetic to float64, which is ~64x slower on consumer GPUs and not llm.c's numerics;
- no `.local` state space: per-thread arrays (the GEMM's register tile) were promoted to registers;
- the kernels whose threads add into the same element (SCATTER_ADDS) do it with a global float32
  atomic: a plain `+=` there is a race the simulator cannot show (it runs the threads one by one).

Skipped (with the reason) only when the simulator is on (NUMBA_ENABLE_CUDASIM=1, no compiler) or NVVM
cannot be found/loaded. (tests/test_backend.py checks that numbagpt.cuda provides the same interface
as numbagpt.cpu.)
"""
import importlib
import os
import pkgutil
import re

import pytest
from simulator import NO_NUMBA_CUDA, NUMBA_CUDA

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
if SIM:
    pytest.skip("NUMBA_ENABLE_CUDASIM=1: the simulator has no PTX compiler", allow_module_level=True)
if not NUMBA_CUDA:
    pytest.skip(NO_NUMBA_CUDA, allow_module_level=True)

from numba.cuda.dispatcher import CUDADispatcher  # noqa: E402

import numbagpt.cuda as GPU  # noqa: E402
from dev import cuda_resources  # noqa: E402

CCS = [(8, 0), (9, 0)]
# kernels whose threads add into shared outputs: repeated tokens into one dwte row; the row chunks of
# a column into dweight, dbias; the K splits of a GEMM into one output
SCATTER_ADDS = {"encoder_backward_wte_kernel", "layernorm_backward_dwdb_kernel", "matmul_backward_dbias_kernel",
                "gemm_backward_dinp_splitk", "gemm_backward_dweight_splitk"}
ATOMIC_ADD = re.compile(r"\b(atom|red)(\.relaxed)?(\.gpu)?\.global\.add\.f32\b")
F64 = re.compile(r"\.f64\b")
LOCAL = re.compile(r"\.local\b")

def _modules():
    for info in pkgutil.iter_modules(GPU.__path__):
        yield importlib.import_module(f"numbagpt.cuda.{info.name}")


def _kernels():
    """[(module, name, dispatcher)] for every kernel (not device function), each listed once."""
    seen, out = set(), []
    for mod in _modules():
        for name, obj in sorted(vars(mod).items()):
            if isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device", False):
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
                out.append((mod, name, obj))
    return out


KERNELS = _kernels()
CASES = [pytest.param(mod, name, disp, sig, cc, id=f"{mod.__name__.rsplit('.', 1)[1]}.{name}[{i}]-sm{cc[0]}{cc[1]}")
         for mod, name, disp in KERNELS
         for i, sig in enumerate(getattr(mod, "SIGNATURES", {}).get(name, []))
         for cc in CCS]

_nvvm_error = None


def _require_nvvm():
    global _nvvm_error
    if _nvvm_error is None:
        try:
            from numba.cuda.cudadrv import nvvm
            nvvm.NVVM()
            _nvvm_error = ""
        except Exception as e:  # NvvmSupportError and friends: no NVVM on this machine
            _nvvm_error = f"{type(e).__name__}: {e}"
    if _nvvm_error:
        pytest.skip(f"NVVM not available, cannot compile PTX ({_nvvm_error}); "
                    "install numba-cuda with the toolkit wheels: pip install 'numba-cuda[cu13]'")


def test_kernels_found():
    names = {name for _, name, _ in KERNELS}
    assert len(KERNELS) >= 20, names
    assert "gemm_forward_bias" in names and "crossentropy_backward_kernel" in names


def test_every_kernel_has_signatures():
    missing, stale = [], []
    kernels_by_module = {}
    for mod, name, _ in KERNELS:
        kernels_by_module.setdefault(mod, set()).add(name)
        if not getattr(mod, "SIGNATURES", {}).get(name):
            missing.append(f"{mod.__name__}.{name}")
    for mod in _modules():
        for name in getattr(mod, "SIGNATURES", {}):
            if name not in kernels_by_module.get(mod, set()):
                stale.append(f"{mod.__name__}.{name}")
    assert not missing, f"kernels without a SIGNATURES entry: {missing}"
    assert not stale, f"SIGNATURES entries naming no kernel of their module: {stale}"


@pytest.mark.parametrize("mod,name,disp,sig,cc", CASES)
def test_compiles_to_ptx_without_f64(mod, name, disp, sig, cc):
    _require_nvvm()
    ptx = cuda_resources.ptx(disp, sig, cc)  # cached: tests/test_cuda_resources.py links the same PTX
    body = [ln for ln in ptx.splitlines() if not ln.lstrip().startswith("//")]
    f64 = [ln.strip() for ln in body if F64.search(ln)]
    assert not f64, f"{mod.__name__}.{name} sm_{cc[0]}{cc[1]}: float64 in PTX:\n" + "\n".join(f64[:20])
    local = [ln.strip() for ln in body if LOCAL.search(ln)]
    assert not local, f"{mod.__name__}.{name} sm_{cc[0]}{cc[1]}: local memory in PTX:\n" + "\n".join(local[:20])
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    if name in SCATTER_ADDS:
        assert ATOMIC_ADD.search(ptx), f"{mod.__name__}.{name} sm_{cc[0]}{cc[1]}: no global float32 atomic add"


def test_every_scatter_add_kernel_exists():
    assert SCATTER_ADDS <= {name for _, name, _ in KERNELS}


def test_no_gpu_gives_actionable_error(monkeypatch):
    from numbagpt.cuda import runtime
    monkeypatch.setattr(runtime, "_checked", False)
    monkeypatch.setattr(runtime, "SIMULATOR", False)
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM|backend='cpu'"):
        runtime.require()
