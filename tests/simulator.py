"""Run a CUDA test module in Numba's CUDA simulator, from a normal pytest run.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is first imported, but the
main pytest process keeps the real CUDA target (tests/test_cuda_ptx.py compiles to PTX with it). So a
CUDA test module holds one outer test that re-runs the module in a subprocess with the simulator on
(`under_simulator`), and its real tests only where the simulator is on (that subprocess) or a GPU is
present (`RUN_HERE`). To run such a module directly:
    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_model.py -q
Every simulated GPU thread is a Python thread, so these tests use tiny shapes and few launches.
"""
import importlib.util
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CUDA backend needs the numba-cuda package (numbagpt[cuda]); without it numba.cuda is Numba's own
# deprecated target, which numbagpt refuses (numbagpt/cuda/runtime.py): its tests are skipped then.
NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
NO_NUMBA_CUDA = "numba-cuda is not installed (pip install -e '.[cuda]')"


def gpu_present():
    if not NUMBA_CUDA:
        return False
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


# A CUDA module's real tests run in this process under the simulator, or directly on a real GPU.
RUN_HERE = NUMBA_CUDA and (SIM or gpu_present())


def _simulate(modules, started=lambda proc: None):
    """pytest tests/<modules> in a subprocess with NUMBA_ENABLE_CUDASIM=1: the CompletedProcess, or the
    TimeoutExpired of a run over 20 minutes. `started` gets the Popen."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # faulthandler dumps every thread's stack if one test runs over 5 minutes (a hang)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
           "-o", "faulthandler_timeout=300"] + [os.path.join("tests", m) for m in modules]
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        started(proc)
        try:
            out, err = proc.communicate(timeout=1200)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            e.stdout, e.stderr = proc.communicate()
            return e
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class Background:
    """The simulator runs of a pytest session, started as its collection ends and run one after
    another in a thread while the session's other tests run (conftest.py): the simulator is
    single-threaded Python, and most of the other tests keep one core busy, not two, so on a 2-core
    machine the runs cost little of the session's time. A test then waits for its run's result."""

    def __init__(self, runs):
        self.results = {modules: None for modules in runs}
        self.done = {modules: threading.Event() for modules in runs}
        self.stopped, self.proc = False, None
        threading.Thread(target=self._work, daemon=True).start()

    def _work(self):
        for modules in self.results:
            if not self.stopped:
                self.results[modules] = _simulate(modules, started=self._started)
            self.done[modules].set()

    def _started(self, proc):
        self.proc = proc
        if self.stopped:
            proc.kill()

    def result(self, modules):
        self.done[modules].wait()
        return self.results[modules]

    def stop(self):
        """No run starts after this, and the one running is killed (the session is over)."""
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


_background = None


def start_in_background(items):
    """Start the simulator runs of the collected tests `items` that are under_simulator's (conftest.py)."""
    global _background
    if not NUMBA_CUDA:
        return
    runs = [item.function.simulator_modules for item in items if hasattr(item.function, "simulator_modules")]
    if runs and _background is None:
        _background = Background(runs)


def stop_background():
    if _background is not None:
        _background.stop()


def run_module_under_simulator(modules, what):
    """pytest tests/<module> (one name, or several) in a subprocess with NUMBA_ENABLE_CUDASIM=1 (or that
    run's result, when it was started in the background); fail with its output."""
    modules = (modules,) if isinstance(modules, str) else tuple(modules)
    if not NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    rerun = f"rerun: NUMBA_ENABLE_CUDASIM=1 {sys.executable} -m pytest " + " ".join(f"tests/{m}" for m in modules)
    ahead = _background is not None and modules in _background.results
    proc = _background.result(modules) if ahead else _simulate(modules)
    if isinstance(proc, subprocess.TimeoutExpired):
        out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else (proc.stdout or "")
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else (proc.stderr or "")
        pytest.fail(f"{what} under the simulator timed out after {proc.timeout} s ({rerun})\n"
                    + out[-30000:] + "\n" + err[-30000:], pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{what} under the simulator failed ({rerun})\n"
                    + proc.stdout[-30000:] + "\n" + proc.stderr[-5000:], pytrace=False)
    print(proc.stdout[-2000:])


def under_simulator(modules, what):
    """The normal run's one test of a CUDA test module: `run_module_under_simulator(modules, what)`."""
    def test_under_simulator():
        run_module_under_simulator(modules, what)
    test_under_simulator.simulator_modules = (modules,) if isinstance(modules, str) else tuple(modules)
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
