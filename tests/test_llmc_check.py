"""dev/llmc_check.py without llm.c (its checks need a checkout; the tests have none): the numbagpt side
of its c-train check reads the batches llm.c's unshuffled loader reads, and the script refuses what it
cannot run."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev"))
import llmc_check  # noqa: E402

from numbagpt.model import GPT2  # noqa: E402


def windows(path, n):
    """The first n (inputs, targets) windows of B×T tokens, llm.c's dataloader without shuffling: read
    here from the shard's bytes (a 256-int32 header, then uint16 tokens)."""
    tokens = np.fromfile(path, np.uint16, offset=1024).astype(np.int32)
    BT = llmc_check.C_B * llmc_check.C_T
    return [(tokens[i * BT:(i + 1) * BT].reshape(llmc_check.C_B, -1),
             tokens[i * BT + 1:(i + 1) * BT + 1].reshape(llmc_check.C_B, -1)) for i in range(n)]


def test_the_numbagpt_side_reads_llmc_batches(tmp_path):
    llmc_check.setup_run_dir(str(tmp_path))
    train, val = llmc_check.numbagpt_losses(str(tmp_path), steps=1)
    model = GPT2.from_file(str(tmp_path / llmc_check.C_MODEL))
    expected_val = np.mean([model.forward(x, y) for x, y in windows(tmp_path / llmc_check.C_VAL, 5)])
    expected_train = model.forward(*windows(tmp_path / llmc_check.C_TRAIN, 1)[0])
    assert len(train) == 2 and len(val) == 1
    assert val[0] == pytest.approx(expected_val, rel=1e-6) and train[0] == pytest.approx(expected_train, rel=1e-6)
    assert train[1] < train[0]   # the step updated the model


def test_refusals(tmp_path, capsys):
    with pytest.raises(SystemExit):
        llmc_check.parse_args([str(tmp_path)])
    assert "no train_gpt2.c there" in capsys.readouterr().err
    (tmp_path / "train_gpt2.c").write_text("int main() { return 0; }\n")   # not the llm.c it knows
    with pytest.raises(SystemExit, match="is not the version this script knows"):
        llmc_check.compile_c(str(tmp_path), str(tmp_path), "train_gpt2", 40)
