"""Small training inputs the end-to-end tests share: a char-level play corpus with a micro model sized
for its vocabulary (the bin/train_gpt2 tests), and random-token shards for the micro fixture model."""
import numpy as np

from numbagpt.files import data, formats
from numbagpt.config import GPT2Config
from numbagpt.files.formats import write_shard
from numbagpt.model import GPT2


def play_corpus(d, words=("night", "day", "morning", "evening"), repeats=60, **config):
    """Char-level shards of a repetitive play text in directory `d` (prepare_data's files, tokenizer
    beside them) and `d`/micro.bin, a micro model (init_weights(0); GPT2Config's `config`, default
    maxT=32, L=2, NH=2, C=32) for its vocabulary: (paths, model path, vocabulary size)."""
    text = "".join(f"KING:\nMy lord, the {w} is come.\n\nQUEEN:\nThen let it in.\n\n" for w in tuple(words) * repeats)
    paths = data.prepare(str(d), text, tokenizer="char", val_fraction=0.1, name="play", verbose=False)
    vocab = len(formats.read_tokenizer_file(paths["tokenizer"])[0])
    config = dict(dict(max_seq_len=32, num_layers=2, num_heads=2, channels=32), **config)
    model = GPT2(GPT2Config(vocab_size=vocab, **config))
    model.init_weights(0)
    model_path = str(d / "micro.bin")
    model.save(model_path)
    return paths, model_path, vocab


def token_shards(d, val=True):
    """d/train.bin (1500 tokens) and, with `val`, d/val.bin (400), uniform over tests/fixtures/
    micro_model.bin's V=97 (rng seed 0); returns d."""
    rng = np.random.default_rng(0)
    write_shard(d / "train.bin", rng.integers(0, 97, 1500))
    if val:
        write_shard(d / "val.bin", rng.integers(0, 97, 400))
    return d
