"""Numba's on-disk cache for the CPU kernels, kept fresh when a file they import changes.

Numba keys a cached kernel on its own file only (its source stamp), but a kernel compiles in what it
calls from other files: crossentropy.py's softmax inlines fastmath.py's exp and matmul_bf16.py's bf16
rounding. Without this module an edit to fastmath.py left crossentropy's old machine code in use
until its own file changed or its __pycache__ was cleared, so a user changing a kernel could test
the old one and see it pass. Here the stamp of every file of numbagpt/cpu also covers the files of
numbagpt/cpu it imports, directly or not (`from .x import y`, `from . import x`, at any depth of
the module): an edit to one of them recompiles the kernels of every file that reaches it, and only
those. The generated GEMM and attention kernels also carry simd.source_tag in their names (their
bytecode does not change with the code they are generated from).

How: a subclass of each of Numba's source-file locators (NUMBA_CACHE_DIR, the __pycache__ beside the
file, the user-wide directory, in Numba's order) that takes the files of this package and adds their
imports' contents to the stamp, put ahead of Numba's own; files elsewhere keep Numba's locators.
"""
import ast
import functools
import hashlib
import os

from numba.core import caching

_HERE = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _imports(path):
    """The files of this package that the module at `path` imports itself (relative imports)."""
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module] if node.module else [a.name for a in node.names])
    files = (os.path.join(_HERE, f"{name.split('.')[0]}.py") for name in names)
    return frozenset(f for f in files if os.path.isfile(f))


def imported_files(path):
    """Every file of this package the module at `path` reaches by its imports, itself excluded."""
    path = os.path.abspath(path)
    seen, todo = set(), [path]
    while todo:
        for f in _imports(todo.pop()) - seen:
            seen.add(f)
            todo.append(f)
    seen.discard(path)
    return sorted(seen)


def imports_stamp(path):
    """(name, sha256) of each file the module at `path` imports: a part of its kernels' source stamp."""
    stamp = []
    for f in imported_files(path):
        with open(f, "rb") as fh:
            stamp.append((os.path.basename(f), hashlib.sha256(fh.read()).hexdigest()))
    return tuple(stamp)


class _WithImports:
    """A locator mixin: this package's files only, their stamp widened by their imports'."""
    numbagpt_imports = True

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _HERE:
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return super().get_source_stamp(), imports_stamp(self._py_file)


def _install():
    """Put the widened locators ahead of Numba's (once: a reload of this module adds none)."""
    classes = caching.CacheImpl._locator_classes
    if any(getattr(c, "numbagpt_imports", False) for c in classes):
        return
    ours = [type(f"Imports{c.__name__.lstrip('_')}", (_WithImports, c), {"__module__": __name__})
            for c in classes   # the plain files' locators: numbagpt is never imported from a zip
            if issubclass(c, caching._SourceFileBackedLocatorMixin) and "Zip" not in c.__name__]
    classes[:0] = ours


_install()
