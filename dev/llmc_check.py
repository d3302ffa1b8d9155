#!/usr/bin/env python
"""numbagpt against llm.c's own programs: its C trainer and test, and its PyTorch writer.

    python dev/llmc_check.py ../llm.c      # a checkout of karpathy/llm.c; every check (~2 min on 2 cores)
    python dev/llmc_check.py ../llm.c --only c-train --steps 10 --threads 4

Nothing is downloaded: the checkout is yours to make (GitHub's karpathy/llm.c).

The checks, each on files one side writes and the other reads:
  c-train   llm.c's train_gpt2.c, compiled here (cc -O3 -fopenmp), trains numbagpt's `tiny` model
            (the file numbagpt writes) on numbagpt's built-in Shakespeare shards, with numbagpt's
            GPT-2 tokenizer file for its samples; numbagpt trains the same model on the same batches
            with its own step (train.step.train_step) at llm.c's settings: B=4, T=64, AdamW lr 1e-4,
            betas 0.9/0.999, eps 1e-8, no weight decay, no clipping. Every train loss (steps 0..N) and
            every val loss (5 batches every 10 steps) must agree to --rtol. llm.c shuffles its train
            windows with its own RNG, numbagpt with another (docs/training.md), so the C file is
            compiled with its train loader's shuffle off (one argument of dataloader_init).
  c-test    llm.c's test_gpt2.c, compiled here, reads that model and the debug state that
            dev/pytorch_reference.py writes for it (PyTorch) and compares logits, loss and the 16
            gradients with its own tolerances: every one must say OK. Its step losses are
            hard-coded for OpenAI's GPT-2 124M, so they are compared with the reference's losses
            file instead (--rtol), not with test_gpt2.c's table.
  py-write  llm.c's train_gpt2.py (PyTorch) builds d12 from scratch and writes its model in float32
            and bfloat16, its debug state and its tokenizer; numbagpt reads each model and writes it
            again, byte for byte the same file, writes the same tokenizer file, and bin/test_gpt2
            passes on llm.c's debug state. tiktoken would download GPT-2's BPE: the script is given
            numbagpt's offline encoding in its place (the same ranks; tests/test_tokenizer.py).
  py-data   llm.c's dev/data/data_common.py writes a GPT-2 data shard (numbagpt's built-in train
            tokens), a llama-3 one (uint32 tokens) and a multiple-choice eval file (as its
            hellaswag.py: random examples of 4 completions); numbagpt writes the same GPT-2 shard and
            eval file byte for byte and reads all three back to the same tokens and examples.

c-test and py-write need torch (`pip install torch==2.13.0`): without it they are skipped, saying so.
Exits 1 if a check fails.
"""
import argparse
import contextlib
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# llm.c's C trainer opens these paths relative to where it runs (train_gpt2.c, main).
C_MODEL, C_TOKENIZER = "gpt2_124M.bin", "gpt2_tokenizer.bin"
C_TRAIN = "dev/data/tinyshakespeare/tiny_shakespeare_train.bin"
C_VAL = "dev/data/tinyshakespeare/tiny_shakespeare_val.bin"
C_B, C_T, C_VAL_EVERY, C_VAL_BATCHES = 4, 64, 10, 5
SHUFFLE_ON = "dataloader_init(&train_loader, train_tokens, B, T, 0, 1, 1);"
CHECKS = ("c-train", "c-test", "py-write", "py-data")
NEED_TORCH = ("c-test", "py-write")


def run(cmd, cwd, threads, **kw):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise SystemExit(f"llmc_check: {' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-2000:]}"
                         f"{out.stderr[-2000:]}")
    return out.stdout


