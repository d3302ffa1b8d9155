"""The training run: `train(config)` sets up the output dir, the device, the data and the model, then
loops eval, sample, step (numbagpt.train.step), log, checkpoint; bin/train_gpt2 is a parser over it.

    from numbagpt.train import TrainConfig, train
    result = train(TrainConfig(max_steps=20, output_dir=""), on_step=lambda r: print(r.step, r.loss))

With several MPI processes every rank calls train() with the same config (mpirun runs the script on
each); rank 0 prints and writes main.log, every rank writes its own train state at a checkpoint.
"""
import os
import time
from dataclasses import dataclass, fields

import numpy as np

from .. import dist
from ..compiling import compile_notice
from ..config import GPT2_VOCAB, SHAPE_FLAGS, build_config, is_descriptor
from ..files import atomic, data, tokenizer
from ..layout import format_memory, memory_estimate, num_parameters
from ..files.formats import SAVE_PRECISIONS
from ..model import GPT2
from . import checkpoint, rundir
from .config import TrainConfig
from .outlier import SpikeGuard
from .schedule import LRSchedule
from .step import train_step, warm_up


@dataclass
class StepRecord:
    """One optimizer step, as the on_step callback and main.log see it."""
    step: int         # the step's number, from 1
    loss: float       # mean train loss over the micro-batches and the ranks
    lr: float
    norm: float       # global gradient norm before clipping
    ms: float         # wall time of the step
    tokens_per_s: float
    skipped: object = None   # the spike guard's reason when the update was skipped


@dataclass
class TrainResult:
    model: GPT2
    steps: int                  # the last step (config.max_steps)
    val_loss: float = None      # the last val loss, when there was val data (None for a finished run
                                # resumed: nothing trained or evaluated)
    model_file: str = None      # the final model file, when there is an output dir


def printer(world):
    """print() on rank 0, flushing every line (under a launcher stdout is a block-buffered pipe), a
    failed write named (a full disk under `> file`); a no-op on the other ranks."""
    if not world.is_master:
        return lambda *a, **k: None

    def say(*args, **kwargs):
        try:
            print(*args, **kwargs, flush=True)
        except BrokenPipeError:   # the reader left: the command ends quietly
            raise
        except OSError as e:
            raise OSError(f"stdout: cannot write: {atomic.describe_os_error(e)}") from None
    return say


def train(config: TrainConfig, *, world=None, on_step=None, say=None, progress=None, stop=None):
    """Run the training `config` describes; returns a TrainResult. `world`: the ranks
    (dist.init_world() by default); `on_step(StepRecord)`: called after every step; `say`: where
    the progress lines go (default: stdout on rank 0); `progress` (rundir.Progress) keeps the step and
    the last checkpoint for the line a signal ends the run with; `stop` (rundir.StopRequest) says
    when a signal asks every rank to stop. Errors raise (ValueError, OSError, RuntimeError and
    dist.CollectiveError alike on every rank); bin/train_gpt2 turns them into one line. Numba's
    threads are the caller's again when it returns."""
    import numba

    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig (TrainConfig(**fields) makes one), got {type(config).__name__}")
    config.check()
    if world is None:
        world = dist.init_world(expect_size=config.expect_world_size)
    elif config.expect_world_size is not None:
        dist.check_world_size(world.size, config.expect_world_size)
    if stop is not None:
        stop.start_run(world)
    check_ranks_agree(config, world)
    say = say or printer(world)
    for line in config.warnings():
        say(f"warning: {line}")
    progress = progress or rundir.Progress()
    lock, cleanup, started, run = None, None, False, None
    threads = numba.get_num_threads()   # the caller's, put back at the end (a notebook goes on with it)
    try:
        micro_steps = dist.check_together(world, lambda: micro_steps_per_step(config, world))
        paths = data_paths(config, world, say)
        record = run_record(config, world, micro_steps, paths[0], paths[1])
        resume_step = None
        # a device that cannot run here is said before the output dir is made
        dist.check_together(world, lambda: require_device(config.device))
        if config.output_dir:  # the lock first: a second run on the dir is refused before any work
            lock, resume_step, cleanup = rundir.open_run(config.output_dir, config.resume, config.overwrite, record,
                                                         config.allow_changes, world, say)
            if cleanup.finished:
                return finished_run(config, world, say, cleanup.finished, paths[2])
            if config.resume and resume_step is None:
                say(f"no complete checkpoint in {config.output_dir!r}: starting from -e {config.model}")
        progress.checkpoint = resume_step
        backend = setup_device(config, world, say)
        run = Run(config, world, say, backend, micro_steps, paths, record, resume_step)
        started = True   # the data, the model and the memory check have passed: now what it replaces goes
        if cleanup and world.is_master:
            cleanup.apply(say)
        return run.loop(progress, stop, on_step)
    finally:
        if cleanup and not started and world.is_master:
            cleanup.remove_unused()   # while the lock is held: a run that locks the dir next keeps its lock file
        if run is not None and run.log:   # a run that raised: main.log's descriptor is not left open
            run.log.close()
        if lock:
            lock.release()
        numba.set_num_threads(threads)


