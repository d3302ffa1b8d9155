"""The documentation is self-contained: every link in a tracked Markdown file resolves to a file of the
repository, and no tracked text file points outside it (no URL, no path above the repository root)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)\s]+)\)")
URL = re.compile(r"\b(?:https?|ftp)://", re.IGNORECASE)
TEXT_ENDINGS = (".md", ".py", ".cfg", ".toml", ".sh", ".txt")
# the team's folder beside the checkout, which a user of the project does not have (spelled in two
# pieces so that this file does not name it itself)
OUTSIDE = ("../" + "shared", "shared/" + "FORMATS")


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.splitlines() if os.path.isfile(os.path.join(ROOT, p))]


def test_markdown_links_resolve_inside_the_repository():
    bad = []
    for rel in tracked_files():
        if not rel.endswith(".md"):
            continue
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        for target in LINK.findall(text):
            path = target.split("#", 1)[0]
            if not path:
                continue  # an anchor on the same page
            resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(rel), path))
            if URL.match(target) or not resolved.startswith(ROOT + os.sep) or not os.path.exists(resolved):
                bad.append(f"{rel}: ({target})")
    assert not bad, "links that do not resolve to a file of the repository:\n" + "\n".join(bad)


def test_no_text_file_points_outside_the_repository():
    bad = []
    for rel in tracked_files():
        if not rel.endswith(TEXT_ENDINGS):
            continue
        for n, line in enumerate(open(os.path.join(ROOT, rel), encoding="utf-8", errors="replace"), 1):
            if URL.search(line) or any(o in line for o in OUTSIDE):
                bad.append(f"{rel}:{n}: {line.strip()}")
    assert not bad, "lines pointing outside the repository:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------------------
# The command lines the docs show parse, the pages are indexed, the API example runs.

def _parsers():
    """{command name: its real argparse parser} for every bin/ command."""
    from numbagpt.cli import eval as eval_cli, hf, plot, prepare, profile, sample, test, train
    return {"train_gpt2": train.build_parser(), "test_gpt2": test.build_parser(),
            "profile_gpt2": profile.build_parser(), "sample_gpt2": sample.build_parser(),
            "eval_gpt2": eval_cli.build_parser(), "prepare_data": prepare.build_parser(),
            "plot_log": plot.build_parser(), "export_hf": hf.build_export_parser(),
            "import_hf": hf.build_import_parser()}


def doc_command_lines():
    """[(file, line number, command, argv)]: every `bin/NAME ...` in a code block of README.md and
    docs/*.md, backslash continuations joined, after a launcher prefix (mpiexec -n 2 ...)."""
    import shlex
    out = []
    files = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                             if f.endswith(".md")]
    for rel in files:
        in_block, pending, start = False, "", 0
        for n, line in enumerate(open(os.path.join(ROOT, rel), encoding="utf-8"), 1):
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            if not in_block:
                continue
            if not pending:
                start = n
            pending += line.rstrip("\n")
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            text, pending = pending.split(" #")[0], ""
            m = re.search(r"(?:^|\s)bin/(\w+)(\s.*)?$", text)
            if not m or "[-" in text:   # not a command line, or a synopsis ([-e MODEL] ...)
                continue
            # a shell variable stands for a value ($D/x.bin, --omp-threads $N); "..." for elided flags
            argv = [a for a in shlex.split(re.sub(r"\$\{?\w+\}?", "1", m.group(2) or "")) if a != "..."]
            for stop in ("|", ">", "&&", ";"):
                if stop in argv:
                    argv = argv[:argv.index(stop)]
            out.append((rel, start, m.group(1), argv))
    return out


def test_every_documented_command_line_parses():
    from numbagpt.train import TrainConfig
    parsers = _parsers()
    lines = doc_command_lines()
    assert len(lines) > 20 and {c for _, _, c, _ in lines} >= {"train_gpt2", "sample_gpt2", "profile_gpt2"}
    bad = []
    for rel, n, command, argv in lines:
        if command not in parsers:
            bad.append(f"{rel}:{n}: bin/{command}: no such command")
            continue
        try:
            args = parsers[command].parse_args(argv)
            if command == "train_gpt2":
                TrainConfig.from_args(args)   # the values too: ranges, combinations
        except SystemExit:
            bad.append(f"{rel}:{n}: bin/{command} {' '.join(argv)}")
        except ValueError as e:
            bad.append(f"{rel}:{n}: bin/{command} {' '.join(argv)}: {e}")
    assert not bad, "documented command lines that the command refuses:\n" + "\n".join(bad)


def test_a_bad_documented_line_would_be_caught():
    parser = _parsers()["train_gpt2"]
    with pytest.raises(SystemExit):
        parser.parse_args(["-e", "d12", "--no-such-flag"])


def test_how_it_works_indexes_every_page():
    index = open(os.path.join(ROOT, "docs", "how-it-works.md"), encoding="utf-8").read()
    pages = [f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md") and f != "how-it-works.md"]
    missing = [p for p in pages if f"]({p})" not in index]
    assert not missing, f"docs/how-it-works.md does not link {missing}"


def test_the_api_example_runs(tmp_path):
    text = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "4 steps, val loss" in run.stdout
    out = tmp_path / "out_api"
    assert (out / "copy.bin").read_bytes() == (out / "model_00000004.bin").read_bytes()
    assert run.stdout.count("ROMEO:") == 1


# Parses one script's command line as the script would, and stops there: argparse's parse_args is
# wrapped to raise _Parsed after it succeeds (run in a subprocess: the scripts insert paths and import
# their labs). Prints a JSON list of the lines the script's parser refused. A script that imports
# torch before it parses (dev/pytorch_reference.py) is left out where torch is not installed.
_PARSE_ONLY = r'''
import argparse, contextlib, io, json, os, runpy, sys
class _Parsed(BaseException):
    pass
_parse = argparse.ArgumentParser.parse_args
def parse_args(self, args=None, namespace=None):
    _parse(self, args, namespace)
    raise _Parsed
argparse.ArgumentParser.parse_args = parse_args
bad = []
for where, script, argv in json.load(sys.stdin):
    sys.argv = [script] + argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))   # as `python script` puts it first
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(script, run_name="__main__")
        bad.append(f"{where}: {script} {' '.join(argv)}: parsed nothing")
    except _Parsed:
        pass
    except SystemExit as e:
        if isinstance(e.code, str) and "needs PyTorch" in e.code:   # dev/pytorch_reference.py without torch
            pass
        else:
            bad.append(f"{where}: {script} {' '.join(argv)}: {err.getvalue().strip().splitlines()[-1:]}")
    sys.path.pop(0)
print(json.dumps(bad))
'''


def _joined(text):
    """[(line index, line)] of text, a line ending in a backslash joined with the next (at the first's index)."""
    out, pending = [], None
    for i, line in enumerate(text.splitlines()):
        if pending is not None:
            out[-1] = (out[-1][0], pending + " " + line)
        else:
            out.append((i, line))
        pending = out[-1][1][:-1] if out[-1][1].endswith("\\") else None
    return out


def doc_script_lines():
    """[(file:line, script, argv)]: every `python bench/X.py ...` or `python dev/...py ...` in a code
    block or an inline code span of README.md, docs/*.md and dev/README.md, and in the docstrings of the
    scripts in bench/ and dev/, but synopses ([--flag])."""
    import ast
    import shlex
    pattern = re.compile(r"python3? ((?:bench|dev)/[\w/]+\.py)([^`\n|>;&#]*)")
    texts = []   # (file, first line number, [(line offset, text that may hold commands)])
    for rel in ["README.md", os.path.join("dev", "README.md")] + [
            os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")]:
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        blocks = list(re.finditer(r"```\w*\n(.*?)```", text, re.S))
        spans = [(text.count("\n", 0, m.start(1)) + i, line) for m in blocks for i, line in _joined(m.group(1))]
        prose = re.sub(r"```\w*\n.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        spans += [(prose.count("\n", 0, m.start()), m.group(1).replace("\n", " "))
                  for m in re.finditer(r"`([^`]+)`", prose)]
        texts.append((rel, spans))
    for folder in ("bench", "dev"):
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(base, name)
                doc = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read())) or ""
                texts.append((os.path.relpath(path, ROOT), [(i + 1, line) for i, line in _joined(doc)]))
    out = []
    for rel, spans in texts:
        for n, span in spans:
            for m in pattern.finditer(re.sub(r"<[^<>]+>", "X", span.split(" # ")[0])):   # <a placeholder>
                if "[" in m.group(2):
                    continue
                argv = [a for a in shlex.split(re.sub(r"\$\{?\w+\}?", "1", m.group(2))) if a != "..."]
                out.append((f"{rel}:{n + 1}", m.group(1), argv))
    return out


def test_every_documented_bench_and_dev_command_line_parses():
    import json
    import sys
    lines = doc_script_lines()
    scripts = {s for _, s, _ in lines}
    assert len(lines) > 20 and {"bench/bench_train.py", "bench/bench_matmul.py", "dev/attention.py"} <= scripts
    run = subprocess.run([sys.executable, "-c", _PARSE_ONLY], input=json.dumps(lines), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    bad = json.loads(run.stdout.strip().splitlines()[-1])
    assert not bad, "documented command lines that the script refuses:\n" + "\n".join(bad)


def test_a_bad_documented_bench_line_would_be_caught():
    import json
    import sys
    lines = [("here:1", "bench/bench_train.py", ["--models", "tiny", "--no-such-flag"]),
             ("here:2", "bench/bench_fma_peak.py", ["--threads", "two"])]
    run = subprocess.run([sys.executable, "-c", _PARSE_ONLY], input=json.dumps(lines), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    bad = json.loads(run.stdout.strip().splitlines()[-1])
    assert [b.split(":")[:2] for b in bad] == [["here", "1"], ["here", "2"]], bad
    assert "unrecognized arguments: --no-such-flag" in bad[0] and "invalid threads value: 'two'" in bad[1], bad
