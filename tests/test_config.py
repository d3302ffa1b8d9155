"""Model descriptors (llm.c's table), custom shapes over them, vocabulary padding, tokenizer lookup."""
import os

import numpy as np
import pytest

from numbagpt.config import GPT2_VOCAB, build_config, descriptor_shape, is_descriptor, pad_vocab, preset
from numbagpt.files.tokenizer import CharTokenizer, tokenizer_next_to, tokenizer_vocab_size


# llm.c's train_gpt2.cu, gpt2_set_hyperparameters / gpt3_set_hyperparameters, written out.
@pytest.mark.parametrize("name, L, NH, C, maxT", [
    ("d6", 6, 6, 384, 1024), ("d12", 12, 12, 768, 1024), ("d24", 24, 16, 1024, 1024),
    ("d36", 36, 20, 1280, 1024), ("d48", 48, 25, 1600, 1024), ("d60", 60, 30, 1920, 1024),
    ("d72", 72, 30, 2880, 1024), ("d84", 84, 36, 3456, 1024), ("gpt2:d12", 12, 12, 768, 1024),
    ("gpt3:c768", 12, 12, 768, 2048), ("gpt3:c2048", 24, 16, 2048, 2048), ("gpt3:c2560", 32, 32, 2560, 2048),
    ("tiny", 4, 4, 128, 256)])
def test_descriptors_follow_llmc(name, L, NH, C, maxT):
    assert descriptor_shape(name) == (L, NH, C, maxT)
    cfg = preset(name)
    assert (cfg.num_layers, cfg.num_heads, cfg.channels, cfg.max_seq_len) == (L, NH, C, maxT)
    assert (cfg.vocab_size, cfg.padded_vocab_size) == (GPT2_VOCAB, 50304)


@pytest.mark.parametrize("name, msg", [("d7", "unsupported GPT-2 depth d7"), ("gpt3:c100", "unsupported GPT-3"),
                                       ("big", "neither a model file nor a descriptor"),
                                       ("gpt3:c5140", "5140 channels are not whole heads of 128")])
def test_bad_descriptors(name, msg):
    with pytest.raises(ValueError, match=msg):
        descriptor_shape(name)


def test_the_help_offers_every_descriptor_that_builds_and_no_other():
    from numbagpt.config import DESCRIPTOR_HELP, GPT2_DEPTHS, GPT3_CHANNELS
    offered = [f"gpt3:{c}" for c in DESCRIPTOR_HELP.split("gpt3:cN (")[1].rstrip(")").split(", ")]
    builds = []
    for name in ["tiny"] + [f"d{d}" for d in GPT2_DEPTHS] + [f"gpt3:c{c}" for c in GPT3_CHANNELS]:
        try:
            preset(name)
            builds.append(name)
        except ValueError:
            pass
    assert offered == [n for n in builds if n.startswith("gpt3:")] and "gpt3:c5140" not in builds
    with pytest.raises(ValueError) as refused:   # a width that is no model offers the same
        preset("gpt3:c999")
    assert [f"gpt3:{c}" for c in str(refused.value).split("choose one of ")[1].split(", ")] == offered
    assert all(n in DESCRIPTOR_HELP for n in builds if not n.startswith("gpt3:"))


def test_vocab_padding_is_llmc_multiple_of_128():
    assert [pad_vocab(v) for v in (1, 66, 128, 129, 50257)] == [128, 128, 128, 256, 50304]


def test_a_vocabulary_needs_no_padding_where_it_is_a_multiple_or_the_file_says_so(tmp_path):
    """Vp = V is a model (V a multiple of 128, or a model file whose header says Vp = V, as an
    unpadded export's); Vp < V and C not a multiple of NH are not."""
    from numbagpt.config import GPT2Config
    from numbagpt.model import GPT2
    assert GPT2Config(16, 128, 1, 2, 16).padded_vocab_size == 128
    cfg = GPT2Config(16, 40, 1, 2, 16, padded_vocab_size=40)
    model = GPT2(cfg)
    model.init_weights(0)
    model.save(tmp_path / "m.bin")
    loaded = GPT2.from_file(tmp_path / "m.bin")
    assert loaded.config == cfg and np.array_equal(loaded.parameters_host(), model.parameters_host())
    assert np.isfinite(loaded.forward(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32)))
    with pytest.raises(ValueError, match="padded_vocab_size 39 < vocab_size 40"):
        GPT2Config(16, 40, 1, 2, 16, padded_vocab_size=39)
    with pytest.raises(ValueError, match="channels 16 not divisible by num_heads 3"):
        GPT2Config(16, 40, 1, 3, 16)


