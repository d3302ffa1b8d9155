"""The lab's driver, as llm.c's dev/cuda/: each dev/<family>.py lists numbered variants of its kernels
(1: the baseline the production kernel replaced, the last: the production kernel, imported from
numbagpt.cpu), and `main` validates every chosen variant against the NumPy float64 reference with
the tests' own check (tests/harness.py: reference, tolerances, `+=` semantics, padding) before it
times them side by side as the benchmarks time (bench/timing.py: the median of --reps rounds, the
variants in turn, each a block of back-to-back calls of about --block-ms timed as one; an
accumulated output keeps accumulating within a block: no kernel's time depends on the values).
Until December 2026 the lab took the best of single calls (--rounds); the findings in the families'
docstrings from before then were measured so.

    python dev/<family>.py [KERNEL] [N ...] [--shapes NAME,...] [--threads 2] [--reps 5] [--block-ms 25] [--clock cpu]

KERNEL is one of the file's kernels (default: all of them); N picks variants by number (default: all);
--shapes names the family's shapes (its help lists them).
A variant that fails its check is reported and not timed.
"""
import argparse
import inspect
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# numbagpt, tests/harness.py + reference.py, bench/timing.py
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "bench")]

import numpy as np  # noqa: E402
import timing  # noqa: E402

from harness import check  # noqa: E402


class Kernel:
    """One kernel of the contract and its variants [(label, fn)], fn with the contract's positional
    arguments. `args(shape, rng)` gives the arguments by name, outputs as sizes (the harness fills
    them: NaN for written, random for accumulated) or arrays (initial content). `only`: the outputs
    checked, when the variants promise less than the contract (scratch buffers left unwritten)."""

    def __init__(self, name, variants, args, only=None):
        self.name, self.variants, self.args, self.only = name, variants, args, only


def bind(fn, like, *extra):
    """fn with its trailing tuning arguments `extra` fixed, with the signature of `like` (the production
    kernel: check() reads the argument names from it)."""
    n = len(inspect.signature(fn).parameters) - len(extra)   # a default of `like`'s beyond them is not fn's

    def variant(*args):
        return fn(*args[:n], *extra)
    variant.__wrapped__ = like
    return variant


def under(spec, fn):
    """fn, a variant of an earlier contract of the kernel (tests/harness.py's SPECS[spec], e.g.
    "attention_forward_v1": the (T, T) buffers flash attention removed): checked against that spec's
    reference and timed with its own arguments (a kernel's `args` then gives the union of both)."""
    def variant(*args):
        return fn(*args)
    variant.__wrapped__ = getattr(fn, "py_func", fn)
    variant.lab_spec = spec
    return variant


def _spec(kernel, fn):
    return getattr(fn, "lab_spec", kernel.name)


def validate(kernel, fn, args):
    """The tests' check of `fn` as the CPU backend's `kernel`; returns None or the failure's first line."""
    spec = _spec(kernel, fn)
    backend = types.SimpleNamespace(NAME="cpu", to_device=lambda a: np.array(a, copy=True), to_host=np.asarray,
                                    synchronize=lambda: None, **{spec: fn})
    try:
        check(backend, spec, only=kernel.only if spec == kernel.name else None, **args)
    except AssertionError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        return " | ".join(lines[:4]) or "assertion failed"
    return None


def _buffers(kernel, fn, args):
    """Positional arguments for timing: sizes become zeroed buffers."""
    from harness import SPECS
    written, accumulated, updated, _ = SPECS[_spec(kernel, fn)]
    params = inspect.signature(fn).parameters
    call = []
    for name in params:
        if name not in args and params[name].default is not inspect.Parameter.empty:
            break   # trailing options (crossentropy's dlogits_bf16) keep their defaults
        v = args[name]
        if name in written + accumulated and isinstance(v, (int, np.integer)):
            v = np.zeros(v, np.float32)
        elif isinstance(v, np.ndarray):
            v = np.ascontiguousarray(v).reshape(-1).copy()
        call.append(v)
    return call


