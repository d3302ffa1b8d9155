"""bin/train_gpt2: train GPT-2 from scratch or from a checkpoint, llm.c's flags with long names.

With no data flags it trains the `tiny` preset on the built-in Shakespeare (prepared on first use).
"""
import argparse
import os
import sys
import time

from numbagpt.cli import HelpFormatter, check_range, error_text, reserve_threads, use_threads
from numbagpt.config import DESCRIPTOR_HELP
from numbagpt.schedule import SCHEDULES

PROG = "train_gpt2"


HELLASWAG_FILE = os.path.join("dev", "data", "hellaswag", "hellaswag_val.bin")


def build_parser():
    p = argparse.ArgumentParser(
        prog="train_gpt2",
        description="Train GPT-2 with numbagpt. With no -i/-j it prepares the built-in Shakespeare "
                    "(GPT-2 BPE, cached) and trains the `tiny` preset from scratch.",
        formatter_class=HelpFormatter, add_help=False)  # -h is llm.c's HellaSwag flag
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="backend that runs the kernels")
    p.add_argument("--omp-threads", type=int, default=None,
                   help="Numba threads per process (default: all cores, divided among the ranks)")
    p.add_argument("-i", "--train-data", default=None, help="glob of train shards (.bin); default: built-in Shakespeare")
    p.add_argument("-j", "--val-data", default=None, help="glob of val shards; default: the built-in Shakespeare val split when -i is not given, else no val")
    p.add_argument("-e", "--model", default="tiny",
                   help="model .bin file to start from, or a descriptor built from scratch: " + DESCRIPTOR_HELP)
    shape = p.add_argument_group("model shape", "a custom model from scratch: any of these over -e's descriptor "
                                 "(default: its value there); the vocabulary is the training data's tokenizer "
                                 "file (--tokenizer, else NAME_tokenizer.bin beside the shards), else GPT-2's "
                                 "50257, padded to a multiple of 128")
    shape.add_argument("--layers", type=int, default=None, metavar="L", help="transformer layers (default: -e's)")
    shape.add_argument("--heads", type=int, default=None, metavar="NH", help="attention heads, must divide C (default: -e's)")
    shape.add_argument("--channels", type=int, default=None, metavar="C", help="channels (default: -e's)")
    shape.add_argument("--max-seq-len", type=int, default=None, metavar="maxT", help="context length, >= -t (default: -e's)")
    p.add_argument("-o", "--output-dir", default="out", help="where main.log and the model files go ('' for none)")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="B, sequences per micro-step per process")
    p.add_argument("-t", "--seq-len", type=int, default=128, help="T, tokens per sequence")
    p.add_argument("-d", "--total-batch-size", type=int, default=None,
                   help="tokens per optimizer step over all processes; gradients accumulate over "
                        "d / (B*T*processes) micro-steps, which must be whole (default: B*T*processes, "
                        "no accumulation)")
    p.add_argument("-l", "--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("-k", "--lr-scheduler", choices=SCHEDULES, default="cosine",
                   help="learning-rate schedule after the warmup: cosine or linear decay to -q x lr, constant "
                        "(llm.c's: no warmup either), wsd (stable, then 1-sqrt decay over the last 20%% of "
                        "the steps)")
    p.add_argument("-u", "--warmup-iters", type=int, default=10, help="linear warmup steps")
    p.add_argument("-q", "--final-lr-frac", type=float, default=0.1,
                   help="the schedule decays to this fraction of the peak lr at the last step")
    p.add_argument("-c", "--weight-decay", type=float, default=0.0, help="AdamW weight decay (all parameters)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global grad norm to this (0: off)")
    p.add_argument("-sl", "--skip-update-lossz", type=float, default=0.0,
                   help="skip the update of a step whose loss z-score over the last 128 steps exceeds this (0: off)")
    p.add_argument("-sg", "--skip-update-gradz", type=float, default=0.0,
                   help="skip the update of a step whose grad-norm z-score over the last 128 steps exceeds "
                        "this (0: off)")
    p.add_argument("-a", "--overfit-single-batch", type=int, choices=(0, 1), default=0,
                   help="1: every step trains on the same first batch(es) of the train data (a debugging aid)")
    p.add_argument("-r", "--recompute", type=int, choices=(0, 1, 2), default=1,
                   help="activation memory: 0 stores all; 1 recomputes GELU's output in the backward pass; "
                        "2 also the layernorm outputs (the gradients are the same, bit for bit)")
    p.add_argument("-x", "--max-steps", type=int, default=300, help="training steps")
    p.add_argument("-v", "--val-every", type=int, default=50, help="evaluate val loss every N steps (0: never)")
    p.add_argument("-m", "--val-batches", type=int, default=10, help="batches per val evaluation")
    p.add_argument("-s", "--sample-every", type=int, default=100, help="print a sample every N steps (0: never)")
    p.add_argument("-g", "--gen-tokens", type=int, default=64, help="tokens per sample (0: no sampling)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the init, the data order and sampling")
    p.add_argument("--shuffle", type=int, choices=(0, 1), default=1, help="shuffle the train windows (-a 1: off)")
    p.add_argument("-n", "--checkpoint-every", type=int, default=0,
                   help="write model_N.bin, state_N_RANK.bin and DONE_N to the output dir every N steps (0: never)")
    p.add_argument("-y", "--resume", type=int, choices=(0, 1), default=0,
                   help="resume from the latest complete checkpoint (one with a DONE file) in the output dir")
    p.add_argument("-z", "--zero-stage", type=int, choices=(0, 1), default=0,
                   help="0: every rank keeps all AdamW state; 1: each rank keeps and updates 1/N of it (ZeRO-1)")
    p.add_argument("--expect-world-size", type=int, default=None,
                   help="fail unless the job has exactly this many processes (default: check against "
                        "the launcher's SLURM_NTASKS / OMPI_COMM_WORLD_SIZE / PMI_SIZE)")
    p.add_argument("-h", "--hellaswag", type=int, choices=(0, 1), default=0,
                   help="1: HellaSwag accuracy (acc_norm) at every val interval and at the end, logged as eval")
    p.add_argument("--hellaswag-file", default=HELLASWAG_FILE,
                   help="the eval file for -h 1 (llm.c's dev/data/hellaswag.py writes it there)")
    p.add_argument("--tokenizer", default=None, help="llm.c tokenizer .bin of the data: the vocabulary of a "
                   "model built from scratch, and the decoder of the samples (default: NAME_tokenizer.bin "
                   "beside the train shards, else none: GPT-2's vocabulary, samples not decoded)")
    p.add_argument("--overwrite", action="store_true",
                   help="let a fresh run (no -y 1) delete an earlier run's checkpoints and models in the "
                        "output dir (without it, such a dir is refused)")
    p.add_argument("--allow-changes", action="store_true",
                   help="resume even where B, T, the data, the seed or the schedule differ from the "
                        "checkpoint's run (each difference is printed)")
    p.add_argument("--no-memory-check", action="store_true",
                   help="allocate even when the memory estimate exceeds the memory available")
    return p


