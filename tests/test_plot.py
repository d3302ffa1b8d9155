"""bin/plot_log: PNGs from llm.c logs, several runs overlaid; clear errors for bad logs."""
import builtins
import math

import numpy as np
import pytest

from numbagpt import plot
from numbagpt.cli.plot import main


def write_log(path, steps=60, seed=0, hellaswag=False):
    rng = np.random.default_rng(seed)
    lines = []
    for s in range(steps):
        if s % 20 == 0 or s == steps:
            lines.append(f"s:{s} tel:{4 + 6 * math.exp(-s / 15):.4f}")
            if hellaswag:
                lines.append(f"s:{s} eval:{0.25 + s / 1000:.4f}")
        lines.append(f"s:{s} trl:{4 + 6 * math.exp(-s / 15) + rng.normal(0, 0.1):.4f} lr:0.003000 norm:1.20")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_read_log(tmp_path):
    series = plot.read_log(write_log(tmp_path / "a" / "main.log", steps=41))
    assert series["tel"][0] == [0, 20, 40] and series["tel"][1][0] == 10.0
    assert series["trl"][0] == list(range(41)) and len(series["lr"][1]) == 41


def test_a_log_that_llmc_appended_to_after_a_restart(tmp_path):
    """llm.c appends to main.log when it resumes, so steps repeat: the records from the repeated step
    on are the resumed run's (the curve went back from step 3 to step 2)."""
    log = tmp_path / "resumed.log"
    log.write_text("s:0 trl:10.4\ns:1 trl:10.3\ns:2 trl:10.1\ns:2 tel:10.2\ns:3 trl:9.9\n"
                   "s:2 trl:10.15\ns:3 trl:9.95\ns:4 trl:9.8\ns:4 tel:9.9\n")
    series = plot.read_log(log)
    assert series["trl"] == ([0, 1, 2, 3, 4], [10.4, 10.3, 10.15, 9.95, 9.8])
    assert series["tel"] == ([2, 4], [10.2, 9.9])


