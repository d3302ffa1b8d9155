"""What bin/* run: a command's main, with a missing dependency told in one line."""
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
        # a clone that was not installed: install it; an installed numbagpt: the module alone
        fix = (f"`pip install -e {root}` installs numbagpt's dependencies"
               if os.path.isfile(os.path.join(root, "setup.cfg")) else f"pip install {e.name.split('.')[0]}")
        print(f"{prog}: error: numbagpt needs the module {e.name.split('.')[0]!r}, which is not installed: "
              f"{fix}", file=sys.stderr)
        return 1

