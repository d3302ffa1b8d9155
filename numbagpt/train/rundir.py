"""The output directory of a training run: one run at a time, no stale checkpoints, checked resumes.

- `lock_dir`: an exclusive fcntl.flock on `<dir>/.lock` for the whole run. The kernel releases it when
  the process ends, however it ends (kill -9 included), so there is never a stale lock to clean up;
  a second run on the directory is refused at once, naming the holder's pid.
- `check_fresh`: a run that does not resume refuses a directory holding an earlier run's files
  (checkpoints, models) unless told to overwrite them, so old DONE markers never vouch for new files.
  What a run deletes (`Cleanup`) it deletes once it is sure to start: a refused command deletes nothing.
- `run_record` / `compare_runs`: what the run was (batch, sequence length, data, seed, processes,
  ZeRO stage, schedule), kept in every train state header; resume names each difference.
- `keep_log_until`: main.log rewritten (atomically) without the lines past the step resumed from.
"""
import contextlib
import errno
import fcntl
import os
import signal
import socket
import sys
import time

from ..files import atomic
from . import checkpoint

LOCK_NAME = ".lock"


class RunDirError(RuntimeError):
    """The output directory can't be used as asked; the message says why and what to do."""


class DirLock:
    """An exclusive flock on `<directory>/.lock`, held until `release()` or the process ends."""

    def __init__(self, directory):
        self.path = os.path.join(directory, LOCK_NAME)
        self.fd = None

    def acquire(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot create the lock file: {atomic.describe_os_error(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"{os.path.dirname(self.path) or '.'}: in use by another training run "
                                  f"({holder}); wait for it to end, or give another -o") from None
            raise RunDirError(f"{self.path}: cannot lock: {atomic.describe_os_error(e)}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def _read_holder(fd):
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def lock_dir(directory):
    """Create `directory` if needed and lock it for this process (DirLock), or raise RunDirError."""
    atomic.make_dir(directory, "output directory", RunDirError)
    return DirLock(directory).acquire()


def _summary(names):
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def check_fresh(directory, overwrite, model=None, resuming=False):
    """For a run that starts from scratch (no -y 1, or -y 1 with no checkpoint to resume): refuse a
    directory holding another run's files, or, with `overwrite`, return their names, for Cleanup to
    delete once the run starts; never the model file -e names (`model`), which is read before."""
    names = checkpoint.run_files(directory)
    if not names:
        return []
    if not overwrite:
        hint = ("no complete checkpoint to resume (-y 1)" if resuming else "give -y 1 to resume it")
        raise RunDirError(f"{directory}: holds the files of an earlier run ({_summary(names)}); "
                          f"{hint}, --overwrite to delete them and start over, or another -o")
    source = _model_file(model)
    for name in names:
        if source and os.path.realpath(os.path.join(directory, name)) == source:   # however it is spelled
            raise RunDirError(f"-e {model}: {source} is a file of the earlier run in {directory}, which "
                              f"--overwrite would delete before it is read: copy it out of {directory} "
                              f"first, or train into another -o")
    return names


def _model_file(model):
    """The real path of the model file -e `model` names (symbolic links resolved), or None (a
    descriptor, or nothing there: the model's loading says so)."""
    from ..config import is_descriptor
    if not model or is_descriptor(model):
        return None
    try:
        return os.path.realpath(checkpoint.resolve_model(model, say=lambda line: None))
    except OSError:
        return None


class Cleanup:
    """What a run deletes from its output directory (rank 0), once its data, its model and the memory
    check have passed (`apply`), so that a command refused on the way deletes nothing: an earlier
    run's files (`names`, --overwrite) and the DONE files of newer checkpoints that did not verify
    (`broken`: their files are rewritten when the run gets there). `finished`: the final model of a
    finished run resumed with its own -x (nothing to train)."""

    def __init__(self, directory, names=(), broken=(), finished=None):
        self.directory, self.names, self.broken, self.finished = directory, list(names), list(broken), finished
        self.created = False   # the run made the directory: one that never started leaves none behind

    def remove_unused(self):
        """Remove the directory the run made, where the run never started (its lock file alone). Called
        with the lock held; a failure (another process put a file there) leaves the directory and
        never hides the error that refused the run."""
        with contextlib.suppress(OSError):
            if self.created and os.listdir(self.directory) in ([], [LOCK_NAME]):
                for name in os.listdir(self.directory):
                    os.remove(os.path.join(self.directory, name))
                os.rmdir(self.directory)

    def apply(self, say):
        for step in self.broken:
            checkpoint.discard(self.directory, step)
        if self.names:
            discard_files(self.directory, self.names)
            n = len(self.names)
            say(f"--overwrite: removed {n} file{'s' if n != 1 else ''} of an earlier run from {self.directory}")


def discard_files(directory, names):
    for name in sorted(names, key=lambda n: not n.startswith("DONE_")):
        try:
            os.remove(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    atomic.fsync_dir(directory)


# ----------------------------------------------------------------------------------------------
# the run record

# record key: what the user changes to change it (a flag, or what it stands for); the order of the messages
RUN_FIELDS = {
    "B": "-b", "T": "-t", "total_batch": "tokens per step", "seed": "--seed", "train_data": "-i",
    "train_shards": "-i's files",
    "val_data": "-j", "world_size": "number of processes", "zero_stage": "-z", "shuffle": "--shuffle",
    "lr": "-l", "warmup": "-u", "max_steps": "-x", "final_lr_frac": "-q", "schedule": "lr schedule",
    "overfit_single_batch": "-a",
    "weight_decay": "-c", "beta1": "--beta1", "beta2": "--beta2", "grad_clip": "--grad-clip", "model": "-e",
    "layers": "--layers", "heads": "--heads", "channels": "--channels", "max_seq_len": "--max-seq-len",
}
# A resume can't honour these however it is told to: each rank's state holds its shard of AdamW state,
# and the checkpoint's model has its shape.
HARD_FIELDS = ("world_size", "zero_stage", "layers", "heads", "channels", "max_seq_len")


def run_record(**fields):
    """The run record: `fields` (RUN_FIELDS keys) as JSON-able values, None dropped."""
    unknown = set(fields) - set(RUN_FIELDS)
    if unknown:
        raise ValueError(f"unknown run record fields: {', '.join(sorted(unknown))}")
    return {k: v for k, v in fields.items() if v is not None}


def _same(key, old, new):
    from ..files.formats import hash_text
    if isinstance(old, str) and isinstance(new, str) and old.startswith("sha256:") and not new.startswith("sha256:"):
        return old == hash_text(new)
    if key in ("train_data", "val_data", "model") and old and new:   # one file, however it was spelled
        return _spelled_alike(old, new)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return float(old) == float(new)
    return old == new


def _spelled_alike(old, new):
    """Paths (or globs) that name the same files: equal once absolute with their symbolic links
    resolved (a glob's, its directory's; a descriptor, d12, is compared as it is)."""
    from ..config import is_descriptor
    if is_descriptor(old) or is_descriptor(new):
        return old == new
    return _real(old) == _real(new)


def _real(path):
    if os.path.exists(path):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))


def compare_runs(recorded, current):
    """[(key, line)] for each field that differs between the recorded run and this one, the line
    e.g. "-b: 4 in the checkpoint, 8 now" (fields only one side has are not compared: records of
    older versions, llm.c's files)."""
    return [(key, f"{flag}: {recorded[key]!r} in the checkpoint, {current[key]!r} now")
            for key, flag in RUN_FIELDS.items()
            if key in recorded and key in current and not _same(key, recorded[key], current[key])]


def check_resume(recorded, current, allow_changes, where):
    """Raise RunDirError naming every change between the checkpoint's run and this one, unless
    `allow_changes` (then return the lines, to print as warnings). HARD_FIELDS (processes, ZeRO stage
    and the model's shape) can't change, whatever the flag."""
    changes = compare_runs(recorded or {}, current)
    hard = [line for key, line in changes if key in HARD_FIELDS]
    if hard:
        raise RunDirError(f"{where}: cannot resume: " + "; ".join(hard) +
                          " (the checkpoint's model has its shape, and each process's state holds its share of "
                          "AdamW state: resume with the same)")
    lines = [line for _, line in changes]
    if lines and not allow_changes:
        raise RunDirError(f"{where}: this run differs from the checkpoint's: " + "; ".join(lines) +
                          " (give the same flags, or --allow-changes to resume anyway)")
    return lines


# ----------------------------------------------------------------------------------------------
# main.log

def _log_step(line):
    head = line.split(" ", 1)[0]
    if head.startswith("s:"):
        try:
            return int(head[2:])
        except ValueError:
            return None
    return None


class RunLog:
    """main.log, written a record at a time: a record (one or more whole lines) goes out in one
    unbuffered write, and a write that fails (a full disk) is undone, so the file only ever holds whole
    lines; the OSError then names the file."""

    def __init__(self, path, append=False):
        self.name = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)

    def write(self, text):
        data = text.encode("utf-8")
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)   # no partial line left behind
            except OSError:
                pass
            raise OSError(f"{self.name}: cannot write: {atomic.describe_os_error(e)}; the log keeps its whole "
                          f"lines") from None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def keep_log_until(path, step):
    """Rewrite main.log (atomically) keeping only the lines of steps before `step`, the step resumed
    from: the lines a killed run wrote after its last checkpoint are repeated by the resumed run. A
    torn last line (no newline: a crash mid-write) goes too: the next record would be glued to it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return 0
    kept = [ln for ln in lines if ((s := _log_step(ln)) is None or s < step) and ln.endswith("\n")]
    if len(kept) != len(lines):
        atomic.write_text(path, "".join(kept))
    return len(lines) - len(kept)


# ----------------------------------------------------------------------------------------------
# a run's start in its output directory, on every rank

def open_run(out_dir, resume, overwrite, record, allow_changes, world, say):
    """Rank 0 locks `out_dir` for the run, removes killed writers' temporaries and picks the
    checkpoint to resume from (the newest that verifies, saying why it skipped newer ones), then
    checks its run record against `record`; a fresh run refuses (or, with `overwrite`, will clear) an
    earlier run's files. Every rank gets the outcome: (lock or None, resume step or None, Cleanup), or
    the same RunDirError."""
    outcome, lock = None, None
    if world.is_master:
        created = not os.path.isdir(out_dir)
        try:
            lock = lock_dir(out_dir)
            atomic.remove_stale_temps(out_dir)
            step, cleanup = _pick(out_dir, resume, overwrite, record, allow_changes, say)
            cleanup.created = created
            outcome = ("ok", (step, cleanup))
        except (RunDirError, OSError) as e:
            if lock:
                lock.release()
            outcome = ("error", str(e))
    outcome = world.bcast(outcome)
    if outcome[0] == "error":
        raise RunDirError(outcome[1])
    return (lock, *outcome[1])


def _pick(out_dir, resume, overwrite, record, allow_changes, say):
    """(resume step or None, Cleanup): open_run's choice, on rank 0."""
    step, notes, broken = None, [], []
    if resume:
        step, header, notes = checkpoint.select(out_dir)
        for line in notes:
            say(line)
        broken = [s for s in checkpoint.done_steps(out_dir) if step is None or s > step]
        finished = checkpoint.final_model(out_dir, record["max_steps"])
        if finished and (step is None or step < record["max_steps"]):   # the run ended past its last checkpoint
            if step is not None:   # other flags are refused as for any resume (--allow-changes: said)
                for line in check_resume(header.get("run"), record, allow_changes,
                                         checkpoint.state_path(out_dir, step, 0)):
                    say(f"warning: resuming with a change (--allow-changes): {line}")
            return None, Cleanup(out_dir, finished=finished)
    if step is None:   # a fresh run, -y 1 or not: an earlier run's files are kept unless --overwrite
        return None, Cleanup(out_dir, check_fresh(out_dir, overwrite, record.get("model"), resuming=resume), broken)
    changes = check_resume(header.get("run"), record, allow_changes, checkpoint.state_path(out_dir, step, 0))
    for line in changes:
        say(f"warning: resuming with a change (--allow-changes): {line}")
    if header.get("run") and "beta2" not in header["run"]:
        say(f"note: the checkpoint is an older numbagpt's, whose AdamW ran betas 0.9 / 0.999 and -c on every "
            f"parameter; this run goes on with --beta1 {record['beta1']:g} --beta2 {record['beta2']:g} and -c on "
            f"the matrices alone (llm.c's train_gpt2.cu)")
    check_steps_left(out_dir, step, record["max_steps"])
    if notes:
        say(f"resuming from the checkpoint at step {step} instead")
    return step, Cleanup(out_dir, broken=broken)


