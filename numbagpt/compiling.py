"""A line that says the kernels are compiling, where Numba compiles them long enough to be noticed.

A cold Numba cache (the first run after an install, or after an edit to a kernel) compiles every
kernel the run calls: about a minute on 2 cores, with nothing printed meanwhile. With a warm cache
the kernels load in a second or two and nothing is said.
"""
import contextlib
import functools
import threading
import time

NOTICE = ("compiling the kernels (Numba's cache has none for this code and machine yet: a minute or so "
          "this once; later runs load them from the cache)")


@functools.cache
def _compile_time():
    """The listener class: defined once Numba is imported (see compile_notice)."""
    from numba.core import event

    class CompileTime(event.Listener):
        """Seconds spent compiling so far (numba:compile fires on a compile, not on a cache load;
        nested compilations, a kernel's callees, count once)."""

        def __init__(self):
            self.depth, self.since, self.total = 0, None, 0.0

        def on_start(self, ev):
            if self.depth == 0:
                self.since = time.monotonic()
            self.depth += 1

        def on_end(self, ev):
            self.depth -= 1
            if self.depth == 0:
                self.total += time.monotonic() - self.since

        def seconds(self):
            return self.total + (time.monotonic() - self.since if self.depth else 0.0)

    return CompileTime


@contextlib.contextmanager
def compile_notice(say, after=3.0):
    """Within the block: once Numba has spent `after` seconds compiling, say(NOTICE), once. `say` is
    called from a watching thread. (Numba is imported here, not with this module: the commands import
    it, and the trainer with it, before they have checked NUMBA_NUM_THREADS, which Numba reads once.)"""
    from numba.core import event

    compiling, done = _compile_time()(), threading.Event()

    def watch():
        while not done.wait(0.25):
            if compiling.since is not None and compiling.seconds() >= after:
                say(NOTICE)
                return

    watcher = threading.Thread(target=watch, name="compile-notice", daemon=True)
    with event.install_listener("numba:compile", compiling):
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()