def finished_run(config, world, say, model_file, tok_path):
    """The TrainResult of a run resumed (-y 1) with the -x it has finished: its final model, loaded
    (with -r and --precision), once it is known to be the model -e and the shape flags make; nothing
    is trained, evaluated (val_loss None) or deleted (a scheduler that restarts a finished job with
    -y 1 --overwrite)."""
    dist.check_together(world, lambda: check_finished_model(config, model_file, tok_path))
    more = ("a larger -x with --allow-changes trains on from its last checkpoint"
            if checkpoint.done_steps(config.output_dir) else
            "it wrote no checkpoint (-n), so a larger -x is a new run (--overwrite, or another -o)")
    say(f"nothing to train: {config.output_dir} holds the finished run's final model {model_file} (step "
        f"{config.max_steps} = -x); {more}")
    backend = setup_device(config, world, say)
    model = GPT2.from_file(model_file, backend=backend, recompute=config.recompute, precision=config.precision)
    return TrainResult(model=model, steps=config.max_steps, model_file=model_file)


def check_finished_model(config, model_file, tok_path):
    """Refuse a finished run's final model that is not the model -e and the shape flags make (a run that
    wrote no checkpoint left no record of its flags to compare; a checkpoint's record allows other
    models with --allow-changes). An -e file gone since the run is not compared."""
    from ..files import formats

    c = config
    if not (is_descriptor(c.model) or os.path.exists(c.model)):
        return
    made = model_source(c, tok_path, lambda line: None, None)[1]
    cfg = formats.read_model_header(model_file)[0]
    if made != cfg:
        raise rundir.RunDirError(f"{c.output_dir}: its finished run's final model {model_file} is {cfg.describe()}, "
                                 f"not the model of -e {c.model}{shape_flags_text(c)} ({made.describe()}): "
                                 f"resume with the run's own flags, or give another -o")


# Flags a rank may set for itself: the threads of its host's cores.
PER_RANK = ("omp_threads",)


def check_ranks_agree(config, world):
    """Every rank runs the same config (an MPMD launch `mpiexec -n 1 ... -x 10 : -n 1 ... -x 12` can
    give them different ones, and a rank whose loop ends first would leave the others waiting forever).
    Rank 0 compares, every rank raises the same dist.CollectiveError naming the first differing flag."""
    mine = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in PER_RANK}
    everyone = world.gather(mine)
    verdict = None
    if world.is_master:
        for rank, theirs in enumerate(everyone):
            for f in fields(config):
                if f.name in mine and theirs[f.name] != mine[f.name]:
                    flag = f.metadata["flags"][0]
                    verdict = (f"the processes were started with different flags: rank {rank} has {flag} "
                               f"{theirs[f.name]!r}, rank 0 {mine[f.name]!r} (every process of a run takes "
                               f"the same flags)")
                    break
            if verdict:
                break
    verdict = world.bcast(verdict)
    if verdict:
        raise dist.CollectiveError(verdict)


