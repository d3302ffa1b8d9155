"""bin/train_gpt2 end to end on a small char-level corpus and a micro model: the loss falls, main.log is
in llm.c's format, the written model is a valid llm.c v3 file, samples are decoded text, checkpoints
resume, and bad input gives a clear error."""
import os
import re

import numpy as np
import pytest

from numbagpt.files import formats
from numbagpt.cli import train

from micro_data import play_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Char-level shards of a repetitive play text, and a micro model file sized for its vocabulary."""
    paths, model_path, _ = play_corpus(tmp_path_factory.mktemp("corpus"))
    return paths, model_path


def run(capsys, corpus, out_dir, *extra):
    paths, model_path = corpus
    argv = ["-i", paths["train"], "-j", paths["val"], "--tokenizer", paths["tokenizer"], "-e", model_path,
            "-o", str(out_dir), "-b", "4", "-t", "16", "-l", "1e-2", "-u", "2", "--omp-threads", "1",
            "-g", "12"] + list(extra)
    code = train.main(argv)
    return code, capsys.readouterr()


def test_training_lowers_the_loss_and_writes_llmc_files(tmp_path, capsys, corpus):
    code, cap = run(capsys, corpus, tmp_path, "-x", "40", "-v", "20", "-m", "2", "-s", "20")
    assert code == 0, cap.err
    log = (tmp_path / "main.log").read_text().splitlines()
    train_lines = [line for line in log if " trl:" in line]
    val_lines = [line for line in log if " tel:" in line]
    assert len(train_lines) == 40 and len(val_lines) == 3
    for line in train_lines:
        assert re.fullmatch(r"s:\d+ trl:\d+\.\d{4} lr:\d+\.\d{6} norm:\d+\.\d{2}", line), line
    for line in val_lines:
        assert re.fullmatch(r"s:\d+ tel:\d+\.\d{4}", line), line
    val = [float(line.split("tel:")[1]) for line in val_lines]
    assert val[-1] < 0.6 * val[0]
    cfg, params = formats.read_model(str(tmp_path / "model_00000040.bin"))
    assert cfg.num_layers == 2 and params.dtype == np.float32 and np.all(np.isfinite(params))
    assert "--- sample at step 40 ---" in cap.out
    assert re.search(r"step   40/40 \| loss \d+\.\d+ .* tok/s", cap.out)
    assert "parameters" in cap.out and "memory (MiB)" in cap.out


# from the first pass over the data, and from the second (-b 64: 12 batches a pass), shuffled anew
@pytest.mark.parametrize("steps,every,batch,epoch", [(6, 3, 4, 0), (30, 15, 64, 1)])
def test_checkpoint_and_resume_continue_the_same_run(tmp_path, capsys, corpus, steps, every, batch, epoch):
    x = ("-x", str(steps), "-v", "0", "-g", "0", "-b", str(batch))
    straight = tmp_path / "straight"
    code, cap = run(capsys, corpus, straight, *x)
    assert code == 0, cap.err
    resumed = tmp_path / "resumed"
    code, cap = run(capsys, corpus, resumed, *x, "-n", str(every))
    assert code == 0, cap.err
    last = f"{steps:08d}"
    assert sorted(p.name for p in resumed.glob("DONE_*")) == [f"DONE_{every:08d}", f"DONE_{last}"]
    assert formats.read_state(str(resumed / f"state_{every:08d}_00000.bin"))["epoch"] == epoch
    # drop the last checkpoint, resume from the one before, and land where the uninterrupted run did
    for p in resumed.glob(f"*{last}*"):
        p.unlink()
    code, cap = run(capsys, corpus, resumed, *x, "-y", "1")
    assert code == 0, cap.err
    assert f"resumed from step {every}" in cap.out
    # the checkpoint resumed from stays whole (a crash before the next one resumes from it again)
    assert sorted(p.name for p in resumed.glob("DONE_*")) == [f"DONE_{every:08d}"]
    _, a = formats.read_model(str(straight / f"model_{last}.bin"))
    _, b = formats.read_model(str(resumed / f"model_{last}.bin"))
    np.testing.assert_array_equal(a, b)
    # and the log: the resumed run's records replace those past the checkpoint, none lost or doubled
    log = (straight / "main.log").read_text()
    assert (resumed / "main.log").read_text() == log and log.startswith("s:0 trl:")


def test_the_api_reports_each_step_and_the_run_and_takes_the_last_val_loss_at_the_end(tmp_path, corpus):
    """api.train's on_step records and TrainResult: steps 1..x, ms and tokens/s of one step (-d of
    two micro-steps: tokens/step is -d), the final model file, and the val loss at -x when -x is no
    multiple of -v (val at 0, 2, 4 and at the end, 5), which is the result's."""
    import time

    from numbagpt import api
    paths, model_path = corpus
    config = api.TrainConfig(train_data=paths["train"], val_data=paths["val"], tokenizer=paths["tokenizer"],
                             model=model_path, output_dir=str(tmp_path), batch_size=4, seq_len=16,
                             total_batch_size=128, lr=1e-2, warmup_iters=2, omp_threads=1, gen_tokens=0,
                             max_steps=5, val_every=2, val_batches=2)
    records = []
    t0 = time.perf_counter()
    result = api.train(config, on_step=records.append, say=lambda *a, **k: None)
    wall_ms = 1000 * (time.perf_counter() - t0)
    assert [r.step for r in records] == [1, 2, 3, 4, 5]
    for r in records:
        assert 0 < r.ms < wall_ms and r.tokens_per_s == pytest.approx(128 / (r.ms / 1000), rel=1e-9)
    log = (tmp_path / "main.log").read_text().splitlines()
    assert [line.split()[0] for line in log if " tel:" in line] == ["s:0", "s:2", "s:4", "s:5"]
    assert [line.split("trl:")[1].split()[0] for line in log if " trl:" in line] == [f"{r.loss:.4f}" for r in records]
    assert f"{result.val_loss:.4f}" == log[-1].split("tel:")[1] and log[-1].startswith("s:5 tel:")
    assert result.model_file == str(tmp_path / "model_00000005.bin") and os.path.isfile(result.model_file)
    assert result.steps == 5


