"""The output directory: one run at a time (flock, released by the kernel even on kill -9), no fresh
run over an earlier run's files, resume refused when the run differs, main.log cut back on resume;
and the memory check's figures (cgroup v1/v2 limits, the largest B that fits)."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from numbagpt.files import formats
from numbagpt import memory
from numbagpt.train import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hold_lock(directory):
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from numbagpt.train import rundir
        lock = rundir.lock_dir({str(directory)!r})
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_locked_dir_is_refused_naming_the_holder(tmp_path):
    proc = hold_lock(tmp_path)
    try:
        with pytest.raises(rundir.RunDirError, match=rf"in use by another training run \(pid {proc.pid} on "):
            rundir.lock_dir(str(tmp_path))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lock = rundir.lock_dir(str(tmp_path))  # the kernel released the dead holder's lock
    assert f"pid {os.getpid()} " in open(tmp_path / ".lock").read()
    with pytest.raises(rundir.RunDirError, match=f"pid {os.getpid()} "):
        rundir.lock_dir(str(tmp_path))   # a second lock, even from the same process, is refused
    lock.release()
    rundir.lock_dir(str(tmp_path)).release()


def test_lock_dir_errors_name_the_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(rundir.RunDirError, match=f"{f}/out: cannot create the output directory"):
        rundir.lock_dir(str(f / "out"))


def _files(d, *names):
    for n in names:
        (d / n).write_bytes(b"")


def test_a_fresh_run_refuses_a_used_dir_unless_overwrite(tmp_path):
    assert rundir.check_fresh(str(tmp_path), overwrite=False) == []
    _files(tmp_path, "main.log", "notes.txt")
    assert rundir.check_fresh(str(tmp_path), overwrite=False) == []   # no run files: fine
    _files(tmp_path, "DONE_00000002", "model_00000002.bin", "state_00000002_00000.bin", "model_00000005.bin",
           "DONE_00000004", "model_00000004.bin")
    with pytest.raises(rundir.RunDirError, match=r"holds the files of an earlier run \(DONE_00000002, "
                                                 r"DONE_00000004, model_00000002.bin, model_00000004.bin and 2 more\)"
                                                 r"; give -y 1 to resume it, --overwrite"):
        rundir.check_fresh(str(tmp_path), overwrite=False)
    removed = rundir.check_fresh(str(tmp_path), overwrite=True)
    assert len(removed) == 6 and len(os.listdir(tmp_path)) == 8   # deleted once the run starts:
    said = []
    rundir.Cleanup(str(tmp_path), removed).apply(said.append)
    assert sorted(os.listdir(tmp_path)) == ["main.log", "notes.txt"]
    assert said == [f"--overwrite: removed 6 files of an earlier run from {tmp_path}"]


def test_a_refused_open_run_releases_the_directory(tmp_path):
    """A fresh run refused on an earlier run's files leaves the directory unlocked: the same process
    (a notebook's next call) can then open it with overwrite, as a new process can."""
    from numbagpt.dist import World
    _files(tmp_path, "DONE_00000002", "model_00000002.bin")
    record = dict(RECORD, max_steps=2)
    with pytest.raises(rundir.RunDirError, match="holds the files of an earlier run"):
        rundir.open_run(str(tmp_path), False, False, record, False, World(None), print)
    lock, step, cleanup = rundir.open_run(str(tmp_path), False, True, record, False, World(None), print)
    assert step is None and sorted(cleanup.names) == ["DONE_00000002", "model_00000002.bin"]
    lock.release()


RECORD = rundir.run_record(B=4, T=16, total_batch=64, seed=1337, train_data="d/train_*.bin", val_data="d/val.bin",
                           world_size=1, zero_stage=0, shuffle=1, lr=3e-3, warmup=10, max_steps=20,
                           final_lr_frac=0.1, schedule="cosine", weight_decay=0.0, grad_clip=1.0)


def test_resume_names_every_change_and_the_override(tmp_path):
    assert rundir.check_resume(RECORD, dict(RECORD), False, "out") == []
    now = dict(RECORD, B=8, train_data="other/*.bin", lr=1e-3)
    with pytest.raises(rundir.RunDirError) as e:
        rundir.check_resume(RECORD, now, False, "out/state_00000010_00000.bin")
    msg = str(e.value)
    assert msg.startswith("out/state_00000010_00000.bin: this run differs from the checkpoint's: ")
    assert "-b: 4 in the checkpoint, 8 now" in msg and "-i: 'd/train_*.bin' in the checkpoint, 'other/*.bin' now" in msg
    assert "-l: 0.003 in the checkpoint, 0.001 now" in msg and "--allow-changes" in msg
    assert msg.count(" now") == 3
    assert len(rundir.check_resume(RECORD, now, True, "out")) == 3
    with pytest.raises(rundir.RunDirError, match="cannot resume: number of processes: 1 in the checkpoint, 2 now"):
        rundir.check_resume(RECORD, dict(RECORD, world_size=2), True, "out")
    with pytest.raises(rundir.RunDirError, match="cannot resume: -z: 0 in the checkpoint, 1 now"):
        rundir.check_resume(RECORD, dict(RECORD, zero_stage=1), True, "out")   # each rank's state is its shard's
    assert rundir.check_resume(None, now, False, "out") == []  # llm.c's state: nothing recorded


def test_the_trainers_run_record_is_the_config_it_ran():
    # every RUN_FIELDS key, each from its own flag's field (values all different from the defaults and
    # from each other, so a field left out or taken from another shows)
    from types import SimpleNamespace

    from numbagpt.train import trainer
    from numbagpt.train.config import TrainConfig, fields
    cfg = TrainConfig(batch_size=3, seq_len=5, seed=7, train_data="x/train.bin", val_data="x/val.bin", zero_stage=1,
                      shuffle=0, lr=0.002, warmup_iters=4, max_steps=9, final_lr_frac=0.3, lr_scheduler="wsd",
                      overfit_single_batch=1, weight_decay=0.05, beta1=0.8, beta2=0.97, grad_clip=0.6, model="d12",
                      layers=2, heads=4, channels=64, max_seq_len=32)
    record = trainer.run_record(cfg, SimpleNamespace(size=2), 6, cfg.train_data, cfg.val_data)
    assert set(record) == set(rundir.RUN_FIELDS)
    by_flag = {flag: f.name for f in fields() for flag in f.metadata["flags"]}
    derived = {"total_batch": 6 * 2 * 3 * 5, "world_size": 2, "schedule": "wsd",
               "train_data": os.path.abspath("x/train.bin"), "val_data": os.path.abspath("x/val.bin"),
               "train_shards": "0 shards of 0 bytes"}
    for key, flag in rundir.RUN_FIELDS.items():
        want = derived[key] if key in derived else getattr(cfg, by_flag[flag])
        assert record[key] == want, (key, record[key], want)


def test_resume_compares_the_data_files_not_their_spelling_and_a_1():
    """The same file named relative or absolute, or through "..", is the same -i (it was refused); -a
    is in the record (it trains on another stream of batches: it resumed silently)."""
    here = os.path.abspath("d/train_*.bin")
    for spelled in (here, os.path.abspath("d/../d/train_*.bin"), "./d/train_*.bin"):
        assert rundir.compare_runs(RECORD, dict(RECORD, train_data=spelled)) == []
    assert [k for k, _ in rundir.compare_runs(RECORD, dict(RECORD, train_data="e/train_*.bin"))] == ["train_data"]
    a = dict(RECORD, overfit_single_batch=0)
    assert rundir.compare_runs(a, dict(a, overfit_single_batch=1)) == [
        ("overfit_single_batch", "-a: 0 in the checkpoint, 1 now")]


def test_model_and_data_named_through_links_or_relative_are_the_same(tmp_path, monkeypatch):
    """-e given relative where the checkpoint has it absolute, and -i through a symbolic link to its
    directory, are the same files (both were refused as changes); another file still differs. And
    --overwrite refuses to delete the -e model named through a link to the output dir (it deleted it)."""
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "link")
    (tmp_path / "m.bin").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    rec = dict(RECORD, model=str(tmp_path / "m.bin"), train_data=str(tmp_path / "d" / "*_train.bin"))
    assert rundir.compare_runs(rec, dict(rec, model="./m.bin", train_data="link/*_train.bin")) == []
    assert [k for k, _ in rundir.compare_runs(rec, dict(rec, model="n.bin"))] == ["model"]
    assert rundir.compare_runs(dict(rec, model="d12"), dict(rec, model="d12")) == []
    from numbagpt.config import GPT2Config
    from numbagpt.model import GPT2
    out = tmp_path / "out"
    out.mkdir()
    micro = GPT2Config(max_seq_len=8, vocab_size=16, num_layers=1, num_heads=1, channels=8)
    GPT2(micro).save(out / "model_00000002.bin")
    os.symlink(out, tmp_path / "outlink")
    with pytest.raises(rundir.RunDirError, match="is a file of the earlier run"):
        rundir.check_fresh(str(out), overwrite=True, model=str(tmp_path / "outlink" / "model_00000002.bin"))