def run_record(config, world, micro_steps, train_glob, val_glob):
    """What this run is, kept in every train state header; a resume compares it (rundir.RUN_FIELDS)."""
    c = config
    return rundir.run_record(
        B=c.batch_size, T=c.seq_len, total_batch=micro_steps * world.size * c.batch_size * c.seq_len,
        seed=c.seed, train_data=os.path.abspath(train_glob), train_shards=shards_of(train_glob),
        val_data=os.path.abspath(val_glob) if val_glob else "",
        world_size=world.size, overfit_single_batch=c.overfit_single_batch,
        zero_stage=c.zero_stage, shuffle=c.shuffle, lr=c.lr, warmup=c.warmup_iters,
        max_steps=c.max_steps, final_lr_frac=c.final_lr_frac, schedule=c.lr_scheduler,
        weight_decay=c.weight_decay, beta1=c.beta1, beta2=c.beta2, grad_clip=c.grad_clip, model=c.model,
        layers=c.layers, heads=c.heads, channels=c.channels, max_seq_len=c.max_seq_len)


def shards_of(data_glob):
    """What -i matches, for the run record: "2 shards of 2,618,290 bytes" (a shard added under the glob,
    or one grown, between a checkpoint and its resume moves the data position onto other tokens)."""
    files = data.shard_files(data_glob)
    size = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    return f"{len(files)} shard{'s' if len(files) != 1 else ''} of {size:,} bytes"


