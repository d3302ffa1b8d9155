"""bin/test_gpt2: check numbagpt against a PyTorch-dumped state (llm.c's test_gpt2).

Loads a model file and a debug state (x, y, logits, loss, the 16 gradients), runs forward and backward
on x/y and compares, then runs AdamW steps on the same batch (llm.c's test settings) and compares each
step's loss with the expected losses, when given.
"""
import math
import os

from numbagpt.cli import (HelpFormatter, Parser, add_device, add_flag, add_memory_check, add_precision, check_flags,
                          run_command, use_threads)
from numbagpt.flags import NONNEG, POSITIVE

# The tolerances, max absolute difference, in one place. llm.c's own test accepts 1e-2 on logits and
# loss and 2e-2 on gradients; float32 kernels land far closer to PyTorch, so numbagpt asks for that.
TOLERANCES = {"logits": 1e-5, "loss": 1e-5, "grads": 1e-5, "step_loss": 1e-4}
# --precision bf16: the matmuls' operands carry 8 significant bits (a relative rounding of up to 2^-8),
# so logits and gradients are compared relative to the reference's largest magnitude ("max rel diff"),
# the losses absolutely. Measured on the two fixtures: logits 2.0e-3, gradients 6.1e-3 (dln2w), loss
# 1.5e-5, step losses 6.8e-5; the tolerances leave 5x and 3x of room on logits and gradients, as
# llm.c's bf16 test does, and take llm.c's loss tolerance (1e-3: 15x and more).
BF16_TOLERANCES = {"logits": 1e-2, "loss": 1e-3, "grads": 2e-2, "step_loss": 1e-3}
RELATIVE_BF16 = ("logits", "grads")
# llm.c's test_gpt2 optimizer settings (no gradient clipping; its gpt2_update decays every parameter).
ADAMW = dict(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decay_all=True, grad_clip=0.0)


def build_parser():
    tol = TOLERANCES
    p = Parser(
        prog="test_gpt2",
        description="Compare numbagpt with a PyTorch reference: logits and loss (max abs diff <= "
                    f"{tol['logits']:g}, {tol['loss']:g}), each of the 16 gradient tensors (<= {tol['grads']:g}) "
                    f"and the losses of AdamW steps on the same batch (<= {tol['step_loss']:g}; AdamW lr 1e-4, "
                    "betas 0.9/0.999, eps 1e-8, weight decay 0.01). Exits 1 when anything is off.",
        formatter_class=HelpFormatter)
    p.add_argument("-e", "--model", required=True,
                   help="llm.c model file (.bin, v3 or v5), or a train_gpt2 output directory "
                        "(its newest model_*.bin: the final model, else the latest checkpoint's)")
    p.add_argument("-s", "--state", required=True, help="llm.c debug state file (magic 20240327, v2)")
    p.add_argument("--expected-losses", default=None,
                   help="text file, one loss per line: the loss before each AdamW step")
    add_flag(p, "--steps", type=int, check=NONNEG, default=None,
             help="AdamW steps when no losses file is given (default: 10; with --expected-losses, one a loss)")
    add_device(p)
    add_precision(p, help="bf16: the model's matmuls round their operands to bfloat16 (compared under the bf16 "
                          "tolerances: docs/training.md)")
    add_flag(p, "--omp-threads", type=int, check=POSITIVE, default=None, help="Numba threads (default: all cores)")
    add_memory_check(p)
    return p


def compare(name, ours, ref, tol, relative=False):
    """Print one row: max abs diff, max diff relative to the reference's max magnitude, OK/NOT OK
    (the first within `tol`, or with `relative` the second)."""
    import numpy as np
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    abs_diff = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = abs_diff / scale if scale > 0 else abs_diff
    ok = bool(np.all(np.isfinite(ours))) and (rel if relative else abs_diff) <= tol
    print(f"{name:<12} max abs diff {abs_diff:.3e}  max rel diff {rel:.3e}  {'OK' if ok else 'NOT OK'}")
    return ok