def test_the_picture_format_follows_the_extension(tmp_path, capsys):
    """-o loss.pdf wrote PNG bytes under that name; an extension matplotlib has no writer for is one line."""
    pytest.importorskip("matplotlib")
    log = write_log(tmp_path / "main.log", steps=5)
    import matplotlib.pyplot as plt
    mine = plt.figure()   # a notebook's figure: plot_logs must not close it
    assert main([str(log), "-o", str(tmp_path / "loss.pdf")]) == 0
    assert (tmp_path / "loss.pdf").read_bytes()[:5] == b"%PDF-"
    assert plt.fignum_exists(mine.number)
    plt.close(mine)
    assert main([str(log), "-o", str(tmp_path / "loss.svg")]) == 0
    assert b"<svg" in (tmp_path / "loss.svg").read_bytes()[:1000]
    capsys.readouterr()
    assert main([str(log), "-o", str(tmp_path / "loss.docx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"plot_log: error: {tmp_path / 'loss.docx'}: matplotlib cannot write a .docx picture "
                          f"(it writes ") and ".png" in err and err.count("\n") == 1
    assert not (tmp_path / "loss.docx").exists()


def test_a_log_of_hellaswag_records_alone_is_one_panel(tmp_path, capsys):
    """No loss records: the HellaSwag panel alone (an empty loss panel and matplotlib's warning about
    a legend with nothing in it, before)."""
    pytest.importorskip("matplotlib")
    log = tmp_path / "main.log"
    log.write_text("s:10 eval:0.2500\ns:20 eval:0.2600\n")
    assert main([str(log), "-o", str(tmp_path / "e.png")]) == 0
    from matplotlib.image import imread
    assert imread(tmp_path / "e.png").shape[:2] == (450, 700)
    assert capsys.readouterr().err == ""


def test_png_of_several_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_log(tmp_path / "run_a" / "main.log")
    b = write_log(tmp_path / "run_b" / "main.log", seed=1, hellaswag=True)
    out = tmp_path / "loss.png"
    assert main([str(a), str(b), "-o", str(out), "--tokens-per-step", "1024"]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    from matplotlib.image import imread
    img = imread(out)
    assert img.shape[0] == 450 and img.shape[1] == 1100  # two panels (loss, HellaSwag) at 100 dpi
    assert img[..., :3].std() > 0.05  # something is drawn
    assert "wrote" in capsys.readouterr().out


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    log = write_log(tmp_path / "main.log", steps=5)
    with open(log, "a") as f:
        f.write("s:5 trl:nan-ish\n")
    assert main([str(log), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"plot_log: error: {log}:8: not an llm.c log record: 's:5 trl:nan-ish'")
    assert not (tmp_path / "x.png").exists()
    assert main([str(tmp_path / "missing.log")]) == 1
    assert capsys.readouterr().err.startswith(f"plot_log: error: {tmp_path / 'missing.log'}: no such file (llm.c log")
    assert main([str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"plot_log: error: {tmp_path}: cannot read the log: Is a directory\n"
    (tmp_path / "empty.log").write_text("")
    assert main([str(tmp_path / "empty.log")]) == 1
    assert "no loss records" in capsys.readouterr().err


def _imports_failing(monkeypatch, fail):
    """import raises fail(name) for the modules it returns an error for."""
    real_import = builtins.__import__

    def importer(name, *args, **kwargs):
        error = fail(name)
        if error:
            raise error
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", importer)


def test_missing_matplotlib_is_one_clear_line(tmp_path, monkeypatch, capsys):
    log = write_log(tmp_path / "main.log", steps=5)
    _imports_failing(monkeypatch, lambda name: name.startswith("matplotlib") and
                     ModuleNotFoundError(f"No module named {name!r}", name=name))
    assert main([str(log), "-o", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err == "plot_log: error: plotting needs matplotlib: pip install matplotlib " \
                                      "(or pip install 'numbagpt[plot]')\n"


def test_a_broken_matplotlib_and_an_unwritable_png_leave_a_training_run_whole(tmp_path, monkeypatch):
    """The end of a training run (trainer.plot_log): a matplotlib whose pyplot fails to import, or a
    loss.png that cannot be written, is a note, not the run's failure (it was a traceback, and an error
    exit after the model had been written)."""
    pytest.importorskip("matplotlib")
    from numbagpt.train.trainer import plot_log
    log = write_log(tmp_path / "main.log", steps=5)
    said = []
    (tmp_path / "loss.png").mkdir()
    plot_log(str(log), said.append)
    assert said == [f"no loss.png: {tmp_path / 'loss.png'}: cannot put the written file in its place: Is a directory"]
    _imports_failing(monkeypatch, lambda name: name == "matplotlib.pyplot" and ImportError("libfreetype.so.6"))
    said.clear()
    plot_log(str(log), said.append)
    assert said == ["no loss.png: matplotlib cannot be imported: libfreetype.so.6 (a broken install? reinstall "
                    "it: pip install --force-reinstall matplotlib)"]
    _imports_failing(monkeypatch, lambda name: name.startswith("matplotlib") and
                     ModuleNotFoundError(f"No module named {name!r}", name=name))   # not installed: the hint
    said.clear()
    plot_log(str(log), said.append)
    assert said == ["(pip install matplotlib, or 'numbagpt[plot]', and the next run also draws its loss curve "
                    "into loss.png)"]


def test_the_loss_axis_leaves_out_the_first_steps_spike_and_shows_the_rest():
    """A first loss of 10 over fifty between 3 and 3.5: the axis shows all fifty, closely, and not
    the 10 (it would flatten them into a line); NaN and inf are left out of the limits."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rest = [3.0 + 0.01 * i for i in range(51)]
    for values in ([10.0] + rest, rest, [math.nan, math.inf, 10.0] + rest):
        fig, ax = plt.subplots()
        plot._clip_losses(ax, values)
        low, top = ax.get_ylim()
        plt.close(fig)
        assert low < 3.0 and 3.5 <= top < 3.5 * 1.2, (values[:3], low, top)


def test_labels_name_every_log_and_notes_go_to_stderr(tmp_path, capsys):
    """--labels with fewer (or more) names than logs is refused (zip would drop a run's curve); a
    note (a torn last line, skipped) is on stderr, stdout is the one line naming the picture."""
    pytest.importorskip("matplotlib")
    a = write_log(tmp_path / "a" / "main.log")
    b = write_log(tmp_path / "b" / "main.log", seed=1)
    out = str(tmp_path / "x.png")
    for labels in ("one", "one,two,three"):
        assert main([str(a), str(b), "-o", out, "--labels", labels]) == 1
        n = len(labels.split(","))
        assert capsys.readouterr().err == f"plot_log: error: --labels has {n} names for 2 logs\n"
    with open(b, "a") as f:
        f.write("s:60 trl:3.9")   # a run killed mid-write
    assert main([str(a), str(b), "-o", out, "--labels", "one,two"]) == 0
    cap = capsys.readouterr()
    assert cap.out == f"wrote {out}\n" and cap.err.startswith(f"plot_log: note: {b}:")


@pytest.mark.parametrize("line", ["s:1_0 trl:4.5", "s:10 trl:4_5", "s:-5 trl:4.5", "s:+5 trl:4.5",
                                  "s:10 tr\ufffdl:4.5", "s:10 TRL:4.5"])
def test_a_record_llmc_would_not_write_is_refused(tmp_path, line):
    """Python's int() and float() take underscores and signs, and a key mangled by a byte that is not
    UTF-8 was dropped silently: a step in digits, a key in lowercase letters, a value without '_'."""
    log = tmp_path / "main.log"
    log.write_text(f"s:0 trl:5.0\n{line}\n", encoding="utf-8")
    with pytest.raises(plot.LogError, match=rf"{log}:2: not an llm.c log record"):
        plot.read_log(log)


def test_a_repeated_step_replaces_the_earlier_record(tmp_path):
    """A restart at the last step logged (s:2 again) replaces that record, as one from an earlier step
    does (a test of < kept both, two values at step 2)."""
    log = tmp_path / "main.log"
    log.write_text("s:1 trl:5\ns:2 trl:4\ns:2 trl:3\n")
    assert plot.read_log(log)["trl"] == ([1, 2], [5.0, 3.0])
