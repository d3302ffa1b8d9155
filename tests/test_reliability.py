"""No silent wrong answers: the repros of the reliability review, each a regression test.

The Python API checks what it is given; outputs never mix; main.log holds whole lines; checkpoints
carry checksums and a damaged one is passed over, saying why; the ranks of a job agree on their flags;
a resume refuses flags its checkpoint contradicts. docs/reliability.md lists the promises."""
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from numbagpt import hellaswag
from numbagpt.config import GPT2Config
from numbagpt.dist import CollectiveError
from numbagpt.model import GPT2
from numbagpt.plot import read_log
from numbagpt.train import TrainConfig, checkpoint, rundir
from numbagpt.train.trainer import check_ranks_agree

from micro_data import play_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")


def micro_model():
    model = GPT2(GPT2Config(max_seq_len=8, vocab_size=11, num_layers=1, num_heads=1, channels=4))
    model.init_weights(0)
    return model


# ---------------------------------------------------------------------------------------------- the API

@pytest.mark.parametrize("tokens, message", [
    (np.array([[2**32 + 5, 1]], np.int64), "out of range"),            # was silently token 5
    (np.array([[3.7, 1.0]]), "must be integers"),                        # was silently 3
    (np.array([[np.nan, 1.0]]), "must be integers"),                     # was token id -2147483648
    (np.zeros((0, 4), np.int32), "non-empty"),                           # B = 0: was a TypeError
    (np.zeros((2, 0), np.int32), "non-empty"),                           # T = 0
    (np.array([1, 2, 3], np.int32), "(B, T)"),
    (np.array([[-1, 2]], np.int32), "token id -1 out of range"),
])
def test_forward_checks_tokens_before_any_cast(tokens, message):
    model = micro_model()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.forward(tokens, tokens if tokens.ndim == 2 else None)
    ok = np.array([[1, 2, 3]], np.int64)   # any integer dtype that holds the ids is taken
    assert np.isfinite(model.forward(ok, ok))


def test_train_config_refuses_nan_and_bad_types():
    for field, value in (("lr", float("nan")), ("lr", float("inf")), ("weight_decay", float("nan")),
                         ("final_lr_frac", float("nan")), ("skip_update_lossz", float("nan")),
                         ("grad_clip", float("nan")), ("batch_size", 2.5), ("max_steps", True)):
        with pytest.raises(ValueError):
            TrainConfig(**{field: value})


# ---------------------------------------------------------------------------------------------- files

def test_export_hf_refuses_a_non_empty_dir_and_never_mixes_tokenizers(tmp_path):
    pytest.importorskip("safetensors")
    from numbagpt.files.hf import export_hf
    gpt2_vocab = GPT2(GPT2Config(max_seq_len=8, vocab_size=50257, num_layers=1, num_heads=1, channels=4))
    gpt2_vocab.init_weights(0)
    gpt2_vocab.save(str(tmp_path / "big.bin"))
    micro_model().save(str(tmp_path / "char.bin"))
    out = tmp_path / "hf"
    assert "vocab.json" in export_hf(str(tmp_path / "big.bin"), str(out))
    with pytest.raises(ValueError, match="not empty.*--force"):
        export_hf(str(tmp_path / "char.bin"), str(out))
    written = export_hf(str(tmp_path / "char.bin"), str(out), force=True)
    assert sorted(os.listdir(out)) == written == ["config.json", "generation_config.json", "model.safetensors"]


