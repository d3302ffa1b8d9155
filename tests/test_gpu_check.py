"""bench/gpu_check.sh without a GPU: it must say clearly that there is none, write that to its output
directory and exit 0 (on a machine with a GPU it runs the real checks, minutes: not a unit test); a missing
module is an error, not "no GPU". And what it would run on a GPU, checked here: the headline part first,
caps within the budget, every CUDA test case selected (collected as if a GPU were present)."""
import glob
import os
import subprocess
import sys

import pytest
from simulator import NO_NUMBA_CUDA, NUMBA_CUDA, gpu_present

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(gpu_present(), reason="a GPU is present: run bash bench/gpu_check.sh itself")
# gpu_check.py stops on a missing numba-cuda (an error, test_a_missing_module_is_an_error_not_no_gpu):
# the tests that run it through need the package
needs_numba_cuda = pytest.mark.skipif(not NUMBA_CUDA, reason=NO_NUMBA_CUDA)


@needs_numba_cuda
@pytest.mark.parametrize("simulator", ["0", "1"])
def test_no_gpu_says_so_and_exits_0(tmp_path, simulator):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, NUMBA_ENABLE_CUDASIM=simulator)
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no NVIDIA GPU here" in proc.stdout, proc.stdout
    if simulator == "1":
        assert "simulator" in proc.stdout
    summary = (out / "summary.txt").read_text()
    assert "no NVIDIA GPU here" in summary
    assert sorted(os.listdir(out)) == ["summary.txt"]  # nothing ran


def test_train_compare_logic(tmp_path):
    # the training/comparison part with the CPU backend in the GPU's place, on a micro GPT-2
    import json

    from bench.gpu_check import train_compare
    from numbagpt.config import GPT2Config
    cfg = GPT2Config(max_seq_len=8, vocab_size=37, num_layers=2, num_heads=2, channels=16)
    rc = train_compare(str(tmp_path), steps=8, B=4, T=8, compare_batch=2, compare_steps=3, config=cfg, backend="cpu")
    r = json.loads((tmp_path / "train.json").read_text())
    assert rc == 0 and r["ok_compare"] and r["ok_loss_falls"], r
    assert len(r["losses"]) == 8 and [c["step"] for c in r["compare"]] == [1, 2, 3]
    assert all(c["diff"] == 0.0 for c in r["compare"])  # same backend, same weights, same batches
    from bench.gpu_check import train_figures   # the line summary.txt gets
    assert train_figures(str(tmp_path)).startswith("  train: max |loss cpu - cuda| 0.00e+00 over 3 steps at B=2")


def test_parts_run_under_the_budget(tmp_path):
    from bench.gpu_check import run_part
    summary = []
    assert run_part("ok part", [sys.executable, "-c", "print('hello')"], str(tmp_path), "a.log", 30, summary)
    assert "hello" in (tmp_path / "a.log").read_text()
    assert not run_part("failing part", [sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path), "b.log", 30,
                        summary)
    assert not run_part("slow part", [sys.executable, "-c", "import time; time.sleep(30)"], str(tmp_path), "c.log", 5,
                        summary)
    assert not run_part("late part", [sys.executable, "-c", "pass"], str(tmp_path), "d.log", 2, summary)
    assert [s.split()[2] for s in summary] == ["ok", "FAILED", "FAILED", "SKIPPED"]
    assert "exit 3" in summary[1] and "5 s limit" in summary[2] and not (tmp_path / "d.log").exists()


def test_every_part_names_files_that_exist_and_flags_its_command_takes(tmp_path):
    """The parts a GPU session runs, checked here where there is none: each file a part names exists,
    and each command's parser takes its flags (a flag renamed in a command would otherwise surface
    only on a GPU, in a session that rarely comes)."""
    from bench import bench_cuda, gpu_check
    from numbagpt.cli import profile, test
    parsers = {"bin/test_gpt2": test.build_parser().parse_args, "bin/profile_gpt2": profile.build_parser().parse_args,
               "bench/bench_cuda.py": bench_cuda.parse_args, os.path.abspath(gpu_check.__file__): gpu_check.parse_args}
    parts = gpu_check.parts(gpu_check.parse_args([]), str(tmp_path))
    assert len(parts) == 6
    for name, cmd in ((p.name, p.cmd) for p in parts):
        named = [a for a in cmd[1:] if a.endswith((".py", ".bin", ".txt")) or a.startswith(("bin/", "tests/"))]
        missing = [a for a in named if not os.path.exists(os.path.join(ROOT, a))]
        assert named and not missing, (name, missing)
        script = cmd[1] if cmd[1] != "-m" else None
        if script in parsers:
            parsers[script](cmd[2:])   # argparse exits on a flag it does not take
        else:
            assert cmd[1:4] == ["-m", "pytest", "-q"], name


def test_the_headline_runs_first_and_the_caps_fit_the_budget(tmp_path):
    from bench import gpu_check as g
    parts = g.parts(g.parse_args([]), str(tmp_path))
    assert [p.key for p in parts] == ["train", "tests", "test_gpt2_micro", "test_gpt2_nano", "profile", "matmul"]
    assert "--train-only" in parts[0].cmd and parts[0].log == "train.log"
    assert g.BUDGET_S <= 420   # with its command's timeout, well within a 600 s command and ~15 min of device
    for budget in (g.BUDGET_S, 200, 540):
        caps = [p.cap for p in g.parts(g.parse_args(["--budget", str(budget)]), str(tmp_path))]
        assert sum(caps) <= budget * (1 - g.PROBE_S / g.BUDGET_S) + 1e-6, (budget, caps)
    # a part gets its cap, or more when the parts before it left time; never more than is left
    assert g.part_limit(140, [90, 30], 400) == 280
    assert g.part_limit(140, [90, 30], 200) == 140
    assert g.part_limit(140, [90], 100) == 100
    assert [p.key for p in g.parts(g.parse_args(["--parts", "matmul,test_gpt2"]), str(tmp_path))] == \
        ["test_gpt2_micro", "test_gpt2_nano", "matmul"]