class Run:
    """A run once the output dir and the device are set: the model, the data, the loop."""

    def __init__(self, config, world, say, backend, micro_steps, paths, record, resume_step):
        c = self.config = config
        self.world, self.say, self.record, self.micro_steps = world, say, record, micro_steps
        self.train_glob, self.val_glob, self.tok_path = paths
        self.schedule = LRSchedule(c.lr_scheduler, c.lr, c.warmup_iters, c.max_steps, c.final_lr_frac)
        self.guard = SpikeGuard(c.skip_update_lossz, c.skip_update_gradz)
        self.model, self.dp = load_model(c, world, backend, self.tok_path, say, resume_step)
        # a bad shard or eval file: refused before -o is written
        self.train_loader, self.val_loader, self.tok, self.hellaswag = dist.check_together(
            world, lambda: (*open_data(c, world, self.model.config, paths, say), open_hellaswag(c, self.model.config)))
        self.val_batches = c.val_batches
        if self.val_loader is not None and c.val_batches > self.val_loader.batches_per_epoch:
            # more would wrap around and count some windows twice
            self.val_batches = self.val_loader.batches_per_epoch
            say(f"note: -m {c.val_batches}: the val split holds {self.val_batches} batches of B={c.batch_size} "
                f"T={c.seq_len}{' per process' if world.size > 1 else ''}: the val loss is the mean over those")
        self.tokens_per_step = micro_steps * world.size * c.batch_size * c.seq_len
        say(f"train: {self.train_glob} | val: {self.val_glob} | B={c.batch_size} T={c.seq_len} | "
            f"processes {world.size} | micro-steps {micro_steps} | tokens/step {self.tokens_per_step:,}")
        say(f"lr schedule: {self.schedule.describe()}")
        say(self.guard.describe())
        if c.overfit_single_batch:
            say(f"overfitting a single batch: every step trains on the first {self.tokens_per_step:,} tokens "
                f"of {self.train_glob}")
        self.start_step = 0
        if resume_step is not None:
            self.resume(resume_step)
        keep_tokenizer(c, world, self.tok_path)
        self.log = open_log(c, world, resume_step=self.start_step if resume_step is not None else None)
        self.val_loss = None

    def resume(self, resume_step):
        c = self.config
        self.start_step, windows, rounded = checkpoint.load_state(c.output_dir, resume_step, self.model, self.world,
                                                                  self.train_loader, self.guard)
        self.dp.gather_parameters()   # ZeRO-1: each rank restored its shard's master weights (if kept)
        self.say(f"resumed from step {self.start_step} of {c.output_dir}")
        if rounded:
            self.say("note: the checkpoint's model file is bf16 and its state keeps no float32 master weights "
                     "(llm.c's): training goes on from the bf16-rounded weights, not exactly where it stopped")
        if not windows and (c.skip_update_lossz or c.skip_update_gradz):
            self.say("note: the checkpoint holds no spike-guard windows (llm.c's, or an older numbagpt's): "
                     "-sl/-sg score nothing until they have refilled")

    def loop(self, progress, stop, on_step):
        """Steps start_step .. max_steps − 1, with eval and samples between; the final model."""
        c = self.config
        progress.step = self.start_step
        t_start = time.perf_counter()
        with compile_notice(self.say):   # a cold cache compiles in the first step and the first sample
            for step in range(self.start_step, c.max_steps + 1):
                self.between_steps(step)
                if step == c.max_steps:
                    break
                self.step(step, on_step)
                progress.step = step + 1
                if stop is not None:
                    stop.check()  # a signal on some rank: every rank stops here, after the same step
                self.save_checkpoint(step + 1, progress)
        model_file = None
        if c.output_dir and self.world.is_master:
            model_file, written = checkpoint.save_final(c.output_dir, c.max_steps, self.model,
                                                        SAVE_PRECISIONS[c.save_precision])
            bf16 = " (bf16: llm.c version 5)" if c.save_precision == "bf16" else ""
            self.say(f"wrote {model_file}{bf16}" if written else
                     f"final model: {model_file} (the checkpoint at step {c.max_steps})")
        if self.log:
            self.log.close()
            plot_log(self.log.name, self.say)
        self.say(f"done in {time.perf_counter() - t_start:.1f} s")
        return TrainResult(model=self.model, steps=c.max_steps, val_loss=self.val_loss, model_file=model_file)

    def save_checkpoint(self, step, progress):
        """The checkpoint after `step` steps, at -n's interval."""
        c = self.config
        if c.output_dir and c.checkpoint_every > 0 and step % c.checkpoint_every == 0:
            if checkpoint.save(c.output_dir, step, self.model, self.world, self.train_loader, c.seed,
                               run=self.record, guard=self.guard, dtype=SAVE_PRECISIONS[c.save_precision]):
                self.say(f"checkpoint at step {step} in {c.output_dir}")
            progress.checkpoint = step

    def between_steps(self, step):
        """The val loss, HellaSwag and a sample, each at its interval and at the end."""
        c, last = self.config, step == self.config.max_steps
        if self.val_loader and (step % c.val_every == 0 or last):
            self.val_loss = evaluate(self.model, self.val_loader, self.val_batches, self.world, self.log, step,
                                     self.say)
        if self.hellaswag and (c.val_every > 0 and step > 0 and step % c.val_every == 0 or last):
            evaluate_hellaswag(self.model, self.hellaswag, max(4, c.batch_size), self.world, self.log, step,
                               self.say, c.hellaswag_file)
        if c.gen_tokens > 0 and c.sample_every > 0 and (step > 0 and step % c.sample_every == 0 or last):
            if self.world.is_master:
                # seeded by (--seed, step): a resumed run samples what the uninterrupted one did
                sample(self.model, self.tok, c.gen_tokens, np.random.default_rng([c.seed, step]), step, self.say)

    def step(self, step, on_step):
        """One optimizer step over micro_steps batches; its line, its main.log record, on_step."""
        c = self.config
        t0 = time.perf_counter()
        if c.overfit_single_batch:
            self.train_loader.reset()
        # a shard that changed on disk since the run started: every rank finds it at the same step
        batches = dist.check_together(self.world, lambda: [self.train_loader.next_batch()
                                                           for _ in range(self.micro_steps)])
        result = train_step(self.model, batches, lr=self.schedule(step), t=step + 1, dp=self.dp,
                            grad_clip=c.grad_clip, weight_decay=c.weight_decay, beta1=c.beta1, beta2=c.beta2,
                            skip=self.guard.check)
        dt = time.perf_counter() - t0
        log_step(result, step, c.max_steps, dt, self.tokens_per_step, self.world.size, self.log, self.say,
                 self.guard)
        if on_step is not None:
            on_step(StepRecord(step=step + 1, loss=result.loss, lr=result.lr, norm=result.norm, ms=dt * 1000,
                               tokens_per_s=self.tokens_per_step / dt, skipped=result.skipped))


# ---------------------------------------------------------------------------------------------- set-up

def require_device(name):
    """RuntimeError with instructions where the backend `name` cannot run here (backend.get_backend)."""
    from ..backend import get_backend
    get_backend(name)