def check_args(args):
    """Every flag's range, each message naming its flag (docs/reliability.md has the table)."""
    for value, flag in ((args.batch_size, "-b"), (args.seq_len, "-t"), (args.max_steps, "-x"),
                        (args.omp_threads, "--omp-threads"), (args.expect_world_size, "--expect-world-size"),
                        (args.total_batch_size, "-d"), (args.layers, "--layers"), (args.heads, "--heads"),
                        (args.channels, "--channels"), (args.max_seq_len, "--max-seq-len")):
        check_range(PROG, value, flag, 0, low_open=True)
    for value, flag in ((args.lr, "-l"), (args.warmup_iters, "-u"), (args.weight_decay, "-c"),
                        (args.grad_clip, "--grad-clip"), (args.val_every, "-v"), (args.val_batches, "-m"),
                        (args.sample_every, "-s"), (args.gen_tokens, "-g"), (args.seed, "--seed"),
                        (args.checkpoint_every, "-n"), (args.skip_update_lossz, "-sl"),
                        (args.skip_update_gradz, "-sg")):
        check_range(PROG, value, flag, 0)
    check_range(PROG, args.final_lr_frac, "-q", 0, 1)
    if not args.output_dir and args.checkpoint_every > 0:
        raise SystemExit(f"{PROG}: error: -n {args.checkpoint_every} writes checkpoints to the output dir, "
                         f"but -o is '' (none)")
    if not args.output_dir and args.resume:
        raise SystemExit(f"{PROG}: error: -y 1 resumes from the output dir, but -o is '' (none)")


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    reserve_threads(args.omp_threads)
    from numbagpt import dist, rundir  # dist imports mpi4py only under an MPI launcher; numba not yet
    progress = rundir.Progress()
    stop = rundir.StopRequest()  # from here on SIGINT and SIGTERM end the run with one line
    world = None
    try:
        try:
            world = dist.init_world(expect_size=args.expect_world_size)
        except dist.WorldSizeError as e:  # every rank found the same: rank 0 says it, all exit
            if e.rank == 0:
                print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        stop.attach(world)
        return train(args, world, progress, stop)
    except rundir.Interrupted as e:
        # Ctrl-C or SIGTERM: one line, no traceback (with several ranks, every rank stops after the
        # same step and returns normally: a rank that ended without MPI_Finalize would make the
        # launcher kill the others before rank 0 has printed)
        if world is None or world.is_master:
            if args.output_dir:  # the directory's word: the signal may have come just after a DONE
                from numbagpt import checkpoint
                progress.checkpoint = checkpoint.select(args.output_dir)[0]
            print(progress.interrupted_line(), file=sys.stderr, flush=True)
        return e.exit_status
    except (dist.CollectiveError, rundir.RunDirError) as e:
        # Every rank detected it alike (a NaN mean loss, rank 0's verdict on the output dir):
        # stop together, exit normally.
        if world.is_master:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except BaseException as e:
        if world is not None and world.size > 1:
            # This rank alone failed; the others would wait for it in the next collective forever.
            world.abort(e)  # prints "train_gpt2: rank R: error: ..." and ends every rank of the job
        if isinstance(e, (ValueError, OSError, RuntimeError)):
            print(f"{PROG}: error: {error_text(e)}", file=sys.stderr)
            return 1
        raise
    finally:
        stop.close()


