"""bin/train_gpt2's promises, end to end with real runs (a micro model, a few steps; every run a
subprocess of this worktree, so Numba's cache compiled once serves all): kill -9 at every phase of a
checkpoint write and the final save, then -y 1, gives the uninterrupted run's log and model bit for
bit; one run per directory; no fresh run over a used one; a resume that changes B is refused; the
memory check; Ctrl-C; and the one-line messages of docs/reliability.md."""
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numbagpt.train import checkpoint
from numbagpt.files import formats
from numbagpt.cli import test as test_cli
from numbagpt.cli import train
from numbagpt import memory
from numbagpt.config import GPT2Config
from numbagpt.layout import memory_estimate
from simulator import NO_NUMBA_CUDA, NUMBA_CUDA
from numbagpt.model import GPT2

from micro_data import play_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train_gpt2")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    paths, model_path, _ = play_corpus(tmp_path_factory.mktemp("corpus"))
    return paths, model_path


def args_for(corpus, out, *extra, steps=5, every=2):
    paths, model_path = corpus
    return ["-i", paths["train"], "-j", paths["val"], "-e", model_path, "-o", str(out), "-b", "4", "-t", "16",
            "-l", "1e-2", "-u", "2", "-x", str(steps), "-n", str(every), "-v", "2", "-m", "1", "-g", "0",
            "--omp-threads", "1"] + list(extra)


