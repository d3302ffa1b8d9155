"""Numba's on-disk cache of the CPU kernels (numbagpt/cpu/kernel_cache.py): an edit to a file a kernel
imports compiles the kernel anew; nothing changed, the kernel is loaded from the cache."""
import os
import shutil
import subprocess
import sys

import numpy as np

from numbagpt.cpu import kernel_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = os.path.join(ROOT, "numbagpt", "cpu")

# gelu_forward of 1.0 and whether it came from the cache, from the numbagpt copy on PYTHONPATH
PROBE = """
import numpy as np, numbagpt, numbagpt.cpu.gelu as g
assert numbagpt.__file__.startswith({root!r}), numbagpt.__file__
out = np.zeros(1, np.float32)
g.gelu_forward(out, np.ones(1, np.float32), 1)
print(float(out[0]), sum(g.gelu_forward.stats.cache_hits.values()))
"""


def gelu_one(copy):
    env = dict(os.environ, PYTHONPATH=copy, NUMBA_NUM_THREADS="1")
    env.pop("NUMBA_CACHE_DIR", None)   # the cache beside the copy's files
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=copy)], env=env, capture_output=True,
                         text=True, check=True, cwd=copy).stdout.split()
    return float(out[0]), int(out[1])


def test_an_edit_to_an_imported_file_compiles_the_kernel_anew(tmp_path):
    copy = str(tmp_path)
    shutil.copytree(os.path.join(ROOT, "numbagpt"), os.path.join(copy, "numbagpt"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    tanh_gelu = 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (1 + 0.044715)))
    value, hits = gelu_one(copy)
    assert abs(value - tanh_gelu) < 1e-6 and hits == 0
    assert gelu_one(copy) == (value, 1)   # unchanged: loaded from the cache
    # fastmath.py's tanh made to return its negation: gelu.py itself is not touched
    fastmath = os.path.join(copy, "numbagpt", "cpu", "fastmath.py")
    with open(fastmath) as f:
        text = f.read()
    line = "return x if a == _ZERO else (small if a < _TANH_SMALL else big)"
    assert text.count(line) == 1
    with open(fastmath, "w") as f:
        f.write(text.replace(line, line.replace("else (", "else -(")))
    value, hits = gelu_one(copy)
    assert abs(value - (1 - tanh_gelu)) < 1e-6 and hits == 0


def test_imported_files_follow_every_relative_import():
    names = {m: [os.path.basename(f) for f in kernel_cache.imported_files(os.path.join(CPU, f"{m}.py"))]
             for m in ("crossentropy", "gelu", "adamw")}
    # crossentropy imports matmul_bf16 (its bf16 rounding), which imports matmul, which imports the
    # portable kernels and simd; simd imports fastmath inside a function
    assert names == {"crossentropy": ["fastmath.py", "matmul.py", "matmul_bf16.py", "matmul_portable.py", "simd.py"],
                     "gelu": ["fastmath.py"], "adamw": []}