def train(args, world, progress, stop):
    """Set up (output dir, device, data, model, ranks), then the loop (train_loop). `progress`
    (rundir.Progress) keeps the step and the last checkpoint, for the line a signal ends the run
    with; `stop` (rundir.StopRequest) says when a signal asks every rank to stop."""
    from numbagpt import rundir

    say = printer(world)
    lock = None
    try:
        micro_steps = micro_steps_per_step(args, world)
        train_glob, val_glob, tok_path = data_paths(args, world)
        record = run_record(args, world, micro_steps, train_glob, val_glob)
        resume_step = None
        if args.output_dir:  # the lock first: a second run on the dir is refused before any work
            lock, resume_step = rundir.open_run(args.output_dir, args.resume, args.overwrite, record,
                                                args.allow_changes, world, say)
            if args.resume and resume_step is None:
                say(f"no complete checkpoint in {args.output_dir!r}: starting from -e {args.model}")
        progress.checkpoint = resume_step
        backend = setup_device(args, world, say)
        return train_loop(args, world, progress, stop, say, backend, micro_steps,
                          (train_glob, val_glob, tok_path), record, resume_step)
    finally:
        if lock:
            lock.release()


def run_record(args, world, micro_steps, train_glob, val_glob):
    """What this run is, kept in every train state header; a resume compares it (rundir.RUN_FIELDS)."""
    from numbagpt import rundir
    return rundir.run_record(
        B=args.batch_size, T=args.seq_len, total_batch=micro_steps * world.size * args.batch_size * args.seq_len,
        seed=args.seed, train_data=str(train_glob), val_data=str(val_glob or ""), world_size=world.size,
        zero_stage=args.zero_stage, shuffle=args.shuffle, lr=args.lr, warmup=args.warmup_iters,
        max_steps=args.max_steps, final_lr_frac=args.final_lr_frac, schedule=args.lr_scheduler,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip)


