"""How the benchmarks time a kernel's call: bench_matmul.py, bench_kernels.py and the labs (dev/lab.py's
families, dev/matmul/matmul_cpu.py) take their figures through this module, so that their ratios are
taken alike. (bench_train.py and bench_attention.py time whole steps or layers, each contender in
its own process.)

    add_threads(ap)      --threads, checked against the cores
    add_flags(ap)        --reps, --block-ms and --clock on an argparse parser
    positive_int         the argparse type of a count or a size (--reps, --steps, -B, ...)
    checked(what, ...)   a kernel's output against its reference, before the kernel is timed
    timers(args)         median_of(fns, reps): the median time of one call of each of fns
    describe(args)       the method in words, for a table's header

A call of a kernel at 2 threads lasts 0.3-10 ms. Timed alone it swings: single calls of 0.3-1 ms
ranged 0.6-1.3 of BLAS between runs of bench_matmul, and the process's CPU time (--clock cpu) also
counts the OpenMP threads that spin after a parallel loop, a spin that lands in whichever call comes
next (one blocking of the matmul lab, 5 copies in one run, measured 0.62-1.00 of BLAS so; by this
module's wall-clock blocks, 0.90-0.95).
"""
import argparse
import os
import sys
import time


def positive_int(text):
    """argparse type of a count or a size: an integer >= 1, refused in argparse's one line naming the
    flag (a 0 gave NaN tables or a traceback far from the flag). argparse says "invalid positive_int
    value" for a non-integer."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def checked(what, got, want, tol):
    """The largest |got − want| of a kernel's output against its reference (float64), relative to
    want's largest magnitude where that is above 1; stops the run in one line naming `what` when it is
    above tol. A NaN fails too (`err > tol` is False for one, and a kernel that writes nothing over a
    NaN-filled output must not pass). Returns the error."""
    import numpy as np
    want = np.asarray(want, np.float64)
    err = float(np.abs(np.asarray(got, np.float64) - want).max() / max(1.0, float(np.abs(want).max())))
    if not err <= tol:
        sys.exit(f"{what}: max relative error {err:.2e} against the reference (tolerance {tol:.2g}): wrong, not timed")
    return err


def add_threads(ap, default=2):
    """--threads, Numba's threads for the run: 1 to the cores this process may use, checked as argparse
    parses it (one line, not the traceback of numba.set_num_threads); by default `default`, or all the
    cores where there are fewer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    what = "the cores this process may use"
    pool = os.environ.get("NUMBA_NUM_THREADS", "")
    if pool.isdigit() and 1 <= int(pool) < cores:   # Numba's pool is no larger: set_num_threads refuses more
        cores, what = int(pool), "NUMBA_NUM_THREADS"

    def threads(text):
        n = int(text)   # argparse says "invalid threads value" for a non-integer
        if not 1 <= n <= cores:
            raise argparse.ArgumentTypeError(f"must be 1 to {cores} ({what}), got {n}")
        return n
    ap.add_argument("--threads", type=threads, default=min(default, cores),
                    help=f"Numba threads, 1 to {cores} (default: {min(default, cores)})")


def add_flags(ap, reps=5):
    """The timing flags of a benchmark: --reps (rounds), --block-ms, --clock."""
    ap.add_argument("--reps", type=positive_int, default=reps, help="rounds: each figure is the median of this many")
    ap.add_argument("--block-ms", type=float, default=25.0,
                    help="each round's block of back-to-back calls lasts about this long (default 25 ms)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time divided by --threads; steadier than wall time "
                         "when other jobs share the cores, exact with --threads 1 (with more threads "
                         "it also counts threads spinning at the end of a parallel loop)")


def describe(args):
    """How median_of times, for a table's header."""
    return (f"{args.clock} time, median of {args.reps} rounds, contenders in turn, each a block of calls of "
            f"about {args.block_ms:g} ms timed as one")


def timers(args):
    """median_of(fns, reps), on --clock (args also has threads and block_ms)."""
    import numpy as np

    if args.clock == "cpu":
        def clock():
            return time.process_time() / args.threads
    else:
        clock = time.perf_counter

    def median_of(fns, reps, pause=0.2):
        """Median time of one call of each of fns over `reps` rounds. A round takes the functions in
        turn (so that load from other processes hits all alike), each as one untimed call and then
        a block of calls back to back, as a training step makes them, lasting about --block-ms and
        timed as one (the block's mean is steady where single calls are not). With more than one
        thread a round first waits `pause` seconds: after a call, the other pool's threads
        (OpenBLAS's, Numba's OpenMP workers) spin a while before they sleep, and taking turns call
        by call would time each contender against the other's spinning threads on the same cores,
        which a training step never meets."""
        calls = [max(1, round(args.block_ms / 1000 / fastest_call(f))) for f in fns]
        times = [[] for _ in fns]
        for _ in range(reps):
            for n, f in enumerate(fns):
                if args.threads > 1:
                    time.sleep(pause)
                f()
                t = clock()
                for _ in range(calls[n]):
                    f()
                times[n].append((clock() - t) / calls[n])
        return [float(np.median(t)) for t in times]

    def fastest_call(f):
        """The fastest of 5 calls of f, or of those made in the first --block-ms (sizes its block: a
        first call after a pause can be 10x slower, while the pool's threads wake)."""
        best, spent = float("inf"), 0.0
        for _ in range(5):
            t = clock()
            f()
            took = clock() - t
            best, spent = min(best, took), spent + took
            if spent > args.block_ms / 1000:
                break
        return max(best, 1e-6)

    return median_of
