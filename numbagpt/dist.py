"""Processes: one, or many under an MPI launcher (mpiexec, mpirun, srun) through mpi4py.

Data parallelism, as llm.c does it: every rank holds the whole model, reads its own slice of each
step's tokens (numbagpt.files.data.DataLoader), and the ranks sum their gradients before the update:

    ZeRO stage 0   one in-place Allreduce of the flat float32 gradient buffer; every rank runs AdamW on
                   all parameters (same numbers in, same numbers out).
    ZeRO stage 1   a Reduce_scatter of the gradients: rank r gets the summed gradient of its shard (a
                   contiguous 1/R of the flat buffer), keeps AdamW m/v and updates only that shard, then
                   an Allgatherv gives every rank all the updated parameters.

The gradients are summed, not averaged: numbagpt.train.step.train_step divides the norm by the world size
and folds 1/world_size into AdamW's grad_scale (no extra pass over the buffer), so the update is that
of the mean gradient — the gradient one process would get from the whole batch.

A backend whose buffers are host memory (the CPU's NumPy arrays) hands them to MPI in place (no
copies). Device arrays go to MPI directly when the MPI library is CUDA-aware (after a synchronize),
otherwise they are staged through host memory; `cuda_aware_mpi` decides, `World.transport` says which.

mpi4py is imported only when the process was started by an MPI launcher, so single-process use needs
no MPI library. docs/distributed.md is the user's guide.
"""
import contextlib
import ctypes
import math
import os
import signal
import socket
import sys
import time
import traceback

import numpy as np

from .launcher import STEP_SIZE_VARS, launched_by_mpi, launcher_rank, launcher_sizes  # noqa: F401 (dist.*)

CUDA_AWARE_ENV = "NUMBAGPT_CUDA_AWARE_MPI"


class WorldSizeError(RuntimeError):
    """The communicator's size is not what the launcher (or --expect-world-size) says. Every rank
    detects it; `rank` says which one this is (only rank 0 need print it), unless `alone`: this rank's
    own trouble (its Python lacks mpi4py), which it says itself."""
    rank = 0
    alone = False


class CollectiveError(RuntimeError):
    """An error every rank detects at the same point of the same step (e.g. a NaN mean loss), so the
    ranks can stop together and exit normally instead of aborting the job."""


def check_world_size(size, expect=None, environ=None):
    """Raise WorldSizeError when the communicator has `size` processes but --expect-world-size (when
    given, it alone decides) or the launcher's variables say otherwise. This catches the classic
    mistake where N processes each think they are rank 0 of 1: mpi4py built against another MPI than
    the launcher's, or srun without an MPI plugin — N copies would train N separate models."""
    if expect is not None:
        wrong = {"--expect-world-size": expect} if expect != size else {}
    else:
        # In a Slurm batch script SLURM_NTASKS is the allocation's task count, also seen by a single
        # process started without srun; --expect-world-size 1 says that is intended.
        wrong = {k: v for k, v in launcher_sizes(environ).items() if v != size}
    if not wrong:
        return
    said = ", ".join(f"{k}={v}" for k, v in wrong.items())
    raise WorldSizeError((
        f"this process sees an MPI world of {size} process{'es' if size != 1 else ''}, but {said}. "
        + ("Every process probably thinks it is rank 0 of 1 and would train its own model: mpi4py is "
           "linked against a different MPI library than the launcher's (use the mpiexec of the MPI "
           "mpi4py was built with: python -c 'from mpi4py import MPI; print(MPI.Get_library_version())'), "
           "or srun started the job without an MPI plugin (srun --mpi=pmix). "
           if size == 1 else "")
        + ("Pass --expect-world-size N to state the intended size (1 for a single process in a "
           "multi-task allocation)." if expect is None else "")).strip())


def partition(n, parts):
    """[(start, end)] of `parts` contiguous shards of range(n), sizes differing by at most one."""
    base, extra = divmod(n, parts)
    bounds = [0]
    for r in range(parts):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return [(bounds[r], bounds[r + 1]) for r in range(parts)]