def setup_device(config, world, say):
    """Threads, this rank's device, the banner; with several ranks also the MPI lines, and the
    kernels compiled once into the shared cache. Returns the backend."""
    import numba

    from ..backend import get_backend

    # Threads per rank: --omp-threads, else this host's cores shared by the ranks running on it.
    n = config.omp_threads or max(1, numba.config.NUMBA_NUM_THREADS // world.local_size)
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    backend = get_backend(config.device)
    world.setup_device(backend)  # a GPU: this rank's, before anything is allocated on it
    say(f"numbagpt | device {config.device} ({backend.device_name()}) | precision {config.precision} | "
        f"processes {world.size} | threads/process {numba.get_num_threads()}")
    if world.size > 1:
        say(f"MPI: {world.describe_mpi()} | ZeRO stage {config.zero_stage} | buffers: {world.transport}")
        describe_ranks(world, numba.get_num_threads(), say, backend.device_name())
        # Numba's on-disk cache (cache=True) is shared by the ranks. Rank 0 compiles every kernel
        # first; the others wait at a barrier, then load the compiled code from the cache, instead
        # of compiling the same functions N times at once and racing to write the same cache files.
        with world.rank0_first(), compile_notice(say):
            warm_up(backend, config.precision)
    return backend


def describe_ranks(world, threads, say, kernels=""):
    """One line per rank (gathered to rank 0), a warning for hosts running more threads than cores, and
    a note naming the ranks whose `kernels` (backend.device_name(): the CPU and its matmul kernels)
    are not rank 0's, as NUMBAGPT_MATMUL or another CPU makes them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    rows = world.gather((world.rank, world.host, world.local_rank, threads, cores, world.device, kernels))
    if not world.is_master:
        return
    for rank, host, local_rank, t, c, device, _ in rows:
        say(f"  rank {rank}: host {host} | local rank {local_rank} | threads {t} (of {c} usable cores) | {device}")
    other = [f"rank {row[0]}: {row[6]}" for row in rows if row[6] != rows[0][6]]
    if other:
        say(f"note: ranks run other kernels than rank 0's ({rows[0][6]}): {'; '.join(other)}; their sums "
            f"differ in order, so the run is not bit for bit one on rank 0's kernels")
    by_host = {}
    for _, host, _, t, c, _, _ in rows:
        used, _ = by_host.get(host, (0, c))
        by_host[host] = (used + t, c)
    for host, (used, c) in by_host.items():
        if used > c:
            say(f"warning: {host} runs {used} threads on {c} cores: ranks x --omp-threads should not "
                f"exceed the cores (check the launcher's binding too; see docs/distributed.md)")


def micro_steps_per_step(config, world):
    """-d / (B*T*processes): the micro-steps whose gradients one optimizer step accumulates."""
    per_micro = config.batch_size * config.seq_len * world.size
    total = config.total_batch_size or per_micro
    if total % per_micro:
        raise ValueError(f"-d/--total-batch-size {total} is not a multiple of B*T*processes = "
                         f"{config.batch_size}*{config.seq_len}*{world.size} = {per_micro}")
    return total // per_micro


def data_paths(config, world, say):
    """(train glob, val glob, tokenizer path): the flags, else the built-in Shakespeare. The
    tokenizer: --tokenizer, else the NAME_tokenizer.bin beside the train shards, else None."""
    if config.train_data is not None:
        return (config.train_data, config.val_data,
                config.tokenizer or tokenizer.tokenizer_next_to(config.train_data))
    # Rank 0 prepares the data once; the others wait, then find it in the cache.
    with world.rank0_first():
        train_glob, val_glob, tok_path = data.ensure_builtin_data(verbose=world.is_master and say)
    return train_glob, config.val_data or val_glob, config.tokenizer or tok_path


def model_config(config, tok_path):
    """The config of a model built from scratch: -e's descriptor with the shape flags over it, and
    the vocabulary of the data's tokenizer file (GPT-2's without one)."""
    V = tokenizer.tokenizer_vocab_size(tok_path) if tok_path else GPT2_VOCAB
    return build_config(config.model, V, layers=config.layers, heads=config.heads, channels=config.channels,
                        max_seq_len=config.max_seq_len)


def given_shape_flags(config):
    """The shape flags given (--layers, ...), as flags."""
    return [f"--{n.replace('_', '-')}" for n, _ in SHAPE_FLAGS if getattr(config, n) is not None]


def shape_flags_text(config):
    """The shape flags given, with their values: " --layers 2 --heads 2" (or "")."""
    return "".join(f" {flag} {getattr(config, flag[2:].replace('-', '_'))}" for flag in given_shape_flags(config))


def model_source(config, tok_path, say, resume_step):
    """(model file or None, GPT2Config): what load_model loads, from -e's descriptor with the shape
    flags or a file's header alone, checked against the flags before anything is allocated."""
    from ..files import formats

    c = config
    shape_flags = given_shape_flags(c)
    scratch = is_descriptor(c.model)
    if shape_flags and not scratch and os.path.exists(c.model):
        what = "a train_gpt2 output directory, whose model's" if os.path.isdir(c.model) else "a model file, whose"
        raise ValueError(f"-e {c.model} is {what} shape is fixed: drop {', '.join(shape_flags)} "
                         f"(they shape a model built from scratch from a descriptor)")
    if resume_step is not None:
        path = checkpoint.model_path(c.output_dir, resume_step)
    else:
        path = None if scratch else checkpoint.resolve_model(c.model, "-e", say)
    cfg = model_config(c, tok_path) if path is None else formats.read_model_header(path)[0]
    if resume_step is not None:
        check_shape_flags(c, cfg, path)
    if c.seq_len > cfg.max_seq_len:
        raise ValueError(f"-t/--seq-len {c.seq_len} exceeds the model's max_seq_len {cfg.max_seq_len}"
                         + (" (--max-seq-len)" if scratch else ""))
    return path, cfg


