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
