"""What an MPI launcher (mpiexec, mpirun, srun) tells a process through its environment, read without
MPI or NumPy: the commands ask it before they load anything (a line every rank would print alike, as
a flag's error, is left to rank 0), numbagpt.dist before it starts MPI."""
import os
import sys

# Environment variables a launcher sets in each process it starts: with any of them, we are in an MPI job.
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS",
                  "HYDRA_CONTROL_FD", "PMI_RANK")
# ... and the ones that say how many processes it started (Open MPI, MPICH/Intel MPI/srun --mpi=pmi2, Slurm).
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
# ... of those, the ones that count the processes of this launch alone (a Slurm batch script, one
# process, has the job's SLURM_NTASKS too)
STEP_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")


def launched_by_mpi(environ=None):
    """True when an MPI launcher started this process (or mpi4py is already imported)."""
    env = os.environ if environ is None else environ
    return "mpi4py.MPI" in sys.modules or any(v in env for v in _LAUNCHER_VARS)


def launcher_sizes(environ=None):
    """{variable: int} of the process-count variables the launcher set."""
    env = os.environ if environ is None else environ
    out = {}
    for name in _SIZE_VARS:
        try:
            out[name] = int(env[name])
        except (KeyError, ValueError):
            pass
    return out


def launcher_rank(environ=None):
    """This process's rank as the launcher's variables say (0 when they don't)."""
    env = os.environ if environ is None else environ
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if env.get(name, "").isdigit():
            return int(env[name])
    return 0


def other_rank(environ=None):
    """True in a process of a launch of several (the launcher's own count, STEP_SIZE_VARS) that is not
    its rank 0: a message every rank would print alike before MPI starts is left to rank 0."""
    env = os.environ if environ is None else environ
    return any(v > 1 for k, v in launcher_sizes(env).items() if k in STEP_SIZE_VARS) and launcher_rank(env) != 0
