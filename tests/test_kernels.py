"""The contract table (numbagpt/kernels.py) is consistent, and what derives from it agrees with it: the
cost functions take the kernels' arguments, and docs/kernels.md's table shows every kernel with its
signature. (tests/test_backend.py checks both backends' signatures against it; tests/harness.py takes
its outputs and tolerances from it.)"""
import inspect
import os
import re

import pytest

from numbagpt import costs
from numbagpt.kernels import BY_NAME, CONTRACT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("k", CONTRACT, ids=lambda k: k.name)
def test_each_entry_is_consistent(k):
    assert len(set(k.args)) == len(k.args)
    outputs = k.written + k.accumulated + k.updated
    assert outputs and len(set(outputs)) == len(outputs) and set(outputs) <= set(k.args)
    assert k.args[:len(k.outputs)] == tuple(a for a in k.args if a in outputs), "outputs come first"
    assert set(k.defaults) <= set(k.args) and set(k.written_unless_accumulate) <= set(k.accumulated)
    assert k.role in ("training", "bf16", "generation") and k.tol is not None
    tol = k.tol if isinstance(k.tol, dict) else {o: k.tol for o in outputs}
    assert set(outputs) <= set(tol), f"{k.name}: a tolerance per output"


@pytest.mark.parametrize("k", [k for k in CONTRACT if k.role != "generation"], ids=lambda k: k.name)
def test_the_cost_function_takes_the_kernels_arguments(k):
    fn = costs.KERNEL_COSTS[k.name]
    assert tuple(inspect.signature(fn).parameters) == k.args
    assert costs.family(k.name) == k.family


def docs_table():
    """{kernel name: the signature docs/kernels.md shows}, from its contract table's rows."""
    text = open(os.path.join(ROOT, "docs", "kernels.md"), encoding="utf-8").read()
    return {m.group(1): m.group(0) for m in re.finditer(r"`(\w+)\(([^`]*)\)`", text) if m.group(1) in BY_NAME}


def test_docs_show_every_kernel_with_its_signature():
    shown = docs_table()
    assert set(shown) == set(BY_NAME), f"missing from docs/kernels.md: {set(BY_NAME) - set(shown)}"
    wrong = [f"{shown[k.name]} (contract: {k.signature})" for k in CONTRACT if shown[k.name] != f"`{k.signature}`"]
    assert not wrong, "docs/kernels.md disagrees with numbagpt/kernels.py:\n" + "\n".join(wrong)


@pytest.mark.parametrize("accumulate", [True, False])
def test_matmul_backward_counts_its_gradients_twice_only_when_it_accumulates(accumulate):
    """dweight and dbias are read and written (2×) with accumulate, written once without (they were
    counted twice always); dinp accumulates either way."""
    B, T, C, OC = 2, 3, 4, 5
    x = object()   # the cost functions look at sizes only (and at whether dbias is None)
    flops, nbytes = costs.kernel_cost("matmul_backward", x, x, x, x, x, x, B, T, C, OC, accumulate=accumulate)
    reads = B * T * OC + B * T * C + OC * C        # dout, inp, weight
    dinp = 2 * B * T * C                           # += : read and written
    grads = (2 if accumulate else 1) * (OC * C + OC)
    assert (flops, nbytes) == (4 * B * T * C * OC + B * T * OC, 4 * (reads + dinp + grads))
