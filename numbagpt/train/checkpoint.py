"""Checkpoints as llm.c writes them, in the output directory:

    model_%08d.bin        the parameters (rank 0; an llm.c v3 model file, v5 with --save-precision bf16)
    state_%08d_%05d.bin   AdamW m and v of this rank's parameters, the data loader position and the
                          run record (every rank)
    DONE_%08d             written last: the checkpoint is complete; it holds the XXH3-64 hash of
                          every other file of the checkpoint, as JSON (llm.c's DONE is empty: not checked)

Every file is written atomically (numbagpt.files.atomic): it exists complete or not at all. DONE is written
after every rank's files, so a checkpoint with a DONE file has all of them; and a step whose DONE
exists is never written again (the final model of a run that ends on a checkpoint step is that
checkpoint's model file). Resume (`select`) takes the newest checkpoint whose files all verify —
header, length from the header, and the checksums DONE records — and says why it skipped any newer one.
"""
import json
import os
import re
import sys

import xxhash

from ..files import formats
from ..files.atomic import write_bytes
from ..flags import check_path


def model_path(out_dir, step):
    return os.path.join(out_dir, f"model_{step:08d}.bin")


def state_path(out_dir, step, rank):
    return os.path.join(out_dir, f"state_{step:08d}_{rank:05d}.bin")


def done_path(out_dir, step):
    return os.path.join(out_dir, f"DONE_{step:08d}")


def _steps(out_dir, pattern):
    names = os.listdir(out_dir) if out_dir and os.path.isdir(out_dir) else []
    return sorted({int(m.group(1)) for name in names if (m := re.fullmatch(pattern, name))})


def done_steps(out_dir):
    """The steps with a DONE file in out_dir, ascending."""
    return _steps(out_dir, r"DONE_(\d{8})")


def model_steps(out_dir):
    """The steps with a model_*.bin in out_dir, ascending."""
    return _steps(out_dir, r"model_(\d{8})\.bin")


def run_files(out_dir):
    """The names of the files in out_dir that a training run writes (checkpoints, models, DONE)."""
    names = os.listdir(out_dir) if out_dir and os.path.isdir(out_dir) else []
    return sorted(n for n in names if re.fullmatch(r"DONE_\d{8}|model_\d{8}\.bin|state_\d{8}_\d{5}\.bin", n))


HASH = "xxh3_64"   # 8 GB/s on one core, 5x zlib's CRC32: a d12 checkpoint's 1.5 GB in about 0.2 s


