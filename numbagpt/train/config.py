"""TrainConfig: one typed field per bin/train_gpt2 flag, its default, help and check in one place.

    from numbagpt.train import TrainConfig, train
    config = TrainConfig(model="tiny", max_steps=50, output_dir="out_nb")   # checked on creation
    train(config)

bin/train_gpt2's parser is built from these fields (`build_parser`), so the flags, their defaults and
the help text cannot drift from the Python API; `TrainConfig.from_args` turns the parsed flags back
into a config. Every value is checked by `check()` (numbagpt.flags), which raises a ValueError of one
line that names the flag: `-b must be positive, got 0`.
"""
import dataclasses
import numbers
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..config import DESCRIPTOR_HELP
from ..flags import NONNEG, POSITIVE, Check, check_value, flag_of
from ..files.formats import SAVE_PRECISIONS
from ..model import PRECISIONS
from .schedule import SCHEDULES

HELLASWAG_FILE = "dev/data/hellaswag/hellaswag_val.bin"


def option(default, flags, help, check=None, choices=None, metavar=None, group=None):
    """A TrainConfig field: its default and its flag's names, help text, choices and Check."""
    return field(default=default, metadata=dict(flags=flags, help=help, check=check, choices=choices,
                                                metavar=metavar, group=group))


SHAPE_GROUP = ("model shape", "a custom model from scratch: any of these over -e's descriptor (default: its "
               "value there); the vocabulary is the training data's tokenizer file (--tokenizer, else "
               "NAME_tokenizer.bin beside the shards), else GPT-2's 50257, padded to a multiple of 128")


