"""Every benchmark in bench/ runs, on small shapes, and prints what it claims to measure: a change of a
kernel's arguments, the model's or the trainer's API that breaks a bench fails here, not in the next
measurement (bench_cuda.py's default run called the attention kernels with their (T, T) signature for
months after flash attention replaced them). bench_matmul.py: every product on every contender, and
its bf16 rows are the classifier's. Timings are not checked: only that they are there."""
import importlib
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from reference import from_bf16_rows, to_bf16_rows
from simulator import NO_NUMBA_CUDA, NUMBA_CUDA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "bench_matmul.py")


TORCH = importlib.util.find_spec("torch") is not None
NUMBER = r"[\d.]+(?:e[-+]\d+)?"


def _bench(*args):
    return subprocess.run([sys.executable, BENCH, "--threads", "1", "--reps", "1", "--block-ms", "1", *args],
                          capture_output=True, text=True, timeout=600)


def _bench_module(name):
    """bench/<name>.py imported (with bench/timing.py, which it imports)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _run(script, *args, env=None, timeout=600):
    """python bench/<script> ARGS from the repository root; its stdout, after asserting it exited 0."""
    r = subprocess.run([sys.executable, os.path.join("bench", script), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_bench_matmul_times_every_product_of_every_contender():
    """A layer with a bias and an LM head (no bias; in bf16 its dout in bf16 rows, as training's), both
    kernels of each precision that run anywhere, and torch.mm where torch is installed."""
    from numbagpt.cpu import matmul as mm
    from numbagpt.cpu import matmul_bf16 as mb
    torch = TORCH
    fp32 = list(dict.fromkeys([mm.supported_kernels()[0], "portable"]))
    bf16 = list(dict.fromkeys([mb.supported_kernels()[0], "portable"]))
    r = _bench("--shapes", "24x40x38,lm_head:37x40x96", "--kernels", ",".join(fp32),
               "--bf16-kernels", ",".join(bf16), *(["--torch"] if torch else []))
    assert r.returncode == 0, r.stderr
    number = r"\s+[\d.]+"
    row = number * 2 * (len(fp32) + len(bf16)) + number * len(bf16) + number   # GF/s, ratio; xfp32; BLAS
    for name in ("24x40x38", "lm_head 37x40x96"):
        for op in ("forward", "dinp", "dweight"):
            assert re.search(rf"^{name}\s+\d+\s+\d+\s+\d+ {op}{row}$", r.stdout, re.M), (name, op, r.stdout)
            if torch:   # torch fp32, ours, ratio, /best, torch bf16, then ours and ratio per bf16 kernel
                torch_row = number * 5 + number * 2 * len(bf16)
                assert re.search(rf"^{name}\s+{op}{torch_row}$", r.stdout, re.M), (name, op, r.stdout)


def test_bench_matmul_refuses_an_unknown_shape_in_one_line():
    r = _bench("--shapes", "tiny,7x8")
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip() == "bench_matmul.py: --shapes: '7x8' is neither tiny, d12, seed nor BTxCxOC (sizes >= 1)"


def test_bench_matmul_stops_on_a_kernel_that_computes_wrong(monkeypatch):
    """Each product of each kernel is checked against float64 before it is timed: a dinp that adds
    nothing, a forward that leaves its output unwritten (NaN), stop the bench in one line naming the
    kernel, the shape and the product; the right ones pass, bf16 against its rounded operands."""
    from numbagpt.cpu import matmul as mm
    bench_matmul = _bench_module("bench_matmul")
    call, check = bench_matmul.products("lm_head 24x40x38", 24, 40, 38, np.random.default_rng(0))
    for op in ("forward", "dinp", "dweight"):
        check(op, "portable")
        check(op, "bf16 portable")
    monkeypatch.setattr(mm, "_backward_dinp", lambda *args: None)
    monkeypatch.setattr(mm, "matmul_forward", lambda *args: None)
    for op in ("dinp", "forward"):
        with pytest.raises(SystemExit) as e:
            check(op, "portable")
        assert re.fullmatch(rf"bench_matmul.py: portable on lm_head 24x40x38 \(24x40x38\) {op}: max relative "
                            rf"error (nan|{NUMBER}) against the reference \(tolerance 1.6e-05\): wrong, not timed",
                            str(e.value))


def test_a_check_before_timing_fails_on_nan():
    """bench/timing.py's checked, the labs' and the benchmarks' check of a kernel's output: `err > tol`
    let a NaN through."""
    timing = _bench_module("timing")
    want = np.array([1.0, -3.0])
    # relative to want's largest magnitude, 3
    assert timing.checked("k", np.float32([1.0, -3.0 + 2 ** -20]), want, 1e-6) == 2 ** -20 / 3
    for got in ([np.nan, -3.0], [1.0, -2.9]):
        with pytest.raises(SystemExit) as e:
            timing.checked("version 2 forward", np.float32(got), want, 1e-5)
        assert str(e.value).startswith("version 2 forward: max relative error ") and "\n" not in str(e.value)


BAD_INPUTS = [   # (script, arguments, what the one line says)
    ("bench/bench_matmul.py", ["--reps", "0"], "argument --reps: must be a positive integer, got 0"),
    ("bench/bench_generate.py", ["--contexts", "1"], "argument --contexts: a context length is at least 2, got 1"),
    ("bench/bench_generate.py", ["--steps", "-5"], "argument --steps: must be a positive integer, got -5"),
    ("bench/bench_attention.py", ["--T", "abc"], "argument --T: invalid lengths value: 'abc'"),
    ("bench/bench_attention.py", ["--contenders", "flash,foo"], "argument --contenders: 'foo': expected a comma"),
    ("bench/bench_checkpoint.py", ["--rounds", "0"], "argument --rounds: must be a positive integer, got 0"),
    ("bench/bench_cuda.py", ["--iters", "0"], "argument --iters: must be a positive integer, got 0"),
    ("bench/bench_train.py", ["--precision", "foo"], "argument --precision: 'foo': expected a comma list of fp32"),
    ("bench/bench_train.py", ["--before", "/nonexistent"], "argument --before: /nonexistent: not a numbagpt checkout"),
    ("dev/gelu/gelu_cpu.py", ["--n", "0"], "argument --n: must be a positive integer, got 0"),
    ("dev/matmul/matmul_cpu.py", ["--shape", "64,32"], "argument --shape: '64,32': expected BT,C,OC, 3 integers"),
    ("dev/matmul/matmul_cpu.py", ["--blocking", "0,0,0,0"], "argument --blocking: '0,0,0,0': MC, KC and NC must be"),
    ("dev/matmul/matmul_cpu.py", ["--kernel", "avx512bf16", "3"], "--kernel: only --blocking runs it"),
    ("dev/layernorm.py", ["layernorm_forward", "9"], "variant 9: layernorm_forward has variants 1 to 2"),
    ("dev/attention.py", ["--products", "--reps", "2"], "--products takes --threads alone, not --reps"),
]


@pytest.mark.parametrize("script, args, says", BAD_INPUTS,
                         ids=[f"{s.split('/')[-1]} {' '.join(a)}" for s, a, _ in BAD_INPUTS])
def test_a_bad_flag_is_refused_in_one_line(script, args, says):
    """A bad value stops the script as argparse does (status 2, `prog: error: ...` naming the flag),
    before any work: not a traceback, a NaN table, a worker's usage message or a silent default."""
    r = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    prog = os.path.basename(script)
    assert (r.returncode, r.stdout) == (2, ""), r.stdout + r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"{prog}: error: {says}") and "Traceback" not in r.stderr, r.stderr


