"""HellaSwag: llm.c's eval file format, acc_norm scoring (mean completion loss, lowest wins), ranks.

The eval files are built here with a known answer: a model constructed so that the next token is
certainly the current one (embeddings one-hot, every block's output 0), so the completion that repeats
the last context token has a loss near 0 and every other completion a large one."""
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from numbagpt import hellaswag as hs
from numbagpt.cli.eval import main
from numbagpt.config import GPT2Config
from numbagpt.files import formats
from numbagpt.model import GPT2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 16


def repeat_model():
    cfg = GPT2Config(max_seq_len=12, vocab_size=V, num_layers=1, num_heads=2, channels=32)
    model = GPT2(cfg)
    flat = np.zeros(model.num_parameters, np.float32)
    p = model.param_layout.host_views(flat)
    p["wte"][:V, :V] = 3.0 * np.eye(V)  # logits = 3·layernorm(onehot(a))·onehot(k): 16.7 for k = a, −0.5 else
    p["ln1w"][...] = p["ln2w"][...] = p["lnfw"][...] = 1.0
    model.load_parameters(flat)  # attention and MLP weights 0: each block adds 0 to the residual
    return model


def make_examples(rng, n, right):
    """n examples of 4 completions; the repeating one is the label for the first `right` of them."""
    out = []
    for i in range(n):
        ctx = rng.integers(0, V, rng.integers(1, 6)).tolist()
        good = int(rng.integers(0, 4))
        comps = []
        for c in range(4):
            length = int(rng.integers(1, 5))
            if c == good:
                comps.append([ctx[-1]] * length)
            else:  # never the previous token: every target is a surprise
                seq, prev = [], ctx[-1]
                for _ in range(length):
                    prev = int((prev + rng.integers(1, V)) % V)
                    seq.append(prev)
                comps.append(seq)
        label = good if i < right else (good + 1) % 4
        out.append((label, ctx, comps))
    return out


class FakeWorld:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def sum(self, value):
        return value


def test_file_round_trip(tmp_path):
    examples = make_examples(np.random.default_rng(0), 5, 5)
    hs.write_eval_file(tmp_path / "e.bin", examples)
    got = hs.read_eval_file(tmp_path / "e.bin")
    assert [(e.label, e.context, e.completions) for e in got] == [tuple(e) for e in examples]
    assert [e.index for e in got] == list(range(5))
    raw = np.fromfile(tmp_path / "e.bin", dtype="<i4", count=4)
    assert raw[0] == 20240522 and raw[1] == 1 and raw[2] == 5
    stream = np.fromfile(tmp_path / "e.bin", dtype="<u2", offset=1024)
    assert stream[0] == 65535 and stream[2] == 0 and raw[3] == max(stream[np.flatnonzero(stream == 65535) + 1])


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[:100], "truncated eval file"),
    (lambda b: b[:4] + b"\x00" * 4 + b[8:], "unsupported eval file version: expected 1, found 0"),
    (lambda b: b"\x01" + b[1:], "bad magic number"),
    (lambda b: b[:-2], "example 2 (at uint16"),
    (lambda b: b[:-4], "the file ends {last_minus_4} bytes into its {last} (truncated; the header says 3 examples)"),
    (lambda b: b + b"\x00\x00", "2 bytes after the 3 examples"),
    (lambda b: b[:1024] + b"\x00" + b[1025:], "example 0 (at uint16 0): expected the start marker 65535"),
    (lambda b: b[:12] + np.int32(10).tobytes() + b[16:], "the header says the longest example is 10 bytes, one is "
                                                          "{longest}"),   # llm.c sizes its buffer by it
])
def test_bad_files_name_file_and_example(tmp_path, damage, message):
    path = tmp_path / "e.bin"
    hs.write_eval_file(path, make_examples(np.random.default_rng(1), 3, 3))
    stream = np.fromfile(path, dtype="<u2", offset=1024)
    last = int(stream[np.flatnonzero(stream == 65535)[-1] + 1])   # the last example's length in bytes
    longest = int(np.fromfile(path, dtype="<i4", count=4)[3])
    message = message.format(last=last, last_minus_4=last - 4, longest=longest)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(hs.EvalFileError, match=re.escape(message)) as e:
        hs.read_eval_file(path)
    assert str(e.value).startswith(str(path))


