"""Round trips of every llm.c file format, and a helpful FormatError for each kind of bad file."""
import numpy as np
import pytest

from numbagpt import hellaswag
from numbagpt.config import GPT2Config
from numbagpt.files import formats
from numbagpt.files.formats import (
    HEADER_BYTES, FormatError, open_shard, read_debug_state, read_model, read_shard_header, read_state,
    read_tokenizer_file, write_debug_state, write_model, write_shard, write_state, write_tokenizer_file)
from numbagpt.layout import num_parameters

CONFIG = GPT2Config(max_seq_len=8, vocab_size=50, num_layers=2, num_heads=2, channels=8)


def _header(*values):
    h = np.zeros(256, dtype="<i4")
    h[:len(values)] = values
    return h.tobytes()


def _patch_int(path, slot, value):
    with open(path, "r+b") as f:
        f.seek(4 * slot)
        f.write(np.array([value], dtype="<i4").tobytes())


def _append(path, data=b"\0\0\0\0"):
    with open(path, "ab") as f:
        f.write(data)


def _truncate(path, nbytes=4):
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.truncate(f.tell() - nbytes)


def _params(seed=0):
    return np.random.default_rng(seed).standard_normal(num_parameters(CONFIG)).astype(np.float32)


# ---------------------------------------------------------------------------------------- model

def test_model_v3_round_trip_bit_exact(tmp_path):
    p = tmp_path / "m.bin"
    params = _params()
    write_model(p, CONFIG, params)
    assert p.stat().st_size == HEADER_BYTES + 4 * params.size
    config, got = read_model(p)
    assert config == CONFIG and config.padded_vocab_size == 128
    assert got.dtype == np.float32 and got.shape == params.shape
    assert np.array_equal(got.view(np.uint32), params.view(np.uint32))


def test_model_v5_bf16(tmp_path):
    p = tmp_path / "m5.bin"
    params = _params(1)
    upper = (params.view(np.uint32) >> 16).astype("<u2")
    with open(p, "wb") as f:
        f.write(_header(20240326, 5, 8, 50, 2, 2, 8, 128))
        f.write(upper.tobytes())
    config, got = read_model(p)
    assert config == CONFIG
    expected = (params.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert np.allclose(got, params, rtol=1e-2, atol=0)


def _special_params(seed=2):
    """Random parameters with the values whose rounding to bf16 is delicate planted among them: ties
    (to even both ways), just off a tie, subnormals, ±0, the largest finite values and those that
    round to ±inf, ±inf."""
    params = _params(seed)
    specials = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x00008000, 0x00018000, 0x807FFFFF,
                         0x00000001, 0x80000000, 0x00000000, 0x7F7F7FFF, 0x7F7F8000, 0xFF7FFFFF, 0x7F800000,
                         0xFF800000], np.uint32).view(np.float32)
    params[5:5 + specials.size] = specials
    return params


def test_model_v5_written_as_llmc_writes_it(tmp_path):
    """write_model(dtype="bfloat16") is byte for byte llm.c's train_gpt2.py write_model(..., "bfloat16"):
    its header (version 5) and each tensor as torch's `.to(torch.bfloat16).view(torch.int16)` bytes."""
    torch = pytest.importorskip("torch")
    from numbagpt.layout import PARAMETER_NAMES, parameter_layout
    params = _special_params()
    p = tmp_path / "m5.bin"
    write_model(p, CONFIG, params, dtype="bfloat16")
    header = torch.zeros(256, dtype=torch.int32)   # train_gpt2.py's write_model, line for line
    header[0] = 20240326
    header[1] = 5
    header[2], header[3], header[4], header[5], header[6] = 8, 50, 2, 2, 8
    header[7] = 128
    want = header.numpy().tobytes()
    views = parameter_layout(CONFIG).host_views(params)
    for name in PARAMETER_NAMES:     # write_tensors: wte, wpe, ln1w, ... in llm.c's order
        bf16 = torch.from_numpy(np.ascontiguousarray(views[name])).to(torch.bfloat16)
        want += bf16.view(torch.int16).numpy().tobytes()
    assert p.read_bytes() == want


