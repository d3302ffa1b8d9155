"""tests/harness.py can fail: broken kernels on a fake backend are caught by check()."""
import re
import types

import numpy as np
import pytest

from harness import check, rnd

N = 50


def fake(**kernels):
    return types.SimpleNamespace(NAME="fake", to_device=lambda a: np.array(a, copy=True), to_host=np.asarray,
                                 synchronize=lambda: None, **kernels)


def good_forward(out, inp1, inp2, N):
    out[:N] = inp1[:N] + inp2[:N]


def good_backward(dwte, dwpe, dout, inp, B, T, C):
    np.add.at(dwte.reshape(-1, C), inp, dout.reshape(-1, C))
    dwpe[:T * C] += dout.reshape(B, T * C).sum(axis=0)


def run_forward(kernel):
    rng = np.random.default_rng(0)
    return check(fake(residual_forward=kernel), "residual_forward", out=N, inp1=rnd(rng, N), inp2=rnd(rng, N), N=N)


def run_backward(kernel):
    rng = np.random.default_rng(0)
    B, T, C = 2, 5, 5
    return check(fake(encoder_backward=kernel), "encoder_backward", dwte=7 * C, dwpe=T * C, dout=rnd(rng, B * T * C),
                 inp=rng.integers(0, 7, B * T).astype(np.int32), B=B, T=T, C=C)


def test_correct_kernels_pass():
    run_forward(good_forward)
    run_backward(good_backward)


def nothing(out, inp1, inp2, N):
    pass