def start(argv, crash=None, paused=None, env=None):
    e = dict(os.environ, **(env or {}))
    e.pop("NUMBAGPT_TEST_CRASH", None)
    if crash:
        e["NUMBAGPT_TEST_CRASH"] = crash
    if paused:
        e["NUMBAGPT_TEST_PAUSED"] = str(paused)
    return subprocess.Popen([sys.executable, TRAIN] + argv, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(argv, **kw):
    proc = start(argv, **kw)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def wait_paused(proc, marker):
    deadline = time.time() + 120
    while not os.path.exists(marker):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    assert int(open(marker).read()) == proc.pid


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run: its main.log and final parameters."""
    out = tmp_path_factory.mktemp("reference")
    code, stdout, err = run(args_for(corpus, out))
    assert code == 0, err
    return (out / "main.log").read_text(), formats.read_model(str(out / "model_00000005.bin"))[1]


# (file, point, the step resumed from): every phase of the checkpoint at step 4 and of the final save
# (tests/test_checkpoint.py kills the same writes at many more offsets, without the training)
KILLS = [("model_00000004.bin", 5000, 2), ("model_00000004.bin", "renamed", 2),
         ("state_00000004_00000.bin", 1024, 2), ("DONE_00000004", "end", 2), ("DONE_00000004", "renamed", 4),
         ("model_00000005.bin", 3000, 4)]


@pytest.mark.parametrize("target,point,resumed", KILLS, ids=[f"{t}@{p}" for t, p, _ in KILLS])
def test_kill_9_then_resume_equals_the_uninterrupted_run(corpus, reference, tmp_path, target, point, resumed):
    code, _, _ = run(args_for(corpus, tmp_path), crash=f"{target}@{point}")
    assert code == -signal.SIGKILL
    code, out, err = run(args_for(corpus, tmp_path, "-y", "1"))
    assert code == 0, err
    assert f"resumed from step {resumed} of" in out
    log, params = reference
    assert (tmp_path / "main.log").read_text() == log      # every loss, lr and norm line, in order
    np.testing.assert_array_equal(formats.read_model(str(tmp_path / "model_00000005.bin"))[1], params)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]   # the killed writer's, removed


def step_lines(stdout, after=0):
    """The step lines (loss, lr, norm, the z-scores; a skip's line) of the steps past `after`, without
    their timings."""
    return [ln.split(" | ")[:4] for ln in stdout.splitlines()
            if ln.startswith("step ") and int(ln.split()[1].split("/")[0].rstrip(":")) > after]


def test_a_resume_with_the_spike_guard_equals_the_uninterrupted_run(corpus, tmp_path):
    """-sl/-sg: the windows of the last 128 losses and norms are in the checkpoint, so the resumed run
    scores and skips every step as the uninterrupted one (without them it would score nothing for
    128 steps, and skip none). A checkpoint without them (llm.c's) is resumed saying so, with -sl and
    -sg or -sg alone."""
    argv = lambda out, *extra: args_for(corpus, out, "-sl", "3", "-sg", "0.3", "-v", "0", *extra,  # noqa: E731
                                        steps=140, every=130)
    code, ref_out, err = run(argv(tmp_path / "ref"))
    assert code == 0, err
    ref_log = (tmp_path / "ref" / "main.log").read_text()
    assert any(int(ln.split()[0][2:]) >= 130 for ln in ref_log.splitlines() if " skip:" in ln)  # one to get right
    out = tmp_path / "out"
    code, _, _ = run(argv(out), crash="DONE_00000130@renamed")
    assert code == -signal.SIGKILL
    code, stdout, err = run(argv(out, "-y", "1"))
    assert code == 0 and "resumed from step 130 of" in stdout and "spike-guard" not in stdout, err
    assert step_lines(stdout) == step_lines(ref_out, after=130)   # the z-scores too
    assert (out / "main.log").read_text() == ref_log
    np.testing.assert_array_equal(formats.read_model(str(out / "model_00000140.bin"))[1],
                                  formats.read_model(str(tmp_path / "ref" / "model_00000140.bin"))[1])
    # the same checkpoint without the windows, as llm.c writes it: said, and the z-scores start over
    state = checkpoint.state_path(str(out), 130, 0)
    with open(state, "r+b") as f:
        f.seek(4 * formats.DETECTORS_SLOT)
        f.write(bytes(4))
        f.truncate(os.path.getsize(state) - 2 * (40 + 8 * 128))
    open(checkpoint.done_path(str(out), 130), "wb").close()   # llm.c's DONE is empty: no hashes
    os.remove(out / "model_00000140.bin")   # else the run is finished: nothing to train
    code, stdout, err = run(argv(out, "-y", "1"))
    assert code == 0 and "resumed from step 130 of" in stdout, err
    assert "note: the checkpoint holds no spike-guard windows (llm.c's, or an older numbagpt's)" in stdout
    assert step_lines(stdout)[0][1].endswith("(+nanz)")
    # -sg alone scores the norms from the same empty windows: said too
    os.remove(out / "model_00000140.bin")
    code, stdout, err = run(args_for(corpus, out, "-sg", "0.3", "-v", "0", "-y", "1", steps=140, every=130))
    assert code == 0 and "resumed from step 130 of" in stdout, err
    assert "note: the checkpoint holds no spike-guard windows (llm.c's, or an older numbagpt's)" in stdout


def test_kill_9_from_outside_mid_checkpoint_then_resume(corpus, reference, tmp_path):
    marker = tmp_path / "paused"
    out = tmp_path / "out"
    proc = start(args_for(corpus, out), crash="state_00000004_00000.bin@2000:pause", paused=marker)
    wait_paused(proc, marker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    code, stdout, err = run(args_for(corpus, out, "-y", "1"))
    assert code == 0 and "resumed from step 2 of" in stdout, err
    assert (out / "main.log").read_text() == reference[0]


def test_a_resumed_run_samples_what_the_uninterrupted_one_did(corpus, tmp_path):
    """The samples are seeded by (--seed, step), so a run killed after a checkpoint and resumed prints
    the samples the uninterrupted run printed (the sampler's generator started over from --seed)."""
    def samples(stdout):
        return re.findall(r"--- sample at step (\d+) ---\n(.*?)\n---", stdout, re.S)
    argv = lambda out, *extra: args_for(corpus, out, "-s", "1", "-g", "12", *extra, steps=4)   # noqa: E731
    code, ref_out, err = run(argv(tmp_path / "ref"))
    assert code == 0, err
    code, _, _ = run(argv(tmp_path / "out"), crash="DONE_00000002@renamed")
    assert code == -signal.SIGKILL
    code, out, err = run(argv(tmp_path / "out", "-y", "1"))
    assert code == 0 and "resumed from step 2 of" in out, err
    assert [step for step, _ in samples(ref_out)] == ["1", "2", "3", "4"]
    assert samples(out) == samples(ref_out)[1:]
    assert len({text for _, text in samples(ref_out)}) == 4   # the samples differ from step to step


def test_a_damaged_newest_checkpoint_falls_back_saying_why(corpus, reference, tmp_path):
    code, _, err = run(args_for(corpus, tmp_path))
    assert code == 0, err
    with open(tmp_path / "state_00000004_00000.bin", "r+b") as f:
        f.truncate(5000)
    os.remove(tmp_path / "model_00000005.bin")   # the run was killed before its end (else it is finished)
    argv = args_for(corpus, tmp_path, steps=1, every=0)   # -e DIR takes the checkpoint before, saying why
    argv[argv.index("-e") + 1], argv[argv.index("-o") + 1] = str(tmp_path), ""
    code, out, err = run(argv + ["-v", "0"])
    assert code == 0 and (f"-e {tmp_path}: model_00000004.bin passed over ({tmp_path}/state_00000004_00000.bin: "
                          f"truncated train state") in out, err
    assert f"); taking {tmp_path}/model_00000002.bin\nmodel: {tmp_path} ({tmp_path}/model_00000002.bin) |" in out
    assert out.count("passed over") == 1 and "passed over" not in err   # once, where the run's lines go
    code, out, err = run(args_for(corpus, tmp_path, "-y", "1"))
    assert code == 0, err
    assert "checkpoint at step 4 skipped: " in out and "state_00000004_00000.bin: truncated train state" in out
    assert "resumed from step 2 of" in out
    assert (tmp_path / "main.log").read_text() == reference[0]


def test_the_final_model_of_a_checkpoint_step_is_that_checkpoint(corpus, tmp_path):
    code, out, err = run(args_for(corpus, tmp_path, steps=4))
    assert code == 0, err
    assert f"final model: {tmp_path}/model_00000004.bin (the checkpoint at step 4)" in out
    code, out, err = run(args_for(corpus, tmp_path, "-y", "1", steps=4))   # a finished run resumed: nothing to do
    assert code == 0 and f"final model: {tmp_path}/model_00000004.bin (the checkpoint at step 4)" in out, err
    argv = args_for(corpus, tmp_path, steps=1, every=0)   # fine-tune it: the startup line names the file
    argv[argv.index("-e") + 1], argv[argv.index("-o") + 1] = str(tmp_path), ""
    code, out, err = run(argv + ["-v", "0"])
    assert code == 0 and f"model: {tmp_path} ({tmp_path}/model_00000004.bin) |" in out, err


def test_two_runs_on_one_directory(corpus, tmp_path):
    marker = tmp_path / "paused"
    out = tmp_path / "out"
    first = start(args_for(corpus, out), crash="model_00000002.bin@100:pause", paused=marker)
    try:
        wait_paused(first, marker)
        t0 = time.time()
        code, _, err = run(args_for(corpus, out, "-y", "1"))
        assert code == 1 and time.time() - t0 < 60
        assert err.strip().startswith(f"train_gpt2: error: {out}: in use by another training run (pid {first.pid} on ")
    finally:
        first.kill()
        first.communicate()
    assert not (out / "model_00000002.bin").exists()


def test_a_fresh_run_on_a_used_directory(corpus, tmp_path):
    code, _, err = run(args_for(corpus, tmp_path, steps=2))
    assert code == 0, err
    code, _, err = run(args_for(corpus, tmp_path, steps=2))
    assert code == 1
    assert err.strip() == (f"train_gpt2: error: {tmp_path}: holds the files of an earlier run (DONE_00000002, "
                           f"model_00000002.bin, state_00000002_00000.bin); give -y 1 to resume it, --overwrite "
                           f"to delete them and start over, or another -o")
    code, out, err = run(args_for(corpus, tmp_path, "--overwrite", steps=3, every=3))
    assert code == 0, err
    assert "--overwrite: removed 3 files of an earlier run" in out
    assert checkpoint.run_files(str(tmp_path)) == ["DONE_00000003", "model_00000003.bin", "state_00000003_00000.bin"]


def test_overwrite_never_deletes_the_model_e_names(corpus, tmp_path):
    """Fine-tuning a run's model into the same -o: --overwrite would delete it before reading it, so it
    is refused, naming the file, and every file stays."""
    code, _, err = run(args_for(corpus, tmp_path, steps=2, every=0))
    assert code == 0, err
    before = checkpoint.run_files(str(tmp_path))
    for e in (str(tmp_path), str(tmp_path / "model_00000002.bin")):
        argv = args_for(corpus, tmp_path, "--overwrite", steps=2, every=0)
        argv[argv.index("-e") + 1] = e
        code, _, err = run(argv)
        assert code == 1 and err.strip() == (
            f"train_gpt2: error: -e {e}: {tmp_path}/model_00000002.bin is a file of the earlier run in {tmp_path}, "
            f"which --overwrite would delete before it is read: copy it out of {tmp_path} first, or train into "
            f"another -o"), err
        assert checkpoint.run_files(str(tmp_path)) == before


def test_y_1_without_a_checkpoint_keeps_an_earlier_runs_files(corpus, tmp_path):
    """-y 1 where no checkpoint is complete starts afresh, so, as any fresh run, it refuses to write over an
    earlier run's files without --overwrite (it replaced the final model and main.log)."""
    code, _, err = run(args_for(corpus, tmp_path, steps=2, every=0))
    assert code == 0, err
    model = (tmp_path / "model_00000002.bin").read_bytes()
    code, _, err = run(args_for(corpus, tmp_path, "-y", "1", steps=3, every=0))
    assert code == 1 and err.strip() == (
        f"train_gpt2: error: {tmp_path}: holds the files of an earlier run (model_00000002.bin); no complete "
        f"checkpoint to resume (-y 1), --overwrite to delete them and start over, or another -o"), err
    assert (tmp_path / "model_00000002.bin").read_bytes() == model
    code, out, err = run(args_for(corpus, tmp_path, "-y", "1", "--overwrite", steps=3, every=0))
    assert code == 0 and "--overwrite: removed 1 file of an earlier run" in out, err


@pytest.mark.parametrize("every", [0, 2], ids=["no checkpoints", "a checkpoint before the end"])
def test_a_finished_run_resumed_with_its_own_x_trains_nothing(corpus, tmp_path, every):
    """A run that ended past its last checkpoint (or had none), resumed with -y 1 and its own -x: its final
    model is the run's, nothing is trained or deleted, even with --overwrite (a scheduler restarting a
    finished job). It retrained from the last checkpoint, or, with none, -y 1 --overwrite deleted the
    final model and trained the whole run again."""
    code, _, err = run(args_for(corpus, tmp_path, steps=3, every=every))
    assert code == 0, err
    def files():
        return {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path) if n not in ("loss.png", ".lock")}
    before = files()
    for extra in ([], ["--overwrite"]):
        code, out, err = run(args_for(corpus, tmp_path, "-y", "1", *extra, steps=3, every=every))
        assert code == 0, err
        assert f"nothing to train: {tmp_path} holds the finished run's final model {tmp_path}/model_00000003.bin" in out
        assert "\nstep " not in out and "removed" not in out
        assert files() == before
    if every:   # other flags than the checkpoint's are refused, as for any resume
        argv = args_for(corpus, tmp_path, "-y", "1", steps=3, every=every)
        argv[argv.index("-l") + 1] = "3e-2"
        code, _, err = run(argv)
        assert code == 1 and "-l: 0.01 in the checkpoint, 0.03 now" in err and files() == before, err
        # what the line advises: a larger -x with --allow-changes trains on from the last checkpoint
        assert "; a larger -x with --allow-changes trains on from its last checkpoint\n" in out
        code, out, err = run(args_for(corpus, tmp_path, "-y", "1", "--allow-changes", steps=5, every=every))
        assert code == 0 and "resumed from step 2 of" in out and (tmp_path / "model_00000005.bin").exists(), err


def test_a_refused_command_deletes_nothing(corpus, tmp_path):
    """--overwrite deletes the earlier run's files once the run is sure to start: a command refused for its
    data or its memory deletes nothing (it deleted every model and checkpoint first), and -y 1 leaves
    the DONE files of checkpoints that do not verify as they were (a read error, a newer format: it
    deleted them, and the run could not be resumed once they were readable again)."""
    code, _, err = run(args_for(corpus, tmp_path, steps=5, every=2))
    assert code == 0, err
    before = sorted(os.listdir(tmp_path))
    argv = args_for(corpus, tmp_path, "--overwrite", steps=5, every=2)
    argv[argv.index("-i") + 1] = str(tmp_path / "typo_train.bin")
    code, _, err = run(argv)
    assert code == 1 and "typo_train.bin" in err and sorted(os.listdir(tmp_path)) == before, err
    code, _, err = run(args_for(corpus, tmp_path, "--overwrite", steps=5, every=2),
                       env={"NUMBAGPT_MEMORY_LIMIT": "10K"})
    assert code == 1 and "not enough memory" in err and sorted(os.listdir(tmp_path)) == before, err
    with open(tmp_path / "state_00000004_00000.bin", "r+b") as f:   # a newer format's version, as read
        f.seek(4)
        version = f.read(4)
        f.seek(4)
        f.write(bytes([99, 0, 0, 0]))
    os.remove(tmp_path / "model_00000005.bin")
    code, _, err = run(args_for(corpus, tmp_path, "-y", "1", steps=5, every=2), env={"NUMBAGPT_MEMORY_LIMIT": "10K"})
    assert code == 1 and (tmp_path / "DONE_00000004").exists(), err
    with open(tmp_path / "state_00000004_00000.bin", "r+b") as f:
        f.seek(4)
        f.write(version)
    code, out, err = run(args_for(corpus, tmp_path, "-y", "1", steps=5, every=2))
    assert code == 0 and "resumed from step 4 of" in out, err
    argv = args_for(corpus, tmp_path / "new", steps=5, every=2)   # a directory the run made, the run refused:
    argv[argv.index("-i") + 1] = str(tmp_path / "typo_train.bin")
    assert run(argv)[0] == 1 and not (tmp_path / "new").exists()   # not left behind, holding a lock file


def test_a_resume_to_a_smaller_x_needs_steps_left_and_no_later_model(corpus, tmp_path):
    """--allow-changes with -x at or below the checkpoint's step: nothing to train, refused (it wrote the
    checkpoint's weights as model_<-x>.bin); with steps left but the earlier run's final model past the
    new -x: refused, as -e DIR would take that model for this run's."""
    code, _, err = run(args_for(corpus, tmp_path, steps=5, every=4))   # checkpoint 4, final model 5
    assert code == 0, err
    code, _, err = run(args_for(corpus, tmp_path, "-y", "1", "--allow-changes", steps=3, every=4))
    assert code == 1 and "the checkpoint is at step 4, past -x 3: no step left to train" in err, err
    assert not (tmp_path / "model_00000003.bin").exists()
    code, _, err = run(args_for(corpus, tmp_path, "-y", "1", "--allow-changes", steps=4, every=4))
    assert code == 1 and "model_00000005.bin: the earlier run's model at step 5, past -x 4" in err, err
    out = tmp_path / "b"
    code, _, err = run(args_for(corpus, out, steps=5, every=3))        # checkpoint 3, final model 5
    assert code == 0, err
    code, _, err = run(args_for(corpus, out, "-y", "1", "--allow-changes", steps=4, every=3))
    assert code == 1 and err.strip().endswith(
        f"{out}/model_00000005.bin: the earlier run's model at step 5, past -x 4: this run would not replace it, "
        f"and -e {out} would take it for this run's final model: move it out of {out} first"), err
    (out / "model_00000005.bin").rename(tmp_path / "kept.bin")
    code, stdout, err = run(args_for(corpus, out, "-y", "1", "--allow-changes", steps=4, every=3))
    assert code == 0 and "resumed from step 3" in stdout, err
    assert checkpoint.resolve_model(str(out)) == str(out / "model_00000004.bin")


def test_a_resume_with_another_batch_size(corpus, tmp_path):
    code, _, err = run(args_for(corpus, tmp_path, steps=2))
    assert code == 0, err
    argv = args_for(corpus, tmp_path, "-y", "1", steps=4)
    argv[argv.index("-b") + 1] = "2"
    code, _, err = run(argv)
    assert code == 1
    assert err.strip() == (f"train_gpt2: error: {tmp_path}/state_00000002_00000.bin: this run differs from the "
                           f"checkpoint's: -b: 4 in the checkpoint, 2 now; "
                           f"tokens per step: 64 in the checkpoint, 32 now; "
                           f"-x: 2 in the checkpoint, 4 now (give "
                           f"the same flags, or --allow-changes to resume anyway)")
    code, out, err = run(argv + ["--allow-changes"])
    assert code == 0, err
    assert "warning: resuming with a change (--allow-changes): -b: 4 in the checkpoint, 2 now" in out
    assert "resumed from step 2 of" in out


def test_the_memory_check(corpus, tmp_path):
    cfg = formats.read_model_header(corpus[1])[0]
    need = [memory_estimate(cfg, b, 16, recompute=1)["total"] for b in range(5)]   # -r 1, the default
    limit = (need[2] + need[3]) // 2 // 1024   # KiB: -b 2 fits, -b 4 does not
    fits = max(b for b in range(1, 5) if need[b] <= limit * 1024)
    code, _, err = run(args_for(corpus, tmp_path / "a"), env={"NUMBAGPT_MEMORY_LIMIT": f"{limit}K"})
    assert code == 1
    assert err == (f"train_gpt2: error: not enough memory for {corpus[1]} with B=4 T=16: it needs "
                   f"{memory.format_bytes(need[4])}, "
                   f"{memory.format_bytes(limit * 1024)} is available ($NUMBAGPT_MEMORY_LIMIT); the largest -b "
                   f"that fits is {fits}; --no-memory-check to try anyway\n")
    assert fits == 2
    code, out, err = run(args_for(corpus, tmp_path / "b", "--no-memory-check", steps=1, every=0),
                         env={"NUMBAGPT_MEMORY_LIMIT": f"{limit}K"})
    assert code == 0, err


class SmallGPU:
    """A backend with a device of `total` bytes, `used` of them taken, that reports it through
    memory_info() as a GPU does; its kernels and buffers are the CPU's, and it counts allocations."""
    HOST_MEMORY = SIMULATOR = False

    def __init__(self, used, total):
        from numbagpt import cpu
        self.cpu, self.info, self.allocations = cpu, (used, total), 0

    def memory_info(self):
        return self.info

    def device_name(self):
        return "Small GPU"

    def zeros(self, *a, **k):
        self.allocations += 1
        return self.cpu.zeros(*a, **k)

    def __getattr__(self, name):
        return getattr(self.cpu, name)


def test_a_device_is_checked_against_its_free_memory(corpus, tmp_path, monkeypatch, capsys):
    """--device cuda: the estimate against the GPU's free memory (a fake GPU, no GPU here), before
    any buffer exists; --no-memory-check goes ahead."""
    from numbagpt import backend as backends
    cfg = formats.read_model_header(corpus[1])[0]
    need = [memory_estimate(cfg, b, 16, recompute=1)["total"] for b in range(5)]
    gpu = SmallGPU(used=2**30, total=2**30 + need[2] + 100)   # B=2 fits, B=3 not
    assert 2**10 < need[2] + 100 < need[3] < need[4]
    monkeypatch.setattr(backends, "get_backend", lambda name: gpu)
    monkeypatch.delenv("NUMBAGPT_MEMORY_LIMIT", raising=False)
    assert train.main(args_for(corpus, tmp_path / "a", "--device", "cuda")) == 1
    assert capsys.readouterr().err == (
        f"train_gpt2: error: not enough memory for {corpus[1]} with B=4 T=16: it needs {memory.format_bytes(need[4])}, "
        f"{memory.format_bytes(need[2] + 100)} is available (free on Small GPU, of its {gpu.info[1] / 2**30:.1f} GiB); "
        f"the largest -b that fits is 2; --no-memory-check to try anyway\n")
    assert gpu.allocations == 0
    argv = args_for(corpus, tmp_path / "b", "--device", "cuda", "-b", "2", steps=1, every=0)
    assert train.main(argv) == 0 and gpu.allocations > 0
    assert train.main(args_for(corpus, tmp_path / "c", "--device", "cuda", "--no-memory-check", steps=1, every=0)) == 0


@pytest.mark.skipif(not NUMBA_CUDA, reason=NO_NUMBA_CUDA)
def test_a_device_that_cannot_run_leaves_no_output_dir(corpus, tmp_path):
    """--device cuda where no GPU can run: the one-line error before -o is made (it left the directory
    behind, holding only its lock file)."""
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU is here")
    code, _, err = run(args_for(corpus, tmp_path / "out", "--device", "cuda"),
                       env={"NUMBA_ENABLE_CUDASIM": "0"})
    assert code == 1 and err.startswith("train_gpt2: error: numbagpt.cuda: no usable CUDA GPU") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_refused_run_removes_its_new_dir_before_it_lets_go_of_the_lock(corpus, tmp_path, capsys, monkeypatch):
    """A run refused on an -o it made removes the directory while it still holds the lock: it released
    first, so a run that locked the directory in between lost its lock file to the removal and a third
    run could share the directory with it. A removal that fails never hides the refusal."""
    from numbagpt.train import rundir
    out = tmp_path / "out"
    seen = []
    real = rundir.DirLock.release
    monkeypatch.setattr(rundir.DirLock, "release", lambda self: seen.append(out.exists()) or real(self))
    monkeypatch.setenv(memory.LIMIT_ENV, "1000")
    assert train.main(args_for(corpus, out)) == 1
    assert "not enough memory" in capsys.readouterr().err
    assert seen == [False] and not out.exists()
    monkeypatch.setattr(os, "rmdir", lambda *a: (_ for _ in ()).throw(OSError(39, "Directory not empty")))
    assert train.main(args_for(corpus, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("train_gpt2: error: not enough memory") and err.count("\n") == 1


def test_numba_num_threads_that_numba_cannot_use(corpus, tmp_path):
    """NUMBA_NUM_THREADS=abc (or empty) with --omp-threads: --omp-threads decides, the run goes on (it
    was a traceback from int()); =0 without it: Numba's refusal, naming the variable."""
    for value in ("abc", ""):
        code, _, err = run(args_for(corpus, tmp_path / f"r{value}", steps=1, every=0),   # --omp-threads 1
                           env={"NUMBA_NUM_THREADS": value})
        assert code == 0 and "Traceback" not in err, err
    argv = args_for(corpus, tmp_path / "z", steps=1, every=0)
    i = argv.index("--omp-threads")
    code, _, err = run(argv[:i] + argv[i + 2:], env={"NUMBA_NUM_THREADS": "0"})
    assert code == 1 and err.count("\n") == 1 and "(NUMBA_NUM_THREADS='0': unset it, or --omp-threads N)" in err, err


def test_device_memory_figures(monkeypatch):
    from numbagpt import memory
    monkeypatch.delenv("NUMBAGPT_MEMORY_LIMIT", raising=False)
    assert memory.available_memory(SmallGPU(6 * 2**30, 8 * 2**30)) == (2 * 2**30, "free on Small GPU, of its 8.0 GiB")
    monkeypatch.setenv("NUMBAGPT_MEMORY_LIMIT", "1G")
    assert memory.available_memory(SmallGPU(6 * 2**30, 8 * 2**30)) == (2**30, "$NUMBAGPT_MEMORY_LIMIT")
    silent = SmallGPU(0, 0)
    silent.info = None   # a driver that won't say: only the user's limit, not the host's memory
    assert memory.available_memory(silent) == (2**30, "$NUMBAGPT_MEMORY_LIMIT")
    monkeypatch.delenv("NUMBAGPT_MEMORY_LIMIT")
    assert memory.available_memory(silent) == (None, "unknown")
    silent.SIMULATOR = True   # the CUDA simulator's device arrays are host memory
    assert memory.available_memory(silent) == memory.available_memory()


@pytest.mark.skipif(not NUMBA_CUDA, reason=NO_NUMBA_CUDA)
def test_the_cuda_simulator_is_checked_against_host_memory(corpus, tmp_path):
    """The simulator's memory_info says nothing (Numba's reports inf): its arrays are the host's."""
    cfg = formats.read_model_header(corpus[1])[0]
    limit = memory_estimate(cfg, 3, 16, recompute=1)["total"] // 1024   # KiB: -b 4 does not fit
    code, _, err = run(args_for(corpus, tmp_path, "--device", "cuda"),
                       env={"NUMBA_ENABLE_CUDASIM": "1", "NUMBAGPT_MEMORY_LIMIT": f"{limit}K"})
    assert code == 1
    assert err.startswith(f"train_gpt2: error: not enough memory for {corpus[1]} with B=4 T=16: it needs ")
    assert f"{memory.format_bytes(limit * 1024)} is available ($NUMBAGPT_MEMORY_LIMIT)" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["INT", "TERM", "HUP"])
def test_ctrl_c_or_sigterm_ends_with_one_line(corpus, tmp_path, signum, status):
    marker = tmp_path / "paused"
    out = tmp_path / "out"
    proc = start(args_for(corpus, out), crash="model_00000004.bin@2000:pause", paused=marker)
    wait_paused(proc, marker)
    proc.send_signal(signum)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == status
    assert err == "interrupted at step 4; last complete checkpoint: step 2\n"
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")] and not (out / "model_00000004.bin").exists()


def test_ctrl_c_under_a_pipe_that_the_same_ctrl_c_ended(corpus, tmp_path):
    """`train_gpt2 ... 2>&1 | tee log` and Ctrl-C to the group: tee is gone before the line is
    printed. The status is still Ctrl-C's, 130 (it was a broken pipe's, 141)."""
    marker = tmp_path / "paused"
    read, write = os.pipe()
    e = dict(os.environ, NUMBAGPT_TEST_CRASH="model_00000004.bin@2000:pause", NUMBAGPT_TEST_PAUSED=str(marker))
    proc = subprocess.Popen([sys.executable, TRAIN] + args_for(corpus, tmp_path / "out"), env=e, stdout=write,
                            stderr=write)
    os.close(write)
    wait_paused(proc, marker)
    os.close(read)   # tee died of the Ctrl-C
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130


def test_no_writable_numba_cache_hints_numba_cache_dir(corpus, tmp_path):
    """A copy of the package whose __pycache__ can't be a directory, and a HOME that can't hold one."""
    shutil.copytree(os.path.join(ROOT, "numbagpt"), tmp_path / "pkg" / "numbagpt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for d, _, _ in os.walk(tmp_path / "pkg" / "numbagpt"):
        open(os.path.join(d, "__pycache__"), "w").close()
    (tmp_path / "home").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(tmp_path / "pkg"), HOME=str(tmp_path / "home"),
               XDG_CACHE_HOME=str(tmp_path / "home" / "c"))
    proc = subprocess.run([sys.executable, "-B", "-c", "import sys; from numbagpt.cli import train; "
                           "sys.exit(train.main(sys.argv[1:]))"] + args_for(corpus, tmp_path / "out"),
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "no locator available" in proc.stderr and "set NUMBA_CACHE_DIR to a writable directory" in proc.stderr
    assert "Traceback" not in proc.stderr


BAD_ARGS = [
    (["-b", "0"], "-b must be positive, got 0"),
    (["-l", "-1"], "-l must be >= 0, got -1.0"),
    (["-u", "-2"], "-u must be >= 0, got -2"),
    (["-m", "-1"], "-m must be >= 0, got -1"),
    (["-g", "-5"], "-g must be >= 0, got -5"),
    (["--grad-clip", "-1"], "--grad-clip must be >= 0, got -1.0"),
    (["-q", "1.5"], "-q must be in [0, 1], got 1.5"),
    (["-c", "-0.1"], "-c must be >= 0, got -0.1"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["-n", "-1"], "-n must be >= 0, got -1"),
    (["-o", "", "-n", "1"], "-n 1 writes checkpoints to the output dir, but -o is '' (none)"),
    (["-o", "", "-y", "1"], "-y 1 resumes from the output dir, but -o is '' (none)"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_argument_ranges_name_the_flag(argv, message):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert str(e.value) == f"train_gpt2: error: {message}"


def test_test_gpt2_messages(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        test_cli.main(["-e", "m.bin", "-s", "s.bin", "--steps", "-3"])
    assert str(e.value) == "test_gpt2: error: --steps must be >= 0, got -3"
    other = GPT2Config(max_seq_len=64, vocab_size=100, num_layers=1, num_heads=1, channels=16)
    m = GPT2(other)
    m.init_weights(0)
    m.save(str(tmp_path / "other.bin"))
    state = os.path.join(FIXTURES, "micro_debug_state.bin")
    assert test_cli.main(["-e", str(tmp_path / "other.bin"), "-s", state]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"test_gpt2: error: {state}: debug state does not match the model (L=1 NH=1 C=16")
    assert err.count("\n") == 1
    losses = os.path.join(FIXTURES, "micro_losses.txt")   # --steps with a losses file: it was ignored
    assert test_cli.main(["-e", str(tmp_path / "other.bin"), "-s", state, "--steps", "3", "--expected-losses",
                          losses]) == 1
    assert capsys.readouterr().err == ("test_gpt2: error: --steps 3 and --expected-losses: give one (the losses "
                                       "file sets the steps, one a loss)\n")


def test_test_gpt2_and_profile_gpt2_check_memory_first(monkeypatch, capsys):
    monkeypatch.setenv("NUMBAGPT_MEMORY_LIMIT", "100K")
    model, state = os.path.join(FIXTURES, "micro_model.bin"), os.path.join(FIXTURES, "micro_debug_state.bin")
    assert test_cli.main(["-e", model, "-s", state]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"test_gpt2: error: not enough memory for {model} with the state's B=")
    assert "100.0 KiB is available ($NUMBAGPT_MEMORY_LIMIT)" in err
    assert "; the state fixes B and T: a machine with more memory, or a state dumped with a smaller B;" in err
    assert err.endswith("--no-memory-check to try anyway\n")
    from numbagpt.cli import profile
    assert profile.main(["-e", "d12", "-b", "4", "-t", "64", "--no-calibrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("profile_gpt2: error: not enough memory for d12 with B=4 T=64: it needs ")
    assert "even -b 1 needs" in err
    monkeypatch.setenv("NUMBAGPT_MEMORY_LIMIT", "1T")
    assert test_cli.main(["-e", model, "-s", state, "--steps", "0"]) == 0


MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


@pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK), reason=f"needs {MPIEXEC}")
@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_a_signal_to_mpiexec_stops_every_rank_after_the_same_step(corpus, tmp_path, signum, status):
    """The signal goes to mpiexec's process group, as a terminal's Ctrl-C does (MPICH's Hydra puts its
    proxy and the ranks in sessions of their own: the group is mpiexec alone, which forwards SIGINT or
    SIGTERM to every rank): one line, every rank exits 128 + signum, and so does mpiexec."""
    pytest.importorskip("mpi4py")
    out = tmp_path / "out"
    argv = args_for(corpus, out, steps=100000, every=20)
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, TRAIN] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (out / "DONE_00000040").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        os.killpg(proc.pid, signum)
        stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == status, (stdout[-2000:], err)
    assert "Traceback" not in stdout + err and "BAD TERMINATION" not in stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted at step "), err
    step, ckpt = lines[0].removeprefix("interrupted at step ").split("; last complete checkpoint: step ")
    assert int(ckpt) == max(int(n[5:]) for n in os.listdir(out) if n.startswith("DONE_"))
    assert int(step) >= int(ckpt) >= 40
    last = [ln for ln in stdout.splitlines() if ln.startswith("step ")][-1]   # both ranks ran it, rank 0 logged it
    assert last.startswith(f"step {int(step):4d}/100000 ")


def test_a_reader_that_left_ends_every_command_quietly(corpus, tmp_path):
    """A command whose stdout is a pipe nobody reads any more (`| head` that has exited): status 141,
    as a Unix tool's ended by SIGPIPE, and no error line or traceback. It was `error: [Errno 32] Broken
    pipe` (train, eval, plot, status 1) or a traceback (prepare's last lines; the numbagpt-* console
    scripts, which bypassed bin/*'s launch)."""
    from numbagpt import hellaswag
    paths, model_path = corpus
    (tmp_path / "text.txt").write_text("To be or not to be.\n\nThat is the question.\n" * 20)
    hellaswag.write_eval_file(tmp_path / "e.bin", [(0, [1, 2], [[3], [4]])])
    (tmp_path / "main.log").write_text("s:0 trl:5.0\ns:1 trl:4.0\n")
    scripts = os.path.dirname(sys.executable)
    commands = {
        "train": [sys.executable, TRAIN] + args_for(corpus, tmp_path / "out", steps=1),
        "eval": [sys.executable, os.path.join(ROOT, "bin", "eval_gpt2"), "-e", model_path, "--hellaswag",
                 str(tmp_path / "e.bin"), "--omp-threads", "1"],
        "prepare": [sys.executable, os.path.join(ROOT, "bin", "prepare_data"), str(tmp_path / "text.txt"),
                    "-o", str(tmp_path / "data"), "--tokenizer", "char"],
        "plot": [sys.executable, os.path.join(ROOT, "bin", "plot_log"), str(tmp_path / "main.log"), "-o",
                 str(tmp_path / "loss.png")],
        "console script": [os.path.join(scripts, "numbagpt-prepare"), str(tmp_path / "text.txt"), "-o",
                           str(tmp_path / "data2"), "--tokenizer", "char"],
    }
    if importlib.util.find_spec("matplotlib") is None:
        del commands["plot"]   # plot_log needs it: refused before it writes (test_plot.py)
    for name, cmd in commands.items():
        if not os.path.exists(cmd[0]):
            continue   # numbagpt-* exist where numbagpt is pip-installed
        read, write = os.pipe()
        os.close(read)   # the reader has left before the first line
        proc = subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
        os.close(write)
        assert proc.returncode == 141, (name, proc.stderr)
        assert "error" not in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)


def console_scripts():
    """[(console script, bin/ name)] of setup.cfg: numbagpt-train runs what bin/train_gpt2 runs."""
    import configparser
    import numbagpt.console
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    out = []
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        script, target = (x.strip() for x in line.split("="))
        out.append((script, getattr(numbagpt.console, target.split(":")[1]).__name__))
    return out


@pytest.mark.parametrize("script, prog", console_scripts())
def test_a_console_script_calls_itself_by_its_own_name(script, prog, tmp_path):
    """numbagpt-train's errors and --help say numbagpt-train (they said train_gpt2, a command the user
    had not typed); bin/train_gpt2's say train_gpt2. A missing model or text file is refused after the
    flags are read, in the command's own words."""
    path = os.path.join(os.path.dirname(sys.executable), script)
    if not os.access(path, os.X_OK):
        pytest.skip(f"no {path}: numbagpt is not installed in this Python")
    for argv0, name in ((path, script), (os.path.join(ROOT, "bin", prog), prog)):
        cmd = [argv0] if argv0 == path else [sys.executable, argv0]
        proc = subprocess.run(cmd + ["--bogus"], capture_output=True, text=True, timeout=120)
        # "unrecognized arguments: --bogus", or first the positional arguments a command requires
        assert proc.returncode == 2 and proc.stderr.startswith(f"{name}: error: "), proc.stderr
        assert proc.stderr.endswith(" (--help lists the flags)\n") and proc.stderr.count("\n") == 1, proc.stderr
        proc = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {name} "), proc.stdout[:200]
    missing = str(tmp_path / "missing.bin")
    argv = {"train_gpt2": ["-e", missing, "-o", ""], "sample_gpt2": ["-e", missing],
            "test_gpt2": ["-e", missing, "-s", missing], "profile_gpt2": ["-e", missing],
            "eval_gpt2": ["-e", missing, "--hellaswag", missing],
            "prepare_data": [missing], "plot_log": [missing], "export_hf": [missing, str(tmp_path / "hf")],
            "import_hf": [missing, str(tmp_path / "m.bin")]}[prog]
    proc = subprocess.run([path] + argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.startswith(f"{script}: error: ") and missing in proc.stderr, \
        proc.stderr


def test_a_signal_names_no_checkpoint_where_the_run_writes_none(corpus, capsys, monkeypatch):
    """-o '': no checkpoint is written, and a Ctrl-C after step 2 says none (not step 2)."""
    from numbagpt.train import rundir, trainer
    log_step = trainer.log_step

    def interrupted_at_step_3(result, step, *args):
        if step == 2:
            raise rundir.Interrupted(signal.SIGINT)
        return log_step(result, step, *args)
    monkeypatch.setattr(trainer, "log_step", interrupted_at_step_3)
    assert train.main(args_for(corpus, "", every=0)) == 130
    assert capsys.readouterr().err.endswith("interrupted at step 2; last complete checkpoint: none\n")


def test_the_error_of_a_step_a_signal_broke_exits_as_the_signal(corpus, capsys, monkeypatch):
    """A SIGTERM inside Numba's compiler (a ctypes callback: Python drops the exception) surfaces as the
    compile's error: the run ends with the signal's line and status, 143, not the error's 1."""
    from numbagpt.train import trainer

    def broken(config, world, progress, stop):
        stop.signum = signal.SIGTERM   # what its handler records (the exception it raised, dropped)
        raise RuntimeError("the compile failed")
    monkeypatch.setattr(trainer, "train", broken)
    assert train.main(args_for(corpus, "", every=0)) == 143
    assert capsys.readouterr().err == "interrupted at start-up; last complete checkpoint: none\n"
