"""bin/profile_gpt2: where a GPT-2 training step's time, FLOPs and memory go, kernel by kernel.

Builds a model (a preset from scratch, or a model file), draws seeded random tokens, runs warm-up steps
(the first compiles every kernel; its time is reported apart), then timed steps — forward, zero_grad,
backward, grad norm, AdamW update: numbagpt.train.step.train_step, as bin/train_gpt2 takes it — with every
kernel call timed through numbagpt.profiler.TimingBackend. numbagpt.report then builds the report from
those measurements (`build_report`; its JSON schema is REPORT_KEYS) and this prints it (`format_report`).
docs/profiling.md explains the columns and the formulas.
"""

from numbagpt.cli import (HelpFormatter, Parser, add_device, add_flag, add_memory_check, add_precision, check_flags,
                          model_config, open_model, run_command, shown, use_threads)
from numbagpt.flags import NONNEG, POSITIVE
from numbagpt.config import DESCRIPTOR_HELP
from numbagpt.layout import memory_estimate


def build_parser():
    p = Parser(
        prog="profile_gpt2",
        description="Profile GPT-2 training steps kernel by kernel: calls, time, FLOPs, bytes, GFLOP/s, "
                    "GB/s per kernel and phase; step time, tokens/s, model FLOPs per token, MFU against a "
                    "measured peak; and memory (parameters, gradients, AdamW state, activations) next to "
                    "the measured RSS. See docs/profiling.md.",
        formatter_class=HelpFormatter)
    p.add_argument("-e", "--model", default="tiny",
                   help="model .bin file or train_gpt2 output directory "
                        "(its newest model_*.bin: the final model, else the latest checkpoint's), or a "
                        "descriptor built from scratch: " + DESCRIPTOR_HELP)
    add_flag(p, "-b", "--batch-size", type=int, check=POSITIVE, default=8, help="B, sequences per step")
    add_flag(p, "-t", "--seq-len", type=int, check=POSITIVE, default=256, help="T, tokens per sequence")
    add_flag(p, "-r", "--recompute", type=int, choices=(0, 1, 2), default=1,
                   help="as train_gpt2's: 0 stores every activation; 1 recomputes GELU's output in the backward "
                        "pass; 2 also the layernorm outputs")
    add_precision(p)
    add_device(p)
    add_flag(p, "--omp-threads", type=int, check=POSITIVE, default=None, help="Numba threads (default: all cores)")
    add_flag(p, "--steps", type=int, check=POSITIVE, default=3, help="timed training steps")
    add_flag(p, "--warmup", type=int, check=POSITIVE, default=1,
                   help="warm-up steps before the timed ones (>= 1: the first compiles)")
    add_flag(p, "--baseline-steps", type=int, check=NONNEG, default=None,
                   help="untimed steps (the proxy passes every call straight through), interleaved with the "
                        "timed ones, to measure the proxy's cost and the unprofiled tokens/s (default: "
                        "--steps; 0: none)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the whole profile as JSON here")
    add_flag(p, "--peak-gflops", type=float, check=POSITIVE, default=None,
                   help="peak GFLOP/s for the MFU (default: measured with numbagpt's own matmul_forward, "
                        "matmul_forward_bf16 under --precision bf16)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip the peak calibration matmuls (no MFU unless --peak-gflops is given)")
    add_flag(p, "--seed", type=int, check=NONNEG, default=1337, help="seed of the init and of the random tokens")
    add_memory_check(p)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags("profile_gpt2", parser, args)
    return run_command("profile_gpt2", run, args, errors=(ValueError, OSError, RuntimeError, ImportError),
                       compiles=True)


def run(args):
    import numba

    from numbagpt import profiler
    from numbagpt.backend import get_backend
    from numbagpt.files import atomic
    from numbagpt.layout import format_memory

    if args.json:
        atomic.check_writable(args.json, "--json")
    if args.omp_threads is not None:
        use_threads(args.omp_threads)
    rss_before = profiler.process_memory()["rss_bytes"]

    proxy = profiler.TimingBackend(get_backend(args.device))

    source = model_config(args.model)   # read (and a run directory's checkpoint verified) once
    config = source[0]
    est = memory_estimate(config, args.batch_size, args.seq_len, recompute=args.recompute)
    print(f"{shown('profile_gpt2')}: {args.model} ({config.describe()}), B={args.batch_size} T={args.seq_len}, "
          f"device {args.device}, precision {args.precision}, {numba.get_num_threads()} threads")
    saved = memory_estimate(config, args.batch_size, args.seq_len)["total"] - est["total"]
    print(format_memory(est) + (f" | -r {args.recompute}: {saved / 2**20:.1f} MiB less than -r 0" if args.recompute
                                else ""))
    model = open_model(args.model, source, proxy, args.batch_size, args.seq_len, recompute=args.recompute,
                       seed=args.seed, memory_check=not args.no_memory_check, precision=args.precision)
    print(f"warm-up {args.warmup} step(s), the first compiles; then {args.steps} timed step(s)...", flush=True)

    report = profiler.profile_model(
        model, proxy, args.batch_size, args.seq_len, steps=args.steps, warmup=args.warmup,
        baseline_steps=args.baseline_steps, seed=args.seed, peak_gflops=args.peak_gflops,
        calibrate=not args.no_calibrate, model_name=args.model, rss_before=rss_before)
    print()
    print(profiler.format_report(report))
    if args.json:
        atomic.write_text(args.json, profiler.report_to_json(report) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
