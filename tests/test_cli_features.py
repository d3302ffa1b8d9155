"""bin/train_gpt2's llm.c training features end to end, in-process on micro models: the lr schedules
in main.log, the spike guard on a planted spike, -a 1 overfitting one batch, models shaped from the
command line with the data's vocabulary, the startup lines, and the help's defaults."""
import math
import re
import shutil

import numpy as np
import pytest

from numbagpt.files import data, formats
from numbagpt.cli import HelpFormatter, train
from numbagpt.config import GPT2Config
from numbagpt.files.formats import write_shard
from numbagpt.model import GPT2
from numbagpt.files.tokenizer import CharTokenizer

FAST = ["-v", "0", "-g", "0", "--omp-threads", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Char-level shards of a small play text (prepare_data's files, tokenizer beside them) and a
    micro model file for its vocabulary."""
    d = tmp_path_factory.mktemp("features_corpus")
    text = "".join(f"KING:\nMy lord, the {w} is come.\n\nQUEEN:\nThen let it in.\n\n"
                   for w in ("night", "day", "morning", "evening") * 40)
    paths = data.prepare(str(d), text, tokenizer="char", val_fraction=0.1, name="play", verbose=False)
    V = len(formats.read_tokenizer_file(paths["tokenizer"])[0])
    model = GPT2(GPT2Config(max_seq_len=16, vocab_size=V, num_layers=2, num_heads=2, channels=32))
    model.init_weights(0)
    model.save(str(d / "micro.bin"))
    return dict(paths, model=str(d / "micro.bin"), vocab=V, dir=d)


def run(capsys, argv):
    code = train.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def log_lines(out_dir, key):
    return [line for line in (out_dir / "main.log").read_text().splitlines() if f" {key}:" in line]


def llmc_lr(kind, step, lr, warmup, steps, frac):
    """llm.c's llmc/schedulers.h, written out again."""
    min_lr = lr * frac
    if kind == "constant":
        return lr
    if step < warmup:
        return lr * (step + 1) / warmup
    if kind == "wsd":
        d = int(0.8 * steps)
        return lr if step < d else min_lr + (1 - math.sqrt((step - d) / (steps - d))) * (lr - min_lr)
    r = (step - warmup) / (steps - warmup)
    if kind == "cosine":
        return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (lr - min_lr)
    return lr - r * (lr - min_lr)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "wsd"])
def test_schedule_in_main_log(tmp_path, capsys, corpus, kind):
    code, out, err = run(capsys, ["-i", corpus["train"], "-e", corpus["model"], "-o", str(tmp_path), "-b", "2",
                                  "-t", "8", "-x", "10", "-k", kind, "-l", "0.01", "-u", "3", "-q", "0.2"] + FAST)
    assert code == 0, err
    lrs = [float(re.search(r"lr:(\S+)", line).group(1)) for line in log_lines(tmp_path, "trl")]
    assert lrs == [round(llmc_lr(kind, s, 0.01, 3, 10, 0.2), 6) for s in range(10)]
    assert f"lr schedule: {kind}" in out


def spike_data(d):
    """Shards where every batch of -b 2 -t 8 is the same (period 8) for 300 steps, then random."""
    rng = np.random.default_rng(0)
    period = rng.integers(0, 20, 8)
    # 300 batches of 16 tokens and the target of the last one periodic, then random ones
    tokens = np.concatenate([np.tile(period, 300 * 2), period[:1], rng.integers(0, 20, 3 * 16)])
    write_shard(d / "spike_train.bin", tokens)
    CharTokenizer([chr(ord("a") + i) for i in range(19)]).save(str(d / "spike_tokenizer.bin"))  # V = 20
    return str(d / "spike_train.bin")


