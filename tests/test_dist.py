"""Release-ready packages: ``python3 dev.py dist`` builds the sdists and wheels of confhub and
both plugins, ``twine check --strict`` passes on them, and the wheels installed (not editable)
into a fresh virtual environment run ``confhub demo`` (the etcd part included) and a smoke test.

This is the one test that installs from the package index (the wheels' dependencies), as a user's
``pip install`` would; it takes about a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = {"confhub": "MIT", "confhub_etcd": "Apache-2.0", "confhub_consul": "Apache-2.0"}


def _run(*cmd: str | Path, cwd: Path = ROOT, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheels_install_into_a_fresh_venv_and_run(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    log = _run(sys.executable, ROOT / "dev.py", "dist", out)
    assert log.count("PASSED") == 6, log  # twine check, three sdists and three wheels
    wheels = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(wheels) == set(PROJECTS), sorted(out.iterdir())
    for name, licence in PROJECTS.items():
        with zipfile.ZipFile(wheels[name]) as wheel:
            names = wheel.namelist()
            metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
        assert f"License-Expression: {licence}".encode() in metadata
        assert f"{name}/py.typed" in names  # typed packages
        assert not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(
        python, "-m", "pip", "install", "-q",
        wheels["confhub"], f"{wheels['confhub_etcd']}[testing]", wheels["confhub_consul"],
    )  # fmt: skip
    where = _run(
        python, "-c", "import confhub, confhub_etcd; print(confhub.__file__)", cwd=tmp_path
    )
    assert where.startswith(str(venv)), where  # the installed wheel, not this checkout

    demo = _run(venv / "bin" / "confhub", "demo", cwd=tmp_path)
    assert "never replaces the last good one" in demo
    assert "no etcd binary" not in demo, demo  # the etcd part ran against a real etcd
    listing = _run(venv / "bin" / "confhub", "backends", cwd=tmp_path)
    for line in ("consul     confhub-consul 0.1.0", "etcd       confhub-etcd 0.1.0"):
        assert line in listing, listing

    (tmp_path / "app.toml").write_text("[db]\nport = 5433\n", encoding="utf-8")
    smoke = textwrap.dedent(
        """
        import attrs, confhub

        @attrs.frozen
        class Db:
            host: str
            port: int

        with confhub.Hub([{"db": {"host": "h", "port": 1}}, "file:app.toml"]) as hub:
            db = hub.bind(Db, prefix="db")
            print(db.host, db.port, hub.explain("db.port").source)
        """
    )
    assert _run(python, "-c", smoke, cwd=tmp_path).split() == ["h", "5433", "file:app.toml"]
