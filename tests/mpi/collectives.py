"""Run under mpiexec by tests/test_dist.py: numbagpt.dist's buffer collectives on R ranks.

    mpiexec -n R python tests/mpi/collectives.py cpu     NumPy buffers, handed to MPI in place
    mpiexec -n R python tests/mpi/collectives.py cuda    device arrays staged through host memory
                                                         (NUMBA_ENABLE_CUDASIM=1 runs it without a GPU)

Every rank checks its own results and prints `rank R ok`; any failure raises (mpi4py's
`python -m mpi4py` aborts the job, and the test sees the non-zero exit). Last, DataParallel's
broadcast of a model's parameters from rank 0.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from numbagpt.dist import DataParallel, init_world, partition  # noqa: E402
from numbagpt.backend import get_backend  # noqa: E402
from numbagpt.config import GPT2Config  # noqa: E402
from numbagpt.model import GPT2  # noqa: E402


def main(device):
    world = init_world()
    R, r = world.size, world.rank
    backend = get_backend(device)
    world.setup_device(backend)
    if device == "cuda":
        assert not world.cuda_aware, "the simulator's arrays can't go to MPI directly"
    N = 1001  # not a multiple of R: shards of different sizes
    base = np.arange(N, dtype=np.float32)

    buf = backend.to_device(base * (r + 1))
    world.allreduce_sum_(buf, backend)
    np.testing.assert_array_equal(backend.to_host(buf), base * (R * (R + 1) // 2))

    shards = partition(N, R)
    start, end = shards[r]
    buf = backend.to_device(base * (r + 1))
    world.reduce_scatter_sum_(buf, backend, shards)
    np.testing.assert_array_equal(backend.to_host(buf)[start:end], base[start:end] * (R * (R + 1) // 2))

    host = np.full(N, -1.0, dtype=np.float32)
    host[start:end] = r
    buf = backend.to_device(host)
    world.allgather_(buf, backend, shards)
    expect = np.concatenate([np.full(e - s, k, dtype=np.float32) for k, (s, e) in enumerate(shards)])
    np.testing.assert_array_equal(backend.to_host(buf), expect)

    buf = backend.to_device(base + r)
    world.broadcast_(buf, backend)
    np.testing.assert_array_equal(backend.to_host(buf), base)

    assert world.mean(float(r)) == (R - 1) / 2
    assert world.bcast(r) == 0

    # a model whose ranks loaded different weights (another seed each) starts from rank 0's
    model = GPT2(GPT2Config(8, 40, 1, 2, 8), backend=device)
    model.init_weights(r)
    rank0 = GPT2(GPT2Config(8, 40, 1, 2, 8))
    rank0.init_weights(0)
    assert r == 0 or not np.array_equal(model.parameters_host(), rank0.parameters_host())
    DataParallel(world, model).broadcast_parameters()
    np.testing.assert_array_equal(model.parameters_host(), rank0.parameters_host())
    print(f"rank {r} of {R} ok ({device}: {world.transport})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