def load_model(config, world, backend, tok_path, say, resume_step):
    """The model (built from scratch, a model file, or the checkpoint at `resume_step`), on every
    rank rank 0's weights, with this rank's optimizer shard, once the memory check has passed.
    Returns (model, DataParallel)."""
    from ..memory import check_model_fits

    c = config
    path, cfg = dist.check_together(world, lambda: model_source(c, tok_path, say, resume_step))
    n = num_parameters(cfg)
    start, end = dist.partition(n, world.size)[world.rank] if c.zero_stage == 1 else (0, n)
    shaped = shape_flags_text(c)
    what = (f"{path} (resumed; the run started from -e {c.model})" if resume_step is not None else
            f"{c.model} ({path})" if path and os.path.abspath(path) != os.path.abspath(c.model) else c.model)
    say(f"model: {what}{' +' + shaped if shaped else ''} | {cfg.describe()} | parameters {n:,}")
    say(format_memory(memory_estimate(cfg, c.batch_size, c.seq_len, optimizer_params=end - start,
                                      recompute=c.recompute)) + f" | -r {c.recompute}")
    if not c.no_memory_check:  # before the parameters, gradients, AdamW moments and activations exist
        ranks = world.local_size   # the ranks on this host, when the buffers are in host memory
        per_b = c.seq_len * world.size   # -d must stay a multiple of B*T*processes
        takes = ((lambda b: c.total_batch_size % (b * per_b) == 0), f"-d {c.total_batch_size}"
                 ) if c.total_batch_size else None
        dist.check_together(world, lambda: check_model_fits(cfg, c.batch_size, c.seq_len, backend, f"{c.model}",
                                                            ranks=ranks, takes=takes, optimizer_params=end - start,
                                                            recompute=c.recompute))
    if path is None:
        model = GPT2(cfg, backend=backend, recompute=c.recompute, precision=c.precision)
        model.init_weights(c.seed)
    else:   # a file that reads wrong (its values: NaN, ...) is said once, as the header's checks are
        model = dist.check_together(world, lambda: GPT2.from_file(path, backend=backend, recompute=c.recompute,
                                                                   precision=c.precision))
    dp = dist.DataParallel(world, model, c.zero_stage)
    dp.broadcast_parameters()  # every rank starts from rank 0's weights, whatever it initialised or loaded
    model.set_optimizer_shard(*dp.shard)   # the parameters whose AdamW moments and update this rank owns
    say(f"optimizer: ZeRO-{c.zero_stage} | AdamW m+v of {end - start:,} parameters per rank: "
        f"{dp.optimizer_bytes() / 2**20:.1f} MiB")
    return model, dp