def compile_c(llmc, work, name, steps=None):
    """Compile llm.c's NAME.c in `work` (its llmc/ headers from the checkout); train_gpt2.c with its
    train loader's shuffle off and `steps` steps."""
    src = open(os.path.join(llmc, f"{name}.c")).read()
    if name == "train_gpt2":
        if src.count(SHUFFLE_ON) != 1 or src.count("step <= 40;") != 1:
            raise SystemExit(f"llmc_check: {llmc}/train_gpt2.c is not the version this script knows "
                             f"(no '{SHUFFLE_ON}' or 'step <= 40;')")
        src = src.replace(SHUFFLE_ON, SHUFFLE_ON.replace("1, 1);", "1, 0);"))
        src = src.replace("step <= 40;", f"step <= {steps};")
    path = os.path.join(work, f"{name}_check.c")
    with open(path, "w") as f:
        f.write(src)
    exe = os.path.join(work, name)
    cc = os.environ.get("CC", "cc")
    run([cc, "-O3", "-fopenmp", "-I", llmc, "-w", path, "-lm", "-o", exe], work, 1)
    return exe


def setup_run_dir(work):
    """numbagpt's tiny model, built-in Shakespeare shards and GPT-2 tokenizer where llm.c's C looks."""
    from numbagpt import api
    from numbagpt.files.data import ensure_builtin_data
    train, val, tokenizer = ensure_builtin_data(verbose=False)
    os.makedirs(os.path.join(work, os.path.dirname(C_TRAIN)), exist_ok=True)
    for src, dst in ((train, C_TRAIN), (val, C_VAL), (tokenizer, C_TOKENIZER)):
        shutil.copyfile(src, os.path.join(work, dst))
    api.save_model(api.load_model("tiny", seed=1337), os.path.join(work, C_MODEL))


def numbagpt_losses(work, steps, precision="fp32"):
    """(train losses of steps 0..steps, val losses every C_VAL_EVERY) as llm.c's train_gpt2.c main."""
    from numbagpt.files.data import DataLoader
    from numbagpt.model import GPT2
    from numbagpt.train.step import train_step
    model = GPT2.from_file(os.path.join(work, C_MODEL), precision=precision)
    train = DataLoader(os.path.join(work, C_TRAIN), C_B, C_T)
    val = DataLoader(os.path.join(work, C_VAL), C_B, C_T)
    train_losses, val_losses = [], []
    for step in range(steps + 1):
        if step % C_VAL_EVERY == 0:
            val.set_state(0, 0, 0)
            val_losses.append(np.mean([model.forward(*val.next_batch()) for _ in range(C_VAL_BATCHES)]))
        r = train_step(model, [train.next_batch()], lr=1e-4, t=step + 1, grad_clip=0.0, beta2=0.999)
        train_losses.append(r.loss)
    return np.array(train_losses), np.array(val_losses)


def same_bytes(a, b):
    """Whether files a and b hold the same bytes."""
    with open(a, "rb") as f, open(b, "rb") as g:
        return f.read() == g.read()


def worst(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b) / np.abs(b)))


def check_c_train(llmc, work, args):
    exe = compile_c(llmc, work, "train_gpt2", args.steps)
    out = run([exe], work, args.threads)
    c_train = np.array([float(x) for x in re.findall(r"step \d+: train loss ([-\d.]+)", out)])
    c_val = np.array([float(x) for x in re.findall(r"val loss ([-\d.]+)", out)])
    nb_train, nb_val = numbagpt_losses(work, args.steps)
    if len(c_train) != len(nb_train) or len(c_val) != len(nb_val):
        return False, f"llm.c printed {len(c_train)} train and {len(c_val)} val losses, numbagpt has " \
                      f"{len(nb_train)} and {len(nb_val)}"
    bf16_train, _ = numbagpt_losses(work, args.steps, "bf16")
    dt, dv = worst(nb_train, c_train), worst(nb_val, c_val)
    return max(dt, dv) <= args.rtol, (
        f"{len(c_train)} train losses {c_train[0]:.6f} -> {c_train[-1]:.6f}: max rel diff {dt:.1e}; "
        f"{len(c_val)} val losses: {dv:.1e} (numbagpt --precision bf16 against it: {worst(bf16_train, c_train):.1e})")