def test_model_v5_round_trip(tmp_path):
    """Written as bf16 and read back: each parameter rounded to bf16 (nearest, ties to even), widened
    exactly; written again, the same bytes; a NaN stays a NaN."""
    from reference import bf16_round_ref
    params = _special_params(3)
    params[2] = np.nan
    p, q = tmp_path / "a.bin", tmp_path / "b.bin"
    write_model(p, CONFIG, params, dtype="bfloat16")
    assert p.stat().st_size == HEADER_BYTES + 2 * params.size
    config, got = read_model(p, finite=False)   # a NaN read as it is stored
    assert config == CONFIG
    with np.errstate(invalid="ignore"):
        want = bf16_round_ref(params)
    assert np.isnan(got[2]) and np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok].astype(np.float64), want[ok])
    write_model(q, CONFIG, got, dtype="bfloat16")
    assert p.read_bytes() == q.read_bytes()
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, got 'float16'"):
        write_model(q, CONFIG, params, dtype="float16")


def test_model_v5_keeps_a_nans_sign_and_upper_payload(tmp_path):
    """A NaN written as bf16 keeps its sign and the upper 7 bits of its payload, with the quiet bit
    (0x0040) set so that a payload only in the lower bits stays a NaN: (bits >> 16) | 0x0040,
    worked out here in Python ints (every NaN was written as 0x7FC0, a -NaN turned positive)."""
    nans = [0xFFC00000, 0x7F812345, 0xFFA5A5A5, 0x7F800001, 0x7FC00000]
    params = _params()
    params[:len(nans)] = np.array(nans, np.uint32).view(np.float32)
    p = tmp_path / "nan.bin"
    write_model(p, CONFIG, params, dtype="bfloat16")
    got = np.fromfile(p, dtype="<u2", offset=HEADER_BYTES, count=len(nans))
    assert [int(x) for x in got] == [0xFFC0, 0x7FC1, 0xFFE5, 0x7FC0, 0x7FC0]
    assert [int(x) for x in got] == [(b >> 16) | 0x0040 for b in nans]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_model_with_a_nan_or_an_inf_is_refused_naming_the_file_and_tensor(tmp_path, dtype):
    """Every command reads a model through read_model: a NaN or an inf in it (a model that diverged,
    a damaged file whose DONE hash was made after the damage, an llm.c file) is refused, naming the
    file, the count and the first tensor; finite=False reads it as stored."""
    from numbagpt.layout import parameter_layout
    params = _params()
    offsets = parameter_layout(CONFIG).offsets
    params[offsets["qkvb"] + 3] = np.inf
    params[offsets["lnfw"]] = np.nan
    p = tmp_path / "m.bin"
    write_model(p, CONFIG, params, dtype=dtype)
    with pytest.raises(ValueError) as e:
        read_model(p)
    assert str(e.value) == (f"{p}: 2 parameters are NaN or infinite (the first in qkvb): a model that diverged, "
                            f"or a damaged file")
    assert np.isinf(read_model(p, finite=False)[1][offsets["qkvb"] + 3])


def test_model_errors(tmp_path):
    p = tmp_path / "m.bin"
    write_model(p, CONFIG, _params())
    _patch_int(p, 0, 12345)
    with pytest.raises(FormatError, match=r"m\.bin.*magic.*expected 20240326, found 12345"):
        read_model(p)
    write_model(p, CONFIG, _params())
    _patch_int(p, 1, 4)
    with pytest.raises(FormatError, match=r"version: expected 3 or 5, found 4"):
        read_model(p)
    write_model(p, CONFIG, _params())
    _truncate(p)
    n = HEADER_BYTES + 4 * num_parameters(CONFIG)
    with pytest.raises(FormatError, match=rf"truncated model file.*expected {n} bytes.*found {n - 4}"):
        read_model(p)
    write_model(p, CONFIG, _params())
    _append(p)
    with pytest.raises(FormatError, match=rf"too long.*expected {n} bytes.*found {n + 4}"):
        read_model(p)
    write_model(p, CONFIG, _params())
    _patch_int(p, 5, 3)      # NH=3 does not divide C=8
    with pytest.raises(FormatError, match="bad model header.*not divisible"):
        read_model(p)
    write_model(p, CONFIG, _params())
    _patch_int(p, 7, 40)     # Vp < V
    with pytest.raises(FormatError, match="bad model header"):
        read_model(p)
    p.write_bytes(b"\0" * 100)
    with pytest.raises(FormatError, match="header alone is 1024 bytes, the file has 100"):
        read_model(p)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_model(tmp_path / "nope.bin")
    with pytest.raises(ValueError, match="params has"):
        write_model(p, CONFIG, _params()[:-1])


