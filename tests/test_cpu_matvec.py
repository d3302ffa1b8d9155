"""matvec_forward (the one-position matmul of generation) against the NumPy float64 reference (tests/harness.py)."""
import numpy as np
import pytest

from harness import cases, check, rnd


# M rows (decoding B sequences), C and OC not multiples of the 4-row blocks or of the SIMD width
# on CUDA: C = 70, the lanes loop over the row more than once; OC = 9, a block with idle warps
@pytest.mark.parametrize("backend,M,C,OC,bias", cases(cpu=[(1, 64, 96, True), (1, 37, 50, False), (3, 24, 7, True),
                                                            (8, 130, 257, True)],
                                                       cuda=[(1, 40, 9, True), (3, 70, 5, False)]))
def test_matvec_forward(backend, M, C, OC, bias):
    rng = np.random.default_rng(M * OC)
    check(backend, "matvec_forward", out=M * OC, inp=rnd(rng, M, C), weight=rnd(rng, OC, C),
          bias=rnd(rng, OC) if bias else None, M=M, C=C, OC=OC)