def file_hash(path, chunk=1 << 24):
    """The XXH3-64 hash of a file's bytes, as 16 hex digits (`xxh64sum -H3` prints the same)."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def recorded_checksums(out_dir, step):
    """{file name: hash} that DONE_<step> records ({} for an empty DONE: llm.c's, an older numbagpt's)."""
    with open(done_path(out_dir, step), "rb") as f:
        text = f.read()
    if not text:
        return {}
    try:
        return {name: str(h) for name, h in json.loads(text)[HASH].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise formats.FormatError(f"{done_path(out_dir, step)}: not a DONE file (expected empty, or JSON with "
                                  f"the checkpoint's checksums)") from None


def check_checksums(out_dir, step):
    """Raise FormatError naming the first file of the checkpoint whose bytes differ from the hash its
    DONE file recorded (a bit flipped on disk, a file changed after the checkpoint)."""
    for name, expected in sorted(recorded_checksums(out_dir, step).items()):
        if not os.path.isfile(os.path.join(out_dir, name)):
            raise formats.FormatError(f"{os.path.join(out_dir, name)}: no such file (DONE_{step:08d} records "
                                      f"its checksum)")
        actual = file_hash(os.path.join(out_dir, name))
        if actual != expected:
            raise formats.FormatError(f"{os.path.join(out_dir, name)}: checksum mismatch: {HASH} {actual}, "
                                      f"DONE_{step:08d} recorded {expected} (the file changed after it was "
                                      f"written)")


def verify(out_dir, step):
    """The header of rank 0's state file if the checkpoint at `step` is complete and every file of it
    verifies (magic, version, length from the header, step, ranks); else raise FormatError/OSError
    saying which file is wrong. Reads the headers, then every file for its checksum."""
    if not os.path.exists(done_path(out_dir, step)):
        raise FileNotFoundError(f"{done_path(out_dir, step)}: no such file (the checkpoint is incomplete)")
    if not os.path.isfile(done_path(out_dir, step)):
        raise formats.FormatError(f"{done_path(out_dir, step)}: not a file (a DONE file marks a complete checkpoint)")
    formats.read_model_header(model_path(out_dir, step))
    first = formats.read_state_header(state_path(out_dir, step, 0))
    for rank in range(first["world_size"]):
        path = state_path(out_dir, step, rank)
        h = first if rank == 0 else formats.read_state_header(path)
        if (h["step"], h["rank"], h["world_size"]) != (step, rank, first["world_size"]):
            raise formats.FormatError(
                f"{path}: header says step {h['step']}, rank {h['rank']} of {h['world_size']}; expected "
                f"step {step}, rank {rank} of {first['world_size']}")
    check_checksums(out_dir, step)
    return first


def select(out_dir):
    """(step, header, notes): the newest checkpoint in out_dir whose files all verify, rank 0's state
    header, and one line for each newer checkpoint skipped and why. (None, None, notes) if none does."""
    notes = []
    done = done_steps(out_dir)
    for step in reversed(done):
        try:
            return step, verify(out_dir, step), notes
        except (formats.FormatError, OSError) as e:
            notes.append(f"checkpoint at step {step} skipped: {e}")
    return None, None, notes


def final_model(out_dir, step):
    """model_<step>.bin when it is a final model, whole (header and length): no checkpoint's (no DONE,
    no state file of that step: an unfinished or broken checkpoint's model is no final model). Else
    None."""
    if _checkpoint_step(out_dir, step):
        return None
    try:
        formats.read_model_header(model_path(out_dir, step))
    except (formats.FormatError, OSError):
        return None
    return model_path(out_dir, step)


def _checkpoint_step(out_dir, step):
    """Whether a checkpoint of `step` was begun in out_dir: its DONE or a state file of it is there."""
    return os.path.exists(done_path(out_dir, step)) or bool(_steps(out_dir, rf"state_({step:08d})_\d{{5}}\.bin"))


def check_model(out_dir, step):
    """Raise FormatError/OSError saying why model_<step>.bin is no whole model of the run in out_dir:
    a checkpoint's that does not verify (verify: unfinished, or a file of it damaged), or a final
    model (no checkpoint of its step) whose header or length is wrong."""
    if _checkpoint_step(out_dir, step):
        verify(out_dir, step)
    else:
        formats.read_model_header(model_path(out_dir, step))


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


def resolve_model(path, flag="-e", say=_stderr):
    """The model file `path` names (-e of every command): a model file itself, or a train_gpt2 output
    directory's newest model: its newest model_*.bin that is whole (check_model): a checkpoint's that
    verifies (every file its DONE records) or a final model, so the final model of a run that did not
    end on a checkpoint step, not the checkpoint before it. Each newer model passed over is said, one
    line why, to `say` (stderr by default). Where none is whole, the newest model_*.bin, nothing said
    (its reader then says what is wrong)."""
    path = check_path(flag, path)
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such model file or directory ({flag})")
        return path
    steps = model_steps(path)
    if not steps:
        raise FileNotFoundError(f"{path}: no model_*.bin in this directory ({flag} takes a model file or a "
                                f"train_gpt2 output directory)")
    skipped = []
    for step in reversed(steps):
        try:
            check_model(path, step)
        except (formats.FormatError, OSError) as e:
            skipped.append(f"{flag} {path}: model_{step:08d}.bin passed over ({e})")
            continue
        for line in skipped:
            say(f"{line}; taking {model_path(path, step)}")
        return model_path(path, step)
    return model_path(path, steps[-1])


def save(out_dir, step, model, world, loader, seed, run=None, guard=None, dtype="float32"):
    """Every rank writes its state file (the AdamW moments of its optimizer shard, the data position,
    the spike guard's windows: `guard`, a numbagpt.train.outlier.SpikeGuard, the same on every rank); rank 0
    then the model file (`dtype` "float32" or "bfloat16": --save-precision) and, after all are written,
    DONE. The state before the model: a model_<step>.bin with neither a state file nor DONE of its step
    is then a final model (final_model), never the model of a checkpoint a kill or signal cut short.
    With a bfloat16 model file each state file also keeps the float32 parameters of its rank's shard
    (llm.c's master weights), which load_state puts back. `run` is the run record kept in every state
    header. A step whose DONE file exists is not rewritten: returns False then (the same on every
    rank)."""
    done = os.path.exists(done_path(out_dir, step)) if world.is_master else None
    if world.bcast(done):
        return False
    b = model.backend
    master = None
    if dtype != "float32":   # this rank's shard of the float32 parameters
        start, end = model.optimizer_shard
        master = b.to_host(model.params_flat[start:end])
    pos = loader.get_state()
    state_hash = formats.write_state(state_path(out_dir, step, world.rank), step, world.size, world.rank,
                        b.to_host(model.m_flat), b.to_host(model.v_flat),
                        rng_state=seed, shard_index=pos["shard_index"], sample_index=pos["sample_index"],
                        shuffle=loader.shuffle, epoch=pos["epoch"], seed=seed, run=run,
                        detectors=guard.get_state() if guard is not None else None, master=master)
    if world.is_master:
        model_hash = model.save(model_path(out_dir, step), dtype)
    hashes = world.gather((os.path.basename(state_path(out_dir, step, world.rank)), state_hash))
    if world.is_master:   # every rank's state is written: DONE, with the hashes of the bytes written
        hashes.append((os.path.basename(model_path(out_dir, step)), model_hash))
        write_bytes(done_path(out_dir, step), json.dumps({HASH: dict(sorted(hashes))}).encode() + b"\n")
    world.barrier()
    return True


def save_final(out_dir, step, model, dtype="float32"):
    """Write the final model_<step>.bin (rank 0; `dtype` as save's), unless a complete checkpoint at
    `step` already holds it. Returns (path, written)."""
    path = model_path(out_dir, step)
    if os.path.exists(done_path(out_dir, step)):
        return path, False
    model.save(path, dtype)
    return path, True


def discard(out_dir, step):
    """Remove the DONE file of the checkpoint at `step`, making it incomplete: its files will be
    replaced when training reaches that step again."""
    try:
        os.remove(done_path(out_dir, step))
    except FileNotFoundError:
        pass
    except IsADirectoryError:   # not numbagpt's doing: said, not removed with what it may hold
        raise formats.FormatError(f"{done_path(out_dir, step)}: a directory where the checkpoint's DONE file "
                                  f"belongs: remove it, then resume") from None


def resumed_window(state, loader):
    """The loader's window to go on from, of a state whose data position counts windows of the B·T of
    its run record: the same token position in this run's windows (-b/-t changed with --allow-changes:
    B=4 → 8 at one tokens/step read every second window again, or skipped half), rounded down (a
    partial window read again, no token skipped). With --shuffle the windows are another permutation
    then: the same share of the shard's epoch."""
    run = state.get("run") or {}
    was = int(run.get("B", loader.B)) * int(run.get("T", loader.T)) * state["world_size"]
    return state["sample_index"] * was // loader.window


def load_state(out_dir, step, model, world, loader, guard=None):
    """Restore this rank's AdamW moments and data position from the checkpoint at `step`, its shard of
    the float32 parameters when the state keeps them (a bf16 model file: the caller then gathers the
    shards, DataParallel.gather_parameters), and the spike guard's windows into `guard` when given.
    Returns (step, whether the guard's were there: a state of llm.c's or an older numbagpt's has none,
    and the guard starts empty, whether the parameters are the model file's bf16-rounded ones: a bf16
    model file whose state keeps no float32 ones, as llm.c's)."""
    import numpy as np
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
    b = model.backend
    if "master" in state:   # the model file is bf16: this rank's shard of the float32 parameters
        b.copy_to_device(model.params_flat[start:end], np.ascontiguousarray(state["master"]))
    model._ensure_optimizer()
    b.copy_to_device(model.m_flat, np.ascontiguousarray(state["m"]))
    b.copy_to_device(model.v_flat, np.ascontiguousarray(state["v"]))
    sample = resumed_window(state, loader)
    try:
        loader.set_state(state["shard_index"], sample, state["epoch"])
    except ValueError:   # other train data (--allow-changes): the position is past it
        raise ValueError(f"{path}: the checkpoint's position in the train data (shard {state['shard_index']}, "
                         f"token {sample * loader.window:,}) is past the end of the shard given now: resume "
                         f"with the checkpoint's -i, or train a new run on this data from its model "
                         f"(-e {out_dir})") from None
    if guard is not None and state["detectors"]:
        try:
            guard.set_state(state["detectors"])
        except ValueError as e:   # not two detectors of the guard's window
            raise formats.FormatError(f"{path}: the spike guard's windows don't fit: {e}") from None
    version = formats.read_model_header(model_path(out_dir, step))[1]
    rounded = "master" not in state and version == formats.MODEL_VERSION_BF16
    return state["step"], bool(state["detectors"]), rounded