def race(kernel, chosen, args, median_of, reps):
    """The time (s) of a call of each chosen variant: median_of (bench/timing.py) over `reps` rounds."""
    calls = [(fn, _buffers(kernel, fn, args)) for _, fn in chosen]
    return median_of([lambda fn=fn, call=call: fn(*call) for fn, call in calls], reps)


def main(doc, kernels, shapes, modes=None):
    """The command line of one family's lab: `kernels` [Kernel], `shapes` {name: shape}; `modes`
    {"--flag": (help, run(threads))}: other measurements of the lab, each run instead of the variants
    when its flag is given. Returns the exit status: 1 when a variant failed its check."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n")[1])
    ap.add_argument("kernel", nargs="?", choices=[k.name for k in kernels], help="one kernel (default: all)")
    ap.add_argument("variants", nargs="*", type=int, help="variant numbers (default: all)")
    ap.add_argument("--shapes", default=",".join(shapes), help="comma list of: " + ", ".join(shapes))
    timing.add_threads(ap)
    timing.add_flags(ap)
    for flag, (text, _) in (modes or {}).items():
        ap.add_argument(flag, action="store_true", help=text)
    a = ap.parse_args()
    for flag, (_, run) in (modes or {}).items():
        if getattr(a, flag.lstrip("-").replace("-", "_")):
            # a mode measures its own way: the variants' flags would be ignored
            ignored = [name for name, given in (("KERNEL", a.kernel), ("N", a.variants)) if given] + \
                [f"--{d.replace('_', '-')}" for d in ("shapes", "reps", "block_ms", "clock")
                 if getattr(a, d) != ap.get_default(d)]
            if ignored:
                ap.error(f"{flag} takes --threads alone, not {', '.join(ignored)}")
            _set_threads(a.threads)
            return run(a.threads)
    unknown = [name for name in a.shapes.split(",") if name not in shapes]
    if unknown:
        ap.error(f"--shapes: {', '.join(map(repr, unknown))}: expected a comma list of {', '.join(shapes)}")
    chosen = [k for k in kernels if not a.kernel or k.name == a.kernel]
    for kernel in chosen:
        missing = [n for n in a.variants if not 1 <= n <= len(kernel.variants)]
        if missing:
            ap.error(f"variant {missing[0]}: {kernel.name} has variants 1 to {len(kernel.variants)}")
    _set_threads(a.threads)
    failed = False
    for shape_name in a.shapes.split(","):
        for kernel in chosen:
            failed |= check_and_race(kernel, shape_name, shapes[shape_name], a)
    return 1 if failed else 0


def _set_threads(n):
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def check_and_race(kernel, shape_name, shape, a):
    """Checks the kernel's variants (all, or the numbers in a.variants) at one shape, then times those
    that passed side by side (bench/timing.py, as a's flags say); prints a line per variant. Returns
    True when one failed its check."""
    numbered = list(enumerate(kernel.variants, 1))
    picked = [(n, v) for n, v in numbered if not a.variants or n in a.variants]
    args = kernel.args(shape, np.random.default_rng(0))
    print(f"--- {kernel.name}, {shape_name} {shape}: {a.threads} threads, {timing.describe(a)}")
    ok = []
    for n, (label, fn) in picked:
        failure = validate(kernel, fn, args)
        if failure:
            print(f"{n:2d} {label:28s} FAILED its check, not timed: {failure}")
        else:
            ok.append((n, (label, fn)))
    if ok:
        times = race(kernel, [v for _, v in ok], args, timing.timers(a), a.reps)
        for (n, (label, _)), t in zip(ok, times):
            print(f"{n:2d} {label:28s} {t * 1e3:9.2f} ms  x{times[0] / t:6.2f} (against {ok[0][0]})  checked")
    return len(ok) < len(picked)