def test_the_run_record_lives_in_the_state_header_and_llmc_slots_are_unchanged(tmp_path):
    p = tmp_path / "state_00000010_00000.bin"
    m = np.arange(10, dtype=np.float32)
    long_glob = "/data/" + "x" * 2000 + "/*.bin"
    record = dict(RECORD, train_data=long_glob)
    formats.write_state(p, 10, 1, 0, m, m, rng_state=5, shard_index=1, sample_index=2, run=record)
    header = np.fromfile(p, dtype="<i4", count=256)
    assert list(header[[0, 1, 2, 3, 4, 10]]) == [20240527, 1, 1, 0, 0, 10]
    assert int(header[30:32].view("<u8")[0]) == 1 and int(header[32:34].view("<u8")[0]) == 2
    assert not header[6:10].any() and not header[11:20].any() and not header[24:30].any()
    got = formats.read_state(p)["run"]
    assert got["train_data"].startswith("sha256:") and got["B"] == 4   # too long for the header: hashed
    assert rundir.compare_runs(got, record) == []
    assert [k for k, _ in rundir.compare_runs(got, dict(record, train_data="/data/y/*.bin"))] == ["train_data"]


def test_keep_log_until_drops_the_lines_after_the_resume_step(tmp_path):
    log = tmp_path / "main.log"
    log.write_text("s:0 tel:3.0\ns:0 trl:3.1 lr:0.1 norm:1.00\ns:1 trl:3.0 lr:0.1 norm:1.00\n"
                   "s:2 trl:2.9 lr:0.1 norm:1.00\ns:2 tel:2.8\ns:3 trl:2.7 lr:0.1 norm:1.00\n")
    assert rundir.keep_log_until(str(log), 2) == 3
    assert log.read_text() == "s:0 tel:3.0\ns:0 trl:3.1 lr:0.1 norm:1.00\ns:1 trl:3.0 lr:0.1 norm:1.00\n"
    assert rundir.keep_log_until(str(tmp_path / "none.log"), 2) == 0
    log.write_text("s:0 trl:3.1 lr:0.1 norm:1.00\ns:1 trl:3.0 lr:0.1 norm:1.00\ns:2 trl:2.9 lr")   # torn at a crash
    assert rundir.keep_log_until(str(log), 5) == 1   # the next record would be glued to it
    assert log.read_text() == "s:0 trl:3.1 lr:0.1 norm:1.00\ns:1 trl:3.0 lr:0.1 norm:1.00\n"