def test_bench_matmul_bf16_rows_are_the_classifiers():
    """The bench's LM-head dout in bf16 rows holds what the classifier writes (tests/reference.py)."""
    bf16_rows = _bench_module("bench_matmul").bf16_rows
    x = np.random.default_rng(0).standard_normal(5 * 14).astype(np.float32)
    x[3] = 2 ** -130   # a subnormal: the rows keep it, as the classifier's rounding does
    np.testing.assert_array_equal(from_bf16_rows(bf16_rows(x, 14), 14), from_bf16_rows(to_bf16_rows(x, 14), 14))


def test_threads_flag_takes_1_to_the_usable_cores(capsys):
    """bench/timing.py's --threads (every benchmark and lab): outside 1..cores, one argparse line naming the
    range (it was numba.set_num_threads' traceback, after the imports); the default fits the machine."""
    import argparse
    timing = _bench_module("timing")
    cores = len(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(prog="b")
    timing.add_threads(ap)
    assert ap.parse_args([]).threads == min(2, cores) and ap.parse_args(["--threads", "1"]).threads == 1
    for bad in ("0", str(cores + 1)):
        with pytest.raises(SystemExit):
            ap.parse_args(["--threads", bad])
        assert f"argument --threads: must be 1 to {cores} (the cores this process may use), got {bad}" in \
            capsys.readouterr().err


def test_bench_kernels_new_kernels_agree_with_the_ones_they_replaced():
    # d12: its B·T = 256 logits rows are 8x fewer than tiny's
    out = _run("bench_kernels.py", "--shapes", "d12", "--reps", "1", "--block-ms", "1", "--threads", "1")
    rows = re.findall(rf"^d12 (\S.*?) +{NUMBER} +{NUMBER} +{NUMBER}x +({NUMBER}) \((\w+)\)$", out, re.M)
    assert [r[0] for r in rows] == ["attention_forward", "attention_backward", "crossentropy_forward",
                                    "crossentropy_backward", "crossentropy_bwd in place",
                                    "matvec_forward (LM head)"], out
    assert all(float(r[1]) < 1e-4 for r in rows), out


def test_bench_attention_times_every_contender():
    names = ["flash", "old"] + (["sdpa", "sdpa_bf16"] if TORCH else [])
    out = _run("bench_attention.py", "--T", "32,64", "--rounds", "1", "--reps", "1", "--threads", "1",
               "--contenders", ",".join(names))
    for T in (32, 64):
        for n in names:
            assert re.search(rf"^ +{T} {n} +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER} ", out, re.M), (T, n, out)
    assert "inf" not in out and "failed" not in out, out


def test_bench_attention_stops_on_a_contender_that_computes_wrong(monkeypatch):
    """A worker checks its contender's out, dq, dk, dv against float64 before it times: flash attention
    passes; a backward that adds nothing, a forward that leaves its output unwritten (NaN), stop it in
    one line naming the contender, T and the tensor."""
    import numbagpt.cpu
    bench_attention = _bench_module("bench_attention")
    args = bench_attention.parse_args(["--worker", "flash", "--reps", "1", "--threads", "1"])
    assert len(bench_attention.numbagpt_times(args, 16)) == 2
    monkeypatch.setattr(numbagpt.cpu, "attention_backward", lambda *a: None)
    with pytest.raises(SystemExit) as e:
        bench_attention.numbagpt_times(args, 16)
    assert re.fullmatch(rf"bench_attention.py: flash at T=16: dq: max relative error {NUMBER} against the "
                        r"reference \(tolerance 2e-05\): wrong, not timed", str(e.value)), str(e.value)
    monkeypatch.setattr(numbagpt.cpu, "attention_forward", lambda *a: None)
    with pytest.raises(SystemExit) as e:
        bench_attention.numbagpt_times(args, 16)
    assert str(e.value).startswith("bench_attention.py: flash at T=16: out: max relative error nan "), str(e.value)


def test_bench_attention_exits_1_when_a_contender_fails(monkeypatch, capsys):
    """A worker that fails is reported and left out of the table (it was a row of inf), and the bench
    exits 1. (A contender of no such name is refused as the flags are parsed: BAD_INPUTS.)"""
    bench_attention = _bench_module("bench_attention")

    def run(cmd, **kwargs):   # the workers: "old" fails
        if cmd[cmd.index("--worker") + 1] == "old":
            return subprocess.CompletedProcess(cmd, 1, "", "MemoryError")
        return subprocess.CompletedProcess(cmd, 0, '{"32": [0.001, 0.002]}\n', "")
    monkeypatch.setattr(bench_attention.subprocess, "run", run)
    assert bench_attention.main(["--T", "32", "--rounds", "1", "--contenders", "flash,old"]) == 1
    out = capsys.readouterr().out
    assert "old: worker failed" in out and re.search(r"^ +32 flash +1.00 +2.00 +3.00 ", out, re.M), out
    assert not re.search(r"^ +32 old ", out, re.M) and "inf" not in out, out


def test_bench_checkpoint_writes_hashes_and_checks_a_checkpoint(tmp_path):
    out = _run("bench_checkpoint.py", "--model", "tiny", "--rounds", "1", "--dir", str(tmp_path))
    assert re.fullmatch(rf"tiny: checkpoint write \(model \+ state \+ DONE, hashes included\) {NUMBER} s; the "
                        rf"hashing in it {NUMBER} s = {NUMBER}% of the write; a resume's check of the checkpoint "
                        rf"\(read back \+ hash\) {NUMBER} s\n", out), out


def test_bench_fma_peak_measures_a_peak():
    out = _run("bench_fma_peak.py", "--threads", "1", "--seconds", "0.05")
    m = re.fullmatch(rf"fp32 FMA peak: ({NUMBER}) GFLOP/s \(1 threads, \d+-lane vectors, best of 3\)\n", out)
    assert m and float(m.group(1)) > 0, out


def test_bench_generate_times_the_cache_against_recompute():
    out = _run("bench_generate.py", "--model", "tiny", "--contexts", "8", "16", "--steps", "2", "--reps", "1",
               "--threads", "1")
    for T in (8, 16):
        assert re.search(rf"^\| {T} \| {NUMBER} \| {NUMBER} \| {NUMBER}x \|$", out, re.M), (T, out)


def test_bench_train_times_every_contender():
    """numbagpt in both precisions and, where torch is installed, PyTorch eager and under autocast: a
    worker that fails is reported and left out of the table, which this would catch."""
    from numbagpt.cpu import matmul as mm
    kernel = mm.supported_kernels()[0]
    out = _run("bench_train.py", "--models", "tiny", "--rounds", "1", "--steps", "1", "--threads", "1",
               "--no-compile", "--kernels", kernel, "--precision", "fp32,bf16", *(["--autocast"] if TORCH else []),
               timeout=900)
    assert "failed" not in out, out
    for label in [f"numbagpt {kernel}", f"numbagpt {kernel} bf16"] + (["eager", "autocast"] if TORCH else []):
        assert re.search(rf"^tiny +8 +256 {label} +\d+ ", out, re.M), (label, out)


def test_bench_train_leaves_out_a_contender_whose_losses_disagree(monkeypatch, capsys):
    """Every worker's loss step by step against PyTorch eager's, float32 within 1e-5, bf16 (numbagpt's
    and autocast) within 5e-4: one off by more, or NaN, is said and left out of the table."""
    bench_train = _bench_module("bench_train")
    args = bench_train.parse_args(["--models", "tiny", "--rounds", "1", "--steps", "2", "--precision", "fp32,bf16"])
    contenders = bench_train.list_contenders(args, ["avx512", "portable"], ("eager", "autocast"))
    off = {("numbagpt", "avx512", "fp32"): 5e-6, ("numbagpt", "portable", "fp32"): 2e-5,
           ("numbagpt", "avx512", "bf16"): 4e-4, ("numbagpt", "portable", "bf16"): np.nan,
           ("eager", None, "fp32"): 0.0, ("autocast", None, "fp32"): 6e-4}

    def run_worker(args, name, who, kernel, precision, root):
        last = 10.74 * (1 + off[who, kernel, precision])
        return {"wall": [1.0, 1.0], "cpu": [1.0, 1.0], "loss": [10.85, 10.79, last]}
    monkeypatch.setattr(bench_train, "run_worker", run_worker)
    medians = bench_train.time_model(args, "tiny", contenders)
    assert sorted(medians) == ["eager", "numbagpt avx512", "numbagpt avx512 bf16"]
    out = capsys.readouterr().out
    for label in ("numbagpt portable", "numbagpt portable bf16", "autocast"):
        assert re.search(rf"^  tiny {label}: losses 10.85000, 10.79000, \S+ against eager's 10.85000, 10.79000, "
                         rf"10.74000 \(relative \S+ > \S+\): wrong, not in the table$", out, re.M), (label, out)
    assert "tiny: every step's loss as eager's within numbagpt avx512 5e-06, numbagpt avx512 bf16 4e-04" in out


@pytest.mark.skipif(not NUMBA_CUDA, reason=NO_NUMBA_CUDA)
def test_bench_cuda_makes_every_call_under_the_simulator():
    """Without a GPU: the bench's every kernel call, in Numba's CUDA simulator, untimed (--simulator);
    without --simulator the simulator is not a GPU, and the bench says so. (--model's step, 20 s in
    the simulator, is numbagpt.train.step.train_step, which bin/test_gpt2 runs there in
    tests/test_cuda_model.py.)"""
    sim = {"NUMBA_ENABLE_CUDASIM": "1"}
    assert _run("bench_cuda.py", env=sim).startswith("no GPU: skipped")
    out = _run("bench_cuda.py", "--simulator", "--shapes", "micro", "--iters", "1", env=sim)
    labels = re.findall(r"^  (\S.*?) +nan ms ", out, re.M)
    kernels = {"encoder_forward", "encoder_backward", "layernorm_forward", "layernorm_backward",
               "fused_residual_layernorm_forward", "attention_forward", "attention_backward", "gelu_forward",
               "gelu_backward", "crossentropy_forward", "crossentropy_backward", "crossentropy_forward_backward",
               "global_norm_squared"}
    assert kernels <= set(labels), out
    for layer in ("qkv", "attproj", "fc", "fcproj", "logits"):
        assert any(x.startswith(f"matmul_forward {layer} (") for x in labels), out
        assert f"matmul_backward {layer}" in labels, out
    assert "adamw_update (N=8768)" in labels, out


def test_the_benchmarks_timing_takes_blocks_of_calls_and_their_median(monkeypatch):
    """bench/timing.py on a fake clock that each call moves on by the call's own duration: a 2 ms call
    is timed in blocks of round(25 / 2) = 12 calls, a 60 ms one alone; the figure is the median of
    the rounds' block means, and with more than one thread each round first pauses (the other pool's
    spinning threads), which a single thread does not."""
    import argparse
    timing = _bench_module("timing")
    now, sleeps, calls = [0.0], [], {"short": 0, "long": 0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(timing.time, "sleep", sleeps.append)
    durations = {}

    def call(name):
        def f():
            calls[name] += 1
            now[0] += next(durations[name])
        return f
    for threads, pauses in ((1, 0), (2, 3)):
        now[0], calls["short"], calls["long"] = 0.0, 0, 0
        durations["short"] = iter([0.002] * 200)
        durations["long"] = iter([0.060, 0.060, 0.050, 0.060, 0.090, 0.060, 0.060, 0.070, 0.060])
        sleeps.clear()
        median_of = timing.timers(argparse.Namespace(clock="wall", threads=threads, block_ms=25.0))
        short, long = median_of([call("short"), call("long")], 3)
        assert short == pytest.approx(0.002) and long == pytest.approx(0.060)
        # short: 5 sizing calls (its first ones took 10 ms in all: under --block-ms), then per round one
        # untimed call and a block of 12; long: 1 sizing call (over --block-ms at once), 1 + 1 a round
        assert calls == {"short": 5 + 3 * 13, "long": 1 + 3 * 2}
        assert len(sleeps) == pauses * 2