def half(out, inp1, inp2, N):
    out[:N // 2] = inp1[:N // 2] + inp2[:N // 2]


def accumulates(out, inp1, inp2, N):   # += into an output the contract says it writes
    out[:N] += inp1[:N] + inp2[:N]


def past_the_end(out, inp1, inp2, N):
    good_forward(out, inp1, inp2, N)
    out.base[N] = 0.0   # the element after the view: the harness's padding


def changes_an_input(out, inp1, inp2, N):
    good_forward(out, inp1, inp2, N)
    inp1[0] = 0.0


def writes_a_gradient(dwte, dwpe, dout, inp, B, T, C):   # = where the contract says +=
    dwte[:] = 0.0
    np.add.at(dwte.reshape(-1, C), inp, dout.reshape(-1, C))
    dwpe[:T * C] = dout.reshape(B, T * C).sum(axis=0)


@pytest.mark.parametrize("kernel", [nothing, half, accumulates, past_the_end, changes_an_input])
def test_broken_forwards_fail(kernel):
    with pytest.raises(AssertionError):
        run_forward(kernel)


def test_a_backward_that_overwrites_fails():
    with pytest.raises(AssertionError):
        run_backward(writes_a_gradient)


def test_the_lab_checks_each_variant_before_timing_it():
    """dev/lab.py validates a variant with check() (a broken one is reported) and times the rest."""
    import argparse
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev"))
    import lab
    import timing
    rng = np.random.default_rng(0)
    args = dict(out=N, inp1=rnd(rng, N), inp2=rnd(rng, N), N=N)
    kernel = lab.Kernel("residual_forward", [("good", good_forward), ("nothing", nothing)], lambda shape, r: args)
    assert lab.validate(kernel, good_forward, args) is None
    assert "residual_forward" in lab.validate(kernel, nothing, args)
    timers = timing.timers(argparse.Namespace(clock="wall", threads=1, block_ms=1.0))
    (seconds,) = lab.race(kernel, [("good", good_forward)], args, timers, 2)
    assert seconds > 0


def test_the_matmul_lab_checks_each_blocking_before_timing_it(capsys, monkeypatch):
    """dev/matmul/matmul_cpu.py --blocking: each blocking of the GEMM core (fp32, and the bf16 one where
    the CPU runs it) is checked against float64 before the products are timed; a wrong core stops it."""
    import argparse
    import os
    import sys

    from numbagpt.cpu import matmul as mm
    from numbagpt.cpu import matmul_bf16 as mb
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev", "matmul"))
    import matmul_cpu
    kernels = [k for k, ok in (("avx512", "avx512" in mm.supported_kernels()),
                               ("avx512bf16", "avx512bf16" in mb.supported_kernels())) if ok]
    if not kernels:
        pytest.skip("the lab's packed GEMMs need AVX-512")
    for kernel in kernels:
        args = argparse.Namespace(kernel=kernel, blocking=["96,64,128,0", "96,128,256,1"], threads=1, reps=1,
                                  clock="wall", block_ms=1.0,
                                  shape=(67, 45, 131), op=["forward", "dinp", "dweight"])
        matmul_cpu.run_blockings(args)
        out = capsys.readouterr().out
        assert out.startswith(f"{kernel}: BT=67 C=45 OC=131"), out
        for op in args.op:
            assert re.search(rf"^  {op}\s+[\d.]+\s+[\d.]+\s+BLAS [\d.]+ GF/s$", out, re.M), out
    g, extra, rnd_ = matmul_cpu._blocking_gemm(kernels[0])
    broken = types.SimpleNamespace(split=g.split, tile=g.tile, core=lambda Y, *a: Y.fill(1.0))
    monkeypatch.setattr(matmul_cpu, "_blocking_gemm", lambda kernel: (broken, extra, rnd_))
    with pytest.raises(SystemExit, match="wrong, not timed"):
        matmul_cpu.run_blockings(args)


def test_the_matmul_lab_checks_each_microkernel_before_timing_it(capsys, monkeypatch):
    """dev/matmul/matmul_cpu.py --microkernel: every micro-kernel shape, alone, is checked against float64
    (it compiles with numbagpt/cpu/matmul.py's vector_env: the lab failed once its generator called an
    operation the lab's own list lacked), then timed; a wrong one stops it."""
    import argparse
    import os
    import sys

    from numbagpt.cpu import matmul as mm
    if "avx512" not in mm.supported_kernels():
        pytest.skip("the lab's micro-kernels are 16-lane (AVX-512)")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev", "matmul"))
    import matmul_cpu
    matmul_cpu.run_microkernels(argparse.Namespace(reps=1))
    rows = re.findall(r"^uk_\d+x\d+_(rows|kmajor) +[\d.]+ GF/s", capsys.readouterr().out, re.M)
    assert len(rows) == 7, rows
    source = mm._microkernel_source
    monkeypatch.setattr(mm, "_microkernel_source", lambda *a: source(*a).replace("q0 + k + 1)", "q0 + k)"))
    with pytest.raises(SystemExit, match="wrong, not timed"):
        matmul_cpu.run_microkernels(argparse.Namespace(reps=1))


@pytest.mark.parametrize("family,shape", [("crossentropy", "d12"), ("layernorm", "d12"), ("attention", "tiny")])
def test_every_variant_of_the_labs_passes_its_check(family, shape):
    """python dev/<family>.py --shapes SHAPE --reps 1: every variant of every kernel passes the tests'
    check and is timed (a lab whose variants no longer take the contract's arguments fails here, not in
    the next measurement: the crossentropy lab did, after the kernels' dlogits_bf16 option). In Numba's
    usual cache, as a user's run: the production kernels the other tests compiled load from it (a private
    cache compiled them again: the attention lab took 40 s, 22 s so, 6 s once its variants are cached)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join("dev", f"{family}.py"), "--shapes", shape, "--reps", "1",
                        "--block-ms", "1"],
                       cwd=root, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(r"^ *\d+ .* ms .*$", r.stdout, re.M)
    assert rows and all(row.endswith("checked") for row in rows), r.stdout


def _dev(script, *args, timeout=600):
    """python dev/<script> ARGS from the repository root; its stdout, after asserting it exited 0."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join("dev", script), *args], cwd=root, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_every_version_of_the_matmul_lab_passes_its_check():
    """python dev/matmul/matmul_cpu.py 1 2 3 4 5 6 on a ragged shape: each version this CPU runs is checked
    against float64 and timed next to BLAS (versions 1 and 2, whole tiles only, say they skip the shape),
    and versions 1 and 2 on a shape of whole tiles. (In Numba's own cache: versions 3, 4 and 6 are the
    package's kernels, which the other tests compile too.)"""
    from numbagpt.cpu import matmul as mm
    versions = ["1", "2", "3"] + [v for v, k in (("4", "avx2"), ("5", "avx512"), ("6", "avx512"))
                                  if k in mm.supported_kernels()]
    out = _dev("matmul/matmul_cpu.py", "--shape", "37,24,40", "--reps", "1", "--threads", "1", *versions)
    assert "forward: v1 skipped: its 4 x 4 tiles need BT % 4 == 0 and OC % 4 == 0" in out, out
    assert "forward: v2 skipped: its 4 x 16 tiles need BT % 4 == 0 and OC % 16 == 0" in out, out
    for op in ("forward", "dinp", "dweight"):
        line = re.search(rf"^  {op}: (v.*)  BLAS [\d.]+$", out, re.M)
        assert line, (op, out)
        timed = re.findall(r"v(\d) .*? [\d.]+ GF/s \([\d.]+\)", line.group(1))
        assert timed == [v for v in versions if v not in ("1", "2")], (op, out)
    out = _dev("matmul/matmul_cpu.py", "--shape", "32,24,48", "--reps", "1", "--threads", "1", "1", "2")
    assert re.search(r"^  forward: v1 dot4x4 loops [\d.]+ GF/s \([\d.]+\)  v2 bcast 4x16 scalar [\d.]+ GF/s", out,
                     re.M), out


def test_both_versions_of_the_gelu_lab_pass_their_check():
    out = _dev("gelu/gelu_cpu.py", "--n", "4099", "--reps", "1", "--threads", "1")
    for v in (1, 2):
        m = re.search(rf"^v{v}: max abs error forward (\S+), backward (\S+)$", out, re.M)
        assert m and float(m.group(1)) <= 1e-5 and float(m.group(2)) <= 1e-5, out
        for pass_ in ("forward", "backward"):
            assert re.search(rf"^v{v} {pass_} +[\d.]+ ms", out, re.M), out


@pytest.mark.skipif(__import__("shutil").which("mpiexec") is None, reason="no mpiexec on PATH")
def test_the_hydra_signals_script_runs_its_four_cases():
    """dev/hydra_signals.py, the measurements behind docs/reliability.md: each case starts mpiexec, signals
    it and reports what the ranks logged (the outcomes are the launcher's, not checked here)."""
    out = _dev("hydra_signals.py", timeout=120)
    cases = re.findall(r"^=== (.+): mpiexec exit status -?\d+, [\d.]+ s after the first signal$", out, re.M)
    assert cases == ["SIGINT once", "SIGTERM once", "SIGINT twice", "SIGINT once, ranks end by os._exit"], out
    assert len(re.findall(r"^  rank[01]\.log: pid \d+ ", out, re.M)) == 8, out