# ----------------------------------------------------------------------------------------------
# CUDA-aware MPI: can device buffers go to MPI as they are?

def _query_cuda_support():
    """MPIX_Query_cuda_support() of the loaded MPI library (Open MPI, MPICH >= 4), or None if it has
    none. mpi4py does not wrap it, so look the symbol up in the libmpi this process mapped."""
    libs = []
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "libmpi" in line.rsplit("/", 1)[-1]})
    except OSError:
        pass
    for lib in libs + [None]:
        try:
            fn = ctypes.CDLL(lib).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        return int(fn())
    return None


def cuda_aware_mpi(environ=None, query=_query_cuda_support, simulator=False):
    """(use_device_buffers, reason). NUMBAGPT_CUDA_AWARE_MPI=1/0 decides when set; then the CUDA
    simulator's arrays can't go to MPI; then MPIX_Query_cuda_support() when the library has it;
    otherwise host staging, which always works."""
    env = os.environ if environ is None else environ
    forced = env.get(CUDA_AWARE_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{CUDA_AWARE_ENV}={forced}"
    if forced:
        raise ValueError(f"{CUDA_AWARE_ENV} must be 0 or 1, got {forced!r}")
    if simulator:
        return False, "CUDA simulator"
    answer = query()
    if answer is None:
        return False, "the MPI library has no MPIX_Query_cuda_support"
    return bool(answer), f"MPIX_Query_cuda_support() = {answer}"


# ----------------------------------------------------------------------------------------------
# the world

class World:
    """rank, size, this host's ranks (local_rank, local_size) and the collectives the trainer needs;
    `comm` is an mpi4py communicator or None (a single process: every collective is a no-op)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.local_rank, self.local_size = 0, 1
        if comm is not None and self.size > 1:
            from mpi4py import MPI
            local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
        self.host = socket.gethostname()
        self.device = "cpu"
        self.cuda_aware = False
        self.transport = "none (1 process)" if self.size == 1 else "host memory, in place"

    @property
    def is_master(self):
        return self.rank == 0

    def describe_mpi(self):
        if self.comm is None:
            return "none (single process)"
        from mpi4py import MPI
        library = " ".join(MPI.Get_library_version().splitlines()[0].split())
        return f"{library} | mpi4py {sys.modules['mpi4py'].__version__}"

    # -- setup ---------------------------------------------------------------------------------
    def setup_device(self, backend):
        """Pick this rank's device (a GPU: local_rank % GPUs) and how device buffers reach MPI."""
        self.device = backend.select_device(self.local_rank)
        if self.size > 1 and not backend.HOST_MEMORY:
            self.cuda_aware, why = cuda_aware_mpi(simulator=backend.SIMULATOR)
            self.transport = ("CUDA-aware MPI, device buffers" if self.cuda_aware
                              else "staged through host memory") + f" ({why})"
        return self.device

    # -- Python values -------------------------------------------------------------------------
    def sum(self, value):
        return value if self.size == 1 else self.comm.allreduce(value)

    def mean(self, value):
        return value if self.size == 1 else self.comm.allreduce(value) / self.size

    def bcast(self, obj):
        """Rank 0's obj, on every rank."""
        return obj if self.size == 1 else self.comm.bcast(obj, root=0)

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere."""
        return [obj] if self.size == 1 else self.comm.gather(obj, root=0)

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    @contextlib.contextmanager
    def rank0_first(self):
        """Rank 0 runs the body, then the others do (preparing data, compiling into a shared cache).
        If rank 0 fails in the body, it aborts the job, so nobody waits forever at the barrier."""
        if not self.is_master:
            self.barrier()
        yield
        if self.is_master:
            self.barrier()

    # -- flat float32 backend buffers, in place --------------------------------------------------
    def _direct(self, buf, backend):
        """True when MPI can use `buf` as it is: host memory, or a device array with CUDA-aware MPI
        (after the queued kernels that write it have finished)."""
        if backend.HOST_MEMORY:
            return True
        if self.cuda_aware:
            backend.synchronize()
            return True
        return False

    def allreduce_sum_(self, buf, backend):
        """buf ← Σ over ranks of buf."""
        if self.size == 1:
            return
        from mpi4py import MPI
        if self._direct(buf, backend):
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        else:
            host = np.ascontiguousarray(backend.to_host(buf))
            self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
            backend.copy_to_device(buf, host)

    def reduce_scatter_sum_(self, buf, backend, shards):
        """buf[start:end] of this rank's shard ← Σ over ranks of buf[start:end]; the rest of buf is
        left with partial sums (garbage). With MPI_IN_PLACE the result lands at the start of the
        buffer, so it is moved to the shard afterwards (1/R of the buffer)."""
        if self.size == 1:
            return
        from mpi4py import MPI
        counts = [e - s for s, e in shards]
        start, end = shards[self.rank]
        n = end - start
        if self._direct(buf, backend):
            self.comm.Reduce_scatter(MPI.IN_PLACE, [buf, MPI.FLOAT], counts, op=MPI.SUM)
            if start:
                backend.copy(buf[start:end], buf[:n])   # never overlaps: start >= counts[0] >= n
        else:
            host = np.ascontiguousarray(backend.to_host(buf))
            self.comm.Reduce_scatter(MPI.IN_PLACE, [host, MPI.FLOAT], counts, op=MPI.SUM)
            backend.copy_to_device(buf[start:end], host[:n])

    def allgather_(self, buf, backend, shards):
        """Every rank's buf[start:end] of its own shard, to every rank."""
        if self.size == 1:
            return
        from mpi4py import MPI
        counts = [e - s for s, e in shards]
        displs = [s for s, _ in shards]
        if self._direct(buf, backend):
            self.comm.Allgatherv(MPI.IN_PLACE, [buf, counts, displs, MPI.FLOAT])
        else:
            start, end = shards[self.rank]
            host = np.empty(buf.size, dtype=np.float32)
            host[start:end] = backend.to_host(buf[start:end])
            self.comm.Allgatherv(MPI.IN_PLACE, [host, counts, displs, MPI.FLOAT])
            backend.copy_to_device(buf, host)

    def broadcast_(self, buf, backend, root=0):
        """buf ← root's buf."""
        if self.size == 1:
            return
        if self._direct(buf, backend):
            self.comm.Bcast(buf, root=root)
        else:
            host = np.ascontiguousarray(backend.to_host(buf))
            self.comm.Bcast(host, root=root)
            backend.copy_to_device(buf, host)

    # -- failure ---------------------------------------------------------------------------------
    def abort(self, exc, prog):
        """Print `prog: rank r: error: ...` (with the traceback for anything but the expected
        ValueError/OSError/RuntimeError) and end every rank of the job: the others may be waiting in
        a collective this rank will never join."""
        if not isinstance(exc, (ValueError, OSError, RuntimeError)):
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        msg = str(exc) or type(exc).__name__
        print(f"{prog}: rank {self.rank}: error: {msg}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        if self.size > 1:
            # The launcher kills every process as soon as it hears of the abort and may drop what it
            # has not yet forwarded from our pipes: give it a moment to pass the message on.
            time.sleep(0.5)
            self.comm.Abort(1)
            os._exit(1)  # MPICH's MPI_Abort can return before the launcher's kill arrives


def check_together(world, check):
    """check()'s value on every rank, one verdict for all: with several ranks, the first failing
    rank's error (a bad flag, a file that is missing or wrong: every rank usually finds the same)
    becomes a CollectiveError on every rank (rank 0 says it once, all exit normally), not one
    error per rank and an MPI_Abort. One process: check() as it is. check() must hold no collective
    (a rank that failed before it would leave the others waiting there)."""
    if world.size == 1:
        return check()
    value, mine = None, None
    try:
        value = check()
    except (ValueError, OSError, RuntimeError) as e:
        mine = str(e) or type(e).__name__
    everyone = world.gather(mine)
    first = next(((r, v) for r, v in enumerate(everyone) if v), None) if world.is_master else None
    first = world.bcast(first)
    if first:
        raise CollectiveError(f"rank {first[0]}: {first[1]}")
    return value


@contextlib.contextmanager
def signals_kill():
    """SIGINT, SIGTERM and SIGHUP end the process at once (their default action) inside the block, then
    the handlers there were are back. For MPI_Init: a rank inside it waits for every rank to arrive and
    runs no Python signal handler until it returns, so a Ctrl-C that ended another rank first (one still
    starting Python) left it waiting there forever; killed by the signal, it ends with the others."""
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.getsignal(s) for s in signums}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:   # nohup's SIGHUP stays ignored
            signal.signal(s, signal.SIG_DFL)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def init_world(expect_size=None):
    """The World of this process: mpi4py's COMM_WORLD under an MPI launcher, else a single process.
    Checks the size against the launcher's variables and `expect_size` (see check_world_size)."""
    if not launched_by_mpi() and expect_size in (None, 1):
        world = World(None)
    else:
        try:
            with signals_kill():
                from mpi4py import MPI   # MPI_Init_thread
        except ImportError as e:
            sizes = launcher_sizes()
            if expect_size in (None, 1) and all(v == 1 for v in sizes.values()):
                world = World(None)
            else:
                err = WorldSizeError(f"an MPI launcher started this process ({sizes}) but mpi4py can't be "
                                     f"imported by {sys.executable} ({e}): pip install -e '.[mpi]' (mpi4py "
                                     f"and mpich) in numbagpt's checkout, or launch the Python that has it")
                err.rank = launcher_rank()
                err.alone = True   # this rank's Python: the others may have mpi4py, and rank 0 say nothing
                raise err from None
        else:
            world = World(MPI.COMM_WORLD)
    try:
        check_world_size(world.size, expect_size)
    except WorldSizeError as e:
        e.rank = world.rank
        raise
    return world


# ----------------------------------------------------------------------------------------------
# data parallel training of one model

class DataParallel:
    """Gradient and parameter exchange for `model` over `world`, ZeRO stage 0 or 1.

    `shard` = (start, end): the parameters whose AdamW moments and update this rank owns — all of
    them at stage 0, a contiguous 1/R of the flat buffer at stage 1.
    """

    def __init__(self, world, model, zero_stage=0):
        if zero_stage not in (0, 1):
            raise ValueError(f"ZeRO stage {zero_stage} is not supported; use 0 or 1")
        self.world, self.model, self.zero_stage = world, model, zero_stage
        n = model.num_parameters
        self.shards = partition(n, world.size) if zero_stage == 1 else [(0, n)] * world.size
        self.shard = self.shards[world.rank]

    def broadcast_parameters(self):
        """Every rank starts from rank 0's parameters, whatever each loaded or initialised."""
        self.world.broadcast_(self.model.params_flat, self.model.backend)

    def reduce_gradients(self):
        """Sum the gradients over the ranks (stage 0: all of them; stage 1: this rank's shard) and
        return the L2 norm of the summed gradient, the same number on every rank."""
        world, model = self.world, self.model
        model.materialize_grads()  # (a no-op after a backward)
        if self.zero_stage == 0:
            world.allreduce_sum_(model.grads_flat, model.backend)
            return model.grad_norm()
        world.reduce_scatter_sum_(model.grads_flat, model.backend, self.shards)
        return math.sqrt(world.sum(model.grad_norm_squared(*self.shard)))

    def gather_parameters(self):
        """Stage 1: every rank's updated shard to every rank (stage 0: nothing to do)."""
        if self.zero_stage == 1:
            self.world.allgather_(self.model.params_flat, self.model.backend, self.shards)

    def optimizer_bytes(self):
        """Bytes of AdamW m and v this rank needs (its shard)."""
        start, end = self.shard
        return 2 * 4 * (end - start)