def test_each_sample_draws_anew(tmp_path, capsys, corpus):
    """-l 0: the model never changes, so the samples of steps 1..4 differ only by their generator's
    seed, (--seed, step): seeded by --seed alone they were one text four times."""
    code, cap = run(capsys, corpus, tmp_path, "-x", "4", "-v", "0", "-l", "0", "-s", "1", "-g", "24")
    assert code == 0, cap.err
    samples = re.findall(r"--- sample at step (\d+) ---\n(.*?)\n---", cap.out + "\n---", re.S)
    assert [int(s) for s, _ in samples] == [1, 2, 3, 4]
    assert len({text for _, text in samples}) == 4, samples


def test_a_run_over_an_earlier_one_starts_a_new_log(tmp_path, capsys, corpus):
    """--overwrite (and -y 1 where no checkpoint is complete) starts main.log anew: it is the log of
    the same run into an empty directory, not the earlier run's with this one's after it."""
    x = ("-v", "0", "-g", "0")
    assert run(capsys, corpus, tmp_path / "fresh", "-x", "2", *x)[0] == 0
    for flags in (["--overwrite"], ["-y", "1", "--overwrite"]):
        assert run(capsys, corpus, tmp_path / "over", "-x", "3", *x, "--overwrite")[0] == 0
        code, cap = run(capsys, corpus, tmp_path / "over", "-x", "2", *x, *flags)
        assert code == 0, cap.err
        assert (tmp_path / "over" / "main.log").read_text() == (tmp_path / "fresh" / "main.log").read_text()


def test_every_val_loss_reads_the_same_first_batches(tmp_path, capsys, corpus):
    # -l 0: the model never changes, so each val loss (-m 2 of the val split's 22 batches, from its
    # start every time, as llm.c) is the same number
    code, cap = run(capsys, corpus, tmp_path, "-x", "3", "-v", "1", "-m", "2", "-l", "0", "-g", "0")
    assert code == 0, cap.err
    val = [line.split("tel:")[1] for line in (tmp_path / "main.log").read_text().splitlines() if " tel:" in line]
    assert len(val) == 4 and len(set(val)) == 1, val


