"""Checkpoints survive a kill -9 at any point of their writing: the driver (tests/checkpoint_driver.py,
checkpoint.save / save_final with a micro model, no Numba) is killed while writing each file of a
checkpoint and the final model, at many byte offsets; afterwards the newest complete checkpoint is the
one before, every file under a final name is complete and holds one step's values (no mixed files).
Then: resume selection falls back past a damaged checkpoint saying why; a DONE step is never rewritten."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoint_driver as drv
from numbagpt.train import checkpoint
from numbagpt.files import formats
from numbagpt.files.formats import HEADER_BYTES
from numbagpt.train.outlier import WINDOW, SpikeGuard

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint_driver.py")
MODEL_BYTES = HEADER_BYTES + 4 * drv.N
STATE_BYTES = HEADER_BYTES + 8 * drv.N + 2 * (40 + 8 * WINDOW)   # m, v, the spike guard's two windows
OFFSETS = lambda size: [0, 1, HEADER_BYTES, size // 2, size - 1, "end", "renamed"]  # noqa: E731

# (file being written when killed, point) -> the newest step that must be complete afterwards.
# The run: 5 steps, a checkpoint every 2 (steps 2, 4), the final model at step 5.
CASES = ([("model_00000004.bin", p, 2) for p in OFFSETS(MODEL_BYTES)]
         + [("state_00000004_00000.bin", p, 2) for p in OFFSETS(STATE_BYTES)]
         + [("DONE_00000004", "end", 2), ("DONE_00000004", "renamed", 4)]
         + [("model_00000005.bin", p, 4) for p in (0, HEADER_BYTES, MODEL_BYTES // 2, "end", "renamed")])


def run_driver(out, crash=None, pause_marker=None, steps=5, every=2):
    env = dict(os.environ)
    env.pop("NUMBAGPT_TEST_CRASH", None)
    if crash:
        env["NUMBAGPT_TEST_CRASH"] = crash
    if pause_marker:
        env["NUMBAGPT_TEST_PAUSED"] = str(pause_marker)
    return subprocess.Popen([sys.executable, DRIVER, str(out), str(steps), str(every)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_dir(out, newest):
    """The newest complete checkpoint is `newest`, its files hold that step's values, and every file
    under a final name is complete and holds the values of the step in its name."""
    step, header, notes = checkpoint.select(str(out))
    assert step == newest, notes
    assert notes == []
    assert header["run"] == drv.RUN and header["sample_index"] == step
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name.startswith("model_"):
            s = int(name[6:14])
            _, params = formats.read_model(path)
            np.testing.assert_array_equal(params, drv.values(s, 0))
        elif name.startswith("state_"):
            s = int(name[6:14])
            st = formats.read_state(path)
            np.testing.assert_array_equal(st["m"], drv.values(s, 1))
            np.testing.assert_array_equal(st["v"], drv.values(s, 2))
            assert st["step"] == s and st["detectors"] == drv.guard_at(s).get_state()
        elif name.startswith("DONE_"):   # complete, and its hashes are those of the files beside it
            checkpoint.check_checksums(str(out), int(name[5:13]))
        else:
            assert name.startswith(".") and name.endswith(".tmp"), name  # a killed writer's temporary


@pytest.mark.parametrize("target,point,newest", CASES, ids=[f"{t}@{p}" for t, p, _ in CASES])
def test_kill_9_while_writing_leaves_the_previous_checkpoint(tmp_path, target, point, newest):
    proc = run_driver(tmp_path, f"{target}@{point}")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    check_dir(tmp_path, newest)
    assert os.path.exists(tmp_path / target) == (point == "renamed")


@pytest.mark.parametrize("target,point,newest", [("model_00000004.bin", 3000, 2),
                                                 ("state_00000004_00000.bin", "end", 2),
                                                 ("DONE_00000004", "end", 2),
                                                 ("model_00000005.bin", 2000, 4)])
def test_kill_9_from_outside_mid_write(tmp_path, target, point, newest):
    """The writer pauses mid-file (its bytes so far fsynced) and this process SIGKILLs it."""
    marker = tmp_path / "paused"
    out = tmp_path / "out"
    proc = run_driver(out, f"{target}@{point}:pause", pause_marker=marker)
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    assert int(marker.read_text()) == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    check_dir(out, newest)


def test_an_uninterrupted_run_and_the_final_model_of_a_checkpoint_step(tmp_path):
    proc = run_driver(tmp_path, steps=4, every=2)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    check_dir(tmp_path, 4)
    assert sorted(checkpoint.run_files(str(tmp_path))) == [
        "DONE_00000002", "DONE_00000004", "model_00000002.bin", "model_00000004.bin",
        "state_00000002_00000.bin", "state_00000004_00000.bin"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    # the final save finds step 4's DONE and leaves its model alone, even with other parameters
    model = drv.Model()
    model.step = 99
    before = os.stat(tmp_path / "model_00000004.bin")
    path, written = checkpoint.save_final(str(tmp_path), 4, model)
    assert path.endswith("model_00000004.bin") and not written
    assert not checkpoint.save(str(tmp_path), 4, model, drv.World(), drv.Loader(model), seed=1)
    after = os.stat(tmp_path / "model_00000004.bin")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    check_dir(tmp_path, 4)


def test_a_model_of_an_unfinished_checkpoint_is_no_final_model(tmp_path):
    """A run killed while writing its checkpoint at step 5 leaves model_00000005.bin (whole) and a state
    file of step 5, but no DONE_00000005: that model is an unfinished checkpoint's, not the final model
    of a run that ended at step 5 (the state file says so, the missing DONE alone does not tell), so
    final_model is None, check_model says the checkpoint is incomplete, and resolve_model passes over
    it to step 4's checkpoint, saying why."""
    proc = run_driver(tmp_path, steps=4, every=2)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    out = str(tmp_path)
    model = drv.Model()
    model.step = 5
    model.save(checkpoint.model_path(out, 5))
    formats.write_state(checkpoint.state_path(out, 5, 0), 5, 1, 0, model.m_flat, model.v_flat)
    assert not os.path.exists(checkpoint.done_path(out, 5))
    assert checkpoint.final_model(out, 5) is None
    with pytest.raises(FileNotFoundError, match=f"{out}/DONE_00000005: no such file \\(the checkpoint is "
                                                 f"incomplete\\)"):
        checkpoint.check_model(out, 5)
    said = []
    assert checkpoint.resolve_model(out, say=said.append) == checkpoint.model_path(out, 4)
    assert said == [f"-e {out}: model_00000005.bin passed over ({out}/DONE_00000005: no such file (the "
                    f"checkpoint is incomplete)); taking {out}/model_00000004.bin"]
    os.remove(checkpoint.state_path(out, 5, 0))   # no checkpoint of step 5 begun: the final model
    assert checkpoint.final_model(out, 5) == checkpoint.model_path(out, 5)


