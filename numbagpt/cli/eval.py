"""bin/eval_gpt2: a model's HellaSwag accuracy (acc_norm, as llm.c computes it), over MPI ranks if launched so."""
import sys
import time

from numbagpt.cli import (HelpFormatter, Parser, add_device, add_flag, add_memory_check, add_precision,
                          check_flags, reserve_threads, shown, take_interrupts, use_threads, world_size_error)
from numbagpt.flags import POSITIVE

DESCRIPTION = """\
Score a model on a multiple-choice eval file in llm.c's format (HellaSwag: llm.c's
dev/data/hellaswag.py writes the 10,042-example val split as hellaswag_val.bin). Each completion
is scored by the mean loss of its tokens after the context; the lowest wins (acc_norm).
Under mpirun/srun the examples are split over the processes."""
PROG = "eval_gpt2"


def build_parser():
    p = Parser(prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("-e", "--model", default="out",
                   help="model .bin file, or a train_gpt2 output directory "
                        "(its newest model_*.bin: the final model, else the latest checkpoint's)")
    p.add_argument("--hellaswag", required=True, metavar="FILE",
                   help="eval file (magic 20240522), e.g. hellaswag_val.bin")
    add_flag(p, "-b", "--batch-size", type=int, check=POSITIVE, default=32,
             help="sequences per forward: whole examples of 4 sequences each, at least one example (so 1-7 "
                  "run 4 a forward)")
    add_precision(p)
    add_device(p)
    add_flag(p, "--omp-threads", type=int, check=POSITIVE, default=None,
                   help="Numba threads per process (default: NUMBA_NUM_THREADS, all cores unless set, divided "
                        "among the ranks on this host)")
    add_memory_check(p)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(PROG, parser, args)
    reserve_threads(args.omp_threads)
    take_interrupts()
    from numbagpt import dist
    try:
        world = dist.init_world()
    except dist.WorldSizeError as e:
        world_size_error(PROG, e)
        return 1
    from numbagpt.compiling import compile_notice
    prog = shown(PROG)
    try:
        with compile_notice(lambda text: print(f"{prog}: {text}", file=sys.stderr, flush=True)):
            return run(args, world)
    except KeyboardInterrupt:   # every rank got the signal: rank 0 says it
        if world.is_master:
            print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader left (`| head`): launch() ends the process quietly
        raise
    except dist.CollectiveError as e:   # every rank refused alike: rank 0 says it, all exit
        if world.is_master:
            print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError) as e:
        if world.size > 1:
            world.abort(e, prog=prog)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


def run(args, world):
    import numba

    from numbagpt import dist, hellaswag
    from numbagpt.backend import get_backend

    use_threads(args.omp_threads or max(1, numba.config.NUMBA_NUM_THREADS // world.local_size))
    backend = get_backend(args.device)
    world.setup_device(backend)  # a GPU: this rank's, before anything is allocated on it
    if world.size > 1:   # rank 0 compiles into Numba's shared cache, the others then load (as train_gpt2)
        from numbagpt.train.step import warm_up
        with world.rank0_first():
            warm_up(backend, args.precision, training=False)
    say = (lambda *a, **k: print(*a, **k, flush=True)) if world.is_master else (lambda *a, **k: None)
    # every rank alike: a file every rank refuses is said once, by rank 0
    examples, path, model = dist.check_together(
        world, lambda: load(args, world, backend, lambda line: say(line, file=sys.stderr)))
    say(f"model {path} | {model.config.describe()} | precision {args.precision} | {len(examples)} examples | "
        f"{world.size} processes",
        file=sys.stderr)
    t0 = time.perf_counter()

    def progress(done, total):
        say(f"\revaluating: {done}/{total} examples of rank 0", end="", file=sys.stderr)
    try:
        correct, total = hellaswag.evaluate(model, examples, world, args.batch_size, progress,
                                            source=args.hellaswag)
    except KeyboardInterrupt:
        say(file=sys.stderr)   # the progress line ends before the line that says so
        raise
    say(f"\n{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    say(f"HellaSwag: {correct}/{total} = {correct / total:.4f} acc_norm")
    return 0


def load(args, world, backend, note):
    """(examples, model file, GPT2): the eval file and the model -e names, checked against each other
    and the memory before the parameters are read. `note`: lines about -e's directory."""
    from numbagpt import hellaswag
    from numbagpt.files import formats
    from numbagpt.flags import check_path
    from numbagpt.model import GPT2
    from numbagpt.train.checkpoint import resolve_model

    examples = hellaswag.read_eval_file(check_path("--hellaswag", args.hellaswag))
    path = resolve_model(args.model, say=note)
    cfg = formats.read_model_header(path)[0]   # examples it cannot score: refused before it is read
    hellaswag.check_examples(examples, cfg.vocab_size, cfg.max_seq_len, args.hellaswag)
    if not args.no_memory_check:  # before the parameters are read (on the device, for a GPU)
        check_memory(path, examples, args.batch_size, backend, world)
    return examples, path, GPT2.from_file(path, backend=backend, precision=args.precision)


def check_memory(path, examples, rows_per_batch, backend, world):
    """Refuse, in one line, a model whose largest eval forward would not fit the memory (on every
    rank alike: each checks the whole file's largest batch)."""
    from numbagpt import hellaswag, memory
    from numbagpt.files import formats
    from numbagpt.layout import memory_estimate
    cfg = formats.read_model_header(path)[0]
    T = hellaswag.longest_row(examples, cfg.max_seq_len)
    B = hellaswag.batch_rows(examples, rows_per_batch)
    ranks = world.local_size if memory.host_buffers(backend) else 1

    def need(b):   # -b b: whole examples, at least one, so the rows are not quite b
        return ranks * memory_estimate(cfg, hellaswag.batch_rows(examples, b), T, training=False)["total"]
    memory.check_fits(need, rows_per_batch, f"{path} with {B} rows of up to {T} tokens a forward"
                      + (f" x {ranks} ranks on this host" if ranks > 1 else ""), backend=backend)


if __name__ == "__main__":
    raise SystemExit(main())
