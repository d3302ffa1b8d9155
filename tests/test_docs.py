"""The documentation is self-contained: every link in a tracked Markdown file resolves to a file of the
repository, and no tracked text file points outside it (no URL, no path above the repository root)."""
import os
import re
import subprocess

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