def test_accuracy_of_a_model_that_knows_the_answer():
    examples = [hs.Example(i, *e) for i, e in enumerate(make_examples(np.random.default_rng(2), 13, 9))]
    model = repeat_model()
    losses = hs.completion_losses(model, examples[:3])
    for ex, ls in zip(examples, losses):
        good = [c for c in range(4) if ex.completions[c] == [ex.context[-1]] * len(ex.completions[c])][0]
        assert ls[good] < 1e-3 and all(ls[c] > 10 for c in range(4) if c != good)
    for rows in (1, 2, 4, 8, 40):  # fewer rows than an example's 4 (still one example), one, two, all
        assert hs.evaluate(model, examples, rows_per_batch=rows) == (9, 13)
    # over 4 ranks (llm.c's blocks of ceil(13/4) = 4): the parts add up to the whole
    parts = [hs.evaluate(model, examples, FakeWorld(r, 4))[0] for r in range(4)]
    blocks = [hs.rank_range(13, r, 4) for r in range(4)]
    assert blocks == [(0, 4), (4, 8), (8, 12), (12, 13)]
    assert parts == [len([i for i in range(s, t) if i < 9]) for s, t in blocks]  # the first 9 are right
    assert [hs.rank_range(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_completion_losses_against_float64_per_row():
    # a random model: each completion's mean loss as a float64 softmax over one unpadded row's logits
    cfg = GPT2Config(max_seq_len=8, vocab_size=V, num_layers=2, num_heads=2, channels=16)
    model = GPT2(cfg)
    model.init_weights(0)
    model.load_parameters(model.parameters_host() * 30)
    rng = np.random.default_rng(3)
    examples = [hs.Example(i, *e) for i, e in enumerate(make_examples(rng, 4, 4))]
    examples.append(hs.Example(4, 0, list(range(10)), [[1, 2, 3], [4], [5, 6], [7]]))  # context cut to fit T=8
    got = hs.completion_losses(model, examples)
    for ex, ls in zip(examples, got):
        for c, comp in enumerate(ex.completions):
            row = (ex.context + comp)[-8:]
            model.forward(np.array([row], np.int32))
            z = model.logits_host()[0, :, :V].astype(np.float64)
            logp = z - z.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            n = len(comp)
            want = -np.mean([logp[len(row) - n - 1 + j, comp[j]] for j in range(n)])
            assert abs(ls[c] - want) < 1e-5 * max(1, abs(want)), (ex.index, c, ls[c], want)
    assert len({round(v, 3) for ls in got for v in ls}) > 10  # the losses really differ


def test_eval_gpt2_command(tmp_path, capsys):
    repeat_model().save(tmp_path / "m.bin")
    hs.write_eval_file(tmp_path / "e.bin", make_examples(np.random.default_rng(4), 10, 7))
    assert main(["-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "e.bin"), "-b", "8"]) == 0
    assert capsys.readouterr().out == "HellaSwag: 7/10 = 0.7000 acc_norm\n"
    assert main(["-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "nope.bin")]) == 1
    assert capsys.readouterr().err == f"eval_gpt2: error: {tmp_path / 'nope.bin'}: no such file (HellaSwag eval file)\n"
    hs.write_eval_file(tmp_path / "big.bin", [(0, [1], [[V + 3], [2]])])
    assert main(["-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "big.bin")]) == 1
    assert capsys.readouterr().err == (f"eval_gpt2: error: {tmp_path / 'big.bin'}: example 0: token id 19 is outside "
                                       f"the model's vocabulary of 16 (a file tokenized for another model?)\n")
    hs.write_eval_file(tmp_path / "long.bin", [(0, [1], [[2], [3]]), (1, [1], [[2], [3] * 12])])
    for check in ([], ["--no-memory-check"]):   # the memory check's rows need it first
        assert main(["-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "long.bin")] + check) == 1
        assert capsys.readouterr().err == (f"eval_gpt2: error: {tmp_path / 'long.bin'}: example 1: a completion of 12 "
                                           f"tokens does not fit the model's maxT 12 (with one token of context)\n")


def test_eval_gpt2_at_minus_b_1_and_its_ctrl_c(tmp_path, capsys, monkeypatch):
    """-b 1 (fewer rows than an example's completions) scores as -b 32; a Ctrl-C while it evaluates is
    one line and status 130, as every command's."""
    repeat_model().save(tmp_path / "m.bin")
    hs.write_eval_file(tmp_path / "e.bin", make_examples(np.random.default_rng(4), 10, 7))
    for b in ("1", "32"):
        assert main(["-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "e.bin"), "-b", b]) == 0
        assert capsys.readouterr().out == "HellaSwag: 7/10 = 0.7000 acc_norm\n"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(hs, "evaluate", interrupted)
    assert main(["-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "e.bin")]) == 130
    assert capsys.readouterr().err.endswith("eval_gpt2: interrupted\n")


def test_eval_gpt2_refuses_a_batch_that_does_not_fit(tmp_path, capsys, monkeypatch):
    """eval_gpt2 checks the memory of its largest forward (-b's rows of whole examples, by the
    longest row) before reading the model, and names the largest -b that fits."""
    from numbagpt.layout import memory_estimate
    from numbagpt.memory import format_bytes
    model = repeat_model()
    model.save(tmp_path / "m.bin")
    hs.write_eval_file(tmp_path / "e.bin", make_examples(np.random.default_rng(4), 10, 7))
    T = max(min(len(ctx) + len(c), 12) for _, ctx, comps in make_examples(np.random.default_rng(4), 10, 7)
            for c in comps)

    def need(rows):
        return memory_estimate(model.config, rows, T, training=False)["total"]
    monkeypatch.setenv("NUMBAGPT_MEMORY_LIMIT", str(need(8)))   # two examples a forward
    argv = ["-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "e.bin")]
    assert main(argv + ["-b", "32"]) == 1
    assert capsys.readouterr().err == (
        f"eval_gpt2: error: not enough memory for {tmp_path / 'm.bin'} with 32 rows of up to {T} tokens a forward: "
        f"it needs {format_bytes(need(32))}, {format_bytes(need(8))} is available ($NUMBAGPT_MEMORY_LIMIT); the "
        f"largest -b that fits is 11; --no-memory-check to try anyway\n")
    assert main(argv + ["-b", "11"]) == 0 and "7/10" in capsys.readouterr().out   # 11 rows: 2 examples, 8 rows
    assert main(argv + ["-b", "32", "--no-memory-check"]) == 0


def test_a_model_with_nan_or_inf_weights_is_refused_by_every_command(tmp_path, capsys):
    """Every command on a model that diverged: one line naming the file and the first tensor, before
    anything is written (eval scored such a model 0.25-like and sample printed end-of-text over and
    over, exit 0; train_gpt2 made -o and trained to "step 1: loss nan ... lower the learning rate";
    export_hf wrote the NaNs out)."""
    from numbagpt.cli.hf import export_main
    from numbagpt.cli.profile import main as profile_main
    from numbagpt.cli.sample import main as sample_main
    from numbagpt.cli.test import main as test_main
    from numbagpt.cli.train import main as train_main
    model = repeat_model()
    params = model.parameters_host()
    params[-3] = np.inf   # the last tensor: lnfb
    params[-7] = np.nan
    nan = str(tmp_path / "nan.bin")
    formats.write_model(nan, model.config, params)
    hs.write_eval_file(tmp_path / "e.bin", make_examples(np.random.default_rng(4), 3, 2))
    want = f"{nan}: 2 parameters are NaN or infinite (the first in lnfb): a model that diverged, or a damaged file"
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    for prog, main_of, argv in (
            ("eval_gpt2", main, ["--hellaswag", str(tmp_path / "e.bin")]), ("sample_gpt2", sample_main, ["-g", "2"]),
            ("train_gpt2", train_main, ["-o", str(tmp_path / "out"), "-x", "1", "-b", "1", "-t", "4"]),
            ("test_gpt2", test_main, ["-s", os.path.join(fixtures, "micro_debug_state.bin"), "--no-memory-check"]),
            ("profile_gpt2", profile_main, ["-b", "1", "-t", "4"]), ("export_hf", export_main, [str(tmp_path / "hf")])):
        if prog == "export_hf" and importlib.util.find_spec("safetensors") is None:
            continue   # export_hf first asks for the package (numbagpt[hf])
        assert main_of((["-e", nan] if prog != "export_hf" else [nan]) + argv) == 1, prog
        assert capsys.readouterr().err.endswith(f"{prog}: error: {want}\n"), prog
    assert sorted(os.listdir(tmp_path)) == ["e.bin", "nan.bin"]   # no -o, no HF directory


MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


@pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK), reason="needs mpiexec next to the Python")
def test_eval_gpt2_over_two_ranks(tmp_path):
    pytest.importorskip("mpi4py")
    repeat_model().save(tmp_path / "m.bin")
    hs.write_eval_file(tmp_path / "e.bin", make_examples(np.random.default_rng(5), 9, 4))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # an empty Numba cache: rank 0 compiles the kernels while rank 1 waits, then rank 1 loads them (as
    # train_gpt2), so the compile notice is said once, not by both ranks compiling the same kernels at once
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, os.path.join(ROOT, "bin", "eval_gpt2"),
                           "-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "e.bin"), "--omp-threads", "1"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(env, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "HellaSwag: 4/9 = 0.4444 acc_norm\n"
    assert "2 processes" in proc.stderr
    assert proc.stderr.count("eval_gpt2: compiling the kernels") == 1, proc.stderr
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, os.path.join(ROOT, "bin", "eval_gpt2"),
                           "-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "x.bin"), "--omp-threads", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    # a file every rank refuses: one line from rank 0 (a line from each rank, run together, and MPI_Abort)
    assert proc.returncode == 1 and proc.stderr == f"eval_gpt2: error: rank 0: {tmp_path}/x.bin: no such file " \
                                                   f"(HellaSwag eval file)\n", proc.stderr


def test_an_interrupted_eval_ends_its_progress_line_first(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the eval: the progress line ends, then `eval_gpt2: interrupted` on a line of its own
    (it was glued to "evaluating: 504/1500 examples of rank 0")."""
    repeat_model().save(tmp_path / "m.bin")
    hs.write_eval_file(tmp_path / "e.bin", make_examples(np.random.default_rng(5), 9, 4))

    def interrupted(model, examples, world, batch_size, progress, source):
        progress(4, 9)
        raise KeyboardInterrupt
    monkeypatch.setattr(hs, "evaluate", interrupted)
    assert main(["-e", str(tmp_path / "m.bin"), "--hellaswag", str(tmp_path / "e.bin"), "--omp-threads", "1"]) == 130
    assert capsys.readouterr().err.endswith("\revaluating: 4/9 examples of rank 0\neval_gpt2: interrupted\n")


def test_an_example_with_an_empty_context_is_refused(tmp_path):
    """An eval file (written here by hand, in llm.c's layout) whose example has 0 context tokens is
    refused by the reader: a completion must follow some context."""
    ex = [65535, 20, 0, 0, 2, 0, 1, 5, 1, 6]   # start, bytes, index, label, 2 completions, 0 context tokens
    header = np.zeros(256, dtype="<i4")
    header[:4] = (hs.MAGIC, hs.VERSION, 1, 20)
    path = tmp_path / "e.bin"
    path.write_bytes(header.tobytes() + np.array(ex, dtype="<u2").tobytes())
    with pytest.raises(hs.EvalFileError) as e:
        hs.read_eval_file(path)
    assert str(e.value) == (f"{path}: example 0 (at uint16 0): its context and completions do not add up to "
                            f"its length (or one is empty)")
    ex = [65535, 22, 0, 0, 2, 1, 3, 1, 5, 1, 6]   # the same with a 1-token context reads
    header[3] = 22
    path.write_bytes(header.tobytes() + np.array(ex, dtype="<u2").tobytes())
    assert [(e.label, e.context, e.completions) for e in hs.read_eval_file(path)] == [(0, [3], [[5], [6]])]
