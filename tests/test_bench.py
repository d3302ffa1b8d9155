"""bench/bench_matmul.py runs every product on every contender (a small shape, so that a change of a
kernel's arguments that breaks the bench fails here), and its bf16 rows are the classifier's."""
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np

from reference import from_bf16_rows, to_bf16_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "bench_matmul.py")


def _bench(*args):
    return subprocess.run([sys.executable, BENCH, "--threads", "1", "--reps", "1", "--block-ms", "1", *args],
                          capture_output=True, text=True, timeout=600)


def test_bench_matmul_times_every_product_of_every_contender():
    """A layer with a bias and an LM head (no bias; in bf16 its dout in bf16 rows, as training's), both
    kernels of each precision that run anywhere, and torch.mm where torch is installed."""
    from numbagpt.cpu import matmul as mm
    from numbagpt.cpu import matmul_bf16 as mb
    torch = importlib.util.find_spec("torch") is not None
    fp32 = list(dict.fromkeys([mm.supported_kernels()[0], "portable"]))
    bf16 = list(dict.fromkeys([mb.supported_kernels()[0], "portable"]))
    r = _bench("--shapes", "24x40x38,lm_head:37x40x96", "--kernels", ",".join(fp32),
               "--bf16-kernels", ",".join(bf16), *(["--torch"] if torch else []))
    assert r.returncode == 0, r.stderr
    number = r"\s+[\d.]+"
    row = number * 2 * (len(fp32) + len(bf16)) + number * len(bf16) + number   # GF/s, ratio; xfp32; BLAS
    for name in ("24x40x38", "lm_head 37x40x96"):
        for op in ("forward", "dinp", "dweight"):
            assert re.search(rf"^{name}\s+\d+\s+\d+\s+\d+ {op}{row}$", r.stdout, re.M), (name, op, r.stdout)
            if torch:   # torch fp32, ours, ratio, /best, torch bf16, then ours and ratio per bf16 kernel
                torch_row = number * 5 + number * 2 * len(bf16)
                assert re.search(rf"^{name}\s+{op}{torch_row}$", r.stdout, re.M), (name, op, r.stdout)


def test_bench_matmul_refuses_an_unknown_shape_in_one_line():
    r = _bench("--shapes", "tiny,7x8")
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip() == "bench_matmul.py: --shapes: '7x8' is neither tiny, d12, seed nor BTxCxOC"


def test_bench_matmul_bf16_rows_are_the_classifiers():
    """The bench's LM-head dout in bf16 rows holds what the classifier writes (tests/reference.py)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        from bench_matmul import bf16_rows
    finally:
        sys.path.pop(0)
    x = np.random.default_rng(0).standard_normal(5 * 14).astype(np.float32)
    x[3] = 2 ** -130   # a subnormal: the rows keep it, as the classifier's rounding does
    np.testing.assert_array_equal(from_bf16_rows(bf16_rows(x, 14), 14), from_bf16_rows(to_bf16_rows(x, 14), 14))
