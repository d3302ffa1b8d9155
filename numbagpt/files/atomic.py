"""Atomic file writes: a file numbagpt writes either exists complete or does not exist at all.

    with atomic_write("out/model_00000100.bin") as f:
        f.write(header); f.write(params)

writes `out/.model_00000100.bin.<pid>.tmp`, flushes and fsyncs it, renames it over the final name
(rename is atomic on POSIX) and fsyncs the directory so the rename itself survives a power cut.
If anything fails on the way, the temporary file is removed and the final name is untouched; the
error names the final file and says how far the write got (disk full, read-only, ...).

Test hook (documented in docs/reliability.md): NUMBAGPT_TEST_CRASH="<glob>@<point>[:pause]" makes
the process that writes a file whose name matches <glob> SIGKILL itself at <point>: a byte offset
into the file (the bytes before it are flushed and fsynced first), `end` (all bytes written and
fsynced, not yet renamed) or `renamed` (renamed, the directory not yet fsynced). With `:pause` it
writes its pid to $NUMBAGPT_TEST_PAUSED and sleeps there instead, for a test to kill it from outside.
"""
import contextlib
import errno
import fnmatch
import os
import signal
import time

import numpy as np
import xxhash

TMP_SUFFIX = ".tmp"
CRASH_ENV = "NUMBAGPT_TEST_CRASH"
PAUSED_ENV = "NUMBAGPT_TEST_PAUSED"


class WriteError(OSError):
    """Writing a file failed; the message names the file and the cause. `errno` is the original's."""


def temp_path(path):
    """The temporary name `path` is written under: hidden, same directory, this process's pid."""
    d, name = os.path.split(os.fspath(path))
    return os.path.join(d, f".{name}.{os.getpid()}{TMP_SUFFIX}")


def is_temp_name(name):
    """True for a temporary name left by a writer that died (see remove_stale_temps)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def remove_stale_temps(directory):
    """Delete the temporary files that killed writers left in `directory`. Only safe while holding the
    directory's lock (rundir.lock_dir), when no other writer can be using one. Returns their names."""
    removed = []
    for name in sorted(os.listdir(directory)):
        if is_temp_name(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    return removed


def fsync_dir(directory):
    """fsync a directory, so the renames in it are durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _crash_point(path):
    """The hook's point for `path` (an int offset, 'end' or 'renamed') and whether to pause, or None."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return None
    pattern, _, point = spec.rpartition("@")
    point, _, action = point.partition(":")
    if not fnmatch.fnmatch(os.path.basename(path), pattern):
        return None
    return (point if point in ("end", "renamed") else int(point)), action == "pause"


def _crash(pause):
    if pause:
        paused = os.environ.get(PAUSED_ENV)
        if paused:
            with open(paused + ".part", "w") as f:
                f.write(str(os.getpid()))
            os.replace(paused + ".part", paused)
        while True:
            time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)


def describe_os_error(e):
    """`strerror`, with what it usually means for a write."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{e.strerror} (the disk or quota is full)"
    if e.errno == errno.EFBIG:
        return f"{e.strerror} (over the file size limit, ulimit -f)"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{e.strerror} (the directory is not writable)"
    return e.strerror or str(e)


class _Writer:
    """A binary file that counts and hashes its bytes (XXH3-64: `hexdigest()`, what a checkpoint's DONE
    records, without reading the file back) and applies the crash hook at its offset."""

    def __init__(self, f, crash):
        self.f = f
        self.written = 0
        self.crash = crash
        self.hash = xxhash.xxh3_64()

    def hexdigest(self):
        return self.hash.hexdigest()

    def write(self, data):
        """Write bytes or any contiguous array (as its raw little-endian bytes, no copy)."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        mv = memoryview(data).cast("B")
        crash = self.crash
        if crash is not None and isinstance(crash[0], int) and self.written <= crash[0] < self.written + len(mv):
            self.f.write(mv[:crash[0] - self.written])
            self.f.flush()
            os.fsync(self.f.fileno())
            _crash(crash[1])
        try:
            self.f.write(mv)
        except OSError:
            self.written = os.fstat(self.f.fileno()).st_size  # what reached the file before the error
            raise
        self.written += len(mv)
        self.hash.update(mv)


@contextlib.contextmanager
def atomic_write(path):
    """Context manager yielding a writer (`.write(bytes or array)`) whose bytes replace `path` atomically
    when the block ends without an exception; on an exception `path` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    tmp = temp_path(path)
    crash = _crash_point(path)
    writer, renaming = None, False
    try:
        with open(tmp, "wb") as f:
            writer = _Writer(f, crash)
            yield writer
            if crash is not None and isinstance(crash[0], int):  # an offset at or past the end
                crash = ("end", crash[1])
            f.flush()
            os.fsync(f.fileno())
        if crash is not None and crash[0] == "end":
            _crash(crash[1])
        renaming = True
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, WriteError):
            raise
        done = f" after {writer.written:,} bytes" if writer is not None and writer.written else ""
        # every byte written and synced, the rename onto the name refused (a directory there, say)
        what = "cannot put the written file in its place" if renaming else f"cannot write{done}"
        err = WriteError(f"{path}: {what}: {describe_os_error(e)}")
        err.errno = e.errno
        raise err from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if crash is not None and crash[0] == "renamed":
        _crash(crash[1])
    fsync_dir(directory)


def make_dir(directory, what="directory", error=OSError, hint=""):
    """os.makedirs(directory) and a check that this process may write in it, or `error` naming the
    directory as `what` and why, with `hint` after it."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise error(f"{directory}: cannot create the {what}: {describe_os_error(e)}{hint}") from None
    if not os.access(directory, os.W_OK):
        raise error(f"{directory}: the {what} is not writable{hint}")


def check_writable(path, flag):
    """Raise WriteError naming `path` and `flag` where a file could not be written there (a directory
    by that name, no such directory above it, or one this process may not write in): checked before
    the long work whose result goes there, not after it."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    why = ("is a directory" if os.path.isdir(path) else
           f"no such directory: {parent}" if not os.path.isdir(parent) else
           f"no permission to write in {parent}" if not os.access(parent, os.W_OK) else None)
    if why:
        raise WriteError(f"{path}: cannot write it ({flag}): {why}")


def write_bytes(path, data=b""):
    """Atomically replace `path` with `data` (bytes); an empty file by default (DONE markers)."""
    with atomic_write(path) as f:
        if len(data):
            f.write(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))