# ---------------------------------------------------------------------------------- debug state

def test_debug_state_round_trip(tmp_path):
    p = tmp_path / "d.bin"
    rng = np.random.default_rng(2)
    B, T, V = 2, 3, CONFIG.vocab_size
    x = rng.integers(0, V, (B, T)).astype(np.int32)
    y = rng.integers(0, V, (B, T)).astype(np.int32)
    logits = rng.standard_normal((B, T, V)).astype(np.float32)
    grads = _params(3)
    write_debug_state(p, B, T, x, y, logits, 3.25, grads)
    d = read_debug_state(p, CONFIG)
    assert (d["B"], d["T"]) == (B, T)
    assert np.array_equal(d["x"], x) and np.array_equal(d["y"], y)
    assert d["logits"].shape == (B, T, V) and np.array_equal(d["logits"], logits)
    assert d["loss"] == 3.25
    assert np.array_equal(d["grads"], grads)
    _patch_int(p, 1, 1)
    with pytest.raises(FormatError, match="debug state file version: expected 2, found 1"):
        read_debug_state(p, CONFIG)
    write_debug_state(p, B, T, x, y, logits, 3.25, grads)
    _append(p)
    with pytest.raises(FormatError, match="debug state does not match the model"):
        read_debug_state(p, CONFIG)
    other = GPT2Config(max_seq_len=8, vocab_size=60, num_layers=2, num_heads=2, channels=8)
    write_debug_state(p, B, T, x, y, logits, 3.25, grads)
    with pytest.raises(FormatError, match="debug state"):
        read_debug_state(p, other)


def test_a_debug_state_longer_than_the_models_context_is_refused(tmp_path):
    """A debug state of T=9 for a model of max_seq_len 8, its length the one B=1, T=9 and the model
    imply: refused before anything is sized by it, saying T exceeds the context (the length check alone
    passes it)."""
    p = tmp_path / "d.bin"
    B, T, V = 1, 9, CONFIG.vocab_size
    x = np.zeros((B, T), np.int32)
    write_debug_state(p, B, T, x, x, np.zeros((B, T, V), np.float32), 3.25, _params(3))
    assert p.stat().st_size == HEADER_BYTES + 4 * (2 * B * T + B * T * V + 1 + num_parameters(CONFIG))
    with pytest.raises(FormatError, match=r"d\.bin: debug state does not match the model .*: its T=9 exceeds "
                                          r"the model's max_seq_len 8 \(a state dumped for another model"):
        read_debug_state(p, CONFIG)


# ------------------------------------------------------------------------------------ tokenizer

def test_tokenizer_file_round_trip(tmp_path):
    p = tmp_path / "t.bin"
    table = [b"a", b"bc", "é".encode(), bytes(range(1, 256)), b"<|endoftext|>"]
    write_tokenizer_file(p, table, 4)
    assert read_tokenizer_file(p) == (table, 4)
    # version 1 has no EOT slot: llm.c assumes 50256, only for the GPT-2 vocabulary
    _patch_int(p, 1, 1)
    assert read_tokenizer_file(p) == (table, None)
    with open(p, "wb") as f:
        f.write(_header(20240328, 1, 50257))
        f.write(b"\x01x" * 50257)
    toks, eot = read_tokenizer_file(p)
    assert len(toks) == 50257 and eot == 50256


def test_tokenizer_file_errors(tmp_path):
    p = tmp_path / "t.bin"
    table = [b"a", b"bc", b"<|endoftext|>"]
    write_tokenizer_file(p, table, 2)
    _patch_int(p, 0, 20240326)
    with pytest.raises(FormatError, match="magic number for a tokenizer file: expected 20240328, found 20240326"):
        read_tokenizer_file(p)
    write_tokenizer_file(p, table, 2)
    _patch_int(p, 1, 3)
    with pytest.raises(FormatError, match="version: expected 1 or 2, found 3"):
        read_tokenizer_file(p)
    write_tokenizer_file(p, table, 2)
    _truncate(p, 1)
    with pytest.raises(FormatError, match="truncated tokenizer file: token 2 needs 13 bytes, 12 are left"):
        read_tokenizer_file(p)
    write_tokenizer_file(p, table, 2)
    _append(p, b"\x01z")
    with pytest.raises(FormatError, match="tokenizer file too long"):
        read_tokenizer_file(p)
    write_tokenizer_file(p, table, 2)
    _patch_int(p, 2, 4)
    with pytest.raises(FormatError, match="header says 4 tokens"):
        read_tokenizer_file(p)
    with pytest.raises(ValueError, match="token 1 is 0 bytes"):
        write_tokenizer_file(p, [b"a", b""], 0)
    with pytest.raises(ValueError, match="token 0 is 256 bytes"):
        write_tokenizer_file(p, [b"a" * 256], 0)