def test_empty_expected_losses_is_refused(tmp_path):
    (tmp_path / "losses.txt").write_text("")
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    proc = subprocess.run([sys.executable, os.path.join(BIN, "test_gpt2"), "-e", f"{fixtures}/micro_model.bin",
                           "-s", f"{fixtures}/micro_debug_state.bin", "--expected-losses",
                           str(tmp_path / "losses.txt"), "--omp-threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "overall okay: 1" not in proc.stdout
    assert proc.stderr.strip().endswith("losses.txt: no losses in it: nothing to compare (--expected-losses)")


def test_eval_file_with_no_examples_and_foreign_tokens(tmp_path):
    path = tmp_path / "empty.bin"
    hellaswag.write_eval_file(str(path), [])
    with pytest.raises(ValueError, match="empty.bin: the header says 0 examples"):
        hellaswag.read_eval_file(str(path))
    examples = [hellaswag.Example(0, 0, [1, 2], [[3], [50]])]
    with pytest.raises(ValueError, match="foreign.bin: example 0: token id 50 is outside"):
        hellaswag.evaluate(micro_model(), examples, source="foreign.bin")


def test_main_log_keeps_whole_lines_on_a_full_disk(tmp_path, monkeypatch):
    log = rundir.RunLog(str(tmp_path / "main.log"))
    log.write("s:0 trl:1.0 lr:0.1 norm:1.0\n")
    real = os.write

    def half_then_full(fd, data):   # the disk fills in the middle of the record
        if len(data) > 4:
            return real(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError) as e:
        log.write("s:1 trl:2.0 lr:0.1 norm:1.0\n")
    assert str(e.value) == (f"{tmp_path / 'main.log'}: cannot write: No space left on device (the disk or quota "
                            f"is full); the log keeps its whole lines")   # as the other files' (no [Errno 28])
    monkeypatch.setattr(os, "write", real)
    log.close()
    assert (tmp_path / "main.log").read_text() == "s:0 trl:1.0 lr:0.1 norm:1.0\n"


def test_plot_log_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "main.log"
    path.write_text("s:0 tel:5.0\ns:0 trl:5.1 lr:0.1 norm:1.0\ns:1 trl:4")
    notes = []
    series = read_log(str(path), notes)
    assert series["trl"] == ([0], [5.1]) and len(notes) == 1 and "incomplete last line" in notes[0]
    path.write_text("s:0 tel:5.0\nnot a record\ns:1 trl:4.0\n")
    with pytest.raises(ValueError, match=":2: not an llm.c log record"):
        read_log(str(path), notes)


# ---------------------------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A run directory with complete checkpoints at steps 2 and 4."""
    d = tmp_path_factory.mktemp("ckpt")
    paths, model_path, _ = play_corpus(d)
    out = d / "out"
    argv = ["-i", paths["train"], "-j", paths["val"], "-e", model_path, "-o", str(out), "-b", "4", "-t", "16",
            "-u", "1", "-x", "4", "-n", "2", "-v", "2", "-m", "1", "-g", "0", "--omp-threads", "1"]
    proc = subprocess.run([sys.executable, os.path.join(BIN, "train_gpt2")] + argv, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, argv


def test_done_records_checksums_and_a_flipped_bit_is_passed_over(two_checkpoints, tmp_path):
    import shutil
    out, _ = two_checkpoints
    run = tmp_path / "run"
    shutil.copytree(out, run)
    crcs = checkpoint.recorded_checksums(str(run), 4)
    assert set(crcs) == {"model_00000004.bin", "state_00000004_00000.bin"}
    assert all(checkpoint.file_hash(str(run / name)) == h for name, h in crcs.items())
    import xxhash
    assert crcs["model_00000004.bin"] == xxhash.xxh3_64((run / "model_00000004.bin").read_bytes()).hexdigest()
    with open(run / "state_00000004_00000.bin", "r+b") as f:   # one bit of the AdamW state
        f.seek(5000)
        byte = f.read(1)[0]
        f.seek(5000)
        f.write(bytes([byte ^ 0x10]))
    step, _, notes = checkpoint.select(str(run))
    assert step == 2 and "checksum mismatch" in notes[0] and "state_00000004_00000.bin" in notes[0]
    said = []
    assert checkpoint.resolve_model(str(run), say=said.append).endswith("model_00000002.bin")   # -e DIR
    assert said == [f"-e {run}: model_00000004.bin passed over ({notes[0].split(': ', 1)[1]}); taking "
                    f"{run}/model_00000002.bin"]
    checkpoint.discard(str(run), 4)   # as -y 1 does, when its run starts: the files are rewritten at step 4
    said = []
    # a checkpoint's model still
    assert checkpoint.resolve_model(str(run), "MODEL", said.append).endswith("model_00000002.bin")
    assert said == [f"MODEL {run}: model_00000004.bin passed over ({run}/DONE_00000004: no such file (the "
                    f"checkpoint is incomplete)); taking {run}/model_00000002.bin"]


def test_e_dir_takes_the_final_model_of_a_run_that_ends_between_checkpoints(two_checkpoints, tmp_path):
    """-e DIR: the newest whole model_*.bin, the final model of a run whose last step is no checkpoint
    step (-x 5 -n 2), not the checkpoint before it; a model file cut short is passed over."""
    import shutil
    out, _ = two_checkpoints
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.copy(run / "model_00000004.bin", run / "model_00000005.bin")   # a final model: no DONE, no state
    said = []
    assert checkpoint.resolve_model(str(run), say=said.append).endswith("model_00000005.bin") and said == []
    data = (run / "model_00000004.bin").read_bytes()
    (run / "model_00000006.bin").write_bytes(data[:len(data) // 2])
    assert checkpoint.resolve_model(str(run), say=said.append).endswith("model_00000005.bin")
    assert len(said) == 1
    assert said[0].startswith(f"-e {run}: model_00000006.bin passed over ({run}/model_00000006.bin: ")
    assert said[0].endswith(f"); taking {run}/model_00000005.bin")
    for step in (4, 5):   # none whole: the newest, nothing said (its reader says what is wrong)
        (run / f"model_0000000{step}.bin").write_bytes(data[:100])
    os.remove(run / "model_00000002.bin")
    said = []
    assert checkpoint.resolve_model(str(run), say=said.append).endswith("model_00000006.bin") and said == []


def test_resume_refuses_shape_flags_the_checkpoint_contradicts(two_checkpoints, tmp_path):
    import shutil
    out, argv = two_checkpoints
    run = tmp_path / "run"
    shutil.copytree(out, run)
    argv = [a if a != str(out) else str(run) for a in argv]
    argv[argv.index("-x") + 1] = "4"
    proc = subprocess.run([sys.executable, os.path.join(BIN, "train_gpt2")] + argv + ["-y", "1", "-e", "other.bin"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "-e: " in proc.stderr and "other.bin" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


class FakeWorld:
    """Two ranks' configs as rank 0 gathers them."""

    def __init__(self, configs):
        self.configs, self.size, self.rank, self.is_master = configs, len(configs), 0, True

    def gather(self, mine):
        return [mine] + [{k: getattr(c, k) for k in mine} for c in self.configs[1:]]

    def bcast(self, obj):
        return obj


def test_ranks_with_different_flags_stop_together():
    a = TrainConfig(max_steps=10)
    with pytest.raises(CollectiveError, match="rank 1 has -x 12, rank 0 10"):
        check_ranks_agree(a, FakeWorld([a, a.replace(max_steps=12)]))
    check_ranks_agree(a, FakeWorld([a, a.replace(omp_threads=4)]))   # threads are each rank's own


def test_ranks_on_other_kernels_than_rank_0s_are_named():
    """An MPMD launch with NUMBAGPT_MATMUL on one rank, or ranks on different CPUs: a note names each
    rank whose kernels differ (the startup line shows rank 0's alone); none when they agree."""
    from types import SimpleNamespace

    from numbagpt.train.trainer import describe_ranks

    def lines(kernels_of_rank_1):
        world = SimpleNamespace(rank=0, host="h", local_rank=0, device="cpu", is_master=True)
        world.gather = lambda row: [row, (1, "h", 1) + row[3:6] + (kernels_of_rank_1,)]
        said = []
        describe_ranks(world, 1, said.append, "EPYC, matmul avx512 6x64 (bf16: avx512bf16 6x64)")
        return said
    assert not any("note" in line for line in lines("EPYC, matmul avx512 6x64 (bf16: avx512bf16 6x64)"))
    notes = [line for line in lines("EPYC, matmul portable (bf16: portable)") if line.startswith("note")]
    assert len(notes) == 1 and "rank 1: EPYC, matmul portable (bf16: portable)" in notes[0], notes


CONSOLE_TRAIN = os.path.join(os.path.dirname(sys.executable), "numbagpt-train")


@pytest.mark.parametrize("command", ["bin", "console script"])
@pytest.mark.parametrize("delay", [0.05, 0.1, 0.2, 0.4])
def test_ctrl_c_while_starting_is_one_line(delay, command, tmp_path):
    """SIGINT in the first fraction of a second (Python loading NumPy, Numba, the command): one line and
    status 130, never a KeyboardInterrupt traceback or NumPy's "bad install" ImportError (the console
    script printed importlib's traceback). (Before the interpreter has run its own `site` module, some
    20 ms, the signal is Python's: no code of ours runs.)"""
    import signal
    import time
    if command == "bin":
        argv = [sys.executable, os.path.join(BIN, "train_gpt2")]
    elif os.access(CONSOLE_TRAIN, os.X_OK):
        argv = [CONSOLE_TRAIN]
    else:
        pytest.skip(f"no {CONSOLE_TRAIN}: numbagpt is not installed in this Python")
    proc = subprocess.Popen(argv + ["-o", str(tmp_path / "o"), "-x", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if "init_import_site" in err:   # a loaded machine: the signal came before any code of ours ran
        pytest.skip("SIGINT arrived while the interpreter was still starting")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ImportError" not in err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err


@pytest.mark.parametrize("command", ["bin", "console script"])
def test_ctrl_c_while_starting_is_said_by_rank_0_alone(command, tmp_path):
    """Under mpiexec every rank gets the Ctrl-C: a rank other than 0 (as the launcher's variables say)
    exits with status 130 and says nothing, so the line is said once (it was said by every rank)."""
    import signal
    import time
    argv = [sys.executable, os.path.join(BIN, "train_gpt2")] if command == "bin" else [CONSOLE_TRAIN]
    if command != "bin" and not os.access(CONSOLE_TRAIN, os.X_OK):
        pytest.skip(f"no {CONSOLE_TRAIN}: numbagpt is not installed in this Python")
    env = dict(os.environ, PMI_SIZE="2", PMI_RANK="1")
    proc = subprocess.Popen(argv + ["-o", str(tmp_path / "o"), "-x", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if "init_import_site" in err:   # a loaded machine: the signal came before any code of ours ran
        pytest.skip("SIGINT arrived while the interpreter was still starting")
    assert (proc.returncode, err) == (130, "")


@pytest.mark.parametrize("command, argv, missing", [
    ("train_gpt2", ["-x", "1"], "xxhash"),          # imported with the command's module
    ("train_gpt2", ["-x", "1"], "numba"),           # imported once the flags are read
    ("prepare_data", ["t.txt"], "numpy"),
])
def test_a_dependency_that_is_not_installed_is_one_line(command, argv, missing, tmp_path):
    """A clone run without `pip install`: the command names the missing module and how to install it, in
    one line and status 1 (it was a traceback ending in ModuleNotFoundError). The module is made
    missing by a stand-in on PYTHONPATH that raises what Python raises for a missing module."""
    (tmp_path / f"{missing}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{missing}'\", "
                                            f"name='{missing}')\n")
    (tmp_path / "t.txt").write_text("To be, or not to be\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(BIN, command), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"{command}: error: numbagpt needs the module '{missing}', which is not installed: "
                           f"`pip install -e {ROOT}` installs numbagpt's dependencies\n")


def test_a_missing_dependency_of_an_installed_numbagpt_names_the_module_to_install(monkeypatch, capsys):
    """Installed (no setup.cfg above the package): `pip install -e <site-packages>`, the hint for a
    clone, cannot work there; the module itself is what to install."""
    import importlib
    from numbagpt.cli import launch as launcher

    def missing(name):
        raise ModuleNotFoundError("No module named 'xxhash'", name="xxhash")
    monkeypatch.setattr(importlib, "import_module", missing)
    real_isfile = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda p: False if p.endswith("setup.cfg") else real_isfile(p))
    assert launcher.launch("train_gpt2", "train") == 1
    assert capsys.readouterr().err == ("train_gpt2: error: numbagpt needs the module 'xxhash', which is not "
                                       "installed: pip install xxhash\n")


def test_a_missing_submodule_names_its_package_to_install(monkeypatch, capsys):
    """An installed numbagpt whose command imports safetensors.numpy without safetensors: the package
    to install is the dotted name's first part (`pip install safetensors.numpy` was the hint, which
    names no package)."""
    import importlib
    import types
    from numbagpt.cli import launch as launcher

    def main():
        raise ModuleNotFoundError("No module named 'safetensors.numpy'", name="safetensors.numpy")
    monkeypatch.setattr(importlib, "import_module", lambda name: types.SimpleNamespace(main=main))
    real_isfile = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda p: False if p.endswith("setup.cfg") else real_isfile(p))
    assert launcher.launch("export_hf", "export_hf") == 1
    assert capsys.readouterr().err == ("export_hf: error: numbagpt needs the module 'safetensors', which is not "
                                       "installed: pip install safetensors\n")


def test_a_missing_module_of_numbagpt_itself_keeps_its_traceback(tmp_path, monkeypatch):
    """A broken checkout (a module of numbagpt's own missing) is not told as a dependency to install."""
    from numbagpt.cli.launch import launch
    with pytest.raises(ModuleNotFoundError, match="numbagpt.cli.nosuch"):
        launch("nosuch_gpt2", "nosuch")


@pytest.mark.parametrize("env, said", [
    ({}, None), ({"PMI_SIZE": "1", "PMI_RANK": "0"}, None),
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, None),   # a Slurm batch script: one process of a 4-task job
    ({"PMI_SIZE": "2", "PMI_RANK": "0"}, "sample_gpt2: error: it runs as one process, and the launcher started 2 "
     "(PMI_SIZE=2): each would run the whole command alone; run it without mpiexec/srun (train_gpt2 and eval_gpt2 "
     "split their work over processes)"),
    ({"PMI_SIZE": "2", "PMI_RANK": "1"}, True), ({"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "2"}, True),
    ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"}, "launcher started 2 (SLURM_STEP_NUM_TASKS=2)"),
])
def test_a_one_process_command_under_a_launcher_of_several_is_refused_once(env, said):
    from numbagpt.cli.launch import SPLIT_OVER_PROCESSES, one_process_only
    got = one_process_only("sample_gpt2", env)
    assert (said in got) if isinstance(said, str) else (got is said), got
    assert SPLIT_OVER_PROCESSES == ("train_gpt2", "eval_gpt2")


@pytest.mark.skipif(not os.access(os.path.join(os.path.dirname(sys.executable), "mpiexec"), os.X_OK),
                    reason="needs the venv's mpiexec")
def test_mpiexec_of_a_one_process_command_is_one_line():
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, os.path.join(ROOT, "bin", "profile_gpt2"), "-x", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("profile_gpt2: error: it runs as one process, and the launcher started 2 ")


def test_a_failed_write_of_the_progress_lines_names_stdout(monkeypatch):
    """stdout redirected to a file over `ulimit -f` (or a full disk): the error names stdout (it was
    "[Errno 27] File too large", naming nothing)."""
    import builtins
    from numbagpt.dist import World
    from numbagpt.train.trainer import printer
    say = printer(World(None))

    def over_the_limit(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")
    monkeypatch.setattr(builtins, "print", over_the_limit)
    with pytest.raises(OSError) as e:
        say("step 1/2")
    assert str(e.value) == "stdout: cannot write: File too large (over the file size limit, ulimit -f)"
