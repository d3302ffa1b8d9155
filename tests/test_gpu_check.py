"""bench/gpu_check.sh without a GPU: it must say clearly that there is none, write that to its output
directory and exit 0 (on a machine with a GPU it runs the real checks, minutes: not a unit test)."""
import os
import subprocess
import sys

import pytest
from simulator import gpu_present

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(gpu_present(), reason="a GPU is present: run bash bench/gpu_check.sh itself")


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
    for name, cmd, _log, _cap in parts:
        named = [a for a in cmd[1:] if a.endswith((".py", ".bin", ".txt")) or a.startswith(("bin/", "tests/"))]
        missing = [a for a in named if not os.path.exists(os.path.join(ROOT, a))]
        assert named and not missing, (name, missing)
        script = cmd[1] if cmd[1] != "-m" else None
        if script in parsers:
            parsers[script](cmd[2:])   # argparse exits on a flag it does not take
        else:
            assert cmd[1:4] == ["-m", "pytest", "-q"], name