def check_c_test(llmc, work, args):
    exe = compile_c(llmc, work, "test_gpt2")
    steps = 10   # test_gpt2.c runs 10 AdamW steps
    run([sys.executable, os.path.join(HERE, "pytorch_reference.py"), "--model-in", C_MODEL, "-B", str(C_B),
         "-T", str(C_T), "--data", C_TRAIN, "--steps", str(steps), "--threads", str(args.threads), "--out-dir",
         ".", "--name", "ref"], work, args.threads)
    os.replace(os.path.join(work, "ref_debug_state.bin"), os.path.join(work, "gpt2_124M_debug_state.bin"))
    out = run([exe], work, args.threads)
    verdicts = re.findall(r"^(TENSOR OK|TENSOR NOT OK|OK \(LOGITS\)|NOT OK \(LOGITS\)|LOSS OK|LOSS MISMATCH)",
                          out, re.M)
    c_losses = [float(x) for x in re.findall(r"^step \d+: loss ([-\d.]+)", out, re.M)]
    ref_losses = np.loadtxt(os.path.join(work, "ref_losses.txt"))
    bad = [v for v in verdicts if "NOT" in v or "MISMATCH" in v]
    ok = len(verdicts) == 18 and not bad and len(c_losses) == steps and worst(c_losses, ref_losses) <= args.rtol
    return ok, (f"logits, loss, 16 gradients: {len(verdicts) - len(bad)} of 18 OK by test_gpt2.c; "
                f"its {len(c_losses)} step losses against the reference's: max rel diff "
                f"{worst(c_losses, ref_losses) if len(c_losses) == steps else float('nan'):.1e}")


def llmc_py(llmc, work, threads):
    """Run llm.c's train_gpt2.py (d12 from scratch, one batch) in `work`, tiktoken's GPT-2 given offline."""
    import tiktoken
    import torch

    from numbagpt.files.data import ensure_builtin_data
    from numbagpt.files.tokenizer import gpt2_encoding
    torch.set_num_threads(threads)
    tiktoken.get_encoding = lambda name: gpt2_encoding()
    train = ensure_builtin_data(verbose=False)[0]
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = ["train_gpt2.py", "--model", "d12", "--input_bin", train, "--batch_size", str(C_B),
                "--sequence_length", str(C_T), "--total_batch_size", str(C_B * C_T), "--num_iterations", "1",
                "--device", "cpu"]
    os.chdir(work)
    try:   # its printing goes to a log beside its files
        with open("train_gpt2_py.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            runpy.run_path(os.path.join(llmc, "train_gpt2.py"), run_name="__main__")
    finally:
        sys.argv = argv
        os.chdir(cwd)


def check_py_write(llmc, work, args):
    from numbagpt import api
    from numbagpt.files.data import ensure_builtin_data
    py = os.path.join(work, "py")
    os.makedirs(py, exist_ok=True)
    llmc_py(llmc, py, args.threads)
    same = {}
    for name, precision in (("gpt2_d12.bin", "fp32"), ("gpt2_d12_bf16.bin", "bf16")):
        mine = os.path.join(py, f"numbagpt_{name}")
        api.save_model(api.load_model(os.path.join(py, name)), mine, precision=precision)
        same[name] = same_bytes(mine, os.path.join(py, name))
    tokenizer = ensure_builtin_data(verbose=False)[2]
    same["gpt2_tokenizer.bin"] = same_bytes(tokenizer, os.path.join(py, "gpt2_tokenizer.bin"))
    test = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "test_gpt2"), "-e", "gpt2_d12.bin",
                           "-s", "gpt2_d12_debug_state.bin", "--steps", "0", "--omp-threads", str(args.threads)],
                          cwd=py, capture_output=True, text=True)
    ok = all(same.values()) and test.returncode == 0
    return ok, (", ".join(f"{k} {'the same bytes' if v else 'DIFFERENT'}" for k, v in same.items()) +
                f"; numbagpt's test_gpt2 on llm.c's debug state: {'passed' if test.returncode == 0 else 'FAILED'}")