def check_steps_left(out_dir, step, max_steps):
    """A resume from `step` (a -x changed by --allow-changes) must not start past -x (the run would write
    the checkpoint's weights as the model of step -x), and must leave no model file of the earlier run
    past -x: the run would never replace it, and -e DIR (the newest model) would take it for this run's
    final model. A resume at -x itself, a finished run's, does nothing and says so."""
    if step > max_steps:
        raise RunDirError(f"{out_dir}: the checkpoint is at step {step}, past -x {max_steps}: no step left to "
                          f"train (a larger -x trains on from it; sample_gpt2 -e {out_dir} uses its model)")
    past = [s for s in checkpoint.model_steps(out_dir) if s > max_steps]
    if past:
        raise RunDirError(f"{checkpoint.model_path(out_dir, past[-1])}: the earlier run's model at step {past[-1]}, "
                          f"past -x {max_steps}: this run would not replace it, and -e {out_dir} would take it "
                          f"for this run's final model: move it out of {out_dir} first")


# ----------------------------------------------------------------------------------------------
# Ctrl-C, SIGTERM and SIGHUP

class Progress:
    """Where a run is, for the line a signal ends it with."""

    def __init__(self):
        self.step = None          # steps completed
        self.checkpoint = None    # the newest complete checkpoint's step

    def interrupted_line(self):
        step = "start-up" if self.step is None else f"step {self.step}"
        ckpt = "none" if self.checkpoint is None else f"step {self.checkpoint}"
        return f"interrupted at {step}; last complete checkpoint: {ckpt}"


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal: SIGINT (Ctrl-C), SIGTERM (kill, Slurm's scancel, a launcher
    passing either on) or SIGHUP (the terminal that started it closed). `signum` makes the exit
    status, 128 + signum: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self):
        return 128 + self.signum


