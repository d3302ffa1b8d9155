"""What bin/train_gpt2 leaves for using the model: HellaSwag at the val interval (-h 1, logged as llm.c's
`eval`), loss.png next to main.log, tokenizer.bin for bin/sample_gpt2, in-training samples made by
numbagpt.generate (the KV-cache decoder)."""
import importlib.util
import re

import numpy as np
import pytest

from numbagpt.files import data, formats
from numbagpt import generate, hellaswag
from numbagpt.cli import sample, train
from numbagpt.config import GPT2Config
from numbagpt.model import GPT2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    text = "".join(f"KING:\nMy lord, the {w} is come.\n\nQUEEN:\nThen let it in.\n\n" for w in ("night", "day") * 40)
    paths = data.prepare(str(d), text, tokenizer="char", val_fraction=0.1, name="play", verbose=False)
    vocab = len(formats.read_tokenizer_file(paths["tokenizer"])[0])
    model = GPT2(GPT2Config(max_seq_len=32, vocab_size=vocab, num_layers=1, num_heads=2, channels=16))
    model.init_weights(0)
    model.save(str(d / "micro.bin"))
    rng = np.random.default_rng(0)
    examples = [(int(rng.integers(0, 4)), rng.integers(0, vocab, 5).tolist(),
                 [rng.integers(0, vocab, 3).tolist() for _ in range(4)]) for _ in range(6)]
    hellaswag.write_eval_file(d / "hs.bin", examples)
    return paths, str(d / "micro.bin"), str(d / "hs.bin")