def llmc_data_common(llmc):
    """llm.c's dev/data/data_common.py as a module (its download helper's imports stubbed if absent)."""
    import importlib.util
    import types
    for name in ("requests", "tqdm"):   # used only by download_file, which is not called
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.SimpleNamespace(tqdm=None)
    spec = importlib.util.spec_from_file_location("data_common", os.path.join(llmc, "dev", "data", "data_common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_py_data(llmc, work, args):
    from numbagpt.files.data import ensure_builtin_data
    from numbagpt.files.formats import open_shard, write_shard
    from numbagpt.hellaswag import read_eval_file, write_eval_file
    common = llmc_data_common(llmc)
    out = os.path.join(work, "data")
    os.makedirs(out, exist_ok=True)

    def path(name):
        return os.path.join(out, name)
    rng = np.random.default_rng(0)
    gpt2 = np.array(open_shard(ensure_builtin_data(verbose=False)[0]))
    llama = rng.integers(0, 128256, 100_000)
    examples = [(int(rng.integers(4)), rng.integers(0, 50257, rng.integers(1, 40)).tolist(),
                 [rng.integers(0, 50257, rng.integers(1, 20)).tolist() for _ in range(4)]) for _ in range(300)]
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):   # its "writing ..." lines
        common.write_datafile(path("llmc_gpt2.bin"), gpt2.tolist())
        common.write_datafile(path("llmc_llama3.bin"), llama.tolist(), model_desc="llama-3")
        common.write_evalfile(path("llmc_eval.bin"), [dict(label=label, ctx_tokens=context, ending_tokens=endings)
                                                      for label, context, endings in examples])
    write_shard(path("numbagpt_gpt2.bin"), gpt2)
    write_eval_file(path("numbagpt_eval.bin"), examples)
    read = read_eval_file(path("llmc_eval.bin"))
    checks = [
        (f"GPT-2 shard ({gpt2.size:,} tokens): the same bytes",
         same_bytes(path("llmc_gpt2.bin"), path("numbagpt_gpt2.bin"))),
        ("read back", np.array_equal(open_shard(path("llmc_gpt2.bin")), gpt2)),
        ("llama-3 shard read back", np.array_equal(open_shard(path("llmc_llama3.bin")), llama)),
        (f"eval file ({len(examples)} examples): the same bytes",
         same_bytes(path("llmc_eval.bin"), path("numbagpt_eval.bin"))),
        ("read back", [(e.label, e.context, e.completions) for e in read] == examples),
    ]
    return all(ok for _, ok in checks), ", ".join(f"{what} {'yes' if ok else 'NO'}" for what, ok in checks)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("llmc", help="a checkout of karpathy/llm.c")
    p.add_argument("--only", choices=CHECKS, action="append", help="run this check (repeatable; default: all)")
    p.add_argument("--steps", type=int, default=40, help="c-train: train steps after step 0 (default 40, llm.c's)")
    p.add_argument("--threads", type=int, default=2, help="OpenMP, Numba and torch threads (default 2)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of the losses (default 1e-5)")
    p.add_argument("--keep", help="work in this directory and keep it (default: a temporary one)")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.llmc, "train_gpt2.c")):
        p.error(f"{args.llmc}: no train_gpt2.c there (give a checkout of karpathy/llm.c)")
    if args.steps < 1 or args.threads < 1 or args.rtol <= 0:
        p.error("--steps and --threads must be positive, --rtol above 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:   # torch before Numba starts its thread pool (c-test and py-write run PyTorch)
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    work = args.keep or tempfile.mkdtemp(prefix="llmc_check_")
    os.makedirs(work, exist_ok=True)
    llmc = os.path.abspath(args.llmc)
    failed = 0
    try:
        setup_run_dir(work)
        for check in args.only or CHECKS:
            if check in NEED_TORCH and not have_torch:
                print(f"{check:9} skip needs torch (pip install torch==2.13.0)", flush=True)
                continue
            ok, said = globals()[f"check_{check.replace('-', '_')}"](llmc, work, args)
            print(f"{check:9} {'ok  ' if ok else 'FAIL'} {said}", flush=True)
            failed += not ok
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
