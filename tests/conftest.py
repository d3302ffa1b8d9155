import os
import sys

# tests/ for `from reference import ...`; the repo root for `import numbagpt` without installing it.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (_HERE, os.path.dirname(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def pytest_collection_modifyitems(config, items):
    """Under the CUDA simulator, the kernel test files (test_cpu_*.py) run only their tests that take a
    `backend` (tests/harness.py: the CUDA cases); the rest ran in the normal pytest run already."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        return
    keep, drop = [], []
    for item in items:
        cpu_file = os.path.basename(str(item.fspath)).startswith("test_cpu_")
        (drop if cpu_file and "backend" not in getattr(item, "fixturenames", ()) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session):
    """The CUDA simulator's runs start now, in the background (tests/simulator.py, Background)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        from simulator import start_in_background
        start_in_background(session.items)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        from simulator import stop_background
        stop_background()