def read_losses(path):
    try:
        with open(path, encoding="utf-8") as f:
            values = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (--expected-losses: one loss per line)") from None
    try:
        losses = [float(v) for v in values]
    except ValueError as e:
        raise ValueError(f"{path}: expected one float per line ({e})") from None
    if not losses:
        raise ValueError(f"{path}: no losses in it: nothing to compare (--expected-losses)")
    bad = [v for v in losses if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{path}: an expected loss is {bad[0]}: the file must hold finite losses")
    return losses


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags("test_gpt2", parser, args)
    return run_command("test_gpt2", run, args, compiles=True)


def run(args):
    from numbagpt.backend import get_backend
    from numbagpt.files import formats
    from numbagpt.model import GPT2
    from numbagpt.train.checkpoint import resolve_model

    if args.omp_threads is not None:
        use_threads(args.omp_threads)
    if args.expected_losses and args.steps is not None:
        raise ValueError(f"--steps {args.steps} and --expected-losses: give one (the losses file sets the steps, "
                         f"one a loss)")
    path = resolve_model(args.model, "-e")
    expected = read_losses(args.expected_losses) if args.expected_losses else None
    backend = get_backend(args.device)
    if not args.no_memory_check:  # before anything big is allocated (on the device, for a GPU)
        check_memory(path, args.state, backend)
    model = GPT2.from_file(path, backend=backend, precision=args.precision)
    cfg = model.config
    state = formats.read_debug_state(args.state, cfg)
    B, T = state["B"], state["T"]
    print(f"model {path}: {cfg.describe()} | state {args.state}: B={B} T={T} | device {args.device} | "
          f"precision {args.precision}")
    x, y = state["x"].reshape(B, T), state["y"].reshape(B, T)
    tol = BF16_TOLERANCES if args.precision == "bf16" else TOLERANCES
    rel = {key: args.precision == "bf16" and key in RELATIVE_BF16 for key in tol}
    okay = compare_state(model, state, x, y, tol, rel)
    okay &= compare_steps(model, x, y, expected, 10 if args.steps is None else args.steps, tol)
    print(f"overall okay: {int(bool(okay))}")
    return 0 if okay else 1


def check_memory(path, state_path, backend):
    """Refuse, in one line, a model and state whose step would not fit the memory (numbagpt.memory)."""
    from numbagpt import memory
    from numbagpt.files import formats
    from numbagpt.layout import memory_estimate
    cfg = formats.read_model_header(path)[0]
    B, T, _ = formats.read_debug_state_header(state_path, cfg)   # its length first: B and T are the file's
    # the model's buffers for the state's batch, and the state itself (logits and gradients)
    state_bytes = os.path.getsize(state_path)
    memory.check_fits(lambda b: memory_estimate(cfg, b, T)["total"] + state_bytes, B,
                      f"{path} with the state's B={B} T={T}", backend=backend,
                      hint="the state fixes B and T: a machine with more memory, or a state dumped with a smaller B")


def compare_state(model, state, x, y, tol, rel):
    """One forward and backward of the state's batch against its logits, loss and gradients."""
    import numpy as np

    from numbagpt.layout import PARAMETER_NAMES
    B, T, V = state["B"], state["T"], model.config.vocab_size
    loss = model.forward(x, y)
    logits = model.logits_host()[:, :, :V]
    okay = compare("logits", logits, state["logits"].reshape(B, T, V), tol["logits"], rel["logits"])
    okay &= compare("loss", [loss], [state["loss"]], tol["loss"])
    model.zero_grad()
    model.backward()
    ours = model.param_layout.views(model.grads_host())
    refs = model.param_layout.views(np.asarray(state["grads"], dtype=np.float32))
    for name in PARAMETER_NAMES:
        okay &= compare(f"d{name}", ours[name], refs[name], tol["grads"], rel["grads"])
    return okay


def compare_steps(model, x, y, expected, steps, tol):
    """Training steps on the state's batch (llm.c's AdamW settings), their losses against `expected`
    (a list) where given, else `steps` of them printed."""
    import numpy as np

    from numbagpt.train.step import train_step
    okay = True
    for step in range(len(expected) if expected is not None else steps):
        loss = train_step(model, [(x, y)], t=step + 1, **ADAMW).loss
        line = f"step {step:2d}: loss {loss:.6f}"
        if expected is not None:
            diff = abs(loss - expected[step])
            ok = np.isfinite(loss) and diff <= tol["step_loss"]
            okay &= bool(ok)
            line += f"  expected {expected[step]:.6f}  diff {diff:.3e}  {'OK' if ok else 'NOT OK'}"
        print(line)
    if expected is None:
        print("(no --expected-losses file: step losses printed, not compared)")
    return okay


if __name__ == "__main__":
    raise SystemExit(main())