@pytest.mark.parametrize("flag", ["-sl", "-sg"])
def test_spike_guard_skips_the_planted_spike(tmp_path, capsys, flag):
    train_bin = spike_data(tmp_path)
    common = ["-i", train_bin, "--layers", "1", "--heads", "2", "--channels", "16", "--max-seq-len", "8",
              "-b", "2", "-t", "8", "-l", "1e-2", "-k", "constant", "--shuffle", "0"] + FAST
    code, out, err = run(capsys, common + ["-o", str(tmp_path / "guarded"), "-x", "301", flag, "5"])
    assert code == 0, err
    what = "loss" if flag == "-sl" else "grad norm"
    assert re.findall(r"step +(\d+): skipping update due to (.*) z-score", out) == [("301", what)]
    assert "spike guard: skip the update when " in out
    assert re.search(r"step  300/301 \| loss \d+\.\d+ \([+-]\d+\.\d\dz\) .* norm \d+\.\d+ \([+-]\d+\.\d\dz\)", out)
    assert "step    1/301 | loss " in out and "(+nanz)" in out  # no score while the window fills
    skips = log_lines(tmp_path / "guarded", "skip")
    assert len(skips) == 1 and re.fullmatch(r"s:300 skip:(\d+\.\d\d)", skips[0])
    # a lone spike in a flat window scores sqrt(127) = 11.27
    assert float(skips[0].split("skip:")[1]) == pytest.approx(math.sqrt(127), abs=0.3)
    # not applied: the parameters are those after the 300 steps before it
    code, _, err = run(capsys, common + ["-o", str(tmp_path / "plain"), "-x", "300"])
    assert code == 0, err
    _, guarded = formats.read_model(str(tmp_path / "guarded" / "model_00000301.bin"))
    _, plain = formats.read_model(str(tmp_path / "plain" / "model_00000300.bin"))
    np.testing.assert_array_equal(guarded, plain)


def test_overfit_single_batch_drives_the_loss_near_zero(tmp_path, capsys, corpus):
    code, out, err = run(capsys, ["-i", corpus["train"], "-e", corpus["model"], "-o", str(tmp_path), "-b", "4",
                                  "-t", "16", "-x", "80", "-a", "1", "-l", "1e-2", "-k", "constant", "-u", "0"] + FAST)
    assert code == 0, err
    losses = [float(line.split("trl:")[1].split()[0]) for line in log_lines(tmp_path, "trl")]
    assert losses[0] > 2.0 and losses[-1] < 0.05
    assert "overfitting a single batch" in out


def test_the_trainers_adamw_is_llmcs(tmp_path, capsys, corpus):
    """train_gpt2's AdamW is llm.c's train_gpt2.cu's: betas 0.9 / 0.95, and -c decays the matrices alone
    (it ran PyTorch's 0.999 and decayed every parameter, biases and layernorms too). Two steps on one
    batch (-a 1) against the model's primitives by hand, bit for bit; --beta2 changes them."""
    argv = ["-i", corpus["train"], "-e", corpus["model"], "-b", "2", "-t", "8", "-x", "2", "-a", "1", "-l", "1e-2",
            "-k", "constant", "-c", "0.5", "--grad-clip", "0"] + FAST
    tokens = formats.open_shard(corpus["train"])[:2 * 8 + 1].astype(np.int32)
    x, y = tokens[:-1].reshape(2, 8), tokens[1:].reshape(2, 8)
    for beta2, flags in ((0.95, []), (0.999, ["--beta2", "0.999"])):
        out = tmp_path / str(beta2)
        code, _, err = run(capsys, argv + ["-o", str(out)] + flags)
        assert code == 0, err
        model = GPT2.from_file(corpus["model"])
        for t in (1, 2):
            model.forward(x, y)
            model.zero_grad()
            model.backward()
            model.update(1e-2, beta1=0.9, beta2=beta2, eps=1e-8, weight_decay=0.5, t=t)
        np.testing.assert_array_equal(formats.read_model(str(out / "model_00000002.bin"))[1],
                                      model.parameters_host())


