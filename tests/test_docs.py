"""The repository's documents show what they link: every image a committed Markdown file links is committed too.

The 15 figures of ``docs/results.md`` were once hidden by ``.gitignore`` (``results/`` matched ``docs/results/``), so
the published results showed no picture; this fails on any such link, in a checkout or in CI's clean clone.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _tracked() -> set[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return {name for name in listed.split("\0") if name}


def _image_links(tracked: set[str]) -> list[tuple[str, str]]:
    links = []
    for name in sorted(tracked):
        if not name.endswith(".md"):
            continue
        document = ROOT / name
        for target in IMAGE_LINK.findall(document.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+://", target):
                resolved = (document.parent / target).resolve().relative_to(ROOT).as_posix()
                links.append((name, resolved))
    return links


def test_every_image_a_committed_document_links_is_committed():
    tracked = _tracked()
    missing = [f"{document} links {image}" for document, image in _image_links(tracked) if image not in tracked]
    assert not missing, "images linked but not in git:\n" + "\n".join(missing)


def test_report_figures_under_docs_are_not_ignored():
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "docs/results/map_heatmap.png", "docs/results/map_heatmap.svg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if ignored.returncode == 128:  # git's "not a git repository" (a source archive)
        pytest.skip("not a git checkout")
    assert ignored.returncode == 1, f"ignored by .gitignore: {ignored.stdout}"
