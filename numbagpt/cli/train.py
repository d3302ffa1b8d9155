"""bin/train_gpt2: train GPT-2 from scratch or from a checkpoint, llm.c's flags with long names.

The flags are numbagpt.train.TrainConfig's fields (their names, defaults, help and checks are there);
this module parses them into a TrainConfig, runs numbagpt.train.train, and turns what goes wrong into
one line. With no data flags it trains the `tiny` preset on the built-in Shakespeare.
"""
import dataclasses
import os
import sys

from numbagpt.cli import error_text, flag_error, HelpFormatter, Parser, reserve_threads, shown, world_size_error
from numbagpt.train.config import TrainConfig

PROG = "train_gpt2"


def build_parser():
    p = Parser(
        prog=PROG,
        description="Train GPT-2 with numbagpt. With no -i/-j it prepares the built-in Shakespeare "
                    "(GPT-2 BPE, cached) and trains the `tiny` preset from scratch.",
        formatter_class=HelpFormatter, add_help=False)  # -h is llm.c's HellaSwag flag
    p.add_argument("--help", action="help", help="show this help and exit")
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        m = f.metadata
        if m["group"] is not None and m["group"] not in groups:
            groups[m["group"]] = p.add_argument_group(*m["group"])
        target = groups.get(m["group"], p)
        kwargs = dict(dest=f.name, default=f.default, help=m["help"])
        if f.type is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=f.type, choices=m["choices"], metavar=m["metavar"])
        target.add_argument(*m["flags"], **kwargs)
    return p


def parse_config(argv=None):
    """The TrainConfig of the command line; a bad value exits with one line naming its flag."""
    args = build_parser().parse_args(argv)
    try:
        return TrainConfig.from_args(args)
    except ValueError as e:
        flag_error(f"{shown(PROG)}: error: {e}")


def main(argv=None):
    config = parse_config(argv)
    reserve_threads(config.omp_threads)
    from numbagpt import dist  # imports mpi4py only under an MPI launcher; numba not yet
    from numbagpt.train import checkpoint, rundir, trainer
    progress = rundir.Progress()
    stop = rundir.StopRequest()  # from here on SIGINT, SIGTERM and SIGHUP end the run with one line
    world = None
    try:
        try:
            world = dist.init_world(expect_size=config.expect_world_size)
        except dist.WorldSizeError as e:  # every rank found the same: rank 0 says it, all exit
            world_size_error(PROG, e)
            return 1
        stop.attach(world)
        trainer.train(config, world=world, progress=progress, stop=stop)
        return 0
    except rundir.Interrupted as e:
        # Ctrl-C, SIGTERM or SIGHUP: one line, no traceback (with several ranks, every rank stops after the
        # same step and returns normally: a rank that ended without MPI_Finalize would make the
        # launcher kill the others before rank 0 has printed)
        if world.is_master if world is not None else dist.launcher_rank() == 0:   # before MPI: the launcher's word
            say_interrupted(config, progress, checkpoint)
        return e.exit_status
    except (dist.CollectiveError, rundir.RunDirError) as e:
        # Every rank detected it alike (a NaN mean loss, rank 0's verdict on the output dir):
        # stop together, exit normally.
        if world.is_master:
            print(f"{shown(PROG)}: error: {e}", file=sys.stderr)
        return 1
    except BaseException as e:
        if stop.got is not None and (world is None or world.size == 1):
            # the error of a step a signal broke (Numba's compiler, interrupted inside its callback)
            say_interrupted(config, progress, checkpoint)
            return 128 + stop.got
        if world is not None and world.size > 1:
            # This rank alone failed; the others would wait for it in the next collective forever.
            world.abort(e, prog=shown(PROG))  # "train_gpt2: rank R: error: ..." and ends every rank of the job
        if isinstance(e, (ValueError, OSError, RuntimeError)) and not isinstance(e, BrokenPipeError):
            print(f"{shown(PROG)}: error: {error_text(e)}", file=sys.stderr)
            return 1
        raise
    finally:
        stop.close()


def say_interrupted(config, progress, checkpoint):
    """The line a signal ends a run with, naming the last complete checkpoint. A reader of stderr
    that the same Ctrl-C ended (`2>&1 | tee log`) does not turn the exit status into a broken pipe's."""
    if config.output_dir:  # the directory's word: the signal may have come just after a DONE
        progress.checkpoint = checkpoint.select(config.output_dir)[0]
    try:
        print(progress.interrupted_line(), file=sys.stderr, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):   # no second error at exit's flush
            os.dup2(devnull, stream.fileno())


if __name__ == "__main__":
    raise SystemExit(main())
