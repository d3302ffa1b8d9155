"""llm.c's binary file formats (docs/formats.md): model, debug state, tokenizer, data shards, train state.

Every file is little-endian and starts with a header of 256 int32 (1024 bytes); unused slots are 0.
Readers check the magic number, the version and that the file is exactly as long as the header says;
anything else raises `FormatError`, whose message names the file and says what was expected and found.

Big arrays are read with `np.fromfile(..., offset=...)` straight into their final buffer (no second
copy). Every writer goes through `atomic.atomic_write`: the file appears complete under its name or
not at all, and a failed write (disk full, ...) raises an OSError naming the file.
"""
import glob
import hashlib
import json
import os

import numpy as np

from .atomic import atomic_write
from ..config import GPT2Config
from ..layout import num_parameters, parameter_layout

HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS

MODEL_MAGIC = 20240326
MODEL_VERSION_FP32 = 3
MODEL_VERSION_BF16 = 5
DEBUG_STATE_MAGIC = 20240327
DEBUG_STATE_VERSION = 2
TOKENIZER_MAGIC = 20240328
TOKENIZER_VERSION = 2
SHARD_MAGIC = 20240520          # GPT-2: uint16 tokens, version 1
SHARD_VERSION = 1
SHARD_MAGIC_LLAMA3 = 20240801   # llama-3: uint32 tokens, version 7 (readable only)
SHARD_VERSION_LLAMA3 = 7
STATE_MAGIC = 20240527
STATE_VERSION = 1

_SHARD_KINDS = {SHARD_MAGIC: (SHARD_VERSION, np.dtype("<u2")),
                SHARD_MAGIC_LLAMA3: (SHARD_VERSION_LLAMA3, np.dtype("<u4"))}


class FormatError(ValueError):
    """A file is not what its reader expects: wrong magic or version, wrong length, bad contents."""


# ----------------------------------------------------------------------------------------------
# helpers

def _new_header(magic, version):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = magic
    header[1] = version
    return header


def _set_u64(header, slot, value):
    """Store a uint64 in header[slot], header[slot + 1] (little-endian, as C's *(uint64*)&header[slot])."""
    header[slot:slot + 2] = np.array([value], dtype="<u8").view("<i4")


def _get_u64(header, slot):
    return int(header[slot:slot + 2].copy().view("<u8")[0])


