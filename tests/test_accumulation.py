"""-d/--total-batch-size: gradient accumulation over micro-steps equals one step with the big batch.

Step level: the gradient summed over n micro-batches of B, divided by n, against the gradient of one
batch of n·B, to float32 rounding of the sum order. Command level (--shuffle 0, the micro model of
tests/fixtures, 3 steps): `-b 2 -d 64` (4 micro-steps of 2x8 tokens) ends with the parameters and
logs the losses of `-b 8` alone, in 1 process, under `mpiexec -n 2` (2 micro-steps per rank) and with
ZeRO-1 (-z 1). Bounds measured here: the accumulated gradient is within 4.3e-7 of the largest
gradient element of the big batch's (2, 4 or 8 micro-steps); after the 3 steps the parameters are
within 3.1e-7 of the largest parameter (1 process 2.6e-7, 2 ranks 3.1e-7, 2 ranks with -z 1 3.0e-7,
for updates of up to 1.8e-3), and the logged losses are the same to their 4 decimals. The tests
allow 1e-6 for both.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from numbagpt.files.formats import read_model
from numbagpt.model import GPT2
from numbagpt.train.step import train_step

from micro_data import token_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train_gpt2")
MICRO = os.path.join(ROOT, "tests", "fixtures", "micro_model.bin")  # V=97, L=2, C=32, maxT=16
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
TIMEOUT = 300

try:
    import mpi4py  # noqa: F401
    HAVE_MPI = os.access(MPIEXEC, os.X_OK)
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason=f"needs mpi4py and {MPIEXEC}")


def max_rel_diff(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_accumulated_gradient_equals_the_big_batch_gradient():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 97, (8, 9)).astype(np.int32)
    big = GPT2.from_file(MICRO)
    train_step(big, [(tokens[:, :-1], tokens[:, 1:])], lr=0.0, t=1)
    for n in (2, 4):  # micro-batches of 8/n sequences
        acc = GPT2.from_file(MICRO)
        micro = [(tokens[i * 8 // n:(i + 1) * 8 // n, :-1], tokens[i * 8 // n:(i + 1) * 8 // n, 1:])
                 for i in range(n)]
        res = train_step(acc, micro, lr=0.0, t=1)
        # the buffer holds the sum over the micro-steps; the step divides by n once
        assert max_rel_diff(acc.grads_host() / n, big.grads_host()) < 1e-6
        assert res.norm == pytest.approx(np.linalg.norm(big.grads_host().astype(np.float64)), rel=1e-5)


# ---------------------------------------------------------------------------------- command level

def run(args, nprocs=None):
    cmd = [sys.executable, TRAIN] + args
    if nprocs is not None:
        cmd = [MPIEXEC, "-n", str(nprocs)] + cmd
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return token_shards(tmp_path_factory.mktemp("accum_data"), val=False)


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    done = {}

    def get(nprocs, B, total=None, zero=0):
        key = (nprocs, B, total, zero)
        if key not in done:
            out = tmp_path_factory.mktemp(f"accum_{nprocs}x{B}_d{total}_z{zero}")
            args = ["-e", MICRO, "-i", str(shards / "train.bin"), "-b", str(B), "-t", "8", "-x", "3",
                    "-v", "0", "-g", "0", "--omp-threads", "1", "--shuffle", "0", "-z", str(zero),
                    "-o", str(out)] + (["-d", str(total)] if total else [])
            proc = run(args, nprocs=None if nprocs == 1 else nprocs)
            with open(out / "main.log") as f:
                losses = [line.split()[1] for line in f if "trl:" in line]
            done[key] = (read_model(str(out / "model_00000003.bin"))[1], losses, proc.stdout)
        return done[key]
    return get


def assert_same_run(a, b):
    assert a[1] == b[1]  # the logged mean losses, to the 4 printed decimals
    assert max_rel_diff(a[0], b[0]) <= 1e-6


def test_one_process_accumulation(runs):
    acc = runs(1, 2, total=64)
    assert "micro-steps 4" in acc[2]
    assert_same_run(acc, runs(1, 8))


@needs_mpi
@pytest.mark.parametrize("zero", [0, 1])
def test_two_ranks_accumulation(runs, zero):
    acc = runs(2, 2, total=64, zero=zero)
    assert "micro-steps 2" in acc[2]
    assert_same_run(acc, runs(1, 8))


def test_total_batch_must_divide(shards, capsys):
    from numbagpt.cli import train
    code = train.main(["-e", MICRO, "-i", str(shards / "train.bin"), "-b", "2", "-t", "8", "-d", "40",
                       "-x", "1", "-o", ""])
    err = capsys.readouterr().err
    assert code == 1 and "-d/--total-batch-size 40" in err and "B*T*processes = 2*8*1 = 16" in err
