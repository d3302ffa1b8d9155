"""The commands' entry points: bin/<prog> and setup.cfg's console scripts (numbagpt-train, ...) call
these.

They import this module before anything runs, so it imports nothing but what Python has loaded
already (and numbagpt.launcher, which reads the environment): a Ctrl-C while Python then loads the
command (NumPy, Numba) is one line and status 130 (the command takes the signal over once it is
loaded), not importlib's traceback; under mpiexec only rank 0 says it, as every rank gets the signal.
"""
import os
import signal
import sys

from numbagpt.launcher import other_rank


def _script(prog, module, entry="main"):
    """The entry point of bin/`prog`, which runs numbagpt.cli.`module`.`entry`. Started as a console
    script (numbagpt-train), the command calls itself by that name."""
    def interrupted(*_):
        if not other_rank():
            sys.stderr.write(f"{started_as(prog)}: interrupted\n")
        os._exit(130)

    def run():
        signal.signal(signal.SIGINT, interrupted)
        from numbagpt.cli.launch import launch
        return launch(prog, module, entry, shown=started_as(prog))
    run.__name__ = prog
    return run


def started_as(prog):
    """The name the command bin/`prog` was started as: its console script's (numbagpt-*), else `prog`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("numbagpt-") else prog


train = _script("train_gpt2", "train")
test = _script("test_gpt2", "test")
profile = _script("profile_gpt2", "profile")
prepare = _script("prepare_data", "prepare")
sample = _script("sample_gpt2", "sample")
plot = _script("plot_log", "plot")
evaluate = _script("eval_gpt2", "eval")
export_hf = _script("export_hf", "hf", "export_main")
import_hf = _script("import_hf", "hf", "import_main")