def file_size(path, what):
    """The size of the file at `path`; a missing file or a directory is an OSError whose one line names
    the path and what it should have been (`what`: "model file", ...)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: a directory, not a {what}")
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file ({what})") from None


def _header_ints(path, what):
    """(the 256-int32 header of `path`, its size), after checking the file is long enough."""
    path = os.fspath(path)
    size = file_size(path, what)
    if size < HEADER_BYTES:
        raise FormatError(f"{path}: truncated {what}: the header alone is {HEADER_BYTES} bytes, "
                          f"the file has {size}")
    try:
        return np.fromfile(path, dtype="<i4", count=HEADER_INTS), size
    except OSError as e:
        raise OSError(f"{path}: cannot read the {what}: {e.strerror}") from None


def _read_header(path, magic, versions, what):
    """The 256-int32 header of `path` after checking the file is long enough and the magic/version."""
    path = os.fspath(path)
    header, size = _header_ints(path, what)
    if header[0] != magic:
        raise FormatError(f"{path}: bad magic number for a {what}: expected {magic}, found {int(header[0])}")
    if int(header[1]) not in versions:
        expected = " or ".join(str(v) for v in versions)
        raise FormatError(f"{path}: unsupported {what} version: expected {expected}, found {int(header[1])}")
    return header, size


def _check_size(path, what, expected, found):
    if found != expected:
        kind = "truncated" if found < expected else "too long"
        raise FormatError(f"{path}: {kind} {what}: expected {expected} bytes from its header, found {found}")


def _write_file(path, header, *arrays):
    """Write the header and the arrays to `path` atomically; returns the XXH3-64 hash of its bytes."""
    with atomic_write(path) as f:
        f.write(header)
        for a in arrays:
            f.write(np.ascontiguousarray(a))
    return f.hexdigest()


def _as(array, dtype, count, name):
    a = np.asarray(array)
    if a.size != count:
        raise ValueError(f"{name} has {a.size} elements, expected {count}")
    return np.ascontiguousarray(a.reshape(-1), dtype=dtype)


# ----------------------------------------------------------------------------------------------
# model checkpoint

def read_model_header(path):
    """(GPT2Config, version) of an llm.c model file, after checking its header and that its length is
    the one the header implies; reads 1 KiB, allocates nothing (for checks before a big allocation)."""
    path = os.fspath(path)
    header, size = _read_header(path, MODEL_MAGIC, (MODEL_VERSION_FP32, MODEL_VERSION_BF16), "model file")
    version = int(header[1])
    maxT, V, L, NH, C, Vp = (int(x) for x in header[2:8])
    try:
        config = GPT2Config(max_seq_len=maxT, vocab_size=V, num_layers=L, num_heads=NH, channels=C,
                            padded_vocab_size=Vp)
    except ValueError as e:
        raise FormatError(f"{path}: bad model header (maxT={maxT} V={V} L={L} NH={NH} C={C} Vp={Vp}): {e}") from None
    if Vp <= 0:  # 0 would silently mean "pad it"; a file must say
        raise FormatError(f"{path}: bad model header: padded vocab size Vp must be positive, found {Vp}")
    n = num_parameters(config)
    itemsize = 4 if version == MODEL_VERSION_FP32 else 2
    _check_size(path, f"model file ({config.describe()}, version {version})", HEADER_BYTES + itemsize * n, size)
    return config, version


def read_model(path, finite=True):
    """(GPT2Config, params) of an llm.c model file; params is a flat float32 array of
    `num_parameters(config)` elements in llm.c order. Reads version 3 (float32) and version 5
    (bfloat16, widened exactly to float32 by putting its 16 bits in the upper half). `finite`: a
    parameter that is NaN or infinite is a ValueError naming the file and the first tensor that
    holds one (a model that diverged, or a damaged file: every command refuses it, before it trains,
    samples, scores or exports it)."""
    path = os.fspath(path)
    config, version = read_model_header(path)
    n = num_parameters(config)
    if version == MODEL_VERSION_FP32:
        params = np.fromfile(path, dtype="<f4", count=n, offset=HEADER_BYTES)
    else:
        # the uint16 buffer is freed as soon as `astype` returns; the shift is in place
        bits = np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES).astype(np.uint32)
        np.left_shift(bits, 16, out=bits)
        params = bits.view(np.float32)
    params = params.astype(np.float32, copy=False)
    if finite:
        check_finite(path, config, params)
    return config, params


def check_finite(path, config, params):
    """ValueError naming `path` where a parameter of the flat `params` is NaN or infinite."""
    if np.isfinite(params.sum(dtype=np.float64)):   # one pass, no mask: a float32 sum cannot overflow float64
        return
    bad = ~np.isfinite(params)
    first = next(name for name, v in parameter_layout(config).views(bad).items() if v.any())
    n = int(bad.sum())
    raise ValueError(f"{path}: {n:,} parameter{'s are' if n > 1 else ' is'} NaN or infinite (the first in {first}): "
                     f"a model that diverged, or a damaged file")


MODEL_DTYPES = {"float32": MODEL_VERSION_FP32, "bfloat16": MODEL_VERSION_BF16}   # llm.c's names
# --save-precision (llm.c's --precision words): the dtype of the model files written
SAVE_PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


def save_dtype(precision):
    """The model file dtype of `precision` ("fp32" or "bf16"), or ValueError naming the choices."""
    if precision not in SAVE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(SAVE_PRECISIONS)}, got {precision!r}")
    return SAVE_PRECISIONS[precision]


def write_model(path, config, params, dtype="float32"):
    """Write an llm.c model file: version 3 (dtype "float32"), or version 5 ("bfloat16": every
    tensor rounded to bfloat16, to nearest, ties to even), byte for byte what llm.c's train_gpt2.py
    `write_model(model, path, dtype)` writes (its torch `.to(torch.bfloat16)`; see bf16_bits).
    Returns the file's XXH3-64 hash (hex)."""
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, got {dtype!r}")
    n = num_parameters(config)
    params = _as(params, "<f4", n, "params")
    header = _new_header(MODEL_MAGIC, MODEL_DTYPES[dtype])
    header[2:8] = (config.max_seq_len, config.vocab_size, config.num_layers, config.num_heads,
                   config.channels, config.padded_vocab_size)
    return _write_file(path, header, params if dtype == "float32" else bf16_bits(params))