def test_bf16_model_files_keep_master_weights_and_resume_exactly(tmp_path, capsys, corpus):
    """--save-precision bf16: every model file is llm.c's version 5, every state file keeps the float32
    parameters (slot 4 = 1), and a resume from a bf16 checkpoint continues bit for bit."""
    flags = ("-x", "6", "-v", "0", "-g", "0", "--save-precision", "bf16")
    straight = tmp_path / "straight"
    code, cap = run(capsys, corpus, straight, *flags, "-n", "6")
    assert code == 0, cap.err
    resumed = tmp_path / "resumed"
    code, cap = run(capsys, corpus, resumed, *flags, "-n", "3")
    assert code == 0, cap.err
    for p in resumed.glob("*00000006*"):
        p.unlink()
    three = formats.read_state(str(resumed / "state_00000003_00000.bin"))
    _, rounded = formats.read_model(str(resumed / "model_00000003.bin"))
    assert formats.read_model_header(str(resumed / "model_00000003.bin"))[1] == 5
    assert three["use_master_weights"] == 1 and three["master"].dtype == np.float32
    assert not np.array_equal(three["master"], rounded)          # the master weights are not the bf16 ones
    widened = (formats.bf16_bits(three["master"]).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened, rounded)                # and the model file holds them rounded
    code, cap = run(capsys, corpus, resumed, *flags, "-n", "3", "-y", "1")
    assert code == 0, cap.err
    assert "resumed from step 3" in cap.out
    a = formats.read_state(str(straight / "state_00000006_00000.bin"))
    b = formats.read_state(str(resumed / "state_00000006_00000.bin"))
    np.testing.assert_array_equal(a["master"], b["master"])
    np.testing.assert_array_equal(a["m"], b["m"])
    assert (straight / "model_00000006.bin").read_bytes() == (resumed / "model_00000006.bin").read_bytes()
    # the final model of a run without a checkpoint at its last step is bf16 too
    code, cap = run(capsys, corpus, tmp_path / "final", "-x", "2", "-v", "0", "-g", "0", "--save-precision", "bf16")
    assert code == 0 and "(bf16: llm.c version 5)" in cap.out
    assert formats.read_model_header(str(tmp_path / "final" / "model_00000002.bin"))[1] == 5


def test_a_bf16_checkpoint_without_master_weights_resumes_saying_so(tmp_path, capsys, corpus):
    """A bf16 model file whose state keeps no float32 parameters (llm.c's, whose DONE is empty): the
    resume goes on from the rounded weights and says so, once; with master weights, no such note."""
    flags = ("-x", "4", "-v", "0", "-g", "0", "--save-precision", "bf16", "-n", "2")
    out = tmp_path / "run"
    code, cap = run(capsys, corpus, out, *flags)
    assert code == 0, cap.err
    for p in out.glob("*00000004*"):
        p.unlink()
    code, cap = run(capsys, corpus, out, *flags, "-y", "1")
    assert code == 0 and "resumed from step 2" in cap.out and "master weights" not in cap.out, cap.out
    for p in out.glob("*00000004*"):
        p.unlink()
    state = formats.read_state(str(out / "state_00000002_00000.bin"))
    keep = {k: state[k] for k in ("shard_index", "sample_index", "epoch", "seed", "run", "detectors")}
    formats.write_state(str(out / "state_00000002_00000.bin"), 2, 1, 0, state["m"], state["v"], **keep)
    (out / "DONE_00000002").write_bytes(b"")   # llm.c's: no checksums to check
    code, cap = run(capsys, corpus, out, *flags, "-y", "1")
    assert code == 0, cap.err
    assert cap.out.count("keeps no float32 master weights") == 1 and "bf16-rounded weights" in cap.out


def test_samples_without_a_tokenizer_are_token_ids(tmp_path, capsys, corpus):
    """No tokenizer beside the shards and no --tokenizer: -s still samples, and prints the token ids, as
    llm.c does (it printed nothing, and said nothing of why)."""
    import shutil
    paths, model_path = corpus
    for split in ("train", "val"):
        shutil.copy(paths[split], tmp_path / f"bare_{split}.bin")
    V = formats.read_model_header(model_path)[0].vocab_size
    code = train.main(["-i", str(tmp_path / "bare_train.bin"), "-j", str(tmp_path / "bare_val.bin"), "-e", model_path,
                       "-o", "", "-b", "4", "-t", "16", "-x", "2", "-v", "0", "-s", "2", "-g", "7",
                       "--omp-threads", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "--- sample at step 2 (token ids: no tokenizer, --tokenizer) ---" in out, out
    ids = out.split("--- sample at step 2 (token ids: no tokenizer, --tokenizer) ---\n")[1].split("\n")[0].split()
    assert len(ids) == 7 and all(0 <= int(i) < V for i in ids)


def test_bad_input_gives_clear_errors(tmp_path, capsys, corpus):
    code, cap = run(capsys, corpus, tmp_path, "-x", "1", "-t", "64")
    assert code == 1 and "max_seq_len" in cap.err
    paths, model_path = corpus
    code = train.main(["-i", str(tmp_path / "nothing_*.bin"), "-e", model_path, "-o", "", "-x", "1", "-t", "16"])
    assert code == 1 and "nothing_" in capsys.readouterr().err
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 100)
    code = train.main(["-i", paths["train"], "-e", str(bad), "-o", "", "-x", "1", "-t", "16"])
    assert code == 1 and "bad.bin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["-b", "0"])