def train_loop(args, world, progress, stop, say, backend, micro_steps, paths, record, resume_step):
    """The loop: eval, sample, step, log, checkpoint; then the final model."""
    import numpy as np

    from numbagpt import checkpoint
    from numbagpt.outlier import SpikeGuard
    from numbagpt.schedule import LRSchedule
    from numbagpt.step import train_step

    train_glob, val_glob, tok_path = paths
    schedule = LRSchedule(args.lr_scheduler, args.lr, args.warmup_iters, args.max_steps, args.final_lr_frac)
    guard = SpikeGuard(args.skip_update_lossz, args.skip_update_gradz)
    model, dp = load_model(args, world, backend, tok_path, say, resume_step)
    B, T = args.batch_size, args.seq_len
    train_loader, val_loader, tok = open_data(args, world, model.config, train_glob, val_glob, tok_path, say)
    tokens_per_step = micro_steps * world.size * B * T
    say(f"train: {train_glob} | val: {val_glob} | B={B} T={T} | processes {world.size} | "
        f"micro-steps {micro_steps} | tokens/step {tokens_per_step:,}")
    say(f"lr schedule: {schedule.describe()}")
    say(guard.describe())
    if args.overfit_single_batch:
        say(f"overfitting a single batch: every step trains on the first {tokens_per_step:,} tokens of {train_glob}")
    start_step = 0
    if resume_step is not None:
        start_step, windows = checkpoint.load_state(args.output_dir, resume_step, model, world, train_loader, guard)
        say(f"resumed from step {start_step} of {args.output_dir}")
        if not windows and (args.skip_update_lossz or args.skip_update_gradz):
            say("note: the checkpoint holds no spike-guard windows (llm.c's, or an older numbagpt's): "
                "-sl/-sg score nothing until they have refilled")
    progress.step = start_step
    log = open_log(args, world, resume_step=start_step if resume_step is not None else None)
    keep_tokenizer(args, world, tok_path)
    hellaswag = open_hellaswag(args)
    rng = np.random.default_rng(args.seed)

    t_start = time.perf_counter()
    for step in range(start_step, args.max_steps + 1):
        last = step == args.max_steps
        if val_loader and (step % args.val_every == 0 or last):
            evaluate(model, val_loader, args.val_batches, world, log, step, say)
        if hellaswag and (args.val_every > 0 and step > 0 and step % args.val_every == 0 or last):
            evaluate_hellaswag(model, hellaswag, max(4, B), world, log, step, say)
        if args.gen_tokens > 0 and args.sample_every > 0 and (step > 0 and step % args.sample_every == 0 or last):
            if tok is not None and world.is_master:
                sample(model, tok, args.gen_tokens, rng, step, say)
        if last:
            break
        t0 = time.perf_counter()
        if args.overfit_single_batch:
            train_loader.reset()
        batches = [train_loader.next_batch() for _ in range(micro_steps)]
        result = train_step(model, batches, lr=schedule(step), t=step + 1, dp=dp, grad_clip=args.grad_clip,
                            weight_decay=args.weight_decay, skip=guard.check)
        dt = time.perf_counter() - t0
        log_step(result, step, args.max_steps, dt, tokens_per_step, world.size, log, say, guard)
        progress.step = step + 1
        stop.check()  # a signal on some rank: every rank stops here, after the same step
        if args.output_dir and args.checkpoint_every > 0 and (step + 1) % args.checkpoint_every == 0:
            if checkpoint.save(args.output_dir, step + 1, model, world, train_loader, args.seed, run=record,
                               guard=guard):
                say(f"checkpoint at step {step + 1} in {args.output_dir}")
            progress.checkpoint = step + 1

    if args.output_dir and world.is_master:
        path, written = checkpoint.save_final(args.output_dir, args.max_steps, model)
        say(f"wrote {path}" if written else f"final model: {path} (the checkpoint at step {args.max_steps})")
    if log:
        log.close()
        plot_log(log.name, say)
    say(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------- set-up

def printer(world):
    """print() on rank 0, flushing every line (under a launcher stdout is a block-buffered pipe);
    a no-op on the other ranks."""
    if world.is_master:
        return lambda *a, **k: print(*a, **k, flush=True)
    return lambda *a, **k: None


def setup_device(args, world, say):
    """Threads, this rank's device, the banner; with several ranks also the MPI lines, and the
    kernels compiled once into the shared cache. Returns the backend."""
    import numba

    from numbagpt.backend import get_backend
    from numbagpt.step import warm_up

    # Threads per rank: --omp-threads, else this host's cores shared by the ranks running on it.
    use_threads(args.omp_threads or max(1, numba.config.NUMBA_NUM_THREADS // world.local_size))
    backend = get_backend(args.device)
    world.setup_device(backend)  # a GPU: this rank's, before anything is allocated on it
    say(f"numbagpt | device {args.device} ({backend.device_name()}) | processes {world.size} | threads/process {numba.get_num_threads()}")
    if world.size > 1:
        say(f"MPI: {world.describe_mpi()} | ZeRO stage {args.zero_stage} | buffers: {world.transport}")
        describe_ranks(world, numba.get_num_threads(), say)
        # Numba's on-disk cache (cache=True) is shared by the ranks. Rank 0 compiles every kernel
        # first; the others wait at a barrier, then load the compiled code from the cache, instead
        # of compiling the same functions N times at once and racing to write the same cache files.
        with world.rank0_first():
            warm_up(backend)
    return backend


def describe_ranks(world, threads, say):
    """One line per rank (gathered to rank 0), and a warning for hosts running more threads than cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    rows = world.gather((world.rank, world.host, world.local_rank, threads, cores, world.device))
    if not world.is_master:
        return
    for rank, host, local_rank, t, c, device in rows:
        say(f"  rank {rank}: host {host} | local rank {local_rank} | threads {t} (of {c} usable cores) | {device}")
    by_host = {}
    for _, host, _, t, c, _ in rows:
        used, _ = by_host.get(host, (0, c))
        by_host[host] = (used + t, c)
    for host, (used, c) in by_host.items():
        if used > c:
            say(f"warning: {host} runs {used} threads on {c} cores: ranks x --omp-threads should not "
                f"exceed the cores (check the launcher's binding too; see docs/distributed.md)")


def micro_steps_per_step(args, world):
    """-d / (B*T*processes): the micro-steps whose gradients one optimizer step accumulates."""
    per_micro = args.batch_size * args.seq_len * world.size
    total = args.total_batch_size or per_micro
    if total % per_micro:
        raise ValueError(f"-d/--total-batch-size {total} is not a multiple of B*T*processes = "
                         f"{args.batch_size}*{args.seq_len}*{world.size} = {per_micro}")
    return total // per_micro


def data_paths(args, world):
    """(train glob, val glob, tokenizer path): the flags, else the built-in Shakespeare. The
    tokenizer: --tokenizer, else the NAME_tokenizer.bin beside the train shards, else None."""
    from numbagpt import data
    from numbagpt.config import tokenizer_next_to

    if args.train_data is not None:
        return args.train_data, args.val_data, args.tokenizer or tokenizer_next_to(args.train_data)
    # Rank 0 prepares the data once; the others wait, then find it in the cache.
    with world.rank0_first():
        train_glob, val_glob, tok_path = data.ensure_builtin_data(verbose=world.is_master)
    return train_glob, args.val_data or val_glob, args.tokenizer or tok_path


def model_config(args, tok_path):
    """The config of a model built from scratch: -e's descriptor with the shape flags over it, and
    the vocabulary of the data's tokenizer file (GPT-2's without one)."""
    from numbagpt.config import GPT2_VOCAB, build_config, tokenizer_vocab_size

    V = tokenizer_vocab_size(tok_path) if tok_path else GPT2_VOCAB
    return build_config(args.model, V, layers=args.layers, heads=args.heads, channels=args.channels,
                        max_seq_len=args.max_seq_len)


def load_model(args, world, backend, tok_path, say, resume_step):
    """The model (built from scratch, a model file, or the checkpoint at `resume_step`), on every
    rank rank 0's weights, with this rank's optimizer shard, once the memory check has passed.
    Returns (model, DataParallel)."""
    from numbagpt import checkpoint, formats
    from numbagpt.config import is_descriptor
    from numbagpt.dist import DataParallel, partition
    from numbagpt.layout import format_memory, memory_estimate, num_parameters
    from numbagpt.model import GPT2

    shape_flags = [f"--{n.replace('_', '-')}" for n in ("layers", "heads", "channels", "max_seq_len")
                   if getattr(args, n) is not None]
    scratch = is_descriptor(args.model)
    if shape_flags and not scratch:
        raise ValueError(f"-e {args.model} is a model file, whose shape is fixed: drop {', '.join(shape_flags)} "
                         f"(they shape a model built from scratch from a descriptor)")
    # The config from the descriptor or the file's header: the checks below run before any allocation.
    path = checkpoint.model_path(args.output_dir, resume_step) if resume_step is not None else args.model
    cfg = model_config(args, tok_path) if scratch and resume_step is None else formats.read_model_header(path)[0]
    if args.seq_len > cfg.max_seq_len:
        raise ValueError(f"-t/--seq-len {args.seq_len} exceeds the model's max_seq_len {cfg.max_seq_len}"
                         + (" (--max-seq-len)" if scratch else ""))
    n = num_parameters(cfg)
    start, end = partition(n, world.size)[world.rank] if args.zero_stage == 1 else (0, n)
    shaped = "".join(f" {flag} {getattr(args, flag[2:].replace('-', '_'))}" for flag in shape_flags)
    say(f"model: {args.model}{' +' + shaped if shaped else ''} | {cfg.describe()} | parameters {n:,}")
    say(format_memory(memory_estimate(cfg, args.batch_size, args.seq_len, optimizer_params=end - start,
                                      recompute=args.recompute)) + f" | -r {args.recompute}")
    if not args.no_memory_check:  # before the parameters, gradients, AdamW moments and activations exist
        check_memory(args, world, backend, cfg, end - start)
    if resume_step is None and scratch:
        model = GPT2(cfg, backend=backend, recompute=args.recompute)
        model.init_weights(args.seed)
    else:
        model = GPT2.from_file(path, backend=backend, recompute=args.recompute)
    dp = DataParallel(world, model, args.zero_stage)
    dp.broadcast_parameters()  # every rank starts from rank 0's weights, whatever it initialised or loaded
    model.set_optimizer_shard(*dp.shard)   # the parameters whose AdamW moments and update this rank owns
    say(f"optimizer: ZeRO-{args.zero_stage} | AdamW m+v of {end - start:,} parameters per rank: "
        f"{dp.optimizer_bytes() / 2**20:.1f} MiB")
    return model, dp


def check_memory(args, world, backend, cfg, optimizer_params):
    """Refuse (memory.MemoryCheckError) when this rank's buffers exceed the free memory of its device,
    or those of this host's ranks the memory available on the host when the buffers are there,
    naming the largest -b that fits."""
    from numbagpt import memory
    from numbagpt.layout import memory_estimate

    ranks = world.local_size if memory.host_buffers(backend) else 1   # a device per rank

    def need(b):
        return ranks * memory_estimate(cfg, b, args.seq_len, optimizer_params=optimizer_params,
                                       recompute=args.recompute)["total"]
    on_host = f" x {ranks} ranks on this host" if ranks > 1 else ""
    memory.check_fits(need, args.batch_size, f"{args.model} with B={args.batch_size} T={args.seq_len}{on_host}",
                      backend=backend)


def open_data(args, world, cfg, train_glob, val_glob, tok_path, say):
    """(train loader, val loader or None, tokenizer or None): this rank's slice of every batch."""
    from numbagpt import data, tokenizer

    B, T = args.batch_size, args.seq_len
    shuffle = bool(args.shuffle) and not args.overfit_single_batch
    train_loader = data.DataLoader(train_glob, B, T, rank=world.rank, world_size=world.size,
                                   shuffle=shuffle, seed=args.seed, vocab_size=cfg.vocab_size)
    val_loader = None
    if val_glob and args.val_every > 0 and args.val_batches > 0:
        val_loader = data.DataLoader(val_glob, B, T, rank=world.rank, world_size=world.size,
                                     vocab_size=cfg.vocab_size)
    tok = tokenizer.load_tokenizer(tok_path) if tok_path else None
    if tok is not None and tok.vocab_size < cfg.vocab_size:  # it could not decode every sampled id
        if args.tokenizer:
            raise ValueError(f"--tokenizer {tok_path} has {tok.vocab_size} tokens, fewer than the model's "
                             f"vocabulary V={cfg.vocab_size}")
        say(f"note: {tok_path} has {tok.vocab_size} tokens, the model V={cfg.vocab_size}: samples are not decoded")
        tok = None
    return train_loader, val_loader, tok


def open_log(args, world, resume_step):
    """main.log in the output dir (rank 0), or None. Resuming, it keeps the lines before `resume_step`
    (a killed run's later lines are written again by this one) and appends."""
    from numbagpt import rundir

    if not args.output_dir or not world.is_master:
        return None
    path = os.path.join(args.output_dir, "main.log")
    if resume_step is not None:
        rundir.keep_log_until(path, resume_step)
    return open(path, "a" if resume_step is not None else "w")


def keep_tokenizer(args, world, tok_path):
    """Copy the tokenizer into the output dir as tokenizer.bin, where bin/sample_gpt2 finds it."""
    from numbagpt import atomic
    if not (args.output_dir and tok_path and world.is_master):
        return
    dst = os.path.join(args.output_dir, "tokenizer.bin")
    if not (os.path.exists(dst) and os.path.samefile(tok_path, dst)):
        with open(tok_path, "rb") as f:
            atomic.write_bytes(dst, f.read())   # complete or absent, like every file of the run


def open_hellaswag(args):
    """The HellaSwag examples for -h 1 (None for -h 0)."""
    from numbagpt import hellaswag
    if not args.hellaswag:
        return None
    if not os.path.isfile(args.hellaswag_file):
        raise FileNotFoundError(f"-h 1: no HellaSwag eval file at {args.hellaswag_file} (llm.c's "
                                f"dev/data/hellaswag.py writes it; --hellaswag-file FILE, docs/use.md)")
    return hellaswag.read_eval_file(args.hellaswag_file)


def plot_log(log_path, say):
    """loss.png next to main.log, when matplotlib is installed."""
    from numbagpt import plot
    png = os.path.join(os.path.dirname(log_path), "loss.png")
    try:
        plot.plot_logs([log_path], png)
    except RuntimeError:
        say("(pip install matplotlib, and the next run also draws its loss curve into loss.png)")
    except plot.LogError as e:
        say(f"no loss.png: {e}")
    else:
        say(f"wrote {png}")


# ---------------------------------------------------------------------------------------------- the loop

def evaluate(model, val_loader, batches, world, log, step, say):
    """The val loss: the mean over `batches` batches from the start of the val split, and the ranks."""
    import numpy as np
    val_loader.reset()
    losses = [model.forward(*val_loader.next_batch()) for _ in range(batches)]
    val_loss = world.mean(float(np.mean(losses)))
    say(f"val loss {val_loss:.4f}")
    if log:
        log.write(f"s:{step} tel:{val_loss:.4f}\n")
        log.flush()


def sample(model, tok, gen_tokens, rng, step, say):
    """A sample from the end-of-text token, as bin/sample_gpt2 makes it (numbagpt.generate, KV cache)."""
    from numbagpt.generate import generate
    prompt = [tok.eot_token] if tok.eot_token is not None else [0]
    ids = list(generate(model, prompt, gen_tokens, rng))
    say(f"--- sample at step {step} ---\n{tok.decode(ids)}\n---")


def evaluate_hellaswag(model, examples, rows, world, log, step, say):
    """HellaSwag acc_norm over the ranks, logged as llm.c does (s:STEP eval:ACC)."""
    from numbagpt import hellaswag
    correct, total = hellaswag.evaluate(model, examples, world, rows)
    say(f"HellaSwag: {correct}/{total} = {correct / total:.4f}")
    if log:
        log.write(f"s:{step} eval:{correct / total:.4f}\n")
        log.flush()


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
        log.write(f"s:{step} trl:{r.loss:.4f} lr:{r.lr:.6f} norm:{r.norm:.2f}\n")
        if r.skipped:  # a line of its own, llm.c's `s:STEP key:value` shape, so llm.c's log readers still parse
            log.write(f"s:{step} skip:{r.skipped.z:.2f}\n")
        log.flush()


if __name__ == "__main__":
    raise SystemExit(main())
