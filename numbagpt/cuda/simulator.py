"""Numba's CUDA simulator made to run numbagpt's kernels unchanged, and faster: loaded by
numbagpt/cuda/runtime.py only when NUMBA_ENABLE_CUDASIM is set, never on a GPU.

- The warp shuffle and barrier the kernels use (`cuda.shfl_xor_sync`, `cuda.syncwarp`) are missing
  from the simulator: faithful emulations (a per-warp barrier and value exchange) are added.
- Two hot spots are made cheaper: a block manager that does not spin while the simulated threads
  run, and shared arrays looked up without a stack traceback.
"""
import sys
import threading
import time

import numpy as np

WARP = 32                # lanes of a warp, as on the hardware
FULL_MASK = 0xFFFFFFFF   # all of them

_sim_lock = threading.Lock()


def _sim_warp_exchange(value):
    """All lanes of the calling thread's warp deposit `value`; every lane gets the list of 32 values.

    One barrier per exchange: the warp's two slot lists take turns, so a lane writes a list again only
    after the next exchange's barrier, which every lane reaches only once it has read that list."""
    th = threading.current_thread()
    warp = getattr(th, "_numbagpt_warp", None)
    if warp is None:
        mgr = th._manager
        w = th.thread_id // WARP
        with _sim_lock:
            state = mgr.__dict__.setdefault("_numbagpt_warps", {})
            if w not in state:
                nthreads = int(np.prod(mgr._block_dim))
                parties = min(WARP, nthreads - WARP * w)
                state[w] = (threading.Barrier(parties, timeout=120.0), ([None] * WARP, [None] * WARP))
            warp = th._numbagpt_warp = state[w]
        th._numbagpt_turn = 0
    barrier, lists = warp
    slots = lists[th._numbagpt_turn]
    th._numbagpt_turn ^= 1
    lane = th.thread_id % WARP
    slots[lane] = value
    barrier.wait()
    return list(slots), lane


def _sim_shfl_xor_sync(self, mask, value, lane_mask):
    vals, lane = _sim_warp_exchange(value)
    src = lane ^ int(lane_mask)
    return vals[src] if src < WARP and vals[src] is not None else value


def _sim_syncwarp(self, mask=FULL_MASK):
    _sim_warp_exchange(None)  # a barrier of the warp's lanes


def _sim_block_run(self, grid_point, *args):
    """numba-cuda's simulator BlockManager.run (numba/cuda/simulator/kernel.py, 0.30) with one change:
    its loop, which polls the block's threads until all have finished or all wait in syncthreads,
    yields the GIL once a round (time.sleep(0)) instead of spinning through its switch interval, so
    the simulated threads run meanwhile (a GEMM launch takes about 40% less CPU time)."""
    from numba.cuda.simulator.kernel import BlockThread
    threads = set()
    livethreads = set()
    blockedthreads = set()
    for block_point in np.ndindex(*self._block_dim):

        def target():
            self._f(*args)

        t = BlockThread(target, self, grid_point, block_point, self._debug)
        t.start()
        threads.add(t)
        livethreads.add(t)
    while livethreads:
        for t in livethreads:
            if t.syncthreads_blocked:
                blockedthreads.add(t)
            elif t.exception:
                for t_other in threads:  # abort the other threads, do not join them
                    t_other.abort = True
                    t_other.syncthreads_blocked = False
                    t_other.syncthreads_event.set()
                raise t.exception[0].with_traceback(t.exception[1])
        if livethreads == blockedthreads:
            for t in blockedthreads:
                t.syncthreads_blocked = False
                t.syncthreads_event.set()
            blockedthreads = set()
        livethreads = set([t for t in livethreads if t.is_alive()])
        time.sleep(0)
    for t in threads:
        if t.exception:
            raise t.exception[0].with_traceback(t.exception[1])


_upstream_shared_array = None


def _sim_shared_array(self, shape, dtype, alignment=None):
    """numba-cuda's simulator FakeCUDAShared.array (kernelapi.py, 0.30), which identifies a block's
    shared array by the (file, line) of its cuda.shared.array call, taking that from the caller's frame
    instead of a traceback of the whole stack with its source lines (a stat() per frame, a third of a
    simulated GEMM thread's time). Dynamic shared memory (shape 0) and alignment go upstream."""
    if shape == 0 or alignment is not None:
        return _upstream_shared_array(self, shape, dtype, alignment)
    frame = sys._getframe(1)
    caller = (frame.f_code.co_filename, frame.f_lineno)
    res = self._allocations.get(caller)
    if res is None:
        from numba.cuda.simulator.kernelapi import numpy_support, types  # upstream's conversion
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        res = self._allocations.setdefault(caller, np.empty(shape, dtype))  # the first thread's
    return res


def install():
    """Patch numba-cuda's simulator (once; runtime.py calls it when NUMBA_ENABLE_CUDASIM is set)."""
    global _upstream_shared_array
    from numba.cuda.simulator.kernel import BlockManager
    from numba.cuda.simulator.kernelapi import FakeCUDAModule, FakeCUDAShared
    if _upstream_shared_array is None:
        _upstream_shared_array = FakeCUDAShared.array
        FakeCUDAShared.array = _sim_shared_array
    if not hasattr(FakeCUDAModule, "shfl_xor_sync"):
        FakeCUDAModule.shfl_xor_sync = _sim_shfl_xor_sync
    if not hasattr(FakeCUDAModule, "syncwarp"):
        FakeCUDAModule.syncwarp = _sim_syncwarp
    BlockManager.run = _sim_block_run

