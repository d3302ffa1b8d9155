"""Data-parallel training (numbagpt.dist, bin/train_gpt2 under mpiexec).

In-process: the decision logic (world-size guard, CUDA-aware MPI, shards) and that ranks never read
the same tokens. Under the venv's mpiexec (skipped when mpi4py or mpiexec is missing), on the micro
model of tests/fixtures and tiny random shards, 3 steps of -b 2 -t 8:
  - 2 ranks with batch B end with the parameters of 1 process with batch 2B (shuffle off and on),
    and log the same losses;
  - ZeRO-1 (-z 1) ends with the parameters of -z 0, writes shard-sized state files, and resuming
    from its step-2 checkpoint gives exactly the uninterrupted run's parameters;
  - a rank that fails alone (its state file is truncated) ends the whole job quickly, with its message;
  - a NaN loss stops every rank at the same step; the world-size guard fires;
  - the buffer collectives on 3 ranks (NumPy in place) and on CUDA-simulator arrays (host staging).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from numbagpt import dist
from numbagpt.train import checkpoint
from numbagpt.files.data import DataLoader
from numbagpt.files.formats import (DETECTORS_SLOT, bf16_bits, read_model, read_state, read_state_header, write_model,
                                    write_shard, write_state)

from micro_data import token_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train_gpt2")
MICRO = os.path.join(ROOT, "tests", "fixtures", "micro_model.bin")  # V=97, L=2, C=32, maxT=16
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
TIMEOUT = 300  # seconds for any one subprocess (a cold Numba cache compiles every kernel first)

try:
    import mpi4py  # noqa: F401
    HAVE_MPI = os.access(MPIEXEC, os.X_OK)
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason=f"needs mpi4py and {MPIEXEC}")


# ----------------------------------------------------------------------------------------------
# in-process: decision logic

def test_partition():
    assert dist.partition(10, 1) == [(0, 10)]
    assert dist.partition(11, 3) == [(0, 4), (4, 8), (8, 11)]
    for n in (0, 1, 7, 30080):
        for parts in (1, 2, 3, 8):
            shards = dist.partition(n, parts)
            sizes = [e - s for s, e in shards]
            assert shards[0][0] == 0 and shards[-1][1] == n and max(sizes) - min(sizes) <= 1
            assert all(shards[i][1] == shards[i + 1][0] for i in range(parts - 1))


def test_world_size_guard():
    dist.check_world_size(2, environ={"PMI_SIZE": "2", "SLURM_NTASKS": "2"})
    dist.check_world_size(1, environ={})
    with pytest.raises(dist.WorldSizeError,
                       match="rank 0 of 1.*OMPI_COMM_WORLD_SIZE=4|OMPI_COMM_WORLD_SIZE=4.*rank 0 of 1"):
        dist.check_world_size(1, environ={"OMPI_COMM_WORLD_SIZE": "4"})
    with pytest.raises(dist.WorldSizeError, match="SLURM_NTASKS=8"):
        dist.check_world_size(1, environ={"SLURM_NTASKS": "8"})
    # --expect-world-size, when given, alone decides (a single process in a multi-task allocation)
    dist.check_world_size(1, expect=1, environ={"SLURM_NTASKS": "8"})
    with pytest.raises(dist.WorldSizeError, match="--expect-world-size=2"):
        dist.check_world_size(1, expect=2, environ={})
    assert dist.launched_by_mpi({"PMI_SIZE": "2"})
    assert dist.launcher_sizes({"PMI_SIZE": "2", "X": "1"}) == {"PMI_SIZE": 2}


def test_cuda_aware_decision():
    never = lambda: pytest.fail("must not query the library")  # noqa: E731
    assert dist.cuda_aware_mpi({"NUMBAGPT_CUDA_AWARE_MPI": "1"}, query=never) == (True, "NUMBAGPT_CUDA_AWARE_MPI=1")
    assert dist.cuda_aware_mpi({"NUMBAGPT_CUDA_AWARE_MPI": "0"}, query=never)[0] is False
    with pytest.raises(ValueError, match="must be 0 or 1"):
        dist.cuda_aware_mpi({"NUMBAGPT_CUDA_AWARE_MPI": "yes"}, query=never)
    assert dist.cuda_aware_mpi({}, query=never, simulator=True) == (False, "CUDA simulator")
    assert dist.cuda_aware_mpi({}, query=lambda: 1) == (True, "MPIX_Query_cuda_support() = 1")
    assert dist.cuda_aware_mpi({}, query=lambda: 0)[0] is False
    assert dist.cuda_aware_mpi({}, query=lambda: None)[0] is False


def test_single_process_world_is_a_no_op():
    world = dist.World(None)
    buf = np.arange(5, dtype=np.float32)
    from numbagpt import cpu as backend
    world.allreduce_sum_(buf, backend)
    world.reduce_scatter_sum_(buf, backend, [(0, 5)])
    world.allgather_(buf, backend, [(0, 5)])
    world.broadcast_(buf, backend)
    assert buf.tolist() == [0, 1, 2, 3, 4] and world.mean(3.0) == 3.0 and world.gather(7) == [7]
    with world.rank0_first():
        pass


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_never_read_the_same_tokens(tmp_path, shuffle):
    """Shards whose token i is its position: at every step the R ranks' windows are disjoint and
    together are exactly what one process with batch R*B reads (across shards and epochs)."""
    for k, n in enumerate((333, 257)):
        write_shard(tmp_path / f"s{k}.bin", np.arange(n) + 1000 * k)
    B, T, R = 2, 4, 3
    one = DataLoader(str(tmp_path / "s*.bin"), R * B, T, shuffle=shuffle, seed=5)
    ranks = [DataLoader(str(tmp_path / "s*.bin"), B, T, rank=r, world_size=R, shuffle=shuffle, seed=5)
             for r in range(R)]
    for _ in range(3 * one.batches_per_epoch):
        x, y = one.next_batch()
        parts = [dl.next_batch() for dl in ranks]
        seen = [set(px.ravel().tolist()) for px, _ in parts]
        assert sum(map(len, seen)) == len(set().union(*seen)) == R * B * T   # disjoint
        np.testing.assert_array_equal(np.concatenate([px for px, _ in parts]), x)
        np.testing.assert_array_equal(np.concatenate([py for _, py in parts]), y)


# ----------------------------------------------------------------------------------------------
# under mpiexec

def run(args, nprocs=None, env=None, timeout=TIMEOUT):
    """Run bin/train_gpt2 (or a script) in 1 process or under mpiexec -n nprocs; returns
    (CompletedProcess, seconds)."""
    cmd = [sys.executable] + args
    if nprocs is not None:
        cmd = [MPIEXEC, "-n", str(nprocs)] + cmd
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc, time.perf_counter() - t0


def check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return token_shards(tmp_path_factory.mktemp("dist_data"))


def train_args(shards, out, B, shuffle=1, zero=0, extra=()):
    return [TRAIN, "-e", MICRO, "-i", str(shards / "train.bin"), "-j", str(shards / "val.bin"),
            "-b", str(B), "-t", "8", "-x", "3", "-v", "3", "-m", "2", "-s", "0", "-g", "0",
            "--omp-threads", "1", "--shuffle", str(shuffle), "-z", str(zero), "-o", str(out), *extra]


def final_params(out):
    return read_model(os.path.join(out, "model_00000003.bin"))[1]


def train_losses(out, record="trl:"):
    with open(os.path.join(out, "main.log")) as f:
        return [line.split()[1] for line in f if record in line]


def assert_close(a, b):
    """Parameters equal within float32 rounding: 1e-5 of the largest parameter."""
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max(), np.abs(a - b).max()


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    """Training runs, each done once, by (processes, B, shuffle, zero): the output directory."""
    done = {}

    def get(nprocs, B, shuffle, zero=0):
        key = (nprocs, B, shuffle, zero)
        if key not in done:
            out = tmp_path_factory.mktemp(f"run_{nprocs}x{B}_s{shuffle}_z{zero}")
            extra = ("-n", "2") if zero else ()   # ZeRO-1 runs also write a checkpoint at step 2
            proc, _ = run(train_args(shards, out, B, shuffle, zero, extra), nprocs=None if nprocs == 1 else nprocs)
            done[key] = (str(out), check(proc))
        return done[key]
    return get


@needs_mpi
@pytest.mark.parametrize("shuffle", [0, 1])
def test_two_ranks_equal_one_process_with_twice_the_batch(runs, shuffle):
    one, proc1 = runs(1, 4, shuffle)
    two, proc = runs(2, 2, shuffle)
    assert "processes 2" in proc.stdout and "| 2 proc |" in proc.stdout
    # rank 0 prints, one line per rank
    assert proc.stdout.count("step    3/3") == 1 and proc.stdout.count("\n  rank ") == 2
    # the tokens of a step are all the ranks' (and tok/s with them)
    assert "tokens/step 32" in proc.stdout and "tokens/step 32" in proc1.stdout
    # same tokens read (the logged mean loss of the ranks is the loss of the 2B batch), same parameters;
    # the val loss is the mean over the ranks too
    assert train_losses(two) == train_losses(one)
    assert len(train_losses(two, "tel:")) == 2 and train_losses(two, "tel:") == train_losses(one, "tel:")
    assert_close(final_params(one), final_params(two))
    start = read_model(MICRO)[1]
    assert np.abs(final_params(two) - start).max() > 1e-4   # it did train


@needs_mpi
def test_zero1_equals_zero0_and_resumes(runs, shards, tmp_path):
    z0, _ = runs(2, 2, 1)
    z1, proc = runs(2, 2, 1, zero=1)
    assert "ZeRO stage 1" in proc.stdout and "m+v of 15,040 parameters per rank" in proc.stdout
    assert_close(final_params(z0), final_params(z1))
    # each rank wrote the m and v of its own shard: 1024-byte header + 2 x 15,040 floats, then the
    # spike guard's windows (their byte length is in the header)
    for r in (0, 1):
        path = os.path.join(z1, f"state_00000002_{r:05d}.bin")
        assert read_state_header(path)["num_parameters"] == 15040
        trailer = int(np.fromfile(path, dtype="<i4", count=256)[DETECTORS_SLOT])
        assert trailer and os.path.getsize(path) == 1024 + 2 * 4 * 15040 + trailer
    # resuming from step 2 gives exactly the uninterrupted run's parameters
    resume = tmp_path / "resume"
    resume.mkdir()
    for name in ("model_00000002.bin", "state_00000002_00000.bin", "state_00000002_00001.bin", "DONE_00000002"):
        shutil.copy(os.path.join(z1, name), resume / name)
    proc, _ = run(train_args(shards, resume, 2, zero=1, extra=("-y", "1")), nprocs=2)
    assert "resumed from step 2" in check(proc).stdout
    np.testing.assert_array_equal(final_params(resume), final_params(z1))


@needs_mpi
def test_zero1_resumes_exactly_from_bf16_model_files(runs, shards, tmp_path):
    """--save-precision bf16 under ZeRO-1: each rank's state keeps the float32 master weights of its own
    shard; a resume puts them back and gathers them, so it ends where the uninterrupted run does (whose
    parameters are the fp32-file run's: the file precision does not touch training)."""
    z1, _ = runs(2, 2, 1, zero=1)
    out = tmp_path / "bf16"
    check(run(train_args(shards, out, 2, zero=1, extra=("-n", "2", "--save-precision", "bf16")), nprocs=2)[0])
    for r in (0, 1):
        st = read_state(str(out / f"state_00000002_{r:05d}.bin"))
        assert st["use_master_weights"] == 1 and st["master"].size == 15040
    final = read_model(str(out / "model_00000003.bin"))[1]
    widened = (bf16_bits(final_params(z1)).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(final, widened)
    resume = tmp_path / "resume"
    resume.mkdir()
    for name in ("model_00000002.bin", "state_00000002_00000.bin", "state_00000002_00001.bin", "DONE_00000002"):
        shutil.copy(out / name, resume / name)
    proc, _ = run(train_args(shards, resume, 2, zero=1, extra=("-y", "1", "--save-precision", "bf16")), nprocs=2)
    assert "resumed from step 2" in check(proc).stdout
    assert (resume / "model_00000003.bin").read_bytes() == (out / "model_00000003.bin").read_bytes()


@needs_mpi
def test_one_failing_rank_ends_the_job(runs, shards, tmp_path):
    """Rank 1's state file holds one parameter too few (a well-formed file, and DONE records its hash:
    the checkpoint verifies): only rank 1 fails (in checkpoint.load_state) while rank 0 goes on into the first step's
    collectives; the job must still end, with rank 1's message."""
    z1, _ = runs(2, 2, 1, zero=1)
    for name in ("model_00000002.bin", "state_00000002_00000.bin", "state_00000002_00001.bin", "DONE_00000002"):
        shutil.copy(os.path.join(z1, name), tmp_path / name)
    path = str(tmp_path / "state_00000002_00001.bin")
    st = read_state(path)
    new_hash = write_state(path, 2, 2, 1, st["m"][:-1], st["v"][:-1], shard_index=st["shard_index"],
                           sample_index=st["sample_index"], shuffle=st["shuffle"], epoch=st["epoch"],
                           seed=st["seed"], run=st["run"])
    done = json.loads((tmp_path / "DONE_00000002").read_text())
    done[checkpoint.HASH]["state_00000002_00001.bin"] = new_hash
    (tmp_path / "DONE_00000002").write_text(json.dumps(done))
    proc, seconds = run(train_args(shards, tmp_path, 2, zero=1, extra=("-y", "1")), nprocs=2, timeout=60)
    assert proc.returncode != 0
    assert "rank 1: error:" in proc.stderr and "state_00000002_00001.bin" in proc.stderr, proc.stderr
    assert "rank 0: error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert seconds < 60


@pytest.mark.parametrize("exc, traceback", [(ValueError("bad -b"), False), (OSError("disk"), False),
                                             (KeyError("bug"), True)])
def test_abort_says_an_expected_error_in_one_line_and_a_bug_with_its_traceback(capsys, exc, traceback):
    from numbagpt.dist import World
    try:
        raise exc
    except Exception as e:
        World(None).abort(e, prog="eval_gpt2")
    err = capsys.readouterr().err
    assert err.endswith(f"eval_gpt2: rank 0: error: {exc}\n") and ("Traceback" in err) == traceback, err


@needs_mpi
def test_nan_loss_stops_every_rank(shards, tmp_path):
    # -l 1e38 (no clipping, no warmup): step 1's update blows the weights up and step 2's loss is NaN
    # or infinite on every rank (a model file with a NaN is refused as it is read, before a step)
    args = train_args(shards, tmp_path / "out", 2, extra=("-l", "1e38", "--grad-clip", "0", "-u", "0"))
    proc, seconds = run(args, nprocs=2, timeout=60)
    assert proc.returncode != 0 and seconds < 60
    assert re.findall(r"step 2: loss (?:nan|inf)", proc.stderr) and proc.stderr.count("training diverged") == 1, \
        proc.stderr   # said once, by rank 0
    assert "Abort" not in proc.stderr   # every rank stopped by itself, nobody had to be killed


@needs_mpi
def test_world_size_guard_fires():
    proc, _ = run([TRAIN, "--expect-world-size", "2", "-x", "1"], timeout=60)
    assert proc.returncode != 0 and "world of 1 process, but --expect-world-size=2" in proc.stderr
    # mpirun of another MPI (here: Open MPI's variable) starting a process whose mpi4py uses MPICH
    proc, _ = run([TRAIN, "-x", "1"], env={"OMPI_COMM_WORLD_SIZE": "2"}, timeout=60)
    assert proc.returncode != 0 and "rank 0 of 1" in proc.stderr and "OMPI_COMM_WORLD_SIZE=2" in proc.stderr
    proc, _ = run([TRAIN, "--expect-world-size", "3", "-x", "1"], nprocs=2, timeout=60)
    assert proc.returncode != 0 and proc.stderr.count("world of 2 processes") == 1


@needs_mpi
@pytest.mark.parametrize("device,nprocs", [("cpu", 3), ("cuda", 2)])
def test_buffer_collectives(device, nprocs):
    script = os.path.join(ROOT, "tests", "mpi", "collectives.py")
    proc, _ = run(["-m", "mpi4py", script, device], nprocs=nprocs, env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert check(proc).stdout.count(" ok (") == nprocs


@needs_mpi
def test_a_memory_refusal_under_mpiexec_is_one_line(shards, tmp_path):
    """Every rank's memory check, one verdict: rank 0 prints the refusal once and every rank exits
    normally (each rank printed it, then MPI_Abort)."""
    proc, _ = run(train_args(shards, tmp_path / "m", 2), nprocs=2, env={"NUMBAGPT_MEMORY_LIMIT": "100K"})
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.count("not enough memory") == 1 and "Abort" not in proc.stderr, proc.stderr
    assert "train_gpt2: error: rank 0: not enough memory for " in proc.stderr
    assert " x 2 ranks on this host" in proc.stderr
    assert "use fewer ranks on this host, a smaller model or a machine with more memory" in proc.stderr


def nan_model(path):
    """MICRO with one parameter NaN (a model every command refuses as it reads it)."""
    config, params = read_model(MICRO)
    params[7] = np.nan
    write_model(str(path), config, params)
    return str(path)


@needs_mpi
@pytest.mark.parametrize("flag, value, said", [
    ("-d", "40", "-d/--total-batch-size 40 is not a multiple of B*T*processes = 2*8*2 = 32"),
    ("-e", "missing.bin", "missing.bin: no such model file or directory (-e)"),
    ("-e", nan_model, "1 parameter is NaN or infinite (the first in wte)"),
    ("-i", "typo_train.bin", "no data shard matches 'typo_train.bin'"),
])
def test_an_input_every_rank_refuses_is_one_line(shards, tmp_path, flag, value, said):
    """A flag or file every rank finds wrong before the first step: rank 0 says it once and every
    rank exits with status 1 (every rank printed it, the lines run together, then MPI_Abort)."""
    args = train_args(shards, tmp_path / "out", 2)
    if flag not in args:
        args += [flag, ""]
    args[args.index(flag) + 1] = value(tmp_path / "nan.bin") if callable(value) else value
    proc, _ = run(args, nprocs=2, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count(said) == 1, proc.stderr
    assert "train_gpt2: error: rank 0: " in proc.stderr and "Abort" not in proc.stderr, proc.stderr


@needs_mpi
@pytest.mark.parametrize("prog, args, status, said", [
    ("train_gpt2", ["--bogus"], 2, "train_gpt2: error: unrecognized arguments: --bogus (--help lists the flags)\n"),
    ("train_gpt2", ["-b", "0"], 1, "train_gpt2: error: -b must be positive, got 0\n"),
    ("train_gpt2", ["--heads", "3", "--channels", "64"], 1,
     "train_gpt2: error: channels C=64 (--channels) is not divisible by heads NH=3 (--heads)\n"),
    ("eval_gpt2", ["--hellaswag", "e.bin", "-b", "-1"], 1, "eval_gpt2: error: -b must be positive, got -1\n"),
])
def test_a_flag_error_under_mpiexec_is_said_once(prog, args, status, said):
    """Every rank reads the same command line before MPI starts: rank 0 alone says what is wrong with it
    (each rank said it, one line per rank)."""
    proc, _ = run([os.path.join(ROOT, "bin", prog)] + args, nprocs=2, timeout=60)
    assert (proc.returncode, proc.stderr) == (status, said)
    proc, _ = run([os.path.join(ROOT, "bin", prog), "--help"], nprocs=2, timeout=60)
    assert proc.returncode == 0 and proc.stdout.count("usage:") == 1, proc.stdout


STOP_ON_RANK_1 = """
import os, signal, sys
from numbagpt import api, dist
from numbagpt.train.rundir import Interrupted, StopRequest
shards, micro = sys.argv[1], sys.argv[2]
config = api.TrainConfig(model=micro, train_data=os.path.join(shards, "train.bin"), output_dir="", batch_size=2,
                         seq_len=8, max_steps=6, val_every=0, sample_every=0, omp_threads=1)
rank, steps = dist.launcher_rank(), []

def on_step(record):
    steps.append(record.step)
    if rank == 1 and record.step == 2:
        os.kill(os.getpid(), signal.SIGINT)
with StopRequest() as stop:
    try:
        api.train(config, stop=stop, on_step=on_step, say=lambda line: None)
    except Interrupted as e:   # a file per rank: two ranks' lines on one stdout may run together
        with open(os.path.join(sys.argv[3], f"rank{rank}.txt"), "w") as f:
            f.write(f"{e} after steps {steps}")
"""


@needs_mpi
def test_the_apis_stop_request_stops_every_rank(shards, tmp_path):
    """docs/api.md's `with StopRequest() as stop: train(config, stop=stop)` under mpiexec: a signal on
    rank 1 stops both ranks after the same step (train gives the request the ranks; without them rank 1
    stopped alone and rank 0 waited in the next collective forever)."""
    (tmp_path / "stop.py").write_text(STOP_ON_RANK_1)
    proc, _ = run([str(tmp_path / "stop.py"), str(shards), MICRO, str(tmp_path)], nprocs=2, timeout=120,
                  env={"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "SIGINT after steps [1, 2]"


@pytest.mark.parametrize("env, other", [
    ({}, False),
    ({"PMI_SIZE": "2", "PMI_RANK": "1"}, True),
    ({"PMI_SIZE": "2", "PMI_RANK": "0"}, False),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, True),
    ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}, True),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}, False),   # a batch script's own process: the job's count
    ({"PMI_SIZE": "1", "PMI_RANK": "1"}, False),
])
def test_other_rank_reads_the_launchers_variables(env, other, capsys):
    """launcher.other_rank: a process of a launch of several that is not its rank 0. There a flag's error
    exits with its status and says nothing (rank 0 says it)."""
    from numbagpt.cli.train import parse_config
    from numbagpt.launcher import other_rank
    assert other_rank(env) is other
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(SystemExit) as e:
            parse_config(["-b", "0"])
        assert (e.value.code == 1) if other else (e.value.code == "train_gpt2: error: -b must be positive, got 0")
        with pytest.raises(SystemExit) as e:
            parse_config(["--bogus"])
        assert e.value.code == 2
        assert ("unrecognized arguments: --bogus" in capsys.readouterr().err) is not other


@needs_mpi
def test_ranks_started_with_different_flags_stop_at_once(shards, tmp_path):
    """An MPMD launch whose ranks have different -x: every rank ends with one line naming -x (it
    hung before: the rank with fewer steps finished and the other waited in a collective)."""
    a = train_args(shards, tmp_path / "a", 2)
    b = list(a)
    b[b.index("-x") + 1] = "4"   # rank 1 runs 4 steps, rank 0 3
    cmd = [MPIEXEC, "-n", "1", sys.executable] + a + [":", "-n", "1", sys.executable] + b
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "different flags: rank 1 has -x 4, rank 0 3" in proc.stderr, proc.stderr
    assert time.perf_counter() - t0 < 120


class TwoRanks:
    """Rank 0 of a world of 2 whose other rank found `theirs` (None: nothing wrong): the collectives
    check_together takes, without MPI."""
    rank, size, is_master = 0, 2, True

    def __init__(self, theirs=None):
        self.theirs = theirs

    def gather(self, mine):
        return [mine, self.theirs]

    def bcast(self, value):
        return value


def test_check_together_gives_one_verdict_naming_the_first_rank():
    assert dist.check_together(TwoRanks(), lambda: 42) == 42
    with pytest.raises(dist.CollectiveError, match=r"^rank 1: x.bin: no such file$"):
        dist.check_together(TwoRanks("x.bin: no such file"), lambda: 42)

    def missing():
        raise FileNotFoundError("-i typo.bin: no such file")   # an OSError too, not only ValueError
    with pytest.raises(dist.CollectiveError, match=r"^rank 0: -i typo.bin: no such file$"):
        dist.check_together(TwoRanks("another"), missing)


def test_a_shard_every_rank_finds_changed_stops_the_step_together():
    """The step's batches are read under check_together: a shard changed on disk mid-run is one
    CollectiveError on every rank (each rank printed it, run together, then MPI_Abort)."""
    import types
    from numbagpt.files.formats import FormatError
    from numbagpt.train.trainer import Run

    class Changed:
        def next_batch(self):
            raise FormatError("d_train_000001.bin: the data shard changed since the run started")
    run = types.SimpleNamespace(config=types.SimpleNamespace(overfit_single_batch=0), train_loader=Changed(),
                                micro_steps=2, world=TwoRanks())
    with pytest.raises(dist.CollectiveError, match="^rank 0: d_train_000001.bin: the data shard changed"):
        Run.step(run, 3, None)


def test_signals_end_the_process_inside_mpi_init():
    """Inside signals_kill (around MPI_Init, where no Python handler runs) SIGINT kills the process, as a
    rank waiting there for a rank that a Ctrl-C already ended must end too (it waited forever); the
    handlers come back after it, and an ignored SIGHUP (nohup) stays ignored."""
    import signal
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with dist.signals_kill():
            assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        signal.signal(signal.SIGHUP, hup)
    code = ("import os, signal, time\nfrom numbagpt import dist\nwith dist.signals_kill():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)\nprint('survived')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGINT and "survived" not in proc.stdout, proc


@pytest.mark.parametrize("rank, alone, said", [(0, False, "train_gpt2: error: bad\n"), (1, False, ""),
                                               (0, True, "train_gpt2: error: bad\n"),
                                               (1, True, "train_gpt2: error: rank 1: bad\n")])
def test_a_world_size_error_is_said_once(capsys, rank, alone, said):
    """What every rank found, rank 0 says; a rank's own (its Python lacks mpi4py), that rank (rank 1's
    went unsaid: only rank 0 printed, and its mpi4py was fine)."""
    from numbagpt.cli import world_size_error
    e = dist.WorldSizeError("bad")
    e.rank, e.alone = rank, alone
    world_size_error("train_gpt2", e)
    assert capsys.readouterr().err == said


def test_launcher_rank_reads_slurm_procid():
    """Under srun only SLURM_PROCID gives the rank: rank 3 is 3, and a one-process command on rank 1
    of a 2-task step is refused silently (True), not run as a second rank 0."""
    from numbagpt.cli.launch import one_process_only
    assert dist.launcher_rank({"SLURM_PROCID": "3"}) == 3
    assert dist.launcher_rank({}) == 0
    assert one_process_only("sample_gpt2", {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}) is True
    assert one_process_only("sample_gpt2", {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"}).startswith(
        "sample_gpt2: error: it runs as one process")


@pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py (MPI.IN_PLACE)")
def test_a_step_over_two_ranks_averages_over_them_as_one_process_with_their_batches():
    """train_step over 2 ranks x B=2 divides the summed gradient by micro-batches x ranks: with
    clipping on, its logged norm and its parameters are those of 1 process x B=4 (both halves).
    The 2 ranks are one process whose communicator sums as if the other rank had the same batch."""
    from mpi4py import MPI

    from numbagpt.model import GPT2
    from numbagpt.train.step import train_step

    class TwinComm:   # the other rank holds the same batch: every sum over ranks doubles
        def Allreduce(self, inplace, buf, op):
            assert inplace is MPI.IN_PLACE and op is MPI.SUM
            buf *= 2

        def allreduce(self, value):
            return 2 * value

    rng = np.random.default_rng(5)
    x = rng.integers(0, 97, (2, 8)).astype(np.int32)
    y = rng.integers(0, 97, (2, 8)).astype(np.int32)
    ref = GPT2.from_file(MICRO)   # the reference norm: the gradient of the one batch's mean loss
    ref.forward(x, y)
    ref.zero_grad()
    ref.backward()
    want_norm = ref.grad_norm()
    clip = want_norm / 3
    one = GPT2.from_file(MICRO)
    r1 = train_step(one, [(np.concatenate([x, x]), np.concatenate([y, y]))], lr=1e-3, t=1, grad_clip=clip)
    two = GPT2.from_file(MICRO)
    world = dist.World()
    world.comm, world.size = TwinComm(), 2
    r2 = train_step(two, [(x, y)], lr=1e-3, t=1, grad_clip=clip, dp=dist.DataParallel(world, two))
    for r in (r1, r2):
        assert r.norm == pytest.approx(want_norm, rel=1e-5)
        assert r.scale == pytest.approx(1 / 3, rel=1e-5)
    assert r2.loss == pytest.approx(r1.loss, rel=1e-6)
    assert_close(two.parameters_host(), one.parameters_host())
    assert not np.array_equal(one.parameters_host(), GPT2.from_file(MICRO).parameters_host())