# --------------------------------------------------------------------------------------- shards

def test_shard_round_trip(tmp_path):
    p = tmp_path / "s.bin"
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    write_shard(p, tokens)
    assert p.stat().st_size == HEADER_BYTES + 2 * tokens.size
    assert read_shard_header(p) == 5
    mm = open_shard(p)
    assert isinstance(mm, np.memmap) and mm.dtype == np.uint16
    assert np.array_equal(mm, tokens)
    write_shard(p, [])
    assert read_shard_header(p) == 0 and open_shard(p, vocab_size=10).size == 0
    with pytest.raises(ValueError, match="65536 does not fit"):
        write_shard(p, [1, 65536])
    with pytest.raises(ValueError, match="-1 does not fit"):
        write_shard(p, [-1, 2])


def test_shard_errors(tmp_path):
    p = tmp_path / "s.bin"
    tokens = np.arange(100) % 50
    write_shard(p, tokens)
    _patch_int(p, 0, 20240326)
    with pytest.raises(FormatError, match=r"s\.bin: bad magic number for a data shard: expected 20240520"):
        read_shard_header(p)
    write_shard(p, tokens)
    _patch_int(p, 1, 2)
    with pytest.raises(FormatError, match="data shard version: expected 1, found 2"):
        open_shard(p)
    write_shard(p, tokens)
    _truncate(p, 2)
    with pytest.raises(FormatError, match=r"truncated data shard \(100 tokens\): expected 1224 bytes.*found 1222"):
        open_shard(p)
    write_shard(p, tokens)
    _append(p, b"\0\0")
    with pytest.raises(FormatError, match="too long data shard.*found 1226"):
        read_shard_header(p)
    bad = tokens.copy()
    bad[37] = 50
    write_shard(p, bad)
    assert open_shard(p, vocab_size=51).size == 100
    with pytest.raises(FormatError,
                       match=r"s\.bin: corrupt data shard: token at position 37 is 50, expected < vocab size 50"):
        open_shard(p, vocab_size=50)


def test_llama3_shard_readable(tmp_path):
    p = tmp_path / "l3.bin"
    tokens = np.array([5, 128000, 70000], dtype="<u4")
    with open(p, "wb") as f:
        f.write(_header(20240801, 7, 3))
        f.write(tokens.tobytes())
    mm = open_shard(p)
    assert mm.dtype == np.uint32 and np.array_equal(mm, tokens)


# ---------------------------------------------------------------------------------- train state

def test_state_round_trip(tmp_path):
    p = tmp_path / "state_00000100_00001.bin"
    rng = np.random.default_rng(4)
    m = rng.standard_normal(1000).astype(np.float32)
    v = rng.random(1000).astype(np.float32)
    big = 2 ** 40 + 12345
    write_state(p, 100, 4, 1, m, v, rng_state=big, shard_index=3, sample_index=2 ** 33 + 1,
                shuffle=True, epoch=2, seed=1337)
    s = read_state(p)
    assert (s["step"], s["world_size"], s["rank"], s["use_master_weights"], s["shuffle"]) == (100, 4, 1, 0, True)
    assert s["rng_state"] == big and s["rng_state_last_update"] == big
    assert (s["shard_index"], s["sample_index"], s["epoch"], s["seed"]) == (3, 2 ** 33 + 1, 2, 1337)
    assert np.array_equal(s["m"], m) and np.array_equal(s["v"], v)
    header = np.fromfile(p, dtype="<i4", count=256)
    assert header[0] == 20240527 and header[1] == 1 and header[10] == 100
    assert int(header[20:22].view("<u8")[0]) == big and int(header[30:32].view("<u8")[0]) == 3
    assert read_state(p, num_parameters=1000)["m"].size == 1000
    with pytest.raises(FormatError, match="truncated train state"):
        read_state(p, num_parameters=1001)
    _append(p, b"\0\0")
    with pytest.raises(FormatError, match="too long train state file"):
        read_state(p)
    _patch_int(p, 38, 0)  # no m length in the header (an llm.c file): inferred from the file's length
    with pytest.raises(FormatError, match="expected 2 float32 arrays of equal length"):
        read_state(p)
    _patch_int(p, 0, 7)
    with pytest.raises(FormatError, match="expected 20240527, found 7"):
        read_state(p)