@pytest.mark.parametrize("target", ["state_00000004_00000.bin@0", "model_00000004.bin@end",
                                    "model_00000004.bin@renamed"])
def test_a_kill_in_the_last_steps_checkpoint_leaves_no_final_model(tmp_path, target):
    """A run whose last step is a checkpoint step, killed while writing it: the state files come before
    the model, so its model_00000004.bin (if renamed) has a state file beside it and is no final model;
    resume and -e DIR go back to step 2 (the model came first, and alone it read as the finished run's
    final model: a resume said "nothing to train", -e took a model without its DONE)."""
    proc = run_driver(tmp_path, target, steps=4, every=2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    check_dir(tmp_path, 2)
    assert checkpoint.final_model(str(tmp_path), 4) is None
    assert checkpoint.resolve_model(str(tmp_path), say=lambda line: None) == checkpoint.model_path(str(tmp_path), 2)


def test_save_final_replaces_a_stale_model_unless_a_done_checkpoint_holds_it(tmp_path):
    """save_final decides on DONE, not on the model file being there: a model_00000005.bin left by an
    unfinished checkpoint (here zeros, of the right size) is written over with the final parameters;
    with DONE_00000005 the checkpoint's model is kept, byte for byte."""
    out = str(tmp_path)
    path = checkpoint.model_path(out, 5)
    stale = bytes(MODEL_BYTES)
    open(path, "wb").write(stale)
    model = drv.Model()
    model.step = 5
    assert checkpoint.save_final(out, 5, model) == (path, True)
    _, params = formats.read_model(path)
    np.testing.assert_array_equal(params, drv.values(5, 0))
    open(path, "wb").write(stale)
    open(checkpoint.done_path(out, 5), "wb").close()
    assert checkpoint.save_final(out, 5, model) == (path, False)
    assert open(path, "rb").read() == stale


def _complete_run(tmp_path):
    proc = run_driver(tmp_path, steps=6, every=2)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    return str(tmp_path)


def test_select_falls_back_past_damaged_checkpoints_and_says_why(tmp_path):
    out = _complete_run(tmp_path)
    with open(checkpoint.model_path(out, 6), "r+b") as f:       # truncated model of step 6
        f.truncate(MODEL_BYTES - 4)
    with open(checkpoint.state_path(out, 4, 0), "r+b") as f:    # state of step 4: wrong magic
        f.write(np.array([7], dtype="<i4").tobytes())
    step, header, notes = checkpoint.select(out)
    assert step == 2 and header["step"] == 2
    assert len(notes) == 2
    assert "step 6 skipped" in notes[0] and "model_00000006.bin" in notes[0] and "truncated" in notes[0]
    assert "step 4 skipped" in notes[1] and "state_00000004_00000.bin" in notes[1] and "magic" in notes[1]


def test_select_checks_every_rank_and_the_step_in_each_header(tmp_path):
    out = _complete_run(tmp_path)
    n = drv.N
    # step 6 claims 2 processes but rank 1's file is missing
    formats.write_state(checkpoint.state_path(out, 6, 0), 6, 2, 0, np.zeros(n), np.zeros(n))
    # step 4's state file is step 2's, copied under the wrong name
    os.replace(checkpoint.state_path(out, 2, 0), checkpoint.state_path(out, 4, 0))
    step, _, notes = checkpoint.select(out)
    assert step is None
    assert "state_00000006_00001.bin: no such file" in notes[0]
    assert "header says step 2" in notes[1]
    assert "step 2 skipped" in notes[2] and "state_00000002_00000.bin" in notes[2]
    os.remove(checkpoint.done_path(out, 6))
    assert checkpoint.done_steps(out)[-1] == 4


def _rewrite_state(out, step, **changes):
    """Step's rank-0 state written again with `changes` (write_state's arguments), and its DONE's hash
    of it made anew: a damage that the checksum cannot see (made before the hash, or an llm.c file)."""
    import json
    path = checkpoint.state_path(out, step, 0)
    st = formats.read_state(path)
    kwargs = dict(m=st["m"], v=st["v"], shard_index=st["shard_index"], sample_index=st["sample_index"],
                  shuffle=st["shuffle"], epoch=st["epoch"], seed=st["seed"], run=st["run"], detectors=st["detectors"])
    world_size = changes.pop("world_size", st["world_size"])
    kwargs.update(changes)
    new_hash = formats.write_state(path, step, world_size, 0, **kwargs)
    done = json.loads(open(checkpoint.done_path(out, step)).read())
    done[checkpoint.HASH][os.path.basename(path)] = new_hash
    open(checkpoint.done_path(out, step), "w").write(json.dumps(done))
    return path


def test_a_state_that_cannot_be_resumed_is_skipped_or_refused_saying_why(tmp_path):
    """Checksums that match but a state no run wrote: no processes, a run record that is not an
    object (a resume compared nothing), spike-guard windows with a NaN (the guard silently off for
    the rest of the run): the checkpoint is skipped with a line why; AdamW's m with a NaN, v
    negative: refused as it is read (both trained silently into NaN weights, exit 0)."""
    out = _complete_run(tmp_path)
    guard = drv.guard_at(200).get_state()
    guard[0]["sum"] = float("nan")
    _rewrite_state(out, 6, world_size=0)
    _rewrite_state(out, 4, detectors=guard)
    step, _, notes = checkpoint.select(out)
    assert step == 2 and len(notes) == 2, notes
    assert notes[0].endswith("state_00000006_00000.bin: bad train state header: rank 0 of 0 processes")
    assert notes[1].endswith("state_00000004_00000.bin: bad train state file: outlier detector 1 after the "
                             "arrays holds a value that is NaN, infinite or (its sum of squares) negative")
    p = str(tmp_path / "state.bin")
    m, v = drv.values(200, 1), drv.values(200, 2)
    for name, (mm, vv) in {"AdamW's m holds NaN or infinite values": (np.where(m > 0, np.nan, m), v),
                           "AdamW's v holds negative values": (m, -v)}.items():
        formats.write_state(p, 200, 1, 0, mm, vv)
        with pytest.raises(formats.FormatError, match=f"{p}: bad train state file: {name}"):
            formats.read_state(p)
    formats.write_state(p, 200, 1, 0, m, v)
    with open(p, "r+b") as f:
        f.seek(4 * 40)
        f.write(np.array([7], "<i4").tobytes() + b"[1,2,3]")
    with pytest.raises(formats.FormatError, match="the run record .* is a JSON list, not an object"):
        formats.read_state_header(p)   # the checkpoint's verify reads it: skipped, as above


def test_a_done_that_is_a_directory_or_names_a_missing_file_is_said_so(tmp_path):
    """select skips them in words, not in errno's ("[Errno 21] Is a directory"), and a run that would
    discard such a DONE (a newer checkpoint than the one it resumes) stops saying what to do, instead
    of training and failing to write it."""
    import json
    out = _complete_run(tmp_path)
    done = json.loads(open(checkpoint.done_path(out, 4)).read())
    done[checkpoint.HASH]["gone.bin"] = "0" * 16
    open(checkpoint.done_path(out, 4), "w").write(json.dumps(done))
    os.remove(checkpoint.done_path(out, 6))
    os.mkdir(checkpoint.done_path(out, 6))
    step, _, notes = checkpoint.select(out)
    assert step == 2 and notes == [
        f"checkpoint at step 6 skipped: {out}/DONE_00000006: not a file (a DONE file marks a complete checkpoint)",
        f"checkpoint at step 4 skipped: {out}/gone.bin: no such file (DONE_00000004 records its checksum)"]
    with pytest.raises(formats.FormatError, match=f"{out}/DONE_00000006: a directory where the checkpoint's DONE "
                                                  f"file belongs: remove it, then resume"):
        checkpoint.discard(out, 6)
    checkpoint.discard(out, 4)
    assert checkpoint.done_steps(out) == [2, 6]


def test_the_state_keeps_the_spike_guard_windows_after_llmc_arrays(tmp_path):
    """The windows after m and v, their length in slot 11: llm.c's reader (header, m, v at their
    offsets, nothing after them read) sees its file; numbagpt's reads back every float64 exactly."""
    p = str(tmp_path / "state_00000200_00000.bin")
    guard = drv.guard_at(200)   # full windows, wrapped around
    m, v = drv.values(200, 1), drv.values(200, 2)
    formats.write_state(p, 200, 1, 0, m, v, sample_index=7, detectors=guard.get_state())
    raw = open(p, "rb").read()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    n = drv.N
    assert header[0] == 20240527 and header[10] == 200 and header[11] == 2 * (40 + 8 * WINDOW)
    assert len(raw) == STATE_BYTES
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4", n, HEADER_BYTES), m)          # where llm.c reads m
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4", n, HEADER_BYTES + 4 * n), v)  # and v
    loss = np.frombuffer(raw, "<i8", 3, HEADER_BYTES + 8 * n)
    assert list(loss) == [WINDOW, WINDOW, 200 % WINDOW]
    state = formats.read_state(p)
    assert state["detectors"] == guard.get_state() and state["sample_index"] == 7
    resumed = SpikeGuard(loss_z=3.0, grad_z=3.0)
    resumed.set_state(state["detectors"])
    following = [(3.0 + 0.02 * i, 1.0 + (i % 5)) for i in range(50)]
    assert [resumed.check(*x) for x in following] == [guard.check(*x) for x in following]
    # an llm.c file: no windows (slot 11 = 0), m's length inferred (slot 38 = 0)
    formats.write_state(p, 200, 1, 0, m, v)
    with open(p, "r+b") as f:
        f.seek(4 * 38)
        f.write(bytes(8))
    assert formats.read_state(p)["detectors"] == [] and formats.read_state(p)["m"].size == n


def test_damaged_spike_guard_windows_are_found(tmp_path):
    p = str(tmp_path / "state_00000200_00000.bin")
    m, v = drv.values(200, 1), drv.values(200, 2)
    formats.write_state(p, 200, 1, 0, m, v, detectors=drv.guard_at(200).get_state())
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 8)
    with pytest.raises(formats.FormatError, match="truncated train state file .*, 2128 bytes of outlier detectors"):
        formats.read_state(p)
    formats.write_state(p, 200, 1, 0, m, v, detectors=drv.guard_at(200).get_state())
    with open(p, "r+b") as f:
        f.seek(HEADER_BYTES + 8 * drv.N)
        f.write(np.array([10**6], dtype="<i8").tobytes())   # a window longer than the bytes
    with pytest.raises(formats.FormatError, match="the outlier detectors after the arrays .* at byte 0"):
        formats.read_state(p)