@needs_numba_cuda
def test_main_runs_the_parts_in_order_and_names_those_not_reached(tmp_path, monkeypatch):
    from bench import gpu_check as g
    monkeypatch.setattr(g, "gpu_status", lambda: (True, "a pretend GPU"))
    monkeypatch.setattr(g, "write_device_info", lambda out: None)
    py = sys.executable
    parts = [g.Part("train", "first", [py, "-c", "print('one')"], "a.log", 5),
             g.Part("tests", "second", [py, "-c", "import time; time.sleep(4)"], "b.log", 5),
             g.Part("matmul", "third", [py, "-c", "pass"], "c.log", 5)]
    monkeypatch.setattr(g, "parts", lambda args, out: parts)
    assert g.main([str(tmp_path), "--budget", "8"]) == 1
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in lines if ln.split()[0] in ("first", "second", "third")] == \
        ["first", "second", "third"]
    assert [ln.split()[1] for ln in lines if ln.split()[0] in ("first", "second")] == ["ok", "ok"]
    assert "SKIPPED" in next(ln for ln in lines if ln.startswith("third"))
    assert lines[-1].startswith("not reached (time budget spent): matmul") and "--parts matmul" in lines[-1]
    assert not (tmp_path / "c.log").exists()


@pytest.mark.parametrize("module", ["numba", "numba_cuda", "numbagpt"])
def test_a_missing_module_is_an_error_not_no_gpu(tmp_path, module):
    # sys.modules[m] = None: `import m` raises ModuleNotFoundError, as where m is not installed
    code = (f"import sys, runpy; sys.modules[{module!r}] = None; sys.argv = ['gpu_check.py', {str(tmp_path)!r}]; "
            f"runpy.run_path({os.path.join(ROOT, 'bench', 'gpu_check.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no NVIDIA GPU" not in proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and err.startswith("gpu_check: error: Python module") and module in err, err
    assert "pip install" in err


@needs_numba_cuda
def test_the_script_takes_help_and_passes_arguments_on(tmp_path):
    sh = os.path.join(ROOT, "bench", "gpu_check.sh")
    env = dict(os.environ, PYTHON=sys.executable, NUMBA_ENABLE_CUDASIM="0")

    def run(*args):
        return subprocess.run(["bash", sh, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
    proc = run("--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--budget" in proc.stdout, proc.stdout + proc.stderr
    proc = run(str(tmp_path / "a"), "--no-such-flag")   # refused, not dropped
    assert proc.returncode == 2 and "--no-such-flag" in proc.stderr, proc.stdout + proc.stderr
    proc = run("b", "--budget", "100", "--parts", "tests")   # no GPU here: says so; OUT_DIR relative to the cwd
    assert proc.returncode == 0 and "no NVIDIA GPU here" in proc.stdout, proc.stdout + proc.stderr
    assert (tmp_path / "b" / "summary.txt").exists()


# collect as if a GPU were present: simulator.gpu_present() is True, RUN_HERE set, the simulator off
_AS_ON_A_GPU = ("import sys; sys.path[:0] = ['tests', '.']; import simulator; simulator.gpu_present = lambda: True; "
                "simulator.RUN_HERE = True; import pytest; sys.exit(pytest.main(sys.argv[1:]))")


def _collect(args, simulator="0", gpu=False):
    cmd = [sys.executable] + (["-c", _AS_ON_A_GPU] if gpu else ["-m", "pytest"])
    proc = subprocess.run(cmd + ["--collect-only", "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, NUMBA_ENABLE_CUDASIM=simulator))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {line.strip() for line in proc.stdout.splitlines() if "::" in line}


@needs_numba_cuda
def test_the_device_tests_are_every_cuda_case_and_nothing_else(tmp_path):
    """The tests part on a GPU runs every case the simulator run has (the `cuda` cases of the kernel test
    files tests/test_cpu_*.py, and tests/test_cuda_*.py), and none the run without a GPU has already."""
    import ast
    from bench import gpu_check as g
    cmd = next(c for part in g.parts(g.parse_args([]), str(tmp_path)) for c in part if isinstance(c, list)
               and "pytest" in c)
    args = cmd[cmd.index("pytest") + 1:]
    files = [a for a in args if a.startswith("tests/")]
    on_gpu = _collect(args, gpu=True)
    tree = ast.parse(open(os.path.join(ROOT, "tests", "test_cuda_kernels.py")).read())
    kernel_files = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                        and getattr(n.targets[0], "id", None) == "KERNEL_FILES")
    want_files = set(kernel_files) | {"test_cuda_kernels.py", "test_cuda_model.py", "test_cuda_flash_attention.py",
                                      "test_cuda_generate.py"}
    assert want_files <= {os.path.basename(i.split("::")[0]) for i in on_gpu}, sorted(on_gpu)
    every = sorted(os.path.relpath(f, ROOT) for pattern in ("test_cpu_*.py", "test_cuda_*.py")
                   for f in glob.glob(os.path.join(ROOT, "tests", pattern)))
    without_gpu = _collect(["-q"] + every)   # the normal run's: CPU cases, simulator re-runs, NumPy references
    simulated = {i for i in _collect(["-q"] + every, simulator="1") if not i.endswith("[NOTSET]")}
    missed = simulated - without_gpu - on_gpu
    assert len(simulated - without_gpu) > 50 and not missed, sorted(missed)
    rerun = on_gpu & without_gpu
    assert not rerun, sorted(rerun)
    assert set(files) <= set(every)
