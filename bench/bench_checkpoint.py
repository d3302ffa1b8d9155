"""The cost of a checkpoint's checksums: a d12 (124M) checkpoint written as bin/train_gpt2 writes it
(model file, train state with AdamW m and v, DONE with the files' XXH3-64 hashes), against the hashing
the writer does as the bytes go out, and against the check a resume makes (read back and hash).

    python bench/bench_checkpoint.py [--model d12] [--rounds 3] [--dir DIR]

Prints the best of the rounds of each and the ratios.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import xxhash

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import timing  # noqa: E402  (bench/timing.py)
from numbagpt import dist  # noqa: E402
from numbagpt.config import PRESETS  # noqa: E402
from numbagpt.files.data import DataLoader  # noqa: E402
from numbagpt.files.formats import write_shard  # noqa: E402
from numbagpt.model import GPT2  # noqa: E402
from numbagpt.train import checkpoint  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d12", choices=list(PRESETS), help="preset (default d12)")
    p.add_argument("--rounds", type=timing.positive_int, default=3, help="rounds (default 3): the best of them")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = p.parse_args()
    if args.dir is not None and not os.path.isdir(args.dir):
        p.error(f"--dir {args.dir}: no such directory")
    root = tempfile.mkdtemp(dir=args.dir)
    try:
        model = GPT2.from_preset(args.model)
        model._ensure_optimizer()
        write_shard(os.path.join(root, "shard.bin"), list(range(1000)))
        loader = DataLoader(os.path.join(root, "shard.bin"), 1, 8)
        world = dist.init_world()
        writes, crcs, hashes = [], [], []
        arrays = [model.parameters_host(), model.m_flat, model.v_flat]   # the bytes the files hold
        for r in range(args.rounds):
            out = os.path.join(root, f"run{r}")
            os.makedirs(out)
            t0 = time.perf_counter()
            checkpoint.save(out, 1, model, world, loader, seed=0)
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            checkpoint.check_checksums(out, 1)   # reads every file back and hashes it
            crcs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for a in arrays:
                xxhash.xxh3_64(a).hexdigest()
            hashes.append(time.perf_counter() - t0)
            shutil.rmtree(out)
        w, c, h = min(writes), min(crcs), min(hashes)
        print(f"{args.model}: checkpoint write (model + state + DONE, hashes included) {w:.2f} s; "
              f"the hashing in it {h:.2f} s = {100 * h / w:.1f}% of the write; a resume's check of the "
              f"checkpoint (read back + hash) {c:.2f} s")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
