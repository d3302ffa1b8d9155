"""Memory available to this process, and the check every command makes before allocating the model.

`available_memory(backend)` is where the backend's buffers live. On a device that reports its memory
(`backend.memory_info()`, a GPU), the device's free memory. In host memory (the CPU backend, the CUDA
simulator, whose device arrays are NumPy arrays) the least of: the system's available memory
(psutil) and the room left under the process's cgroup limit (v2 memory.max, v1
memory.limit_in_bytes, on this cgroup and its parents). Either way $NUMBAGPT_MEMORY_LIMIT, when set
(bytes, or with a K/M/G/T suffix: a limit a user or a test imposes), caps it. `check_fits` compares it
with the exact estimate of the buffers a model allocates and refuses with the estimate, the available
amount and the largest batch size that fits.
"""
import math
import os

LIMIT_ENV = "NUMBAGPT_MEMORY_LIMIT"
_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_UNLIMITED = 2**60


class MemoryCheckError(RuntimeError):
    """The run would not fit in the memory available; the message says by how much and what fits."""


def parse_size(text, name=LIMIT_ENV):
    """'512M', '2G', '1048576' -> bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _SUFFIX and t[-1:] else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value * _SUFFIX[unit]):   # nan, inf, 1e400: no size
        raise ValueError(f"{name}={text!r}: expected a size in bytes, e.g. 512M or 2G")
    if value < 0:
        raise ValueError(f"{name}={text!r}: a size can't be negative")
    return int(value * _SUFFIX[unit])


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text in ("max", ""):
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _inactive_file(stat_path, key):
    try:
        with open(stat_path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_room(proc_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """(bytes left under the tightest cgroup memory limit, description), or (None, None) without one.
    Page cache the kernel can drop (inactive_file) counts as room."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    best = (None, None)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":   # cgroup v2
            base, limit_name, usage_name, stat_key = root, "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):   # cgroup v1
            base = os.path.join(root, "memory")
            limit_name, usage_name, stat_key = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        rel = rel.strip("/")
        # walk from the process's cgroup up to the root; in a container the path may not exist, the root does
        candidates = []
        while True:
            candidates.append(os.path.join(base, rel) if rel else base)
            if not rel:
                break
            rel = os.path.dirname(rel)
        for d in candidates:
            limit = _read_int(os.path.join(d, limit_name))
            if limit is None or limit >= _UNLIMITED // 2:
                continue
            usage = _read_int(os.path.join(d, usage_name)) or 0
            room = max(0, limit - usage + _inactive_file(os.path.join(d, "memory.stat"), stat_key))
            if best[0] is None or room < best[0]:
                best = (room, f"cgroup limit {format_bytes(limit)} in {d}")
    return best


def host_buffers(backend):
    """True when `backend`'s buffers are in host memory (the CPU's arrays; the CUDA simulator's
    device arrays are NumPy arrays too): the ranks on a host share that memory."""
    return backend.HOST_MEMORY or backend.SIMULATOR


def host_memory():
    """[(bytes, where that figure comes from)]: what the host lets this process still allocate."""
    figures = []
    try:
        import psutil
        figures.append((int(psutil.virtual_memory().available), "available system memory"))
    except ImportError:
        pass
    room, where = cgroup_room()
    if room is not None:
        figures.append((room, where))
    return figures


def available_memory(backend=None):
    """(bytes, where that figure comes from): what this process can still allocate for the buffers of
    `backend` (None: host memory), or (None, "unknown")."""
    figures = []
    info = backend.memory_info() if backend is not None else None
    if info is not None:
        used, total = info
        figures.append((total - used, f"free on {backend.device_name()}, of its {format_bytes(total)}"))
    elif backend is None or host_buffers(backend):
        figures = host_memory()
    # (a device that won't say: only the limit a user sets)
    env = os.environ.get(LIMIT_ENV)
    if env:
        figures.append((parse_size(env), f"${LIMIT_ENV}"))
    if not figures:
        return None, "unknown"
    return min(figures)


def format_bytes(n):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def largest_fitting(need, B, available):
    """The largest b in [1, B] with need(b) <= available, or 0 (need is nondecreasing in b)."""
    lo, hi = 0, B
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_fits(need, B, what, flag="-b", override="--no-memory-check", available=None, backend=None, takes=None,
               hint=None, instead="a smaller model or a machine with more memory"):
    """Raise MemoryCheckError if need(B) bytes (need: batch size -> bytes, the exact estimate of what
    will be allocated) exceed the memory available to `backend`'s buffers (available_memory);
    `what` says what is being sized. `takes` = (predicate, words): the batch sizes another flag allows
    (-d: those dividing it), which the hint keeps to; `hint`: the advice, where B is not the user's to
    change; `instead`: what to use where even a batch of 1 does not fit. Returns (need(B), available
    bytes, where that figure comes from)."""
    where = "given"
    if available is None:
        available, where = available_memory(backend)
    total = need(B)
    if available is None or total <= available:
        return total, available, where
    if hint is None:
        hint = _batch_hint(need, B, available, flag, takes, instead)
    raise MemoryCheckError(f"not enough memory for {what}: it needs {format_bytes(total)}, "
                           f"{format_bytes(available)} is available ({where}); {hint}; "
                           f"{override} to try anyway")


def _batch_hint(need, B, available, flag, takes, instead):
    """The largest batch size up to B that fits (and that `takes` allows), as advice."""
    fit = largest_fitting(need, B, available)
    if not fit:
        return f"even {flag} 1 needs {format_bytes(need(1))}: use {instead}"
    hint = f"the largest {flag} that fits is {fit}"
    if takes and not takes[0](fit):
        allowed = next((b for b in range(fit, 0, -1) if takes[0](b)), 0)
        hint += (f", and the largest that {takes[1]} also takes is {allowed}" if allowed else
                 f", but {takes[1]} takes none of 1..{fit}")
    return hint


def check_model_fits(cfg, B, T, backend, name, ranks=1, extra=0, takes=None, **estimate):
    """check_fits for a GPT-2 of `cfg` training on batches of (B, T) (memory_estimate's buffers, with
    `estimate`'s keywords: optimizer_params, recompute), plus `extra` bytes; `ranks` processes on
    this host share its memory when the buffers are in host memory. `name` says which model (-e);
    `takes`: as check_fits'."""
    from .layout import memory_estimate

    ranks = ranks if host_buffers(backend) else 1   # else a device per rank

    def need(b):
        return ranks * memory_estimate(cfg, b, T, **estimate)["total"] + extra
    on_host = f" x {ranks} ranks on this host" if ranks > 1 else ""
    instead = ("fewer ranks on this host, a smaller model or a machine with more memory" if ranks > 1 else
               "a smaller model or a machine with more memory")
    return check_fits(need, B, f"{name} with B={B} T={T}{on_host}", backend=backend, takes=takes, instead=instead)
