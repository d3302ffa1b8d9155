"""The one command to run on a machine with an NVIDIA GPU: does the CUDA backend work there, and how fast?

    bash bench/gpu_check.sh [OUT_DIR] [--budget S] [--parts KEY,...]    (or: python bench/gpu_check.py [the same])

Runs its parts in this order, the headline first, within a time budget (--budget, default 360 s: run
it with a command timeout of at least the budget + 60 s), and writes every output to OUT_DIR (default
gpu_check-<date>), with summary.txt listing each part's result and time and, last, the parts it did not
reach. Each part has a cap (CAPS, scaled by --budget/360; they add up to the budget less 15 s for
probing the device) and may also use what the parts before it left unused; a part that finds too little
time left is not started and is reported SKIPPED.
 0. nvidia-smi and Numba's `cuda.detect()`                                      device.txt
 1. train (140 s): d12 at B=8 T=1024, the headline: the first steps against the CPU backend from the
    same weights on the same batch (losses within 1e-3), then 20 AdamW steps on the GPU on that one
    fixed batch (the loss must fall); its figures go into summary.txt        train.log/json
 2. tests (90 s): every CUDA test case on the real device (not the simulator): the `cuda` cases of the
    kernel test files tests/test_cpu_*.py, and tests/test_cuda_*.py (`-k "cuda and not ..."`): not the
    CPU cases, the simulator re-runs, or the tests that need no GPU (NO_DEVICE_FILES, NOT_ON_DEVICE),
    which the run without a GPU has                                             kernel_tests.log
 3. test_gpt2 (30 + 30 s): bin/test_gpt2 --device cuda on the committed PyTorch fixtures (micro, nano)
                                                                                test_gpt2_*.log
 4. profile (35 s): bin/profile_gpt2 --device cuda (d12, B=8, T=1024): the per-kernel profile
                                                                                profile.log/json
 5. matmul (20 s): bench/bench_cuda.py --matmul-only: the matmul kernel's GFLOP/s next to cuBLAS (CuPy or
    torch, when installed)                                                      matmul.log
--parts train,tests reruns only those parts. It installs nothing and downloads nothing (the batches are
random tokens from a fixed seed). Exit status: 0 when every part it ran passed, and without a GPU (it
says so and writes that to summary.txt); 1 when a part failed or was not reached, or the device probe
failed; 2 when a Python module it needs is missing (a broken setup, not a missing GPU: one line says
which and how to install it) or on a bad argument.

The CPU comparison: a d12 step at B=8 T=1024 is 6.5 TFLOP (the profiler's cost model, numbagpt.costs); on a
16-core CPU at the few hundred GFLOP/s numbagpt's CPU matmul reaches, 3 such steps plus the CPU kernels'
first compilation would take most of the budget. So the comparison runs its own 3 steps at B=2
(--compare-batch; the first 2 rows of the training batch, the same weights), a quarter of the work, and
checks each step's loss on both backends agrees to 1e-3 (float32 over 12 layers; the CPU
accumulates some sums in float64).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time
from collections import namedtuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.timing import positive_int  # noqa: E402  (run as a script or imported as bench.gpu_check)

LOSS_TOL = 1e-3
BUDGET_S = 360      # the whole check by default, device probing included (--budget)
PROBE_S = 15        # of the budget, kept for probing the device before the parts
MIN_PART_S = 5      # a part that would get less is not started (SKIPPED)
# each part's cap at the default budget (scaled by --budget / BUDGET_S); they add up to BUDGET_S - PROBE_S
CAPS = {"train": 140, "tests": 90, "test_gpt2_micro": 30, "test_gpt2_nano": 30, "profile": 35, "matmul": 20}
PART_GROUPS = ("train", "tests", "test_gpt2", "profile", "matmul")   # --parts keys, in running order
# the modules the check and its parts import (numba.cuda must come from the numba-cuda package)
REQUIRED = ("numpy", "numba", "numba_cuda", "numba.cuda", "numbagpt.model", "numbagpt.cuda", "numbagpt.cli.test",
            "numbagpt.cli.profile")
PACKAGE = {"numba_cuda": "numba-cuda[cu13]", "numba.cuda": "numba-cuda[cu13]"}   # else the top-level name
# CUDA test files that need no device (they compile to PTX/cubins; the CPU run has them already)
NO_DEVICE_FILES = ("test_cuda_ptx.py", "test_cuda_resources.py")
# in the selected files: the CUDA cases (ids `[cuda-...]`, or a file test_cuda_*), less the tests that
# the run without a GPU has already and that need no device (tests/test_gpu_check.py checks both halves)
NOT_ON_DEVICE = ("under_simulator",                             # the simulator re-runs
                 "compile_without_spills",                      # flash attention's cubins, compiled without a GPU
                 "test_reference_against_finite_differences")   # flash attention's NumPy reference
DEVICE_TESTS_K = "cuda" + "".join(f" and not {name}" for name in NOT_ON_DEVICE)

Part = namedtuple("Part", "key name cmd log cap")


class SetupError(Exception):
    """A module the check needs cannot be imported: a broken setup, not a missing GPU."""


def check_modules():
    """Import REQUIRED; raise SetupError with one line (which module, how to install) on failure."""
    import importlib
    for module in REQUIRED:
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing = getattr(e, "name", None) or module
            package = PACKAGE.get(missing) or PACKAGE.get(missing.split(".")[0]) or missing.split(".")[0]
            raise SetupError(f"Python module {missing!r} cannot be imported by {sys.executable} "
                             f"({type(e).__name__}: {' '.join(str(e).split())}): a broken setup, not a missing "
                             f"GPU; install {package}, e.g. with all numbagpt needs: cd {ROOT} && "
                             f"{sys.executable} -m pip install -e '.[cuda]'") from e


def gpu_status():
    """(True, device name) when a real CUDA GPU is usable, (False, why not) when there is none (no
    driver or device: numba.cuda.is_available() is False, or CudaSupportError). Other errors propagate:
    a GPU whose probe fails is a failure to report, not "no GPU"."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False, "NUMBA_ENABLE_CUDASIM is set: that is the simulator, not a GPU"
    from numba import cuda
    from numba.cuda.cudadrv.error import CudaSupportError
    try:
        if not cuda.is_available() or len(cuda.gpus) == 0:
            return False, "numba.cuda finds no CUDA driver/GPU (is there an NVIDIA GPU and driver? see nvidia-smi)"
        name = cuda.get_current_device().name
    except CudaSupportError as e:
        return False, f"CudaSupportError: {' '.join(str(e).split())}"
    return True, name.decode() if isinstance(name, bytes) else str(name)


