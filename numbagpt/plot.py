"""Loss curves from llm.c-format logs (what train_gpt2 writes to main.log), as a PNG.

A log has one record per line, `s:STEP` followed by `key:value` fields:
    s:12 trl:4.5312 lr:0.003000 norm:1.20     train loss after step 12 (and lr, grad norm)
    s:50 tel:4.2210                           val loss at step 50
    s:50 eval:0.2950                          HellaSwag accuracy at step 50 (train_gpt2 -h 1)
Blank lines are skipped; anything else is an error naming the file and the line.

    read_log(path) -> {"trl": (steps, values), "tel": ..., "eval": ...}
    plot_logs(paths, out_png, labels=None, tokens_per_step=None)
"""
import math
import os

KEYS = {"trl": "train loss", "tel": "val loss", "eval": "HellaSwag acc_norm"}


class LogError(ValueError):
    """A log line that is not an llm.c log record."""


def read_log(path, notes=None):
    """{key: (steps, values)} of the records of an llm.c log file (keys: trl, tel, eval, lr, norm).
    A last line without its newline (a run stopped while writing it: every record ends in one) is
    skipped, with a line in `notes` (a list) saying so; any unreadable line is a LogError."""
    series = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (llm.c log, e.g. a run's main.log)") from None
    except OSError as e:
        raise OSError(f"{path}: cannot read the log: {e.strerror}") from None
    if lines and not lines[-1].endswith("\n"):
        if notes is not None:
            notes.append(f"{path}:{len(lines)}: skipped an incomplete last line {lines[-1].strip()[:40]!r} "
                         f"(the run stopped while writing it)")
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            pairs = [field.split(":", 1) for field in fields]
            if pairs[0][0] != "s" or len(pairs) < 2 or any(len(p) != 2 for p in pairs):
                raise ValueError
            step = int(pairs[0][1])
            values = [(key, float(value)) for key, value in pairs[1:]]
        except ValueError:
            raise LogError(f"{path}:{lineno}: not an llm.c log record: {line.strip()[:80]!r} "
                           f"(expected 's:STEP key:value ...', e.g. 's:10 trl:4.5')") from None
        for key, value in values:
            steps, vals = series.setdefault(key, ([], []))
            steps.append(step)
            vals.append(value)
    return series


class NoMatplotlib(RuntimeError):
    """matplotlib is not installed (an optional extra: numbagpt[plot])."""


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or RuntimeError: not installed, or an install that fails
    to import (its message then says what failed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as e:
        if e.name not in ("matplotlib", "matplotlib.pyplot"):
            raise RuntimeError(f"matplotlib cannot be imported: {e} (a broken install? reinstall it: "
                               f"pip install --force-reinstall matplotlib)") from None
        raise NoMatplotlib("plotting needs matplotlib: pip install matplotlib "
                           "(or pip install 'numbagpt[plot]')") from None
    except ImportError as e:
        raise RuntimeError(f"matplotlib cannot be imported: {e} (a broken install? reinstall it: "
                           f"pip install --force-reinstall matplotlib)") from None
    return plt


def default_label(path):
    """A run's name in the legend: its directory (out/main.log -> out), else the file name."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent if os.path.basename(path) == "main.log" and parent else os.path.basename(path)


def plot_logs(paths, out_png, labels=None, tokens_per_step=None, title=None, notes=None):
    """Draw train and val loss against step for each log (one colour per run, legends), with a
    HellaSwag panel when a log has eval records; a second x axis in tokens when tokens_per_step is given.
    Writes out_png and returns it."""
    runs = [(label, read_log(p, notes)) for label, p in zip(labels or [default_label(p) for p in paths], paths)]
    if not any(key in s for _, s in runs for key in KEYS):
        raise LogError(f"{', '.join(map(str, paths))}: no loss records (trl/tel/eval) to plot")
    plt = _pyplot()
    has_eval = any("eval" in s for _, s in runs)
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(11 if has_eval else 7, 4.5), squeeze=False)
    loss_ax = axes[0][0]
    for i, (label, s) in enumerate(runs):
        color = f"C{i % 10}"
        if "trl" in s:
            loss_ax.plot(*s["trl"], color=color, alpha=0.6, lw=1, label=f"{label} train")
        if "tel" in s:
            loss_ax.plot(*s["tel"], color=color, lw=2, marker="o", ms=4, label=f"{label} val")
        if "eval" in s:
            axes[0][1].plot(*s["eval"], color=color, lw=2, marker="o", ms=4, label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title=title or "loss")
    finite = [v for _, s in runs for k in ("trl", "tel") if k in s for v in s[k][1] if math.isfinite(v)]
    if finite:  # the first few steps' losses dwarf the rest: cut the y axis a little above the 95th percentile
        finite.sort()
        top = min(finite[-1], finite[int(0.95 * (len(finite) - 1))] * 1.15)
        loss_ax.set_ylim(finite[0] - 0.05 * (top - finite[0]), top + 0.02 * (top - finite[0]) + 1e-9)
    if has_eval:
        axes[0][1].set(xlabel="step", ylabel="acc_norm", title="HellaSwag")
        axes[0][1].legend()
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if tokens_per_step:
            top = ax.secondary_xaxis("top", functions=(lambda x: x * tokens_per_step / 1e6,
                                                       lambda t: t * 1e6 / tokens_per_step))
            top.set_xlabel("tokens (M)")
    loss_ax.legend()
    fig.tight_layout()
    import io

    from .files.atomic import write_bytes
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_bytes(out_png, png.getvalue())   # complete or absent, like every file numbagpt writes
    return out_png
