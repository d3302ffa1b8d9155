"""A kernel launch as data, so launch configurations can be computed without launching.

Every launch function of the CUDA backend (`matmul_forward`, ...) gets its grids, blocks and dynamic
shared memory from a small pure function of the sizes, `<function>_launches(sizes...)`, next to it in the
same module (e.g. `matmul.matmul_forward_launches(B, T, C, OC, has_bias)`). It returns one `Launch` per
kernel launch, in launch order, and the launch function runs them with its arrays. `dev/cuda_resources.py`
calls the same functions for d12 and tiny shapes to check every launch against the GPU's limits
(registers, shared memory, threads, grid size) — no GPU needed.
"""
from typing import NamedTuple

from . import runtime
from .runtime import cdiv


class Launch(NamedTuple):
    """One launch: `kernel[grid, block, 0, shared](*args)`.

    grid: int or a tuple of up to 3 ints; block: threads per block (all kernels use 1-D blocks);
    shared: dynamic shared memory in bytes (0: the kernels' shared arrays are all static);
    param: a size the plan chose that the kernel also takes as an argument (the split-K chunk of a GEMM,
    the row chunk of a column reduction, the partial count of a two-stage reduction), else 0.
    """
    kernel: object
    grid: object
    block: int
    shared: int = 0
    param: int = 0

    def grid3(self):
        """The grid as a 3-tuple (x, y, z)."""
        g = self.grid if isinstance(self.grid, tuple) else (self.grid,)
        return tuple(int(x) for x in g) + (1,) * (3 - len(g))

    def blocks(self):
        """Blocks in the grid (0: nothing to launch)."""
        x, y, z = self.grid3()
        return x * y * z

    def __call__(self, *args):
        """Launch on the default stream; a launch with an empty grid does nothing."""
        if self.blocks() <= 0:
            return
        if self.shared:
            self.kernel[self.grid, self.block, 0, self.shared](*args)
        else:
            self.kernel[self.grid, self.block](*args)


def column_chunks(N, rows_per_chunk=256, max_chunks=64):
    """(rows per chunk, chunks) for a column reduction over N rows split into row chunks, one block
    each: about `rows_per_chunk` rows per block, at most `max_chunks` blocks per column strip (the
    float32 atomics that combine the chunks then stay few). (0, 0) when N ≤ 0."""
    if N <= 0:
        return 0, 0
    nchunks = max(1, min(cdiv(N, rows_per_chunk), max_chunks))
    chunk = cdiv(N, nchunks)
    return chunk, cdiv(N, chunk)


def fill_zero_launch(n):
    """The launch of runtime.fill_zero_kernel over n elements (one thread each, BLOCK_FILL per block);
    its arguments: (array, n)."""
    return Launch(runtime.fill_zero_kernel, cdiv(n, runtime.BLOCK_FILL), runtime.BLOCK_FILL)