class StopRequest:
    """SIGINT, SIGTERM and SIGHUP end a run with one line, whichever arrives (a terminal's Ctrl-C, `kill`,
    the launcher forwarding either, the terminal closing: the line then goes wherever stderr was
    sent, a log file, and main.log keeps every step the run finished). Alone (or before `attach`
    gives the world), a signal raises Interrupted at once. With several ranks it must stop them all
    at the same step, not each inside a different collective: the first signal only sets a flag that
    `check()` combines over the ranks once a step; a second one raises at once. (The handler runs
    between two kernels: a running Numba kernel holds the interpreter until it returns.) An
    Interrupted raised where Python drops it (inside a ctypes callback: Numba's compiler calls back
    into Python) is raised again by `check()` at the end of the step, and `got` tells the commands
    that a signal came, whatever error follows."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.world = None
        self.signum = None     # the first signal, while it waits for the end of the step
        self.raised = False    # Interrupted is on its way: the run is printing its line and ending
        # a signal the process was told to ignore stays ignored: `nohup` ignores SIGHUP so that the run
        # outlives its terminal
        self.previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS
                         if signal.getsignal(s) is not signal.SIG_IGN}
        self.unraisable = sys.unraisablehook
        sys.unraisablehook = self._dropped

    def attach(self, world):
        self.world = world

    def start_run(self, world):
        """A run begins under this request (train() calls it): the ranks its signals stop, unless
        attach() gave them, and a signal an earlier run already ended on (its Interrupted raised)
        forgotten, so the request serves run after run; a signal not yet acted on stays pending."""
        if self.world is None:
            self.world = world
        if self.raised:
            self.signum, self.raised = None, False

    def _handler(self, signum, frame):
        if self.raised:   # a second Ctrl-C while the line is being written must not cut it short
            return
        first = self.signum is None
        self.signum = self.signum or signum
        if self.world is None or self.world.size == 1 or not first:
            self._raise(signum)

    def _dropped(self, unraisable):
        """An Interrupted that Python dropped (raised in a callback) is no error to print: check()
        raises it again; anything else goes to the hook there was."""
        if not isinstance(unraisable.exc_value, Interrupted):
            self.unraisable(unraisable)

    @property
    def got(self):
        """The signal that asked the run to stop, or None."""
        return self.signum

    def _raise(self, signum):
        self.raised = True
        raise Interrupted(signum)

    def check(self):
        """Raise Interrupted on every rank alike when any rank got a signal (one tiny allreduce per
        step). The exit status is alike too: the most serious signal's of any rank (SIGTERM, then
        SIGHUP, then SIGINT)."""
        if self.world is None or self.world.size == 1:
            if self.signum is not None:   # its Interrupted was dropped (raised inside a ctypes callback)
                self._raise(self.signum)
            return
        size = self.world.size
        n = self.world.sum(signal_weight(self.signum, size))
        if n:
            self._raise(max((s for s in self.SIGNALS if signal_weight(s, size) <= n),
                            key=lambda s: signal_weight(s, size)))

    def close(self):
        """Put back the signal handlers (and the unraisable hook) there were: a signal is then what it
        was before, a notebook's Ctrl-C a KeyboardInterrupt again."""
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}
        sys.unraisablehook = self.unraisable

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def signal_weight(signum, size):
    """What a rank of `size` adds to StopRequest.check()'s sum for its signal (None: none): one
    SIGTERM outweighs the SIGHUPs and SIGINTs of every rank, one SIGHUP their SIGINTs, so the sum
    names the most serious signal any rank got."""
    return {signal.SIGINT: 1, signal.SIGHUP: size + 1, signal.SIGTERM: (size + 1) ** 2}.get(signum, 0)
