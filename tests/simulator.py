"""Run a CUDA test module in Numba's CUDA simulator, from a normal pytest run.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is first imported, but the
main pytest process keeps the real CUDA target (tests/test_cuda_ptx.py compiles to PTX with it). So a
CUDA test module holds one outer test that re-runs the module in a subprocess with the simulator on
(`under_simulator`), and its real tests only where the simulator is on (that subprocess) or a GPU is
present (`RUN_HERE`). To run such a module directly:
    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_model.py -q
Every simulated GPU thread is a Python thread, so these tests use tiny shapes and few launches.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_present():
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


# A CUDA module's real tests run in this process under the simulator, or directly on a real GPU.
RUN_HERE = SIM or gpu_present()


def run_module_under_simulator(modules, what):
    """pytest tests/<module> (one name, or several) in a subprocess with NUMBA_ENABLE_CUDASIM=1; fail
    with its output."""
    modules = (modules,) if isinstance(modules, str) else tuple(modules)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # faulthandler dumps every thread's stack if one test runs over 5 minutes (a hang)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
           "-o", "faulthandler_timeout=300"] + [os.path.join("tests", m) for m in modules]
    rerun = f"rerun: NUMBA_ENABLE_CUDASIM=1 {sys.executable} -m pytest " + " ".join(f"tests/{m}" for m in modules)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{what} under the simulator timed out after {e.timeout} s ({rerun})\n"
                    + out[-30000:] + "\n" + err[-30000:], pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{what} under the simulator failed ({rerun})\n"
                    + proc.stdout[-30000:] + "\n" + proc.stderr[-5000:], pytrace=False)
    print(proc.stdout[-2000:])


def under_simulator(modules, what):
    """The normal run's one test of a CUDA test module: `run_module_under_simulator(modules, what)`."""
    def test_under_simulator():
        run_module_under_simulator(modules, what)
    return test_under_simulator


def cpu_and_cuda_models(cfg, perturb):
    """The same GPT2(cfg) on both backends: init_weights(seed=0) on the CPU, parameters replaced by
    perturb(parameters) (float32), the same copied to the CUDA backend. Returns (cpu, gpu, parameters)."""
    from numbagpt.model import GPT2
    cpu = GPT2(cfg, backend="cpu")
    cpu.init_weights(seed=0)
    params = perturb(cpu.parameters_host()).astype(np.float32)
    cpu.load_parameters(params)
    gpu = GPT2(cfg, backend="cuda")
    gpu.load_parameters(params)
    np.testing.assert_array_equal(gpu.parameters_host(), params)
    return cpu, gpu, params