def part_limit(cap, later_caps, remaining):
    """Seconds a part may run: its cap, or more when the parts before it left time unused (all that is
    left less the caps of the parts after it), never more than is left of the budget."""
    return min(remaining, max(cap, remaining - sum(later_caps)))


def run_part(name, cmd, out_dir, log, limit, summary):
    """Run `cmd` (list) from the repository root with a time limit, output to out_dir/log."""
    t0 = time.time()
    path = os.path.join(out_dir, log)
    if limit < MIN_PART_S:
        line = f"{name:40s} {'SKIPPED (time budget spent)':28s} {0.0:6.1f} s   {log}"
        print(line, flush=True)
        summary.append(line)
        return False
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    limit = int(limit)
    with open(path, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"FAILED (over its {limit} s limit)"
    line = f"{name:40s} {status:28s} {time.time() - t0:6.1f} s   {log}"
    print(line, flush=True)
    summary.append(line)
    return status == "ok"


def train_compare(out_dir, steps, B, T, compare_batch, compare_steps, seed=1337, config=None, backend="cuda"):
    """Part 1, "train" (in its own process): training on one fixed batch on `backend` (the loss must fall), and
    the first steps against the CPU backend. config: a GPT2Config (default: the d12 preset)."""
    import numpy as np
    from numbagpt.config import preset
    from numbagpt.model import GPT2
    from numbagpt.train.step import train_step

    def step(model, x, y, t, lr=1e-3):
        return train_step(model, [(x, y)], lr=lr, t=t).loss

    rng = np.random.default_rng(seed)
    gpu = GPT2(config or preset("d12"), backend=backend)
    gpu.init_weights(seed)
    V = gpu.config.vocab_size
    tokens = rng.integers(0, V, (B, T + 1)).astype(np.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    init = gpu.parameters_host()
    result = {"B": B, "T": T, "steps": steps, "compare_batch": compare_batch, "compare_steps": compare_steps}

    # the comparison first: GPU and CPU from the same weights, on the first rows of the batch
    xc, yc = x[:compare_batch], y[:compare_batch]
    cpu = GPT2(gpu.config, backend="cpu")
    cpu.load_parameters(init)
    cmp_gpu = GPT2(gpu.config, backend=backend)
    cmp_gpu.load_parameters(init)
    rows = []
    for t in range(1, compare_steps + 1):
        t0 = time.time()
        lc = step(cpu, xc, yc, t)
        t1 = time.time()
        lg = step(cmp_gpu, xc, yc, t)
        cmp_gpu.backend.synchronize()
        rows.append({"step": t, "cpu": lc, "cuda": lg, "diff": abs(lc - lg), "cpu_s": t1 - t0,
                     "cuda_s": time.time() - t1})
        print(f"compare step {t}: cpu {lc:.6f}  cuda {lg:.6f}  |diff| {abs(lc - lg):.2e}  "
              f"(cpu {t1 - t0:.1f} s, cuda {time.time() - t1:.2f} s)", flush=True)
    del cpu, cmp_gpu
    result["compare"] = rows

    losses, times = [], []
    for t in range(1, steps + 1):
        t0 = time.time()
        losses.append(step(gpu, x, y, t))
        gpu.backend.synchronize()
        times.append(time.time() - t0)
        print(f"step {t:2d}: loss {losses[-1]:.6f}  {times[-1] * 1e3:8.1f} ms", flush=True)
    result.update(losses=losses, step_s=times)
    ok_cmp = all(r["diff"] <= LOSS_TOL for r in rows)
    ok_fall = bool(np.all(np.isfinite(losses))) and losses[-1] < losses[0] - 0.1
    steady = sorted(times[2:])[len(times[2:]) // 2] if len(times) > 2 else float("nan")
    result.update(ok_compare=ok_cmp, ok_loss_falls=ok_fall, median_step_s=steady,
                  tokens_per_s=B * T / steady if steady == steady else None)
    print(f"losses agree with the CPU (<= {LOSS_TOL}): {ok_cmp}; loss falls "
          f"{losses[0]:.3f} -> {losses[-1]:.3f}: {ok_fall}; median step {steady * 1e3:.1f} ms", flush=True)
    with open(os.path.join(out_dir, "train.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0 if ok_cmp and ok_fall else 1


def train_figures(out_dir):
    """One line of train.json's figures for summary.txt, or None when the part wrote none."""
    try:
        with open(os.path.join(out_dir, "train.json")) as f:
            r = json.load(f)
        diff = max(c["diff"] for c in r["compare"]) if r["compare"] else float("nan")
        tps = r.get("tokens_per_s")
        return (f"  train: max |loss cpu - cuda| {diff:.2e} over {len(r['compare'])} steps at B={r['compare_batch']}"
                f"; loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} in {r['steps']} steps; median step "
                f"{r['median_step_s'] * 1e3:.1f} ms" + (f", {tps:,.0f} tokens/s" if tps else ""))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", default=None, metavar="OUT_DIR", help="the same as --out")
    ap.add_argument("--out", default=None, help="output directory (default: gpu_check-<date>)")
    ap.add_argument("--budget", type=float, default=BUDGET_S,
                    help=f"seconds for the whole check (default {BUDGET_S}); the parts' caps scale with it")
    ap.add_argument("--parts", default=",".join(PART_GROUPS), metavar="KEY,...",
                    help=f"the parts to run, of {','.join(PART_GROUPS)} (default: all; they run in that order)")
    ap.add_argument("--steps", type=positive_int, default=20, help="GPU training steps of d12 (default: 20)")
    ap.add_argument("--batch", type=positive_int, default=8, help="B of the GPU training steps (default: 8)")
    ap.add_argument("--seq-len", type=positive_int, default=1024, help="T (default: 1024)")
    ap.add_argument("--compare-batch", type=positive_int, default=2,
                    help="B of the CPU-vs-GPU comparison (default: 2)")
    ap.add_argument("--compare-steps", type=positive_int, default=3,
                    help="steps compared with the CPU (default: 3)")
    ap.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)  # part 1 in its own process
    args = ap.parse_args(argv)
    if args.out_dir is not None and args.out is not None and args.out_dir != args.out:
        ap.error(f"two output directories: {args.out_dir} and --out {args.out}")
    args.out = args.out or args.out_dir or None
    keys = [k for k in args.parts.split(",") if k]
    unknown = [k for k in keys if k not in PART_GROUPS]
    if unknown or not keys:
        ap.error(f"--parts: {','.join(unknown) or 'none'}: not among {','.join(PART_GROUPS)}")
    args.parts = keys
    if args.budget <= 0:
        ap.error("--budget must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = os.path.abspath(args.out or os.path.join(ROOT, time.strftime("gpu_check-%Y%m%d-%H%M%S")))
    os.makedirs(out, exist_ok=True)
    if args.train_only:
        return train_compare(out, args.steps, args.batch, args.seq_len, args.compare_batch, args.compare_steps)

    t_start = time.time()
    summary = [f"numbagpt GPU check, {time.strftime('%Y-%m-%d %H:%M:%S')}, output in {out}"]

    def finish(code, *lines):
        summary.extend(lines)
        with open(os.path.join(out, "summary.txt"), "w") as f:
            f.write("\n".join(summary) + "\n")
        return code

    try:
        check_modules()
    except SetupError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return finish(2, f"error: {e}")
    try:
        ok, what = gpu_status()
    except Exception as e:  # a driver/device that is there but fails: not "no GPU"
        msg = f"the GPU probe failed: {type(e).__name__}: {' '.join(str(e).split())}"
        print(f"gpu_check: error: {msg}", file=sys.stderr)
        return finish(1, f"error: {msg}")
    if not ok:
        msg = f"no NVIDIA GPU here: {what}. Nothing to check; run this on a machine with a GPU."
        print(msg)
        return finish(0, msg)
    summary.append(f"device: {what}; budget {args.budget:.0f} s; parts: {','.join(args.parts)}")
    print(summary[-1], flush=True)
    write_device_info(out)
    todo = parts(args, out)
    results, not_reached = [], []
    t0 = time.time()
    for i, p in enumerate(todo):
        remaining = t_start + args.budget - time.time()
        limit = part_limit(p.cap, [q.cap for q in todo[i + 1:]], remaining)
        if limit < MIN_PART_S:
            not_reached.append(p.key)
        results.append(run_part(p.name, p.cmd, out, p.log, limit, summary))
        figures = train_figures(out) if p.key == "train" else None
        if figures:
            summary.append(figures)
            print(figures, flush=True)
    summary.append(f"{sum(results)}/{len(results)} parts ok in {time.time() - t0:.0f} s "
                   f"(budget {args.budget:.0f} s)")
    if not_reached:
        groups = ",".join(dict.fromkeys(group(k) for k in not_reached))
        summary.append(f"not reached (time budget spent): {', '.join(not_reached)}; to run them: "
                       f"bash bench/gpu_check.sh OUT_DIR --parts {groups}")
    else:
        summary.append("every part was reached")
    print("\n".join(summary[-2:]))
    return finish(0 if all(results) else 1)


def write_device_info(out):
    """out/device.txt: nvidia-smi's table and Numba's cuda.detect()."""
    with open(os.path.join(out, "device.txt"), "w") as f:
        for cmd in (["nvidia-smi"], [sys.executable, "-c", "from numba import cuda; cuda.detect()"]):
            try:
                f.write(subprocess.run(cmd, capture_output=True, text=True, timeout=12).stdout + "\n")
            except Exception as e:  # nvidia-smi missing: not fatal, numba found the GPU
                f.write(f"{cmd[0]}: {e}\n")


def device_test_files():
    """The test files with CUDA cases, relative to ROOT: the kernel test files tests/test_cpu_*.py (their
    `cuda` parameters, tests/harness.py) and tests/test_cuda_*.py, less NO_DEVICE_FILES."""
    files = sorted(glob.glob(os.path.join(ROOT, "tests", "test_cpu_*.py"))
                   + glob.glob(os.path.join(ROOT, "tests", "test_cuda_*.py")))
    return [os.path.relpath(f, ROOT) for f in files if os.path.basename(f) not in NO_DEVICE_FILES]


def device_test_command(py=sys.executable, limit=None):
    """The pytest command of part 2: every CUDA test case on the device, none of the CPU's or the
    simulator re-runs. Not -x: one rare GPU session should see every failure."""
    cmd = [py, "-m", "pytest", "-q", "-rfE", "--tb=short", "--durations=10", "-p", "no:cacheprovider"]
    if limit:   # a hanging test dumps its stack to the log before the part is killed
        cmd += ["-o", f"faulthandler_timeout={max(10, int(limit) - 10)}"]
    return cmd + ["-k", DEVICE_TESTS_K] + device_test_files()


def parts(args, out):
    """[Part(key, name, command, log, cap in s)]: the parts of args.parts in running order, the headline
    (d12 training against the CPU) first; caps scaled to args.budget."""
    py = sys.executable
    fx = os.path.join("tests", "fixtures")
    scale = getattr(args, "budget", BUDGET_S) / BUDGET_S
    cap = {k: v * scale for k, v in CAPS.items()}

    def test_gpt2(fixture):
        return [py, "bin/test_gpt2", "--device", "cuda", "-e", f"{fx}/{fixture}_model.bin",
                "-s", f"{fx}/{fixture}_debug_state.bin", "--expected-losses", f"{fx}/{fixture}_losses.txt"]
    every = [
        Part("train", f"d12 B={args.batch} T={args.seq_len}: CPU compare, {args.steps} steps",
             [py, os.path.abspath(__file__), "--train-only", "--out", out, "--steps", str(args.steps),
              "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--compare-batch",
              str(args.compare_batch), "--compare-steps", str(args.compare_steps)], "train.log", cap["train"]),
        Part("tests", "CUDA tests on the GPU", device_test_command(py, cap["tests"]), "kernel_tests.log",
             cap["tests"]),
        Part("test_gpt2_micro", "test_gpt2 --device cuda (micro)", test_gpt2("micro"), "test_gpt2_micro.log",
             cap["test_gpt2_micro"]),
        Part("test_gpt2_nano", "test_gpt2 --device cuda (nano)", test_gpt2("nano"), "test_gpt2_nano.log",
             cap["test_gpt2_nano"]),
        Part("profile", "profile_gpt2 --device cuda (d12)",
             [py, "bin/profile_gpt2", "--device", "cuda", "-e", "d12", "-b", str(args.batch), "-t",
              str(args.seq_len), "--steps", "3", "--json", os.path.join(out, "profile.json")], "profile.log",
             cap["profile"]),
        Part("matmul", "matmul vs cuBLAS", [py, "bench/bench_cuda.py", "--matmul-only", "--shapes", "d12", "tiny"],
             "matmul.log", cap["matmul"]),
    ]
    keys = getattr(args, "parts", PART_GROUPS)
    return [p for p in every if group(p.key) in keys]


def group(key):
    """The --parts key of a part: test_gpt2 for test_gpt2_micro and test_gpt2_nano."""
    return "test_gpt2" if key.startswith("test_gpt2") else key


if __name__ == "__main__":
    sys.exit(main())
