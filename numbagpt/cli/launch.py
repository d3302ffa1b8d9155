"""What bin/* run: a command's main, with a missing dependency told in one line."""
import functools
import importlib
import os
import sys


def launch(prog, module, entry="main"):
    """bin/<prog>: the exit status of numbagpt.cli.<module>.<entry>(). A package numbagpt needs that is
    not installed (numba, xxhash, ...: the clone was not `pip install`ed) is one line naming it, not a
    traceback, wherever the command imports it; a missing module of numbagpt's own is a broken
    checkout, and keeps its traceback. A reader of stdout that left ends the command quietly (141)."""
    try:
        return getattr(importlib.import_module(f"numbagpt.cli.{module}"), entry)()
    except BrokenPipeError:   # the reader of stdout left (`| head`): stop quietly, as Unix tools do
        from numbagpt.cli import stop_quietly
        return stop_quietly()
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "numbagpt":
            raise
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        print(f"{prog}: error: numbagpt needs the module {e.name.split('.')[0]!r}, which is not installed: "
              f"`pip install -e {root}` installs numbagpt's dependencies", file=sys.stderr)
        return 1



# setup.cfg's console scripts (numbagpt-train, ...): the same launch as bin/*'s
train = functools.partial(launch, "train_gpt2", "train")
test = functools.partial(launch, "test_gpt2", "test")
profile = functools.partial(launch, "profile_gpt2", "profile")
prepare = functools.partial(launch, "prepare_data", "prepare")
sample = functools.partial(launch, "sample_gpt2", "sample")
plot = functools.partial(launch, "plot_log", "plot")
evaluate = functools.partial(launch, "eval_gpt2", "eval")
export_hf = functools.partial(launch, "export_hf", "hf", "export_main")
import_hf = functools.partial(launch, "import_hf", "hf", "import_main")