@dataclass
class TrainConfig:
    """A training run: bin/train_gpt2's flags as fields (the flag names are in each field's metadata)."""
    device: str = option("cpu", ("--device",), "backend that runs the kernels", choices=("cpu", "cuda"))
    omp_threads: int = option(None, ("--omp-threads",), "Numba threads per process (default: NUMBA_NUM_THREADS, "
                              "all cores unless set, divided among the ranks on this host)", POSITIVE)
    precision: str = option("fp32", ("--precision",), "bf16: every matmul rounds its two operands to bfloat16 and "
                            "sums in float32 (PyTorch autocast's matmuls); the weights, gradients, AdamW state "
                            "and every other kernel stay float32", choices=tuple(PRECISIONS))
    train_data: str = option(None, ("-i", "--train-data"),
                             "train shards (.bin): a file, or a glob; default: built-in Shakespeare")
    val_data: str = option(None, ("-j", "--val-data"), "val shards: a file, or a glob; default: the built-in "
                           "Shakespeare val split when -i is not given, else no val")
    model: str = option("tiny", ("-e", "--model"), "model .bin file or train_gpt2 output directory (its newest "
                        "model_*.bin: the final model, else the latest checkpoint's) to start from, or a descriptor "
                        "built from scratch: " + DESCRIPTOR_HELP)
    layers: int = option(None, ("--layers",), "transformer layers (default: -e's)", POSITIVE, metavar="L",
                         group=SHAPE_GROUP)
    heads: int = option(None, ("--heads",), "attention heads, must divide C (default: -e's)", POSITIVE,
                        metavar="NH", group=SHAPE_GROUP)
    channels: int = option(None, ("--channels",), "channels (default: -e's)", POSITIVE, metavar="C",
                           group=SHAPE_GROUP)
    max_seq_len: int = option(None, ("--max-seq-len",), "context length, >= -t (default: -e's)", POSITIVE,
                              metavar="maxT", group=SHAPE_GROUP)
    output_dir: str = option("out", ("-o", "--output-dir"), "where main.log and the model files go ('' for none)")
    batch_size: int = option(8, ("-b", "--batch-size"), "B, sequences per micro-step per process", POSITIVE)
    seq_len: int = option(128, ("-t", "--seq-len"), "T, tokens per sequence", POSITIVE)
    total_batch_size: int = option(None, ("-d", "--total-batch-size"),
                                   "tokens per optimizer step over all processes; gradients accumulate over "
                                   "d / (B*T*processes) micro-steps, which must be whole (default: B*T*processes, "
                                   "no accumulation)", POSITIVE)
    lr: float = option(3e-3, ("-l", "--lr"), "peak learning rate", NONNEG)
    lr_scheduler: str = option("cosine", ("-k", "--lr-scheduler"),
                               "learning-rate schedule after the warmup: cosine or linear decay to -q x lr, "
                               "constant (llm.c's: no warmup either), wsd (stable, then 1-sqrt decay over the "
                               "last 20%% of the steps)", choices=SCHEDULES)
    warmup_iters: int = option(10, ("-u", "--warmup-iters"), "linear warmup steps", NONNEG)
    final_lr_frac: float = option(0.1, ("-q", "--final-lr-frac"),
                                  "the schedule decays toward this fraction of the peak lr, which, as in llm.c, "
                                  "it would reach one step after the last (the startup line gives the last "
                                  "step's lr)",
                                  Check(low=0, high=1))
    weight_decay: float = option(0.0, ("-c", "--weight-decay"), "AdamW weight decay of the matrices (wte, wpe and "
                                 "the matmuls' weights; not the biases and layernorms), as llm.c", NONNEG)
    beta1: float = option(0.9, ("--beta1",), "AdamW's beta1", Check(low=0, high=1, high_open=True))
    beta2: float = option(0.95, ("--beta2",), "AdamW's beta2 (llm.c's train_gpt2.cu: 0.95; PyTorch's default: "
                          "0.999)", Check(low=0, high=1, high_open=True))
    grad_clip: float = option(1.0, ("--grad-clip",), "clip the global grad norm to this (0: off)", NONNEG)
    skip_update_lossz: float = option(0.0, ("-sl", "--skip-update-lossz"),
                                      "skip the update of a step whose loss z-score over the last 128 steps "
                                      "exceeds this (0: off)", NONNEG)
    skip_update_gradz: float = option(0.0, ("-sg", "--skip-update-gradz"),
                                      "skip the update of a step whose grad-norm z-score over the last 128 "
                                      "steps exceeds this (0: off)", NONNEG)
    overfit_single_batch: int = option(0, ("-a", "--overfit-single-batch"),
                                       "1: every step trains on the same first batch(es) of the train data "
                                       "(a debugging aid)", choices=(0, 1))
    recompute: int = option(1, ("-r", "--recompute"),
                            "activation memory: 0 stores all; 1 recomputes GELU's output in the backward pass; "
                            "2 also the layernorm outputs (the gradients are the same, bit for bit)",
                            choices=(0, 1, 2))
    max_steps: int = option(300, ("-x", "--max-steps"), "training steps", POSITIVE)
    val_every: int = option(50, ("-v", "--val-every"), "evaluate val loss every N steps (0: never)", NONNEG)
    val_batches: int = option(10, ("-m", "--val-batches"), "batches per val evaluation", NONNEG)
    sample_every: int = option(100, ("-s", "--sample-every"), "print a sample every N steps (0: never)", NONNEG)
    gen_tokens: int = option(64, ("-g", "--gen-tokens"), "tokens per sample (0: no sampling)", NONNEG)
    seed: int = option(1337, ("--seed",), "seed of the init, the data order and sampling", NONNEG)
    shuffle: int = option(1, ("--shuffle",), "shuffle the train windows (-a 1: off)", choices=(0, 1))
    checkpoint_every: int = option(0, ("-n", "--checkpoint-every"),
                                   "write model_N.bin, state_N_RANK.bin and DONE_N to the output dir every N "
                                   "steps (0: never)", NONNEG)
    save_precision: str = option("fp32", ("--save-precision",), "the model files written (checkpoints and the "
                                 "final model): fp32 (llm.c version 3) or bf16 (version 5, what llm.c's CUDA "
                                 "trainer reads by default); with bf16 each state file also keeps its rank's "
                                 "float32 master weights, so a resume continues exactly",
                                 choices=tuple(SAVE_PRECISIONS))
    resume: int = option(0, ("-y", "--resume"), "resume from the latest complete checkpoint (one with a DONE "
                         "file) in the output dir", choices=(0, 1))
    zero_stage: int = option(0, ("-z", "--zero-stage"), "0: every rank keeps all AdamW state; 1: each rank "
                             "keeps and updates 1/N of it (ZeRO-1)", choices=(0, 1))
    expect_world_size: int = option(None, ("--expect-world-size",),
                                    "fail unless the job has exactly this many processes (default: check "
                                    "against the launcher's SLURM_NTASKS / OMPI_COMM_WORLD_SIZE / PMI_SIZE)",
                                    POSITIVE)
    hellaswag: int = option(0, ("-h", "--hellaswag"), "1: HellaSwag accuracy (acc_norm) at every val interval "
                            "and at the end, logged as eval", choices=(0, 1))
    hellaswag_file: str = option(HELLASWAG_FILE, ("--hellaswag-file",),
                                 "the eval file for -h 1 (llm.c's dev/data/hellaswag.py writes it there)")
    tokenizer: str = option(None, ("--tokenizer",), "llm.c tokenizer .bin of the data: the vocabulary of a "
                            "model built from scratch, and the decoder of the samples; one the train shards "
                            "came with must be theirs (default: NAME_tokenizer.bin beside NAME_train*.bin, else "
                            "the shards' directory's only *_tokenizer.bin, else none: GPT-2's vocabulary, "
                            "samples printed as token ids)")
    overwrite: bool = option(False, ("--overwrite",), "let a fresh run (no -y 1, or -y 1 with no complete "
                             "checkpoint) delete an earlier run's checkpoints and models in the output dir "
                             "(without it, such a dir is refused)")
    allow_changes: bool = option(False, ("--allow-changes",), "resume even where B, T, the data, the seed or "
                                 "the schedule differ from the checkpoint's run (each difference is printed)")
    no_memory_check: bool = option(False, ("--no-memory-check",),
                                   "allocate even when the memory estimate exceeds the memory available")

    def __post_init__(self):
        self.check()

    def check(self):
        """Every field's type and range, then the combinations; a ValueError naming the flag. A value
        is kept as a flag gives it (`plain`): a pathlib.Path as its str, NumPy's numbers as Python's."""
        for f in dataclasses.fields(self):
            meta = f.metadata
            object.__setattr__(self, f.name, plain(getattr(self, f.name), f.type, meta["choices"]))
            # None only where it is the default (a flag not given: e.g. --layers, -e's)
            check_value(flag_of(meta["flags"]), getattr(self, f.name), f.type, meta["check"], meta["choices"],
                        optional=f.default is None)
        if not self.output_dir and self.checkpoint_every > 0:
            raise ValueError(f"-n {self.checkpoint_every} writes checkpoints to the output dir, but -o is '' (none)")
        if not self.output_dir and self.resume:
            raise ValueError("-y 1 resumes from the output dir, but -o is '' (none)")
        if self.val_every > 0 and self.val_batches == 0:
            raise ValueError(f"-v {self.val_every} asks for the val loss every {self.val_every} steps, but -m 0 "
                             f"evaluates no batches (-v 0: no val loss)")
        if self.channels is not None and self.heads is not None and self.channels % self.heads:
            raise ValueError(f"channels C={self.channels} (--channels) is not divisible by heads NH={self.heads} "
                             f"(--heads)")
        if self.max_seq_len is not None and self.seq_len > self.max_seq_len:
            raise ValueError(f"-t/--seq-len {self.seq_len} exceeds the model's max_seq_len {self.max_seq_len} "
                             f"(--max-seq-len)")

    def warnings(self):
        """Lines about values that are allowed but probably not meant (the trainer prints them)."""
        out = []
        if self.lr_scheduler != "constant" and self.warmup_iters >= self.max_steps:
            reaches = (f"reaches -l {self.lr:g} only at the last step" if self.warmup_iters == self.max_steps
                       else f"never reaches -l {self.lr:g}")
            out.append(f"-u {self.warmup_iters} warmup steps >= -x {self.max_steps} steps: the learning rate "
                       f"{reaches}, and the -k {self.lr_scheduler} decay never starts")
        if (self.output_dir and self.save_precision == "bf16"
                and (self.checkpoint_every == 0 or self.max_steps % self.checkpoint_every)):
            out.append(f"--save-precision bf16: step {self.max_steps} is no checkpoint step (-n "
                       f"{self.checkpoint_every}), so the run's final weights are kept rounded to bf16 alone, "
                       f"not in float32 (a checkpoint's state keeps them: -n dividing -x)")
        cores, cap = usable_cores(), thread_cap()
        if self.omp_threads is not None and cap is not None and self.omp_threads > cap:
            out.append(f"--omp-threads {self.omp_threads}: Numba runs at most {cap} threads in this process "
                       f"(NUMBA_NUM_THREADS, read when Numba was imported; set it before, as bin/train_gpt2 "
                       f"does): the run takes {cap}")
        elif self.omp_threads is not None and self.omp_threads > cores:
            out.append(f"--omp-threads {self.omp_threads} is more than the {cores} cores this process may "
                       f"use: the threads take turns on them, and every step is slower")
        return out

    @classmethod
    def from_args(cls, namespace):
        """The config of parsed flags (an argparse Namespace with a field's name per flag)."""
        return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})

    def replace(self, **changes):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def plain(value, kind, choices=None):
    """`value` as the Python type of its field, where it is one by another name: a path
    (os.PathLike) as its str, a NumPy integer or float (np.int64(8), np.float32(1e-3): the run record
    is JSON) as int or float, True/False for a 0/1 field (-y, --shuffle, ...), 0/1 for a true/false
    one (--overwrite). Anything else as it is (check_value then refuses what is wrong)."""
    if isinstance(value, os.PathLike) and kind is str:
        return os.fspath(value)
    is_bool = isinstance(value, (bool, np.bool_))
    if kind is int and is_bool and choices == (0, 1):
        return int(value)
    if kind is bool and (is_bool or (isinstance(value, numbers.Integral) and value in (0, 1))):
        return bool(value)
    if kind is int and isinstance(value, numbers.Integral) and not is_bool:
        return int(value)
    if kind is float and isinstance(value, numbers.Real) and not is_bool:
        return float(value)
    return value


def thread_cap():
    """The most threads Numba runs in this process (its NUMBA_NUM_THREADS, fixed at its import), or
    None before Numba is imported (a command raises it then: cli.reserve_threads)."""
    numba = sys.modules.get("numba")
    return numba.config.NUMBA_NUM_THREADS if numba is not None else None


def usable_cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fields():
    """TrainConfig's fields, in flag order."""
    return dataclasses.fields(TrainConfig)
