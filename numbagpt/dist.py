"""Processes: one, or many under an MPI launcher (mpiexec, mpirun, srun) through mpi4py.

Data parallel training averages the flat gradient buffer across ranks with one Allreduce, so every
rank applies the same AdamW update to the same parameters. mpi4py is imported only when the process
was started by an MPI launcher, so single-process use needs no MPI library.
"""
import os

import numpy as np

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS",
                  "HYDRA_CONTROL_FD", "PMI_RANK")


def launched_by_mpi():
    """True when an MPI launcher started this process (or mpi4py is already imported)."""
    import sys
    return "mpi4py.MPI" in sys.modules or any(v in os.environ for v in _LAUNCHER_VARS)


class World:
    """rank, size and the collectives the trainer needs; `comm` is an mpi4py communicator or None."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @property
    def is_master(self):
        return self.rank == 0

    def allreduce_mean_(self, buf, backend):
        """buf (a flat float32 backend array) ← the mean of buf over all ranks, in place."""
        if self.size == 1:
            return
        from mpi4py import MPI
        host = backend.to_host(buf)
        self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        host *= np.float32(1.0 / self.size)
        backend.copy_to_device(buf, host)

    def mean(self, value):
        if self.size == 1:
            return value
        return self.comm.allreduce(value) / self.size

    def broadcast_(self, host_array):
        if self.size > 1:
            self.comm.Bcast(host_array, root=0)

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()


def init_world():
    if not launched_by_mpi():
        return World(None)
    from mpi4py import MPI
    return World(MPI.COMM_WORLD)
