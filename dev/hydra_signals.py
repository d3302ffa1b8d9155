"""What an MPI launcher does with a signal it is sent: the measurements behind docs/reliability.md's
"What MPICH's mpiexec (Hydra) does".

    python dev/hydra_signals.py [--mpiexec PATH] [--ranks 2]

Starts `mpiexec -n RANKS` of a tiny Python rank (mpi4py initialised, as a numbagpt rank is) that logs
every signal it gets and, once signalled, exits 130 after a per-rank delay (rank 0 at once, the others
2 s later) through sys.exit (MPI_Finalize) or os._exit (no finalize). mpiexec runs in a session of its
own, as a job under a shell's job control does; each case sends it one or two signals, to its process
group as a terminal's Ctrl-C does, and prints what the ranks saw, mpiexec's exit status and its lines.

Hydra 5.0.2 (mpich 5.0.2):
  * SIGINT once: "[mpiexec@host] Sending Ctrl-C to processes as requested", every rank gets SIGINT,
    mpiexec waits for all (no time limit) and exits with their status (130).
  * SIGTERM once: every rank gets SIGTERM, nothing printed, mpiexec exits with their status.
  * SIGINT twice: every rank killed at once (no signal a handler sees), status 255 (or 1, when a Hydra
    proxy also fails its assert (!closed): 1 in 3 runs on the 2-core Zen 4, December 2026).
  * a rank exiting without MPI_Finalize (os._exit): the others are killed within ~0.2 s.
  * the proxy and the ranks are session leaders (setsid): the terminal's group is mpiexec alone.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

RANK = r'''
import os, signal, sys, time
from mpi4py import MPI
rank, log_dir, hard = MPI.COMM_WORLD.Get_rank(), sys.argv[1], sys.argv[2] == "hard"
log = open(os.path.join(log_dir, f"rank{rank}.log"), "w", buffering=1)
log.write(f"pid {os.getpid()} pgid {os.getpgid(0)} sid {os.getsid(0)}\n")
t0, got = time.time(), []
def handler(signum, frame):
    log.write(f"{time.time() - t0:.2f} s: {signal.Signals(signum).name}\n")
    got.append(signum)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, handler)
while time.time() - t0 < 60 and not got:
    time.sleep(0.01)
time.sleep(0 if rank == 0 else 2.0)
log.write(f"{time.time() - t0:.2f} s: exits 130\n")
(os._exit if hard else sys.exit)(130)
'''

CASES = [("SIGINT once", [signal.SIGINT], "finalize"), ("SIGTERM once", [signal.SIGTERM], "finalize"),
         ("SIGINT twice", [signal.SIGINT, signal.SIGINT], "finalize"),
         ("SIGINT once, ranks end by os._exit", [signal.SIGINT], "hard")]


def run_case(mpiexec, ranks, signals, how, work):
    logs = tempfile.mkdtemp(dir=work)
    script = os.path.join(work, "rank.py")
    proc = subprocess.Popen([mpiexec, "-n", str(ranks), sys.executable, script, logs, how],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while len(os.listdir(logs)) < ranks and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)   # every rank has installed its handlers
    t0 = time.time()
    for s in signals:
        os.killpg(proc.pid, s)
        time.sleep(0.3)
    out, _ = proc.communicate(timeout=120)
    ranks_seen = {name: open(os.path.join(logs, name)).read().strip() for name in sorted(os.listdir(logs))}
    return proc.returncode, time.time() - t0, out.strip(), ranks_seen


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mpiexec", default=os.path.join(os.path.dirname(sys.executable), "mpiexec"))
    p.add_argument("--ranks", type=int, default=2)
    args = p.parse_args()
    if shutil.which(args.mpiexec) is None:   # else Popen's FileNotFoundError traceback
        p.error(f"--mpiexec {args.mpiexec}: not an executable (give the path of MPICH's mpiexec)")
    if args.ranks < 1:
        p.error(f"--ranks must be positive, got {args.ranks}")
    work = tempfile.mkdtemp(prefix="hydra_signals_")
    try:
        with open(os.path.join(work, "rank.py"), "w") as f:
            f.write(RANK)
        for name, signals, how in CASES:
            status, seconds, out, seen = run_case(args.mpiexec, args.ranks, signals, how, work)
            print(f"=== {name}: mpiexec exit status {status}, {seconds:.1f} s after the first signal")
            for line in out.splitlines():
                print(f"  mpiexec| {line}")
            for rank, text in seen.items():
                print(f"  {rank}: " + " | ".join(text.splitlines()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
