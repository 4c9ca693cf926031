"""Docs check (run by CI with the rest of ``tests/``): no paths from a developer's machine.

A path such as ``/work/main/.venv/bin/pip`` or ``/home/alice/src/confhub`` in a published
document works only on the machine it was copied from. Every hit is reported as
``FILE:LINE``. A line that must show such a path on purpose carries the marker
``<!-- docs-check: machine-path ok -->``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOW = "<!-- docs-check: machine-path ok -->"

#: What a path from one machine looks like. Each must start a path: not inside a URL or a
#: longer path (``https://example.com/work/x``, ``./work/``).
_START = r"(?<![\w.:/~-])"
MACHINE_PATHS = {
    "a /work/ checkout": re.compile(_START + r"/work/"),
    "a home directory": re.compile(_START + r"/home/[^/\s`'\"<>]+/"),
    "root's home directory": re.compile(_START + r"/root/"),
    "a macOS home directory": re.compile(_START + r"/Users/[^/\s`'\"<>]+/"),
    "a Windows drive path": re.compile(r"(?<![\w\\])[A-Za-z]:\\{1,2}(?=[\w.$%-])"),
    "a temporary directory": re.compile(
        _START + r"(?:/tmp/(?:tmp\w{3,}|pytest-of-)|/private/var/folders/|/var/folders/)"
    ),
}


def published_docs(root: Path = ROOT) -> list[Path]:
    """The documents users read: README, CHANGELOG, docs/, and each plugin's README and docs/."""
    files = [root / "README.md", root / "CHANGELOG.md"]
    files += sorted((root / "docs").rglob("*.md"))
    files += sorted(root.glob("plugins/*/README*"))
    files += sorted(root.glob("plugins/*/docs/**/*.md"))
    files += sorted(root.glob("examples/**/README*"))
    files += sorted(root.glob("benchmarks/README*"))
    return [f for f in files if f.is_file()]


def machine_paths(files: list[Path], root: Path = ROOT) -> list[str]:
    """One ``FILE:LINE: what: 'match' in: line`` entry per machine path found."""
    hits = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if ALLOW in line:
                continue
            for what, pattern in MACHINE_PATHS.items():
                for match in pattern.finditer(line):
                    hits.append(
                        f"{path.relative_to(root)}:{number}: {what} {match.group()!r} in: "
                        f"{line.strip()[:120]}"
                    )
    return hits


def test_published_docs_hold_no_machine_paths() -> None:
    """No README, changelog or doc page shows a path that exists only on one machine."""
    files = published_docs()
    assert any(f.name == "testing-server.md" for f in files)  # the plugins' docs are scanned
    hits = machine_paths(files)
    assert not hits, "machine-specific paths in the docs (write a relative or generic path):\n" + (
        "\n".join(hits)
    )


@pytest.mark.parametrize(
    "line",
    [
        "/work/main/.venv/bin/pip install -e plugins/confhub-consul",
        "cd /home/alice/src/confhub",
        "see /root/.cache/confhub",
        "open /Users/bob/confhub/docs",
        r"run C:\Users\carol\confhub\dev.py",
        r"a JSON-escaped C:\\work\\confhub",
        "at /tmp/tmpk3j9x_ab/config.toml:2",
        "in /tmp/pytest-of-dev/pytest-3/test_x0/c.toml",
        "in /private/var/folders/xy/T/config.toml",
    ],
)
def test_the_check_finds_machine_paths(tmp_path: Path, line: str) -> None:
    """Each kind of machine path is reported with its file and line number."""
    doc = tmp_path / "README.md"
    doc.write_text(f"# Title\n\n{line}\n", encoding="utf-8")
    [hit] = machine_paths([doc], tmp_path)
    assert hit.startswith("README.md:3: ")


@pytest.mark.parametrize(
    "line",
    [
        "https://github.com/work/confhub and https://example.com/home/alice/x",
        "a relative ./work/dir, ~/work/confhub, docs/work/x",
        "etcd://127.0.0.1:2379/myapp/ and consul://h:8500/root/",
        "explain shows `at /tmp/ex/cli/config.toml:2` (an example directory)",
        "/var/cache/myapp/confhub and /etc/confhub.toml",
        "a regex like `\\d:\\s` or a time 10:30",
        f"/work/main/.venv/bin/pip {ALLOW}",
    ],
)
def test_the_check_leaves_other_paths_alone(tmp_path: Path, line: str) -> None:
    """URLs, relative and generic paths, and marked lines are not machine paths."""
    doc = tmp_path / "README.md"
    doc.write_text(line + "\n", encoding="utf-8")
    assert machine_paths([doc], tmp_path) == []


def test_the_docs_site_builds_in_strict_mode_without_machine_paths(tmp_path: Path) -> None:
    """``python3 dev.py docs`` (MkDocs strict: a broken link or API reference fails it) builds
    the site, with the plugins' pages and the changelog, and no built page shows a machine path
    (the build runs in a temporary directory, which must not leak into the pages)."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pages = sorted(site.rglob("*.html"))
    names = {p.relative_to(site).as_posix() for p in pages}
    for page in ("guide/index.html", "etcd/backend/index.html", "changelog/index.html"):
        assert page in names, sorted(names)
    reference = (site / "reference" / "confhub" / "index.html").read_text(encoding="utf-8")
    assert 'id="confhub.Hub"' in reference  # the API reference is generated from docstrings
    hits = machine_paths(pages, site)
    assert not hits, "\n".join(hits)
