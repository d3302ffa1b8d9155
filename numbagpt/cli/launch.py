"""What bin/* run: a command's main, with a missing dependency told in one line."""
import importlib
import os
import sys


def launch(prog, module, entry="main", shown=None):
    """bin/<prog>: the exit status of numbagpt.cli.<module>.<entry>(), the command calling itself
    `shown` (its console script's name) or `prog` in what it prints. A package numbagpt needs that is
    not installed (numba, xxhash, ...: the clone was not `pip install`ed) is one line naming it, not a
    traceback, wherever the command imports it; a missing module of numbagpt's own is a broken
    checkout, and keeps its traceback. A reader of stdout that left ends the command quietly (141)."""
    from numbagpt import cli
    cli._SHOWN[prog] = shown or prog
    try:
        if prog not in SPLIT_OVER_PROCESSES and (refusal := one_process_only(prog)):
            if refusal is not True:
                print(refusal, file=sys.stderr)
            return 1
        return getattr(importlib.import_module(f"numbagpt.cli.{module}"), entry)()
    except BrokenPipeError:   # the reader of stdout left (`| head`): stop quietly, as Unix tools do
        return cli.stop_quietly()
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "numbagpt":
            raise
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        # a clone that was not installed: install it; an installed numbagpt: the module alone
        fix = (f"`pip install -e {root}` installs numbagpt's dependencies"
               if os.path.isfile(os.path.join(root, "setup.cfg")) else f"pip install {e.name.split('.')[0]}")
        print(f"{cli.shown(prog)}: error: numbagpt needs the module {e.name.split('.')[0]!r}, which is not installed: "
              f"{fix}", file=sys.stderr)
        return 1



# The commands that split their work over the processes of an MPI launch (mpiexec, srun).
SPLIT_OVER_PROCESSES = ("train_gpt2", "eval_gpt2")


def one_process_only(prog, environ=None):
    """None for a command started alone (or as the one process of a launch); else the refusal: its
    line on the launcher's rank 0, True (refused, nothing said) on the other ranks. Under
    `mpiexec -n N` every process would run the whole command by itself, N reports or samples."""
    from numbagpt import launcher
    env = os.environ if environ is None else environ
    sizes = {k: v for k, v in launcher.launcher_sizes(env).items() if k in launcher.STEP_SIZE_VARS and v > 1}
    if not sizes:
        return None
    if launcher.launcher_rank(env) != 0:
        return True
    name, n = next(iter(sizes.items()))
    from numbagpt.cli import shown
    return (f"{shown(prog)}: error: it runs as one process, and the launcher started {n} ({name}={n}): each would run "
            f"the whole command alone; run it without mpiexec/srun ({' and '.join(SPLIT_OVER_PROCESSES)} split "
            f"their work over processes)")
