"""Command-line entry points (bin/* are thin wrappers around these)."""
import argparse
import os
import sys

from numbagpt.launcher import other_rank


def reserve_threads(n):
    """Let Numba run `n` threads (--omp-threads), even more than the cores it sees.

    Numba reads NUMBA_NUM_THREADS once, at import, and it caps set_num_threads. So raise it before
    numba is imported; when numba already is (a command called in-process), leave it: changing it
    then makes Numba refuse to compile anything."""
    if n is not None and "numba" not in sys.modules:
        try:   # a value Numba could not use is replaced all the same: --omp-threads decides
            current = int(os.environ.get("NUMBA_NUM_THREADS", "0"))
        except ValueError:
            current = 0
        os.environ["NUMBA_NUM_THREADS"] = str(max(n, current))


def use_threads(n):
    """numba.set_num_threads(n), within the cap; returns the number of threads in use."""
    import numba
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    return numba.get_num_threads()


# The names the commands go by in what they print (`prog: error: ...`, --help's usage): bin/'s
# (train_gpt2), or, started as a console script, that script's (numbagpt-train): launch() records it.
_SHOWN = {}


def shown(prog):
    """The name the command bin/`prog` calls itself: the name it was started as."""
    return _SHOWN.get(prog, prog)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line that names the flag (no usage block). `prog` is
    bin/'s name of the command (shown as the name it was started as). Under mpiexec every rank parses
    the same flags: rank 0 alone says the error or prints --help."""

    def __init__(self, prog, **kwargs):
        super().__init__(prog=shown(prog), **kwargs)

    def error(self, message):
        self.exit(2, None if other_rank() else f"{self.prog}: error: {message} (--help lists the flags)\n")

    def print_help(self, file=None):
        if not other_rank():
            super().print_help(file)


def flag_error(text):
    """Exit with status 1 and `text` (a flag's one-line error) on stderr, said by rank 0 alone under
    mpiexec (before MPI starts: every rank finds the same)."""
    raise SystemExit(1 if other_rank() else text)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None) or the help already says it
    ("(default ...": a help may say "default" of something else)."""

    def _get_help_string(self, action):
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def error_text(e):
    """The one-line message for an error a command reports (its str, with a hint where one helps)."""
    text = str(e)
    if "Number of threads specified must be > 0" in text and "NUMBA_NUM_THREADS" in os.environ:
        text += f" (NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']!r}: unset it, or --omp-threads N)"
    if isinstance(e, RuntimeError) and "no locator available" in text:
        text += ("; Numba can write its compiled-kernel cache neither next to numbagpt's sources nor in "
                 "the user cache directory: set NUMBA_CACHE_DIR to a writable directory")
    return text


def world_size_error(prog, e):
    """Say a dist.WorldSizeError once: rank 0 says what every rank found; a rank's own trouble (its
    Python lacks mpi4py) that rank says, naming itself."""
    prog = shown(prog)
    if e.alone:
        print(f"{prog}: error: {f'rank {e.rank}: ' if e.rank else ''}{e}", file=sys.stderr)
    elif e.rank == 0:
        print(f"{prog}: error: {e}", file=sys.stderr)


def stop_quietly():
    """Exit status 141 (128 + SIGPIPE), as a Unix tool's whose reader left (`| head`), with stdout
    sent to /dev/null so that the flush at exit raises no second error."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def take_interrupts():
    """From here on Ctrl-C raises KeyboardInterrupt (bin/*'s stubs exit quietly on it while Python
    loads): after NumPy is loaded, which turns an interrupt during its import into a bogus
    "bad install" ImportError."""
    import signal

    import numpy  # noqa: F401
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_command(prog, run, args, errors=(ValueError, OSError, RuntimeError), compiles=False):
    """Exit status of run(args), with the commands' error handling: `prog: error: ...` in one line
    (status 1) for the errors a user can act on, `prog: interrupted` (130) on Ctrl-C. Numba may
    run --omp-threads threads (reserve_threads) before anything imports it. `compiles`: a command that
    runs the kernels: a line on stderr while they compile long (sample_gpt2 compiles before its text
    starts on stdout, so that the line does not land inside it)."""
    prog = shown(prog)
    reserve_threads(getattr(args, "omp_threads", None))
    try:
        take_interrupts()
        if not compiles:
            return run(args)
        from numbagpt.compiling import compile_notice
        with compile_notice(lambda text: print(f"{prog}: {text}", file=sys.stderr, flush=True)):
            return run(args)
    except BrokenPipeError:   # the reader left (`| head`): launch() ends the process quietly
        raise
    except errors as e:
        print(f"{prog}: error: {error_text(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


PRECISION_HELP = ("bf16: every matmul rounds its two operands to bfloat16 and sums in float32 (PyTorch "
                  "autocast's matmuls); everything else stays float32")


def add_precision(parser, help=PRECISION_HELP):
    """llm.c's --precision: fp32 (the default) or bf16."""
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help=help)


def add_device(parser):
    """--device: the backend that runs the kernels (cpu, the default, or cuda)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="backend that runs the kernels")


def add_flag(parser, *names, check=None, **kwargs):
    """parser.add_argument(*names, **kwargs), and the flag's Check (numbagpt.flags) kept on the parser
    for check_flags: every int or float flag of a command is checked there, a float also for being
    finite."""
    action = parser.add_argument(*names, **kwargs)
    if not hasattr(parser, "flag_checks"):
        parser.flag_checks = {}
    parser.flag_checks[action.dest] = check
    return action


def numeric_flags(parser):
    """The parser's int and float flags: [(argparse action, its Check or None)]."""
    checks = getattr(parser, "flag_checks", {})
    return [(a, checks.get(a.dest)) for a in parser._actions if a.option_strings and a.type in (int, float)]


def check_flags(prog, parser, args):
    """Exit with `prog: error: FLAG must be ..., got VALUE` (one line) unless every int or float flag
    of `args` is finite and within its Check."""
    from numbagpt.flags import check_value
    for action, check in numeric_flags(parser):
        try:
            check_value(action.option_strings[0], getattr(args, action.dest), action.type, check)
        except ValueError as e:
            flag_error(f"{shown(prog)}: error: {e}")


def add_memory_check(parser):
    """--no-memory-check: the commands refuse, in one line, buffers larger than the memory available."""
    parser.add_argument("--no-memory-check", action="store_true",
                        help="allocate even when the memory estimate exceeds the memory available")


def model_config(spec, vocab_size=None):
    """(config, path): what -e names, from the file header alone (nothing allocated): a descriptor
    (path None: built from scratch, with GPT-2's vocabulary or `vocab_size`), a model file, or a
    train_gpt2 output directory's model (checkpoint.resolve_model)."""
    from numbagpt.config import GPT2_VOCAB, is_descriptor, preset
    from numbagpt.files import formats
    from numbagpt.train.checkpoint import resolve_model

    if is_descriptor(spec):
        return preset(spec, vocab_size or GPT2_VOCAB), None
    path = resolve_model(spec, "-e")
    return formats.read_model_header(path)[0], path


def open_model(spec, source, backend, B, T, *, recompute=0, seed=1337, memory_check=True, precision="fp32"):
    """The model -e `spec` names on `backend`, from `source` = model_config(spec) (a descriptor's
    config, initialised with `seed`; or a file's), for training steps on batches of (B, T): T checked
    against maxT, and the memory its buffers take against what the device has
    (memory.check_model_fits) before anything is allocated."""
    from numbagpt.files import formats
    from numbagpt.memory import check_model_fits
    from numbagpt.model import GPT2

    config, path = source
    if T > config.max_seq_len:
        raise ValueError(f"-t/--seq-len {T} exceeds the model's max_seq_len {config.max_seq_len}")
    if memory_check:  # before anything big is allocated (on the device, for a GPU)
        check_model_fits(config, B, T, backend, spec, recompute=recompute)
    model = GPT2(config, backend=backend, recompute=recompute, precision=precision)
    if path is None:
        model.init_weights(seed)
    else:
        model.load_parameters(formats.read_model(path)[1])
    return model