def test_state_keeps_an_rng_state_at_the_last_update_of_its_own(tmp_path):
    """rng_state_last_update given (llm.c's slot 22..23, apart from the rng state in 20..21): written
    and read back as given (the rng state was written in its place)."""
    p = tmp_path / "state_00000001_00000.bin"
    m = np.zeros(4, np.float32)
    write_state(p, 1, 1, 0, m, m, rng_state=1, rng_state_last_update=2)
    s = read_state(p)
    assert (s["rng_state"], s["rng_state_last_update"]) == (1, 2)
    header = np.fromfile(p, dtype="<i4", count=256)
    assert int(header[20:22].view("<u8")[0]) == 1 and int(header[22:24].view("<u8")[0]) == 2


@pytest.mark.parametrize("world_size, rank", [(0, 0), (1, 1), (2, 2), (2, -1)])
def test_a_state_whose_rank_is_not_one_of_its_processes_is_refused(tmp_path, world_size, rank):
    """The header's rank must be one of its world_size processes, 0 <= rank < world_size (rank 1 of 1
    is past the last); the last rank of 2 reads back."""
    p = tmp_path / "state_00000001_00000.bin"
    m = np.zeros(4, np.float32)
    write_state(p, 1, world_size, rank, m, m)
    with pytest.raises(FormatError, match=rf"bad train state header: rank {rank} of {world_size} processes"):
        read_state(p)
    write_state(p, 1, 2, 1, m, m)   # the last rank of 2: read back
    assert (read_state(p)["world_size"], read_state(p)["rank"]) == (2, 1)


@pytest.mark.parametrize("index", [4, -1])
def test_a_spike_guard_window_whose_index_is_outside_it_is_refused(tmp_path, index):
    """A detector's index (its oldest value, the next one replaced) must lie in its window,
    0 <= index < W: index W would stop the resumed run with an IndexError at its first full-window
    step, -1 would replace the newest value instead of the oldest. Refused as the header is read, so a
    checkpoint holding it is skipped; the last slot, W - 1, reads back."""
    p = tmp_path / "state_00000001_00000.bin"
    m = np.zeros(4, np.float32)
    detector = dict(buffer=[1.0, 2.0, 3.0, 4.0], count=4, index=index, sum=10.0, sum_sq=30.0)
    write_state(p, 1, 1, 0, m, m, detectors=[detector])
    with pytest.raises(FormatError, match=rf"{p}: bad train state file: the outlier detectors after the arrays "
                                          rf"\(slot 11: 72 bytes\) don't parse at byte 0 of them"):
        formats.read_state_header(p)
    write_state(p, 1, 1, 0, m, m, detectors=[dict(detector, index=3)])
    assert read_state(p)["detectors"] == [dict(detector, index=3)]


@pytest.mark.parametrize("read, what", [
    (formats.read_model, "model file"), (formats.read_debug_state_header, "debug state file"),
    (formats.read_tokenizer_file, "tokenizer file"), (formats.read_shard_header, "data shard"),
    (formats.read_state_header, "train state file"), (hellaswag.read_eval_file, "HellaSwag eval file"),
])
def test_every_reader_names_a_directory_or_a_missing_file(tmp_path, read, what):
    """A directory (a glob or a flag pointing at one) or a missing path: one line naming it and what it
    should have been (a directory was '[Errno 21] Is a directory: ...')."""
    with pytest.raises(IsADirectoryError) as e:
        read(str(tmp_path))
    assert str(e.value) == f"{tmp_path}: a directory, not a {what}"
    with pytest.raises(FileNotFoundError) as e:
        read(str(tmp_path / "missing.bin"))
    assert str(e.value) == f"{tmp_path / 'missing.bin'}: no such file ({what})"