def test_hellaswag_plot_tokenizer_and_samples(tmp_path, capsys, corpus, monkeypatch):
    paths, model_path, hs_path = corpus
    calls = []
    real = generate.generate
    monkeypatch.setattr(generate, "generate", lambda *a, **k: calls.append(k.get("use_cache", True)) or real(*a, **k))
    out = tmp_path / "out"
    code = train.main(["-i", paths["train"], "-j", paths["val"], "--tokenizer", paths["tokenizer"], "-e", model_path,
                       "-o", str(out), "-b", "4", "-t", "16", "--omp-threads", "1", "-x", "6", "-v", "3",
                       "-m", "1", "-s", "3", "-g", "8", "-h", "1", "--hellaswag-file", hs_path])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    log = (out / "main.log").read_text().splitlines()
    evals = [line for line in log if " eval:" in line]
    assert [line.split()[0] for line in evals] == ["s:3", "s:6"]  # llm.c: not at step 0, at the end
    for line in evals:
        assert re.fullmatch(r"s:\d+ eval:\d\.\d{4}", line)
    assert re.search(r"HellaSwag: \d/6 = \d\.\d{4}", cap.out)
    assert calls == [True, True]  # the samples at steps 3 and 6, with the cache
    if importlib.util.find_spec("matplotlib") is not None:   # without it, a note says how to get the picture
        assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG" and f"wrote {out / 'loss.png'}" in cap.out
    assert (out / "tokenizer.bin").read_bytes() == open(paths["tokenizer"], "rb").read()
    # bin/sample_gpt2 finds the run's last model and its tokenizer from the output directory alone
    assert sample.main(["-e", str(out), "-g", "10", "--prompt", "KING:"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("KING:") and "tokenizer char" in cap.err


def test_hellaswag_file_missing_is_one_line(tmp_path, capsys, corpus):
    paths, model_path, _ = corpus
    code = train.main(["-i", paths["train"], "-e", model_path, "-o", "", "-x", "1", "-t", "16", "-h", "1",
                       "--hellaswag-file", str(tmp_path / "none.bin")])
    err = capsys.readouterr().err
    assert code == 1 and "-h 1: no HellaSwag eval file at" in err and "dev/data/hellaswag.py" in err
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "--hellaswag" in capsys.readouterr().out


@pytest.mark.parametrize("example,why", [
    ((0, [1], [[2], [99]]), "example 0: token id 99 is outside the model's vocabulary of"),
    ((0, [1], [[2], [3] * 40]), "example 0: a completion of 40 tokens does not fit the model's maxT 32"),
], ids=["vocabulary", "maxT"])
def test_a_hellaswag_file_the_model_cannot_score_is_refused_before_the_first_step(tmp_path, capsys, corpus,
                                                                                 example, why):
    """-h 1 checks every example against the model at start-up: the run used to train up to its
    first eval (-v steps) and die there, with no model written."""
    paths, model_path, _ = corpus
    bad = tmp_path / "bad.bin"
    hellaswag.write_eval_file(bad, [(0, [1], [[2], [3]]), example])
    out = tmp_path / "out"
    code = train.main(["-i", paths["train"], "-e", model_path, "-o", str(out), "-x", "4", "-v", "2", "-t", "16",
                       "-b", "2", "--omp-threads", "1", "-h", "1", "--hellaswag-file", str(bad)])
    cap = capsys.readouterr()
    assert code == 1
    assert cap.err.startswith(f"train_gpt2: error: -h 1: {bad}: {why.replace('example 0', 'example 1')}")
    assert cap.err.count("\n") == 1
    assert "step 1/" not in cap.out   # no step trained
    assert not out.exists()   # refused before main.log and the tokenizer were written there: no -o left


def test_shards_tokenized_for_another_vocabulary_are_refused(tmp_path, capsys, corpus):
    """A model whose V is not the vocabulary of the shards' own tokenizer (prepare_data's
    NAME_tokenizer.bin), e.g. GPT-2 fine-tuned on char shards: it trained on ids that mean other
    tokens, with a note about samples. Now one line, before the first step."""
    paths, _, _ = corpus
    other = GPT2(GPT2Config(max_seq_len=32, vocab_size=100, num_layers=1, num_heads=2, channels=16))
    other.init_weights(0)
    other.save(str(tmp_path / "v100.bin"))
    code = train.main(["-i", paths["train"], "-e", str(tmp_path / "v100.bin"), "-o", "", "-x", "1", "-t", "16",
                       "-b", "2", "--omp-threads", "1"])
    cap = capsys.readouterr()
    assert code == 1
    assert cap.err.startswith(f"train_gpt2: error: {paths['tokenizer']}, the tokenizer of the train shards, has ")
    assert "the model -e " in cap.err and "V=100: the shards were tokenized for another vocabulary" in cap.err
    assert "step 1/" not in cap.out


def test_gpt2_shards_fine_tune_a_model_whose_vocabulary_extends_gpt2s(tmp_path, capsys):
    """Added tokens after GPT-2's 50257 (V = 50260): the GPT-2 shards' ids are the model's own, so the
    run trains (the samples are token ids: GPT-2's tokenizer cannot decode the added ones)."""
    d = tmp_path / "data"
    data.prepare(str(d), "To be, or not to be, that is the question. " * 40, tokenizer="gpt2", val_fraction=0.1,
                 name="play", verbose=False)
    model = GPT2(GPT2Config(max_seq_len=16, vocab_size=50260, num_layers=1, num_heads=2, channels=16))
    model.init_weights(0)
    model.save(str(tmp_path / "v50260.bin"))
    code = train.main(["-i", str(d / "play_train.bin"), "-e", str(tmp_path / "v50260.bin"), "-o", "", "-x", "1",
                       "-t", "16", "-b", "2", "--omp-threads", "1", "-s", "0", "-v", "0"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "has 50257 tokens, the model V=50260: samples are printed as token ids" in cap.out


def test_two_prepared_sets_with_different_tokenizers_in_one_glob_are_refused(tmp_path, capsys):
    """prepare_data twice into one directory (two texts, char tokenizers of different characters), then
    -i "dir/*_train.bin": the shards' ids meant different characters and the run trained on the mix
    with the first set's tokenizer. Sets tokenized alike (same tokenizer bytes) still mix."""
    d = tmp_path / "data"
    data.prepare(str(d), "abcdefgh " * 200, tokenizer="char", val_fraction=0.1, name="one", verbose=False)
    data.prepare(str(d), "stuvwxyz " * 200, tokenizer="char", val_fraction=0.1, name="two", verbose=False)
    argv = ["-i", str(d / "*_train.bin"), "-o", "", "-x", "1", "-t", "16", "-b", "2", "--omp-threads", "1",
            "--layers", "1", "--heads", "2", "--channels", "16", "--max-seq-len", "16", "-s", "0"]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err == (f"train_gpt2: error: {d / 'two_train.bin'} and {d / 'one_train.bin'} were tokenized differently "
                   f"({d / 'two_tokenizer.bin'} and {d / 'one_tokenizer.bin'} differ): give -i/-j globs that "
                   f"match one prepared set\n")
    data.prepare(str(d), "abcdefgh " * 300, tokenizer="char", val_fraction=0.1, name="two", verbose=False)
    assert train.main(argv) == 0, capsys.readouterr().err