def check_shape_flags(config, cfg, path):
    """Refuse shape flags that contradict the model a resume loads (the checkpoint's, whatever they say)."""
    for name, field in SHAPE_FLAGS:
        value, flag = getattr(config, name), f"--{name.replace('_', '-')}"
        if value is not None and value != getattr(cfg, field):
            raise ValueError(f"{flag} {value} contradicts the checkpoint's model {path} ({cfg.describe()}): a "
                             f"resume trains that model; drop {flag}, or start a fresh run without -y 1")


def open_data(config, world, cfg, paths, say):
    """(train loader, val loader or None, tokenizer or None): this rank's slice of every batch."""
    c = config
    train_glob, val_glob, tok_path = paths
    B, T = c.batch_size, c.seq_len
    shuffle = bool(c.shuffle) and not c.overfit_single_batch
    train_loader = data.DataLoader(train_glob, B, T, rank=world.rank, world_size=world.size,
                                   shuffle=shuffle, seed=c.seed, vocab_size=cfg.vocab_size, model=c.model)
    val_loader = None
    if val_glob and c.val_every > 0 and c.val_batches > 0:
        val_loader = data.DataLoader(val_glob, B, T, rank=world.rank, world_size=world.size,
                                     vocab_size=cfg.vocab_size, model=c.model)
    tokenizer.check_one_tokenization(train_glob, val_glob)
    if c.tokenizer:
        tokenizer.check_given_tokenizer(c.tokenizer, train_glob)
    tok = tokenizer.load_tokenizer(tok_path) if tok_path else None
    own = {os.path.realpath(t) for t in tokenizer.named_tokenizers(train_glob)}
    # GPT-2's BPE shards fine-tune a model whose vocabulary extends GPT-2's (added tokens after 50256)
    extends = isinstance(tok, tokenizer.GPT2Tokenizer) and cfg.vocab_size > tok.vocab_size
    if tok is not None and tok.vocab_size != cfg.vocab_size and not extends and os.path.realpath(tok_path) in own:
        # the shards' own tokenizer (prepare_data's NAME_tokenizer.bin): they were made for another model
        raise ValueError(f"{tok_path}, the tokenizer of the train shards, has {tok.vocab_size} tokens, the model "
                         f"-e {c.model} V={cfg.vocab_size}: the shards were tokenized for another vocabulary "
                         f"(prepare_data --tokenizer gpt2 makes GPT-2's)")
    if tok is not None and tok.vocab_size < cfg.vocab_size:  # it could not decode every sampled id
        if c.tokenizer:
            raise ValueError(f"--tokenizer {tok_path} has {tok.vocab_size} tokens, fewer than the model's "
                             f"vocabulary V={cfg.vocab_size}")
        say(f"note: {tok_path} has {tok.vocab_size} tokens, the model V={cfg.vocab_size}: samples are printed "
            f"as token ids")
        tok = None
    return train_loader, val_loader, tok


def open_log(config, world, resume_step):
    """main.log in the output dir (rank 0), or None. Resuming, it keeps the lines before `resume_step`
    (a killed run's later lines are written again by this one) and appends."""
    if not config.output_dir or not world.is_master:
        return None
    path = os.path.join(config.output_dir, "main.log")
    if resume_step is not None:
        rundir.keep_log_until(path, resume_step)
    return rundir.RunLog(path, append=resume_step is not None)


def keep_tokenizer(config, world, tok_path):
    """Copy the tokenizer into the output dir as tokenizer.bin, where bin/sample_gpt2 finds it."""
    from ..files import atomic
    if not (config.output_dir and tok_path and world.is_master):
        return
    dst = os.path.join(config.output_dir, "tokenizer.bin")
    if not (os.path.exists(dst) and os.path.samefile(tok_path, dst)):
        with open(tok_path, "rb") as f:
            atomic.write_bytes(dst, f.read())   # complete or absent, like every file of the run


