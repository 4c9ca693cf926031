"""Scenario 16: the etcd backend imports and works with every supported protobuf major.

The python-etcd3 family broke when protobuf 4 arrived ("Descriptors cannot be created
directly"); confhub-etcd's generated stubs need protobuf >= 5.27.2 (declared in its
pyproject, so pip never pairs it with 4.x). Each version is installed into its own
directory from the package registry and put first on the path of a child process that
loads a real etcd through a Hub.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confhub_etcd.testing import EtcdServer

VERSIONS = ["5.27.2", "5.29.6", "6.33.6", "7.36.2"]

CHILD = """
import google.protobuf, confhub
assert google.protobuf.__version__ == {version!r}, google.protobuf.__version__
with confhub.Hub(["etcd://{endpoint}/matrix/?timeout=5"], cache_dir=None) as hub:
    assert hub.get("db.port") == "5432", hub.snapshot().to_dict()
print("ok", google.protobuf.__version__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_etcd_backend_with_protobuf(version: str, etcd: EtcdServer, tmp_path: Path) -> None:
    """Import and a live read work with this protobuf (no descriptor errors)."""
    target = tmp_path / f"protobuf-{version}"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            f"protobuf=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, f"pip could not install protobuf {version}: {install.stderr}"
    etcd.put("/matrix/db/port", "5432")
    # The protobuf under test first, then whatever the parent imports confhub and the
    # plugins from (a worktree's PYTHONPATH), so the child runs the code under test.
    inherited = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(target), inherited) if p))
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::DeprecationWarning:google",
            "-c",
            CHILD.format(version=version, endpoint=etcd.endpoint),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Descriptors cannot be created" not in proc.stderr
    assert proc.stdout.strip() == f"ok {version}"
