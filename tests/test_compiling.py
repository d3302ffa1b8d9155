"""numbagpt/compiling.py: the line that says the kernels are compiling, said once where Numba compiles
within the block for the time given, never where it only loads or runs compiled code."""
import time

import numba
import numpy as np

from numbagpt.compiling import NOTICE, compile_notice


def test_said_once_while_numba_compiles_and_not_otherwise():
    said = []

    @numba.njit
    def f(x):   # a new function: compiled (not cached) at its first call
        return x + 1

    with compile_notice(said.append, after=0.0):
        f(np.float32(1))
        f(np.float64(1))   # a second compilation: still one line
        time.sleep(0.6)    # the watcher looks 4 times a second
    assert said == [NOTICE]
    said.clear()
    with compile_notice(said.append, after=0.0):
        f(np.float32(2))   # compiled already: nothing compiles
        time.sleep(0.6)
    assert said == []
    with compile_notice(said.append, after=60.0):
        f(np.int64(3))     # compiles, but for less than a minute
        time.sleep(0.6)
    assert said == []


def test_the_seconds_of_separate_compilations_add_up(monkeypatch):
    """Two compilations of 2 s and 1.5 s, apart, are 3.5 s of compiling (a nested one, a kernel's
    callee, counts once): the notice at 3 s is said, though neither alone lasts 3 s."""
    from numba.core import event

    import numbagpt.compiling as compiling
    now = [0.0]
    monkeypatch.setattr(compiling.time, "monotonic", lambda: now[0])
    said = []
    with compile_notice(said.append, after=3.0):
        for start, nested, end in ((0.0, 1.0, 2.0), (10.0, 10.5, 11.5)):
            now[0] = start
            event.start_event("numba:compile")
            now[0] = nested
            event.start_event("numba:compile")
            event.end_event("numba:compile")
            now[0] = end
            event.end_event("numba:compile")
            if start == 0.0:
                time.sleep(0.6)   # the watcher looks 4 times a second: 2 s so far, nothing said
                assert said == []
        now[0] = 50.0             # long after the compilations: still 3.5 s of them
        time.sleep(0.6)
    assert said == [NOTICE]