def open_hellaswag(config, model_config):
    """The HellaSwag examples for -h 1 (None for -h 0), checked against the model now: a file it
    cannot score is refused before the first step, not at the first eval."""
    from .. import hellaswag
    if not config.hellaswag:
        return None
    if not os.path.isfile(config.hellaswag_file):
        raise FileNotFoundError(f"-h 1: no HellaSwag eval file at {config.hellaswag_file} (llm.c's "
                                f"dev/data/hellaswag.py writes it; --hellaswag-file FILE, docs/use.md)")
    examples = hellaswag.read_eval_file(config.hellaswag_file)
    hellaswag.check_examples(examples, model_config.vocab_size, model_config.max_seq_len,
                             f"-h 1: {config.hellaswag_file}")
    return examples


def plot_log(log_path, say):
    """loss.png next to main.log, when matplotlib is installed. Never fails the run: the model and
    main.log are written by then, so a picture that cannot be drawn or written is a note."""
    from .. import plot
    png = os.path.join(os.path.dirname(log_path), "loss.png")
    try:
        plot.plot_logs([log_path], png)
    except plot.NoMatplotlib:
        say("(pip install matplotlib, or 'numbagpt[plot]', and the next run also draws its loss curve "
            "into loss.png)")
    except (plot.LogError, OSError, RuntimeError) as e:
        say(f"no loss.png: {e}")
    else:
        say(f"wrote {png}")


# ---------------------------------------------------------------------------------------------- the loop

def evaluate(model, val_loader, batches, world, log, step, say):
    """The val loss: the mean over `batches` batches from the start of the val split, and the ranks."""
    val_loader.reset()
    losses = [model.forward(*val_loader.next_batch()) for _ in range(batches)]
    val_loss = world.mean(float(np.mean(losses)))
    say(f"val loss {val_loss:.4f}")
    if log:
        log.write(f"s:{step} tel:{val_loss:.4f}\n")
    return val_loss


def sample(model, tok, gen_tokens, rng, step, say):
    """A sample from the end-of-text token, as bin/sample_gpt2 makes it (numbagpt.generate, KV cache);
    without a tokenizer (None) its token ids, as llm.c prints them, from GPT-2's end-of-text where the
    vocabulary has it, else from id 0."""
    from ..files.tokenizer import GPT2_EOT
    from ..generate import generate
    if tok is not None:
        prompt = [tok.eot_token] if tok.eot_token is not None else [0]
    else:
        prompt = [GPT2_EOT] if model.config.vocab_size > GPT2_EOT else [0]
    ids = list(generate(model, prompt, gen_tokens, rng))
    if tok is None:
        say(f"--- sample at step {step} (token ids: no tokenizer, --tokenizer) ---\n{' '.join(map(str, ids))}\n---")
    else:
        say(f"--- sample at step {step} ---\n{tok.decode(ids)}\n---")


def evaluate_hellaswag(model, examples, rows, world, log, step, say, source):
    """HellaSwag acc_norm over the ranks, logged as llm.c does (s:STEP eval:ACC)."""
    from .. import hellaswag
    correct, total = hellaswag.evaluate(model, examples, world, rows, source=source)
    say(f"HellaSwag: {correct}/{total} = {correct / total:.4f}")
    if log:
        log.write(f"s:{step} eval:{correct / total:.4f}\n")


def log_step(result, step, max_steps, dt, tokens, nproc, log, say, guard=None):
    """The step's line on stdout and in main.log; with a spike guard on, the z-scores as llm.c shows
    them (NaN while its window fills)."""
    r = result
    zloss = zgrad = ""
    if guard is not None and (guard.loss_z or guard.grad_z):
        zloss, zgrad = f" ({guard.zloss:+.2f}z)", f" ({guard.zgrad:+.2f}z)"
    say(f"step {step + 1:4d}/{max_steps} | loss {r.loss:.4f}{zloss} | lr {r.lr:.2e} | norm {r.norm:.2f}{zgrad} | "
        f"{dt * 1000:.0f} ms | {nproc} proc | {tokens / dt:.0f} tok/s")
    if r.skipped:
        say(f"step {step + 1:4d}: skipping update due to {r.skipped}")
    if log:
        record = f"s:{step} trl:{r.loss:.4f} lr:{r.lr:.6f} norm:{r.norm:.2f}\n"
        if r.skipped:  # a line of its own, llm.c's `s:STEP key:value` shape, so llm.c's log readers still parse
            record += f"s:{step} skip:{r.skipped.z:.2f}\n"
        log.write(record)
