"""The one command to run on a machine with an NVIDIA GPU: does the CUDA backend work there, and how fast?

    bash bench/gpu_check.sh [OUT_DIR]          (or: python bench/gpu_check.py [--out OUT_DIR])

Runs, within 5 minutes in all (each part has a cap, and a part gets at most what is left of the 300 s;
a part that finds nothing left is reported SKIPPED), and writes every output to OUT_DIR (default
gpu_check-<date>), with summary.txt listing each part's result and time:
 1. nvidia-smi and Numba's `cuda.detect()`                                      device.txt
 2. the CUDA kernel and model tests on the real device (not the simulator):
    tests/test_cuda_kernels.py, test_cuda_model.py with `-k "not under_simulator"`  kernel_tests.log
 3. bin/test_gpt2 --device cuda on the committed PyTorch fixtures (micro, nano)  test_gpt2_*.log
 4. bin/profile_gpt2 --device cuda (d12, B=8, T=1024): the per-kernel profile    profile.log/json
 5. bench/bench_cuda.py --matmul-only: the matmul kernel's GFLOP/s next to cuBLAS (CuPy or torch,
    when installed)                                                              matmul.log
 6. training d12 at B=8 T=1024: the first steps against the CPU backend from the same weights on the
    same batch, then 20 AdamW steps on the GPU on that one fixed batch (the loss must fall); last, as
    the CPU part is the slowest                                                  train.log/json
It installs nothing and downloads nothing (the batches are random tokens from a fixed seed). Without
a GPU it says so, writes that to summary.txt and exits 0. Exit status 1 when any part failed.

The CPU comparison: a d12 step at B=8 T=1024 is 6.5 TFLOP (the profiler's cost model, numbagpt.costs); on a
16-core CPU at the few hundred GFLOP/s numbagpt's CPU matmul reaches, 3 such steps plus the CPU kernels'
first compilation would take most of the 5 minutes. So the comparison runs its own 3 steps at B=2
(--compare-batch; the first 2 rows of the training batch, the same weights), a quarter of the work, and
checks each step's loss on both backends agrees to 1e-3 (float32 over 12 layers; the CPU
accumulates some sums in float64).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LOSS_TOL = 1e-3
BUDGET_S = 300   # the whole check, device probing included


def gpu_status():
    """(True, device name) when a real CUDA GPU is usable, else (False, why not)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False, "NUMBA_ENABLE_CUDASIM is set: that is the simulator, not a GPU"
    try:
        from numba import cuda
        if not cuda.is_available() or len(cuda.gpus) == 0:
            return False, "numba.cuda finds no CUDA driver/GPU (is there an NVIDIA GPU and driver? see nvidia-smi)"
        name = cuda.get_current_device().name
        return True, name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:
        return False, f"{type(e).__name__}: {' '.join(str(e).split())}"


def run_part(name, cmd, out_dir, log, limit, summary):
    """Run `cmd` (list) from the repository root with a time limit, output to out_dir/log."""
    t0 = time.time()
    path = os.path.join(out_dir, log)
    if limit < 5:
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
    """Part 4 (in its own process): training on one fixed batch on `backend` (the loss must fall), and
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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="output directory (default: gpu_check-<date>)")
    ap.add_argument("--steps", type=int, default=20, help="GPU training steps of d12")
    ap.add_argument("--batch", type=int, default=8, help="B of the GPU training steps")
    ap.add_argument("--seq-len", type=int, default=1024, help="T")
    ap.add_argument("--compare-batch", type=int, default=2, help="B of the CPU-vs-GPU comparison")
    ap.add_argument("--compare-steps", type=int, default=3, help="steps compared with the CPU")
    ap.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)  # part 6 in its own process
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = args.out or os.path.join(ROOT, time.strftime("gpu_check-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    if args.train_only:
        return train_compare(out, args.steps, args.batch, args.seq_len, args.compare_batch, args.compare_steps)

    t_start = time.time()
    ok, what = gpu_status()
    summary = [f"numbagpt GPU check, {time.strftime('%Y-%m-%d %H:%M:%S')}, output in {out}"]
    if not ok:
        msg = f"no NVIDIA GPU here: {what}. Nothing to check; run this on a machine with a GPU."
        print(msg)
        with open(os.path.join(out, "summary.txt"), "w") as f:
            f.write("\n".join(summary + [msg]) + "\n")
        return 0
    summary.append(f"device: {what}")
    print(summary[-1], flush=True)
    write_device_info(out)
    t0 = time.time()
    results = [run_part(name, cmd, out, log, min(cap, t_start + BUDGET_S - time.time()), summary)
               for name, cmd, log, cap in parts(args, out)]
    summary.append(f"{sum(results)}/{len(results)} parts ok in {time.time() - t0:.0f} s")
    print(summary[-1])
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write("\n".join(summary) + "\n")
    return 0 if all(results) else 1


def write_device_info(out):
    """out/device.txt: nvidia-smi's table and Numba's cuda.detect()."""
    with open(os.path.join(out, "device.txt"), "w") as f:
        for cmd in (["nvidia-smi"], [sys.executable, "-c", "from numba import cuda; cuda.detect()"]):
            try:
                f.write(subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout + "\n")
            except Exception as e:  # nvidia-smi missing: not fatal, numba found the GPU
                f.write(f"{cmd[0]}: {e}\n")


def parts(args, out):
    """[(name, command, log, cap in s)]: the check's parts in order; the whole run stops at BUDGET_S,
    the heaviest part (d12 training, against the CPU) last."""
    py = sys.executable
    fx = os.path.join("tests", "fixtures")

    def test_gpt2(fixture):
        return [py, "bin/test_gpt2", "--device", "cuda", "-e", f"{fx}/{fixture}_model.bin",
                "-s", f"{fx}/{fixture}_debug_state.bin", "--expected-losses", f"{fx}/{fixture}_losses.txt"]
    return [
        ("CUDA kernel + model tests on the GPU", [py, "-m", "pytest", "-q", "-x", "-k", "not under_simulator",
                                                  "tests/test_cuda_kernels.py", "tests/test_cuda_model.py"],
         "kernel_tests.log", 120),
        ("test_gpt2 --device cuda (micro)", test_gpt2("micro"), "test_gpt2_micro.log", 60),
        ("test_gpt2 --device cuda (nano)", test_gpt2("nano"), "test_gpt2_nano.log", 60),
        ("profile_gpt2 --device cuda (d12)", [py, "bin/profile_gpt2", "--device", "cuda", "-e", "d12",
                                              "-b", str(args.batch), "-t", str(args.seq_len), "--steps", "3",
                                              "--json", os.path.join(out, "profile.json")], "profile.log", 90),
        ("matmul vs cuBLAS", [py, "bench/bench_cuda.py", "--matmul-only", "--shapes", "d12", "tiny"],
         "matmul.log", 60),
        (f"d12 B={args.batch} T={args.seq_len}: {args.steps} steps, CPU compare",
         [py, os.path.abspath(__file__), "--train-only", "--out", out, "--steps", str(args.steps),
          "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--compare-batch",
          str(args.compare_batch), "--compare-steps", str(args.compare_steps)], "train.log", 240),
    ]


if __name__ == "__main__":
    sys.exit(main())