def test_custom_shape_alone_and_over_a_preset():
    cfg = build_config(layers=4, heads=4, channels=64, max_seq_len=32, vocab_size=66)
    assert cfg.describe() == "L=4 NH=4 C=64 maxT=32 V=66 Vp=128"
    over = build_config("d12", layers=2)  # only L changes
    assert (over.num_layers, over.num_heads, over.channels, over.max_seq_len) == (2, 12, 768, 1024)


@pytest.mark.parametrize("kw, msg", [(dict(channels=100, heads=3),
                                      r"channels C=100 \(--channels\) is not divisible by heads NH=3 \(--heads\)"),
                                     (dict(heads=5), r"C=128 \(-e tiny\) is not divisible by heads NH=5 \(--heads\)"),
                                     (dict(layers=0), "--layers must be positive"),
                                     (dict(max_seq_len=-4), "--max-seq-len must be positive")])
def test_custom_shape_errors_name_the_flags(kw, msg):
    with pytest.raises(ValueError, match=msg):
        build_config(**kw)


def test_is_descriptor(tmp_path):
    f = tmp_path / "d12"
    f.write_bytes(b"")
    assert is_descriptor("d12") and is_descriptor("gpt3:c768")
    assert not is_descriptor("model.bin") and not is_descriptor(str(f))


def test_tokenizer_next_to_the_shards(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    for name in ("play_train.bin", "play_val.bin", "web_train_000001.bin"):
        (tmp_path / name).write_bytes(b"")
    tok.save(str(tmp_path / "play_tokenizer.bin"))
    assert tokenizer_next_to(str(tmp_path / "play_train.bin")) == str(tmp_path / "play_tokenizer.bin")
    assert tokenizer_next_to(str(tmp_path / "play_*.bin")) == str(tmp_path / "play_tokenizer.bin")
    # not named after the shards, but the directory's only tokenizer
    assert tokenizer_next_to(str(tmp_path / "web_train_*.bin")) == str(tmp_path / "play_tokenizer.bin")
    assert tokenizer_vocab_size(str(tmp_path / "play_tokenizer.bin")) == 9  # 8 characters + EOT
    os.remove(tmp_path / "play_tokenizer.bin")
    assert tokenizer_next_to(str(tmp_path / "play_train.bin")) is None
    assert tokenizer_next_to(str(tmp_path / "nothing_*.bin")) is None


def test_shards_and_tokenizer_named_with_glob_characters(tmp_path):
    """prepare_data names the shards after the text file: `my[1].txt` gives `my[1]_train.bin`, which
    -i must open as the file it is (as a glob it matched nothing: 'no data shard matches', and the
    tokenizer beside it was missed, so the model took GPT-2's vocabulary)."""
    from numbagpt.files.data import DataLoader
    from numbagpt.files.formats import write_shard
    d = tmp_path / "run [a]"
    d.mkdir()
    write_shard(d / "my[1]_train.bin", np.arange(100) % 9)
    CharTokenizer.from_text("hello world").save(str(d / "my[1]_tokenizer.bin"))
    assert DataLoader(str(d / "my[1]_train.bin"), 2, 4).files == [str(d / "my[1]_train.bin")]
    assert tokenizer_next_to(str(d / "my[1]_train.bin")) == str(d / "my[1]_tokenizer.bin")
    write_shard(d / "my1_train.bin", np.arange(100) % 9)   # the glob still globs where no file has its name
    assert DataLoader(str(d / "my[1]_train.bin"), 2, 4).files == [str(d / "my[1]_train.bin")]
    glob_dir = str(d).replace("[", "[[]")   # the directory's own brackets escaped, as a user would
    assert DataLoader(glob_dir + "/my[0-9]_train.bin", 2, 4).files == [str(d / "my1_train.bin")]
