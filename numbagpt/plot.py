"""Loss curves from llm.c-format logs (what train_gpt2 writes to main.log), as a PNG.

A log has one record per line, `s:STEP` followed by `key:value` fields:
    s:12 trl:4.5312 lr:0.003000 norm:1.20     train loss after step 12 (and lr, grad norm)
    s:50 tel:4.2210                           val loss at step 50
    s:50 eval:0.2950                          HellaSwag accuracy at step 50 (train_gpt2 -h 1)
Blank lines are skipped; anything else is an error naming the file and the line. A log that llm.c
appended to after a restart repeats steps: a record for a step at or before the last one of its key
replaces the records from that step on (the restarted run's say).

    read_log(path) -> {"trl": (steps, values), "tel": ..., "eval": ...}
    plot_logs(paths, out, labels=None, tokens_per_step=None)     out: .png, .pdf, .svg, ...
"""
import math
import os
import re

KEYS = {"trl": "train loss", "tel": "val loss", "eval": "HellaSwag acc_norm"}
RECORD_STEP, RECORD_KEY = re.compile(r"\d+"), re.compile(r"[a-z]+")


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
            # llm.c writes a step in digits, a key in letters, a value as %f: Python's int() and float()
            # also take "1_0", "-5", "+3" and a key mangled by a non-UTF-8 byte would be dropped silently
            if not RECORD_STEP.fullmatch(pairs[0][1]) or any(not RECORD_KEY.fullmatch(k) or "_" in v
                                                             for k, v in pairs[1:]):
                raise ValueError
            step = int(pairs[0][1])
            values = [(key, float(value)) for key, value in pairs[1:]]
        except ValueError:
            raise LogError(f"{path}:{lineno}: not an llm.c log record: {line.strip()[:80]!r} "
                           f"(expected 's:STEP key:value ...', e.g. 's:10 trl:4.5')") from None
        for key, value in values:
            steps, vals = series.setdefault(key, ([], []))
            if steps and step <= steps[-1]:   # a restart: the later records of the key are replaced
                keep = next(i for i, s in enumerate(steps) if s >= step)
                del steps[keep:], vals[keep:]
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


def plot_logs(paths, out, labels=None, tokens_per_step=None, title=None, notes=None):
    """Draw train and val loss against step for each log (one colour per run, legends), and a
    HellaSwag panel when a log has eval records (alone when none has a loss); a second x axis in
    tokens when tokens_per_step is given. Writes `out` in the format its extension names (png
    without one) and returns it."""
    runs = [(label, read_log(p, notes)) for label, p in zip(labels or [default_label(p) for p in paths], paths)]
    if not any(key in s for _, s in runs for key in KEYS):
        raise LogError(f"{', '.join(map(str, paths))}: no loss records (trl/tel/eval) to plot")
    plt = _pyplot()
    fmt = _image_format(out, plt)
    panels = [k for k, has in (("loss", ("trl", "tel")), ("eval", ("eval",)))
              if any(key in s for _, s in runs for key in has)]
    fig, axes = plt.subplots(1, len(panels), figsize=((7, 11)[len(panels) - 1], 4.5), squeeze=False)
    ax = dict(zip(panels, axes[0]))
    for i, (label, s) in enumerate(runs):
        color = f"C{i % 10}"
        for key, panel, name, style in (("trl", "loss", f"{label} train", dict(alpha=0.6, lw=1)),
                                        ("tel", "loss", f"{label} val", dict(lw=2, marker="o", ms=4)),
                                        ("eval", "eval", label, dict(lw=2, marker="o", ms=4))):
            if key in s:
                if len(s[key][0]) == 1:   # a lone point needs a marker to be seen
                    style = dict(dict(marker="o", ms=4), **style)
                ax[panel].plot(*s[key], color=color, label=name, **style)
    if "loss" in ax:
        ax["loss"].set(xlabel="step", ylabel="loss", title=title or "loss")
        _clip_losses(ax["loss"], [v for _, s in runs for k in ("trl", "tel") if k in s for v in s[k][1]])
    if "eval" in ax:
        ax["eval"].set(xlabel="step", ylabel="acc_norm", title="HellaSwag")
    for a in axes[0]:
        a.grid(alpha=0.3)
        a.legend()
        if tokens_per_step:
            top = a.secondary_xaxis("top", functions=(lambda x: x * tokens_per_step / 1e6,
                                                      lambda t: t * 1e6 / tokens_per_step))
            top.set_xlabel("tokens (M)")
    fig.tight_layout()
    import io

    from .files.atomic import write_bytes
    image = io.BytesIO()
    fig.savefig(image, format=fmt, dpi=100)
    plt.close(fig)
    write_bytes(out, image.getvalue())   # complete or absent, like every file numbagpt writes
    return out


def _image_format(out, plt):
    """The format `out`'s extension names (png without one); ValueError for one matplotlib cannot write."""
    ext = os.path.splitext(os.fspath(out))[1][1:].lower() or "png"
    probe = plt.figure()
    supported = probe.canvas.get_supported_filetypes()
    plt.close(probe)   # the caller's own figures (a notebook's) stay open
    if ext not in supported:
        raise ValueError(f"{out}: matplotlib cannot write a .{ext} picture (it writes "
                         f"{', '.join('.' + e for e in sorted(supported))})")
    return ext


def _clip_losses(ax, values):
    """The first few steps' losses dwarf the rest: cut the y axis a little above the 95th percentile."""
    finite = sorted(v for v in values if math.isfinite(v))
    if finite:
        top = min(finite[-1], finite[int(0.95 * (len(finite) - 1))] * 1.15)
        ax.set_ylim(finite[0] - 0.05 * (top - finite[0]), top + 0.02 * (top - finite[0]) + 1e-9)