# ---------------------------------------------------------------------------------------------- memory

def test_cgroup_v2_and_v1_limits(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{8 * 2**30}\n")
    (v2 / "job" / "memory.current").write_text(f"{3 * 2**30}\n")
    (v2 / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {2**30}\n")
    (v2 / "job" / "step" / "memory.max").write_text("max\n")
    cg = tmp_path / "cgroup2"
    cg.write_text("0::/job/step\n")
    room, where = memory.cgroup_room(str(cg), str(v2))
    assert room == 6 * 2**30 and "8.0 GiB" in where and where.endswith("job")
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{2**29}\n")
    cg.write_text("12:cpu,cpuacct:/x\n11:memory:/docker/abc\n")   # the container's own path is absent
    room, where = memory.cgroup_room(str(cg), str(v1))
    assert room == 2**29
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")   # v1's "no limit"
    assert memory.cgroup_room(str(cg), str(v1)) == (None, None)


def test_nested_cgroup_limits_take_the_tightest(tmp_path):
    """A job (8 GiB) whose step has a limit of its own (4 GiB): the room is under the step's limit,
    the tighter one (the looser, the job's, was taken: a run the step's limit then kills)."""
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{8 * 2**30}\n")
    (v2 / "job" / "memory.current").write_text(f"{2**30}\n")
    (v2 / "job" / "step" / "memory.max").write_text(f"{4 * 2**30}\n")
    (v2 / "job" / "step" / "memory.current").write_text(f"{2**30}\n")
    cg = tmp_path / "cgroup2"
    cg.write_text("0::/job/step\n")
    room, where = memory.cgroup_room(str(cg), str(v2))
    # by hand: job 8 - 1 = 7 GiB left, step 4 - 1 = 3 GiB left; the least of them
    assert room == 3 * 2**30 < 4 * 2**30
    assert "4.0 GiB" in where and where.endswith(os.path.join("job", "step"))


def test_memory_limit_env_and_the_refusal_message(monkeypatch):
    monkeypatch.setenv(memory.LIMIT_ENV, "100M")
    avail, where = memory.available_memory()
    assert avail == 100 * 2**20 and where == f"${memory.LIMIT_ENV}"
    need = lambda b: 10 * 2**20 + b * 2**20   # noqa: E731
    assert memory.check_fits(need, 90, "x")[0] == 100 * 2**20
    with pytest.raises(memory.MemoryCheckError,
                       match=r"not enough memory for d12 B=512: it needs 522.0 MiB, 100.0 MiB is available "
                             r"\(\$NUMBAGPT_MEMORY_LIMIT\); the largest -b that fits is 90; --no-memory-check"):
        memory.check_fits(need, 512, "d12 B=512")
    with pytest.raises(memory.MemoryCheckError, match="even -b 1 needs 1.0 GiB"):
        memory.check_fits(lambda b: 2**30, 4, "d48")
    assert memory.largest_fitting(need, 512, 10 * 2**20) == 0
    # -d takes only some B: the hint keeps to them (it named a -b that -d then refused)
    with pytest.raises(memory.MemoryCheckError, match="the largest -b that fits is 90, and the largest that "
                                                      "-d 64 also takes is 64;"):
        memory.check_fits(need, 512, "d12 B=512", takes=(lambda b: 64 % b == 0, "-d 64"))
    with pytest.raises(memory.MemoryCheckError, match="fits is 90, but -d 7 takes none of 1..90;"):
        memory.check_fits(need, 512, "d12 B=512", takes=(lambda b: b > 100, "-d 7"))
    sizes = [memory.parse_size(s) for s in ("1024", "2K", "1.5G", "3MiB", "1gb")]
    assert sizes == [1024, 2048, 3 * 2**29, 3 * 2**20, 2**30]
    for bad in ("lots", "inf", "nan", "1e400", "1e300G"):   # inf was an OverflowError's traceback, nan an int()'s words
        with pytest.raises(ValueError, match=f"NUMBAGPT_MEMORY_LIMIT='{bad}': expected a size"):
            memory.parse_size(bad)


def test_ranks_that_share_a_host_are_advice_where_even_b_1_does_not_fit(monkeypatch):
    """Several ranks on this host share its memory: fewer of them is advice too (the hint said only "a
    smaller model or a machine with more memory")."""
    from numbagpt.backend import get_backend
    from numbagpt.config import preset
    monkeypatch.setenv(memory.LIMIT_ENV, "1M")
    with pytest.raises(memory.MemoryCheckError, match="x 2 ranks on this host: .*; even -b 1 needs .*: use fewer "
                                                      "ranks on this host, a smaller model or a machine with more"):
        memory.check_model_fits(preset("tiny"), 4, 64, get_backend("cpu"), "tiny", ranks=2)
    with pytest.raises(memory.MemoryCheckError, match="; even -b 1 needs .*: use a smaller model or a machine with"):
        memory.check_model_fits(preset("tiny"), 4, 64, get_backend("cpu"), "tiny", ranks=1)


def test_ranks_share_the_simulators_host_memory_under_the_cuda_backend(monkeypatch):
    """The CUDA simulator's device arrays are NumPy arrays in host memory (memory.host_buffers): 2 ranks
    on this host need twice one rank's buffers (they were counted as one, a device per rank)."""
    import numbagpt.cuda as cuda_backend
    from numbagpt.config import preset
    from numbagpt.layout import memory_estimate
    monkeypatch.setattr(cuda_backend, "SIMULATOR", True)
    assert cuda_backend.memory_info() is None and memory.host_buffers(cuda_backend)
    monkeypatch.setenv(memory.LIMIT_ENV, "1M")
    one = memory_estimate(preset("tiny"), 4, 64)["total"]
    with pytest.raises(memory.MemoryCheckError) as e:
        memory.check_model_fits(preset("tiny"), 4, 64, cuda_backend, "tiny", ranks=2)
    msg = str(e.value)
    assert msg.startswith(f"not enough memory for tiny with B=4 T=64 x 2 ranks on this host: it needs "
                          f"{memory.format_bytes(2 * one)}, 1.0 MiB is available"), msg
    assert "use fewer ranks on this host" in msg


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_a_signal_whose_interrupted_python_drops_stops_the_run_at_the_step_end(signum, status, capsys):
    """A Ctrl-C that lands while Python runs a ctypes callback (Numba's compiler calls back into it):
    Python drops the Interrupted the handler raises there. check() at the end of the step raises it
    again, once per process too (the run went on, deaf to every later signal, until kill -9), and
    the dropped one prints nothing."""
    import ctypes
    stop = rundir.StopRequest()
    try:
        @ctypes.CFUNCTYPE(None)
        def compiler_callback():
            os.kill(os.getpid(), signum)
            sum(range(1000))   # the handler runs here, inside the callback
        compiler_callback()
        assert stop.got == signum
        with pytest.raises(rundir.Interrupted) as e:
            stop.check()
        assert e.value.exit_status == status
    finally:
        stop.close()
    assert "Exception ignored" not in capsys.readouterr().err


class _Ranks:
    """A world of `size` ranks whose other ranks got `others` (signal numbers, None for none)."""

    def __init__(self, others):
        self.size = len(others) + 1
        self.others = others

    def sum(self, mine):
        return mine + sum(rundir.signal_weight(s, self.size) for s in self.others)


@pytest.mark.parametrize("mine,others,expected", [
    (None, [None, None], None),
    (signal.SIGINT, [signal.SIGINT, signal.SIGINT], signal.SIGINT),
    (None, [signal.SIGINT, None], signal.SIGINT),
    (signal.SIGINT, [signal.SIGHUP, signal.SIGINT], signal.SIGHUP),
    (signal.SIGHUP, [signal.SIGHUP, signal.SIGHUP], signal.SIGHUP),
    (signal.SIGINT, [signal.SIGHUP, signal.SIGTERM], signal.SIGTERM),
    (None, [signal.SIGTERM, signal.SIGHUP, signal.SIGHUP, signal.SIGINT], signal.SIGTERM),
    (signal.SIGTERM, [None], signal.SIGTERM),
])
def test_ranks_stop_with_the_most_serious_signal_any_of_them_got(mine, others, expected):
    """check() combines the ranks' signals in one sum: every rank raises alike, SIGTERM over SIGHUP
    over SIGINT, whatever the mix."""
    stop = rundir.StopRequest()
    try:
        stop.attach(_Ranks(others))
        stop.signum = mine
        if expected is None:
            stop.check()
            return
        with pytest.raises(rundir.Interrupted) as e:
            stop.check()
        assert e.value.signum == expected
    finally:
        stop.close()


def test_a_signal_the_process_ignores_stays_ignored():
    """`nohup bin/train_gpt2 ...` ignores SIGHUP so that the run outlives its terminal: the handler
    that ends a run on SIGHUP must not replace that (the run then died when the terminal closed)."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        stop = rundir.StopRequest()
        try:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handler
        finally:
            stop.close()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_negative_memory_limit_is_refused():
    """$NUMBAGPT_MEMORY_LIMIT below 0, however little below, is no size (a test of < -1 took -1 and -0.5M)."""
    for bad in ("-1", "-0.5M"):
        with pytest.raises(ValueError) as e:
            memory.parse_size(bad)
        assert str(e.value) == f"NUMBAGPT_MEMORY_LIMIT='{bad}': a size can't be negative"


def test_ranks_on_a_device_need_one_ranks_memory_each(monkeypatch):
    """On a device backend (buffers in device memory, a device per rank) 2 ranks need one rank's
    estimate on each device, not twice it (ranks are multiplied only where they share host memory)."""
    import types
    from numbagpt.config import preset
    from numbagpt.layout import memory_estimate
    monkeypatch.delenv(memory.LIMIT_ENV, raising=False)
    one = memory_estimate(preset("tiny"), 4, 64)["total"]
    free = one * 3 // 2   # one rank's buffers fit, two ranks' would not
    device = types.SimpleNamespace(HOST_MEMORY=False, SIMULATOR=False, memory_info=lambda: (1000, free + 1000),
                                   device_name=lambda: "a fake GPU")
    need, available, where = memory.check_model_fits(preset("tiny"), 4, 64, device, "tiny", ranks=2)
    assert (need, available) == (one, free) and where.startswith("free on a fake GPU")


def test_the_batch_hint_can_be_1():
    """-d takes only B = 1 of the batch sizes that fit: the hint names 1 (a range stopping at 2 said
    "-d 7 takes none of 1..5")."""
    with pytest.raises(memory.MemoryCheckError) as e:
        memory.check_fits(lambda b: b * 2**20, 8, "x", available=5 * 2**20, takes=(lambda b: 7 % b == 0, "-d 7"))
    assert str(e.value) == ("not enough memory for x: it needs 8.0 MiB, 5.0 MiB is available (given); the largest "
                            "-b that fits is 5, and the largest that -d 7 also takes is 1; --no-memory-check to "
                            "try anyway")


def test_a_shard_added_under_the_glob_is_a_change(tmp_path):
    """-i's glob matching another shard at the resume moves the data position onto other tokens (the
    shard order is over the files): the record keeps what the glob matched, and the resume names it
    (it resumed silently, and its losses were another run's)."""
    from types import SimpleNamespace

    from numbagpt.train import trainer
    from numbagpt.train.config import TrainConfig
    for name in ("a", "b"):
        formats.write_shard(tmp_path / f"{name}_train.bin", np.arange(100))
    cfg = TrainConfig(train_data=str(tmp_path / "*_train.bin"))
    before = trainer.run_record(cfg, SimpleNamespace(size=1), 1, cfg.train_data, "")
    formats.write_shard(tmp_path / "c_train.bin", np.arange(100))
    after = trainer.run_record(cfg, SimpleNamespace(size=1), 1, cfg.train_data, "")
    assert rundir.compare_runs(before, after) == [
        ("train_shards", "-i's files: '2 shards of 2,448 bytes' in the checkpoint, '3 shards of 3,672 bytes' now")]
    with pytest.raises(rundir.RunDirError, match="this run differs from the checkpoint's: -i's files"):
        rundir.check_resume(before, after, False, "out/state_00000004_00000.bin")
