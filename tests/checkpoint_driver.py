"""A training run's checkpoint writes without the training: `python checkpoint_driver.py OUT STEPS EVERY`
writes checkpoint.save every EVERY steps and checkpoint.save_final at STEPS, as bin/train_gpt2 does,
for a micro model whose parameters and AdamW moments at step s are `values(s)` and whose spike guard
has seen the losses and norms of `guard_at(s)`. No Numba: it starts
in a fraction of a second, so tests can kill it (NUMBAGPT_TEST_CRASH) at many offsets."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numbagpt.train import checkpoint  # noqa: E402
from numbagpt.config import GPT2Config  # noqa: E402
from numbagpt.files.formats import write_model  # noqa: E402
from numbagpt.layout import num_parameters  # noqa: E402
from numbagpt.train.outlier import SpikeGuard  # noqa: E402

CONFIG = GPT2Config(max_seq_len=8, vocab_size=16, num_layers=1, num_heads=1, channels=8)
N = num_parameters(CONFIG)
RUN = {"B": 2, "T": 8, "seed": 1}


def values(step, which):
    """The parameters (which=0), m (1) or v (2) after `step` steps: distinct for every step."""
    return (np.arange(N, dtype=np.float32) + 1000.0 * step + 0.25 * which).astype(np.float32)


def guard_at(step):
    """A spike guard that has seen `step` steps' losses and norms, distinct for every step."""
    guard = SpikeGuard(loss_z=3.0, grad_z=3.0)
    for i in range(step):
        guard.check(3.0 + 0.01 * i, 1.0 + (i % 7) / 3.0)
    return guard


class World:
    is_master, rank, size = True, 0, 1

    def bcast(self, x):
        return x

    def gather(self, x):
        return [x]

    def barrier(self):
        pass


class Backend:
    def to_host(self, a):
        return a


class Model:
    backend = Backend()

    def __init__(self):
        self.step = 0

    @property
    def m_flat(self):
        return values(self.step, 1)

    @property
    def v_flat(self):
        return values(self.step, 2)

    def save(self, path, dtype="float32"):
        return write_model(path, CONFIG, values(self.step, 0), dtype)


class Loader:
    shuffle = False

    def __init__(self, model):
        self.model = model

    def get_state(self):
        return dict(shard_index=0, sample_index=self.model.step, epoch=0)


def main(out_dir, steps, every):
    os.makedirs(out_dir, exist_ok=True)
    model, world = Model(), World()
    for step in range(1, steps + 1):
        model.step = step
        if step % every == 0:
            checkpoint.save(out_dir, step, model, world, Loader(model), seed=1, run=RUN, guard=guard_at(step))
    checkpoint.save_final(out_dir, steps, model)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