def test_resuming_an_older_numbagpts_checkpoint_says_its_adamw_changed(tmp_path, capsys, corpus, monkeypatch):
    """A checkpoint whose run record has no betas (numbagpt before --beta1/--beta2: betas 0.9 / 0.999, -c
    on every parameter): the resume says what changes (it resumed silently); the checkpoint of a
    record that has them says nothing."""
    from numbagpt.train import trainer
    real = trainer.run_record
    argv = ["-i", corpus["train"], "-e", corpus["model"], "-o", str(tmp_path), "-b", "2", "-t", "8", "-x", "4",
            "-n", "2"] + FAST
    monkeypatch.setattr(trainer, "run_record", lambda *a: {k: v for k, v in real(*a).items()
                                                            if k not in ("beta1", "beta2", "overfit_single_batch")})
    assert run(capsys, argv)[0] == 0
    monkeypatch.undo()
    for name in ("DONE_00000004", "model_00000004.bin", "state_00000004_00000.bin"):   # killed after step 2's
        (tmp_path / name).unlink()
    code, out, err = run(capsys, argv + ["-y", "1"])
    assert code == 0 and "resumed from step 2" in out, err
    assert ("note: the checkpoint is an older numbagpt's, whose AdamW ran betas 0.9 / 0.999 and -c on every "
            "parameter; this run goes on with --beta1 0.9 --beta2 0.95 and -c on the matrices alone") in out
    code, out, err = run(capsys, argv + ["-y", "1"])   # from the checkpoint at 4 this run wrote
    assert code == 0 and "resumed from step 4" in out and "older numbagpt" not in out, err


def test_a_resume_onto_less_train_data_says_so(tmp_path, capsys, corpus):
    """--allow-changes with an -i shorter than the checkpoint's position in it: one line that says so
    (it was "sample_index 15 is not in [0, 7] for shard ...")."""
    argv = ["-i", corpus["train"], "-e", corpus["model"], "-o", str(tmp_path), "-b", "2", "-t", "8", "-x", "12",
            "-n", "10", "--shuffle", "0"] + FAST
    assert run(capsys, argv)[0] == 0
    (tmp_path / "model_00000012.bin").unlink()
    small = tmp_path / "small_train.bin"
    write_shard(str(small), formats.open_shard(corpus["train"])[:40])
    argv[1] = str(small)
    code, _, err = run(capsys, argv + ["-y", "1", "--allow-changes"])
    assert code == 1 and ("the checkpoint's position in the train data (shard 0, token 160) is past the end of "
                          "the shard given now") in err, err


def test_model_shaped_from_the_command_line_with_the_data_vocabulary(tmp_path, capsys, corpus):
    code, out, err = run(capsys, ["-i", corpus["train"], "-o", str(tmp_path), "--layers", "2", "--heads", "2",
                                  "--channels", "32", "--max-seq-len", "16", "-b", "2", "-t", "16", "-x", "2",
                                  "-d", "64"] + FAST)
    assert code == 0, err
    cfg, params = formats.read_model(str(tmp_path / "model_00000002.bin"))
    V = corpus["vocab"]
    assert (cfg.num_layers, cfg.num_heads, cfg.channels, cfg.max_seq_len) == (2, 2, 32, 16)
    assert (cfg.vocab_size, cfg.padded_vocab_size) == (V, 128)
    assert f"V={V} Vp=128" in out and "micro-steps 2 | tokens/step 64" in out
    assert "-r 1" in out and "spike guard: skip the update when loss off, grad norm off" in out


@pytest.mark.parametrize("extra, msg", [
    (["--channels", "30", "--heads", "4"], "channels C=30 (--channels) is not divisible by heads NH=4 (--heads)"),
    (["--max-seq-len", "8", "-t", "16"], "-t/--seq-len 16 exceeds the model's max_seq_len 8 (--max-seq-len)"),
    (["-e", "d7"], "unsupported GPT-2 depth d7"),
    (["-e", "nope.bin", "--layers", "3"], "nope.bin: no such model file or directory (-e)"),
    (["-e", "MODEL", "--layers", "3"], "is a model file, whose shape is fixed: drop --layers"),
    (["-e", "RUNDIR", "--layers", "3"], "a train_gpt2 output directory, whose model's shape is fixed: drop --layers"),
    (["-d", "100"], "-d/--total-batch-size 100 is not a multiple of B*T*processes = 2*16*1 = 32"),
])
def test_bad_shapes_give_clear_errors(tmp_path, capsys, corpus, extra, msg):
    extra = [{"MODEL": corpus["model"], "RUNDIR": str(corpus["dir"])}.get(a, a) for a in extra]
    try:
        code, _, err = run(capsys, ["-i", corpus["train"], "-o", "", "-b", "2", "-t", "16", "-x", "1"] + extra + FAST)
    except SystemExit as e:   # refused as the flags are parsed (TrainConfig's own check), before any work
        code, err = 1, str(e)
    assert code == 1 and msg in err and "Traceback" not in err


