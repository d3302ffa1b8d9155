"""What bin/* run: a command's main, with a missing dependency told in one line."""
import importlib
import os
import signal
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
        # a clone that was not installed: install it; an installed numbagpt: the module alone
        fix = (f"`pip install -e {root}` installs numbagpt's dependencies"
               if os.path.isfile(os.path.join(root, "setup.cfg")) else f"pip install {e.name.split('.')[0]}")
        print(f"{prog}: error: numbagpt needs the module {e.name.split('.')[0]!r}, which is not installed: "
              f"{fix}", file=sys.stderr)
        return 1


def console_script(prog, module, entry="main"):
    """setup.cfg's console script for bin/<prog> (numbagpt-train, ...): as bin/*'s stubs, a Ctrl-C
    while Python loads the command is one line (the command takes over the signal), then launch."""
    def run():
        signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write(f"{prog}: interrupted\n"), os._exit(130)))
        return launch(prog, module, entry)
    run.__name__ = prog
    return run


train = console_script("train_gpt2", "train")
test = console_script("test_gpt2", "test")
profile = console_script("profile_gpt2", "profile")
prepare = console_script("prepare_data", "prepare")
sample = console_script("sample_gpt2", "sample")
plot = console_script("plot_log", "plot")
evaluate = console_script("eval_gpt2", "eval")
export_hf = console_script("export_hf", "hf", "export_main")
import_hf = console_script("import_hf", "hf", "import_main")
