"""Checkpoints as llm.c writes them, in the output directory:

    model_%08d.bin        the parameters (rank 0; an llm.c v3 model file)
    state_%08d_%05d.bin   AdamW m and v of this rank's parameters, the data loader position (every rank)
    DONE_%08d             empty, written last: the checkpoint is complete

Resume takes the highest step that has a DONE file, so a run killed while writing is never resumed
from a half-written checkpoint.
"""
import os
import re

import numpy as np

from . import formats


def model_path(out_dir, step):
    return os.path.join(out_dir, f"model_{step:08d}.bin")


def state_path(out_dir, step, rank):
    return os.path.join(out_dir, f"state_{step:08d}_{rank:05d}.bin")


def done_path(out_dir, step):
    return os.path.join(out_dir, f"DONE_{step:08d}")


def latest_step(out_dir):
    """The highest step with a DONE file in out_dir, or None."""
    steps = [int(m.group(1)) for name in (os.listdir(out_dir) if os.path.isdir(out_dir) else [])
             if (m := re.fullmatch(r"DONE_(\d{8})", name))]
    return max(steps) if steps else None


def save(out_dir, step, model, world, loader, seed):
    """Every rank writes its state file (the AdamW moments of its optimizer shard); rank 0 the model
    file and then, after all are written, DONE."""
    if world.is_master:
        model.save(model_path(out_dir, step))
    b = model.backend
    pos = loader.get_state()
    formats.write_state(state_path(out_dir, step, world.rank), step, world.size, world.rank,
                        b.to_host(model.m_flat), b.to_host(model.v_flat),
                        rng_state=seed, shard_index=pos["shard_index"], sample_index=pos["sample_index"],
                        shuffle=loader.shuffle, epoch=pos["epoch"], seed=seed)
    world.barrier()
    if world.is_master:
        open(done_path(out_dir, step), "w").close()


def load_state(out_dir, step, model, world, loader):
    """Restore this rank's AdamW moments and data position from the checkpoint at `step`."""
    start, end = model.optimizer_shard
    path = state_path(out_dir, step, world.rank)
    state = formats.read_state(path)
    if state["world_size"] != world.size or state["rank"] != world.rank:
        raise ValueError(f"{path}: written by rank {state['rank']} of {state['world_size']} processes, "
                         f"this is rank {world.rank} of {world.size}; resume with the same number of processes")
    if state["m"].size != end - start:
        raise ValueError(f"{path}: holds AdamW m/v for {state['m'].size:,} parameters, this rank keeps "
                         f"{end - start:,} of {model.num_parameters:,}: a truncated file, or one written "
                         f"with another --zero-stage (resume with the same -z and number of processes)")
    model._ensure_optimizer()
    b = model.backend
    b.copy_to_device(model.m_flat, np.ascontiguousarray(state["m"]))
    b.copy_to_device(model.v_flat, np.ascontiguousarray(state["v"]))
    loader.set_state(state["shard_index"], state["sample_index"], state["epoch"])
    return state["step"]
