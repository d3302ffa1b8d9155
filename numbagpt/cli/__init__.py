"""Command-line entry points (bin/* are thin wrappers around these)."""
import argparse
import os
import sys


def reserve_threads(n):
    """Let Numba run `n` threads (--omp-threads), even more than the cores it sees.

    Numba reads NUMBA_NUM_THREADS once, at import, and it caps set_num_threads. So raise it before
    numba is imported; when numba already is (a command called in-process), leave it: changing it
    then makes Numba refuse to compile anything."""
    if n is not None and "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(max(n, int(os.environ.get("NUMBA_NUM_THREADS", 0))))


def use_threads(n):
    """numba.set_num_threads(n), within the cap; returns the number of threads in use."""
    import numba
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    return numba.get_num_threads()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None) or the help already says it."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