def bf16_bits(x, chunk=1 << 20):
    """The bfloat16 bit patterns ("<u2", same size, flat) of float32 array x, rounded to nearest,
    ties to even, on the bits u: (u + 0x7FFF + bit 16 of u) >> 16. That is PyTorch's
    `.to(torch.bfloat16)` for every non-NaN value, subnormals included (kept and rounded, not
    flushed), finite values from 0x7F7F8000 up to ±inf; a NaN stays a NaN with its sign and upper
    payload, quiet bit set (torch writes its own NaN pattern: 0x7FC0 or 0xFFFF). The same rounding as
    the bf16 matmuls' (numbagpt/cpu/matmul_bf16.py). In chunks: a 124M-parameter model needs no
    more than a few MB of temporaries beyond its output."""
    u = np.ascontiguousarray(x, dtype="<f4").reshape(-1).view("<u4")
    out = np.empty(u.size, "<u2")
    for i in range(0, u.size, chunk):
        c = u[i:i + chunk]
        # the sum stays below 2^32 for every non-NaN pattern (at most 0xFF800000 + 0x8000)
        r = (c + np.uint32(0x7FFF) + ((c >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        nan = (c & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        r[nan] = (c[nan] >> np.uint32(16)) | np.uint32(0x40)
        out[i:i + chunk] = r
    return out


# ----------------------------------------------------------------------------------------------
# debug state (what llm.c's test_gpt2 compares against)

def read_debug_state_header(path, config=None):
    """(B, T, file size) of a debug state file, after checking its magic, version and B, T > 0, and,
    with `config`, that its length is the one the model and its B, T imply and T fits the model (a
    FormatError saying it does not match the model): before anything is sized by its B and T."""
    path = os.fspath(path)
    header, size = _read_header(path, DEBUG_STATE_MAGIC, (DEBUG_STATE_VERSION,), "debug state file")
    B, T = int(header[2]), int(header[3])
    if B <= 0 or T <= 0:
        raise FormatError(f"{path}: bad debug state header: B and T must be positive, found B={B} T={T}")
    if config is not None:
        P = num_parameters(config)
        expected = HEADER_BYTES + 4 * (2 * B * T + B * T * config.vocab_size + 1 + P)
        if size != expected or T > config.max_seq_len:
            why = (f"its T={T} exceeds the model's max_seq_len {config.max_seq_len}" if T > config.max_seq_len
                   else f"for B={B} T={T} and this model it should be {expected:,} bytes, it is {size:,}")
            raise FormatError(f"{path}: debug state does not match the model ({config.describe()}, {P:,} "
                              f"parameters): {why} (a state dumped for another model, or a truncated file)")
    return B, T, size


def read_debug_state(path, config):
    """dict(B, T, x (B,T) int32, y (B,T) int32, logits (B,T,V) float32, loss float, grads) where grads is
    the flat float32 gradient of all parameters in the padded layout of `config`. A file whose length
    is not the one `config` and its B, T imply (or whose T exceeds the model's), or whose x or y hold a
    token id outside the model's vocabulary, raises a FormatError."""
    path = os.fspath(path)
    B, T, _ = read_debug_state_header(path, config)
    V = config.vocab_size
    P = num_parameters(config)
    BT = B * T
    off = HEADER_BYTES
    x = np.fromfile(path, dtype="<i4", count=BT, offset=off).reshape(B, T)
    off += 4 * BT
    y = np.fromfile(path, dtype="<i4", count=BT, offset=off).reshape(B, T)
    off += 4 * BT
    logits = np.fromfile(path, dtype="<f4", count=BT * V, offset=off).reshape(B, T, V)
    off += 4 * BT * V
    loss = float(np.fromfile(path, dtype="<f4", count=1, offset=off)[0])
    off += 4
    grads = np.fromfile(path, dtype="<f4", count=P, offset=off)
    for name, ids in (("x", x), ("y", y)):
        if ids.size and not 0 <= ids.min() <= ids.max() < V:
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise FormatError(f"{path}: its {name} holds token id {bad}, outside the model's vocabulary [0, {V}) "
                              f"(a state dumped for another model, or a damaged file)")
    return dict(B=B, T=T, x=x, y=y, logits=logits, loss=loss, grads=grads)


def write_debug_state(path, B, T, x, y, logits, loss, grads):
    """Write a debug state file (version 2): x, y (B,T) int32, logits (B,T,V), loss, flat padded grads."""
    BT = B * T
    logits = np.asarray(logits)
    if logits.size % BT:
        raise ValueError(f"logits has {logits.size} elements, not a multiple of B*T={BT}")
    header = _new_header(DEBUG_STATE_MAGIC, DEBUG_STATE_VERSION)
    header[2:4] = (B, T)
    _write_file(path, header, _as(x, "<i4", BT, "x"), _as(y, "<i4", BT, "y"),
                _as(logits, "<f4", logits.size, "logits"), np.array([loss], dtype="<f4"),
                _as(grads, "<f4", np.asarray(grads).size, "grads"))


# ----------------------------------------------------------------------------------------------
# tokenizer

def read_tokenizer_file(path):
    """(token_bytes, eot_id): the byte string of every token id, and the end-of-text id.
    Version 1 files have no EOT slot; as in llm.c, EOT is then 50256 for the 50257-token GPT-2
    vocabulary, and None otherwise."""
    path = os.fspath(path)
    header, size = _read_header(path, TOKENIZER_MAGIC, (1, 2), "tokenizer file")
    n = int(header[2])
    if n <= 0:
        raise FormatError(f"{path}: bad tokenizer header: number of tokens must be positive, found {n}")
    if header[1] == 2:
        eot = int(header[3])
        if not 0 <= eot < n:
            raise FormatError(f"{path}: bad tokenizer header: EOT id must be in [0, {n}), found {eot}")
    else:
        eot = 50256 if n == 50257 else None
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        data = f.read()
    tokens = []
    pos = 0
    for i in range(n):
        if pos >= len(data):
            raise FormatError(f"{path}: truncated tokenizer file: header says {n} tokens, "
                              f"the data ends after {i} (file is {size} bytes)")
        length = data[pos]
        if length == 0:
            raise FormatError(f"{path}: bad tokenizer file: token {i} has length 0 (expected 1..255)")
        if pos + 1 + length > len(data):
            raise FormatError(f"{path}: truncated tokenizer file: token {i} needs {length} bytes, "
                              f"{len(data) - pos - 1} are left")
        tokens.append(data[pos + 1:pos + 1 + length])
        pos += 1 + length
    if pos != len(data):
        raise FormatError(f"{path}: tokenizer file too long: {n} tokens end at byte {HEADER_BYTES + pos}, "
                          f"the file has {size} bytes")
    return tokens, eot


def write_tokenizer_file(path, token_bytes, eot_id):
    """Write a tokenizer file (version 2): for each id a uint8 length (1..255) then the raw bytes."""
    parts = []
    for i, b in enumerate(token_bytes):
        b = bytes(b)
        if not 1 <= len(b) <= 255:
            raise ValueError(f"token {i} is {len(b)} bytes long; the tokenizer file allows 1..255")
        parts.append(bytes([len(b)]))
        parts.append(b)
    n = len(token_bytes)
    if not 0 <= eot_id < n:
        raise ValueError(f"EOT id {eot_id} is not a token id (0..{n - 1})")
    header = _new_header(TOKENIZER_MAGIC, TOKENIZER_VERSION)
    header[2:4] = (n, eot_id)
    with atomic_write(path) as f:
        f.write(header)
        f.write(b"".join(parts))


# ----------------------------------------------------------------------------------------------
# data shards

def check_shard_tokens(path, tokens):
    """ValueError, naming path, where write_shard could not write these tokens: one outside uint16,
    or 2**31 of them or more (the header's int32 count)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 65536):
        bad = int(tokens.max()) if tokens.max() >= 65536 else int(tokens.min())
        raise ValueError(f"{os.fspath(path)}: token {bad} does not fit a uint16 shard (0..65535)")
    if tokens.size >= 2 ** 31:
        raise ValueError(f"{os.fspath(path)}: {tokens.size:,} tokens; a shard holds fewer than 2**31")


def write_shard(path, tokens):
    """Write a GPT-2 data shard: magic 20240520, version 1, N, then N uint16 tokens."""
    tokens = np.asarray(tokens)
    check_shard_tokens(path, tokens)
    header = _new_header(SHARD_MAGIC, SHARD_VERSION)
    header[2] = tokens.size
    _write_file(path, header, tokens.reshape(-1).astype("<u2"))


def _shard_header(path):
    path = os.fspath(path)
    header, size = _header_ints(path, "data shard")
    magic = int(header[0])
    if magic not in _SHARD_KINDS:
        raise FormatError(f"{path}: bad magic number for a data shard: expected {SHARD_MAGIC} "
                          f"(or {SHARD_MAGIC_LLAMA3} for llama-3), found {magic}")
    version, dtype = _SHARD_KINDS[magic]
    if header[1] != version:
        raise FormatError(f"{path}: unsupported data shard version: expected {version}, found {int(header[1])}")
    ntok = int(header[2])
    if ntok < 0:
        raise FormatError(f"{path}: bad data shard header: negative token count {ntok}")
    _check_size(path, f"data shard ({ntok} tokens)", HEADER_BYTES + dtype.itemsize * ntok, size)
    return ntok, dtype


def shard_files(pattern):
    """The files `pattern` names, sorted: the file itself when one has that very name (a name with
    glob characters, `my[1]_train.bin`, as prepare_data writes it from `my[1].txt`), else the glob's
    matches."""
    pattern = os.fspath(pattern)
    return [pattern] if os.path.isfile(pattern) else sorted(glob.glob(pattern))


def read_shard_header(path):
    """The number of tokens in a data shard, after checking its magic, version and length."""
    return _shard_header(path)[0]


def check_tokens(path, tokens, vocab_size, model=None):
    """Raise FormatError if any token is >= vocab_size (one vectorised max; the position on failure).
    `model` names where vocab_size comes from (the model's file or descriptor), when it is a model's."""
    if tokens.size and int(tokens.max()) >= vocab_size:
        pos = int(np.argmax(tokens >= vocab_size))
        if model is not None:
            raise FormatError(f"{os.fspath(path)}: token {int(tokens[pos])} at position {pos} is outside the "
                              f"vocabulary of the model ({model}: V={vocab_size}): a shard tokenized for "
                              f"another vocabulary (check -i/-j against -e and --tokenizer)")
        raise FormatError(f"{os.fspath(path)}: corrupt data shard: token at position {pos} is "
                          f"{int(tokens[pos])}, expected < vocab size {vocab_size}")


def open_shard(path, vocab_size=None):
    """The tokens of a data shard as a read-only np.memmap (uint16; uint32 for llama-3 shards), after
    validating the header and length and, when `vocab_size` is given, that every token is < vocab_size."""
    ntok, dtype = _shard_header(path)
    if ntok == 0:
        tokens = np.zeros(0, dtype=dtype)
    else:
        tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(ntok,))
    if vocab_size is not None:
        check_tokens(path, tokens, vocab_size)
    return tokens


# ----------------------------------------------------------------------------------------------
# train state (resume), one file per rank

RUN_RECORD_SLOT = 40                     # int32 byte length of the run record, then its bytes
RUN_RECORD_MAX = 4 * (HEADER_INTS - RUN_RECORD_SLOT - 1)   # 860 bytes of JSON
DETECTORS_SLOT = 11                      # int32 byte length of the outlier detectors after the arrays
DETECTOR_HEAD = 40                       # int64 window, count, index; float64 sum, sum of squares


def _encode_detectors(detectors):
    """The outlier detectors' states (numbagpt.train.outlier.OutlierDetector.get_state(), in order) as
    bytes: per detector int64 window W, count, index, float64 sum, sum of squares, then W float64
    values. float64 as the detector keeps them, so a resumed run scores every step exactly alike."""
    parts = []
    for d in detectors:
        values = np.asarray(d["buffer"], dtype="<f8")
        parts += [np.array([values.size, d["count"], d["index"]], dtype="<i8").tobytes(),
                  np.array([d["sum"], d["sum_sq"]], dtype="<f8").tobytes(), values.tobytes()]
    return b"".join(parts)


def _decode_detectors(path, raw):
    """The list of detector states in `raw` (_encode_detectors' bytes); FormatError if they don't parse."""
    out, pos = [], 0
    while pos < len(raw):
        head = np.frombuffer(raw, dtype="<i8", count=3, offset=pos) if len(raw) - pos >= DETECTOR_HEAD else None
        window, count, index = (int(x) for x in head) if head is not None else (0, -1, -1)
        end = pos + DETECTOR_HEAD + 8 * window
        if window < 2 or not 0 <= count <= window or not 0 <= index < window or end > len(raw):
            raise FormatError(f"{path}: bad train state file: the outlier detectors after the arrays "
                              f"(slot {DETECTORS_SLOT}: {len(raw)} bytes) don't parse at byte {pos} of them")
        total, total_sq = np.frombuffer(raw, dtype="<f8", count=2, offset=pos + 24)
        values = np.frombuffer(raw, dtype="<f8", count=window, offset=pos + DETECTOR_HEAD)
        if not (np.all(np.isfinite(values)) and np.isfinite(total) and np.isfinite(total_sq) and total_sq >= 0):
            # a NaN sum would stay NaN: every later z-score NaN, the guard silently off for the run
            raise FormatError(f"{path}: bad train state file: outlier detector {len(out) + 1} after the arrays "
                              f"holds a value that is NaN, infinite or (its sum of squares) negative")
        out.append(dict(buffer=values.tolist(), count=count, index=index, sum=float(total), sum_sq=float(total_sq)))
        pos = end
    return out


def _encode_run(run):
    """The run record as compact JSON that fits the header; string values that would not fit (long
    data globs) are replaced by "sha256:" and 16 hex digits of their hash, still comparable."""
    run = dict(run)
    while True:
        raw = json.dumps(run, sort_keys=True, separators=(",", ":")).encode("utf-8")
        if len(raw) <= RUN_RECORD_MAX:
            return raw
        longest = max((k for k, v in run.items() if isinstance(v, str) and not v.startswith("sha256:")),
                      key=lambda k: len(run[k]), default=None)
        if longest is None:
            raise ValueError(f"run record of {len(raw)} bytes does not fit a train state header "
                             f"({RUN_RECORD_MAX} bytes)")
        run[longest] = hash_text(run[longest])


def hash_text(text):
    """How a run record keeps a string too long for the header: "sha256:" and 16 hex digits."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_state(path, step, world_size, rank, m, v, rng_state=0, shard_index=0, sample_index=0,
                shuffle=False, rng_state_last_update=None, epoch=0, seed=0, run=None, detectors=None,
                master=None):
    """Write a train state file (magic 20240527, version 1), llm.c's layout:

    slot 2, 3: number of processes, rank; 4: use master weights (1 when `master` is given); 5: loader
    shuffles; 10: step; 20..21: uint64 rng state; 22..23: uint64 rng state at the last update (defaults to the
    rng state); 30..31: uint64 shard index; 32..33: uint64 sample index in the shard.
    numbagpt additions in slots llm.c leaves 0 and never reads: 11 byte length of the outlier
    detectors after the arrays, 34..35 uint64 data loader epoch, 36..37 uint64 shuffle seed, 38..39
    uint64 length of m (so a truncated file is detected from its header), 40 byte length of the run
    record and 41..255 the record (`run`, a dict: what the run was, as UTF-8 JSON; see docs/formats.md).
    Then AdamW m and v (float32, this rank's shard of the parameters), then `master` when given (the
    float32 parameters of the same shard: llm.c's master weights, kept when the model file is bf16),
    then `detectors` (a list of outlier detector states: the spike guard's windows of losses and
    gradient norms; _encode_detectors).
    numbagpt's loader rebuilds its permutations from (seed, epoch), so unlike llm.c it writes no
    permutation trailer: llm.c reads a state written without shuffling (slot 5 = 0) and ignores the
    bytes after its arrays, but with shuffling it would read them as its permutation (docs/formats.md).
    Returns the file's XXH3-64 hash (hex).
    """
    m = np.asarray(m).reshape(-1)
    v = np.asarray(v).reshape(-1)
    if m.size != v.size:
        raise ValueError(f"m has {m.size} elements and v {v.size}; they must match")
    arrays = [_as(m, "<f4", m.size, "m"), _as(v, "<f4", v.size, "v")]
    if master is not None:
        arrays.append(_as(np.asarray(master).reshape(-1), "<f4", m.size, "master"))
    header = _new_header(STATE_MAGIC, STATE_VERSION)
    header[2] = world_size
    header[3] = rank
    header[4] = int(master is not None)
    header[5] = int(bool(shuffle))
    header[10] = step
    _set_u64(header, 20, rng_state)
    _set_u64(header, 22, rng_state if rng_state_last_update is None else rng_state_last_update)
    _set_u64(header, 30, shard_index)
    _set_u64(header, 32, sample_index)
    _set_u64(header, 34, epoch)
    _set_u64(header, 36, seed)
    _set_u64(header, 38, m.size)
    if run:
        raw = _encode_run(run)
        header[RUN_RECORD_SLOT] = len(raw)
        body = header[RUN_RECORD_SLOT + 1:].view(np.uint8)
        body[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    trailer = _encode_detectors(detectors or [])
    header[DETECTORS_SLOT] = len(trailer)
    return _write_file(path, header, *arrays, np.frombuffer(trailer, dtype=np.uint8))


def read_state_header(path):
    """The header fields of a train state file (read_state without m and v), after checking the file's
    length: from the header's m length when numbagpt wrote it, else (llm.c's files) that the bytes after
    the header are whole arrays of equal length. Adds `num_parameters`, `run` (dict or None) and
    `detectors` (the outlier detectors' states after the arrays, parsed: [] when there are none)."""
    path = os.fspath(path)
    header, size = _read_header(path, STATE_MAGIC, (STATE_VERSION,), "train state file")
    mw = int(header[4])
    narrays = 3 if mw else 2
    trailer = int(header[DETECTORS_SLOT])
    if trailer < 0:
        raise FormatError(f"{path}: bad train state header: slot {DETECTORS_SLOT} (bytes of outlier "
                          f"detectors) is {trailer}")
    n = _get_u64(header, 38)
    if n == 0:  # llm.c's file: infer it
        if (size - HEADER_BYTES - trailer) % (4 * narrays):
            raise FormatError(f"{path}: bad train state file: {size - HEADER_BYTES} bytes after the header, "
                              f"expected {narrays} float32 arrays of equal length")
        n = (size - HEADER_BYTES - trailer) // (4 * narrays)
    what = f"train state file ({narrays} arrays of {n} floats" + (f", {trailer} bytes of outlier detectors)"
                                                                   if trailer else ")")
    _check_size(path, what, HEADER_BYTES + 4 * narrays * n + trailer, size)
    world_size, rank = int(header[2]), int(header[3])
    if world_size < 1 or not 0 <= rank < world_size:
        raise FormatError(f"{path}: bad train state header: rank {rank} of {world_size} processes")
    run = None
    nrun = int(header[RUN_RECORD_SLOT])
    if nrun:
        raw = header[RUN_RECORD_SLOT + 1:].view(np.uint8)[:nrun].tobytes() if 0 < nrun <= RUN_RECORD_MAX else b""
        try:
            run = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise FormatError(f"{path}: bad train state header: the run record (slots {RUN_RECORD_SLOT}..) "
                              f"is not valid JSON of at most {RUN_RECORD_MAX} bytes") from None
        if not isinstance(run, dict):   # a resume would compare nothing with it
            raise FormatError(f"{path}: bad train state header: the run record (slots {RUN_RECORD_SLOT}..) is a "
                              f"JSON {type(run).__name__}, not an object")
    detectors = []
    if trailer:   # a few hundred bytes: parsed here, so that a checkpoint whose detectors don't is skipped
        raw = np.fromfile(path, dtype=np.uint8, count=trailer, offset=HEADER_BYTES + 4 * narrays * n).tobytes()
        detectors = _decode_detectors(path, raw)
    return dict(step=int(header[10]), world_size=world_size, rank=rank, use_master_weights=mw,
                shuffle=bool(header[5]), rng_state=_get_u64(header, 20),
                rng_state_last_update=_get_u64(header, 22), shard_index=_get_u64(header, 30),
                sample_index=_get_u64(header, 32), epoch=_get_u64(header, 34), seed=_get_u64(header, 36),
                num_parameters=n, narrays=narrays, run=run, detectors=detectors)


def read_state(path, num_parameters=None):
    """dict(step, world_size, rank, use_master_weights, shuffle, rng_state, rng_state_last_update,
    shard_index, sample_index, epoch, seed, num_parameters, run, detectors, m, v[, master]) of a train
    state file; `detectors` is the list of outlier detector states ([] when the file has none).
    `num_parameters`, when given, is this rank's shard size that the file must hold."""
    path = os.fspath(path)
    out = read_state_header(path)
    n, narrays = out["num_parameters"], out.pop("narrays")
    if num_parameters is not None and num_parameters != n:
        kind = "truncated" if num_parameters > n else "too long"
        raise FormatError(f"{path}: {kind} train state file: expected {narrays} arrays of {num_parameters} "
                          f"floats, it holds {n}")
    arrays = [np.fromfile(path, dtype="<f4", count=n, offset=HEADER_BYTES + 4 * i * n) for i in range(narrays)]
    out.update(m=arrays[0], v=arrays[1])
    if narrays == 3:
        out["master"] = arrays[2]
    for name, what in _STATE_ARRAYS.items():   # one pass each, no mask: a float32 sum cannot overflow float64
        if name in out and not np.isfinite(out[name].sum(dtype=np.float64)):
            raise FormatError(f"{path}: bad train state file: {what} holds NaN or infinite values")
    if n and out["v"].min() < 0:
        raise FormatError(f"{path}: bad train state file: {_STATE_ARRAYS['v']} holds negative values (a mean of "
                          f"squares)")
    return out


_STATE_ARRAYS = {"m": "AdamW's m", "v": "AdamW's v", "master": "the float32 master weights"}