def test_help_states_every_default():
    parser = train.build_parser()
    fmt = HelpFormatter("train_gpt2")
    for action in parser._actions:
        if action.dest == "help":
            continue
        text = fmt._get_help_string(action)
        assert "(default" in text or "; default: " in text, action.option_strings
    text = parser.format_help()
    for flag in ("-d", "--total-batch-size", "-k", "--lr-scheduler", "-sl", "--skip-update-lossz", "-sg",
                 "--skip-update-gradz", "-a", "--overfit-single-batch", "-r", "--recompute", "--layers",
                 "--heads", "--channels", "--max-seq-len"):
        assert re.search(rf"(^|[ ,]){re.escape(flag)}[ ,\n]", text), flag


def test_m_past_the_val_split_counts_each_batch_once(tmp_path, capsys, corpus):
    """-m larger than the val split's batches: the val loss is the mean over the split's batches, each
    once, with a note (it wrapped around and counted some twice: -m 100 and the split's size gave
    different losses)."""
    from numbagpt.files.data import DataLoader
    n = DataLoader(corpus["val"], 2, 16).batches_per_epoch
    losses = []
    for m in (n, n + 1, 10 * n):
        code, out, err = run(capsys, ["-i", corpus["train"], "-j", corpus["val"], "-e", corpus["model"], "-o", "",
                                      "-b", "2", "-t", "16", "-x", "1", "-v", "1", "-m", str(m), "-s", "0",
                                      "--omp-threads", "1"])
        assert code == 0, err
        assert (f"note: -m {m}: the val split holds {n} batches" in out) == (m > n), out
        losses.append(re.findall(r"val loss (\d+\.\d+)", out))
    assert losses[0] == losses[1] == losses[2] and losses[0], losses


def test_a_tokenizer_smaller_than_the_model_is_not_used_to_decode(tmp_path, capsys, corpus):
    big = GPT2(GPT2Config(max_seq_len=16, vocab_size=200, num_layers=1, num_heads=2, channels=16))
    big.init_weights(0)
    big.save(str(tmp_path / "v200.bin"))
    # shards that are not prepare_data's NAME_train.bin: the directory's only tokenizer is a guess
    shutil.copy(corpus["train"], tmp_path / "shard_train_a.bin")
    shutil.copy(corpus["tokenizer"], tmp_path / "other_tokenizer.bin")
    argv = ["-i", str(tmp_path / "shard_train_a.bin"), "-e", str(tmp_path / "v200.bin"), "-o", "", "-b", "2", "-t",
            "8", "-x", "2", "-s", "2", "-g", "20", "--omp-threads", "1", "-v", "0"]
    code, out, err = run(capsys, argv)  # a note, no decoding
    assert code == 0, err
    assert f"has {corpus['vocab']} tokens, the model V=200: samples are printed as token ids" in out
    assert "--- sample at step 2 (token ids: no tokenizer, --tokenizer) ---" in out
    code, out, err = run(capsys, argv + ["--tokenizer", str(tmp_path / "other_tokenizer.bin")])  # named: an error
    assert code == 1 and "fewer than the model's vocabulary V=200" in err
    argv[1] = corpus["train"]   # the shards' own tokenizer (prepare_data's): tokenized for another model
    code, out, err = run(capsys, argv)
    assert code == 1 and "the shards were tokenized for another vocabulary" in err
