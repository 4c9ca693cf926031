"""``confhub set`` / ``confhub delete`` as a user runs them: a subprocess against a real etcd.

The story of issue 13 item 5: a one-word slip over a table is refused and says what it would
shadow; a leaf/parent clash is refused unless forced; once forced, a new process with a warm
cache starts from it and reports why; ``confhub delete`` fixes the store and the source is
live again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from confhub_etcd import EtcdClient
from confhub_etcd.testing import EtcdServer


def confhub(
    *args: str, cwd: Path | None = None, extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "confhub", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def target(etcd: EtcdServer) -> str:
    return f"etcd://{etcd.endpoint}/svc/?retry_initial=0.05&retry_max=0.3"


def test_the_story(etcd: EtcdServer, client: EtcdClient, target: str, tmp_path: Path) -> None:
    client.put_many({"/svc/db/host": "h1", "/svc/db/port": "5432", "/svc/db/user": "app"})
    cache = str(tmp_path / "cache")
    # A process with a cache reads the store: the cache is warm.
    assert confhub("--cache-dir", cache, "-s", target, "get", "db.host").stdout == "h1\n"
    before = client.revision()

    # 1. The slip: a scalar over the db table is refused, naming every key it would shadow.
    slip = confhub("set", target, "db", "oops")
    assert slip.returncode == 4, slip.stderr
    assert "it would shadow 3 key(s): db.host, db.port, db.user" in slip.stderr
    assert "--force" in slip.stderr
    # 2. A key under a value is refused too.
    assert confhub("set", target, "mode", "fast").returncode == 0
    clash = confhub("set", target, "mode.password", "s3cret")
    assert clash.returncode == 4
    assert "'mode' holds a value" in clash.stderr
    assert "it would shadow 1 key(s): mode" in clash.stderr
    assert client.get("/svc/mode/password")[0] is None
    assert client.revision() == before + 1  # only 'mode' was written

    # 3. Forced, the store holds a key that is both a value and a parent.
    forced = confhub("set", target, "mode.password", "s3cret", "--force")
    assert forced.returncode == 0, forced.stderr
    assert client.get("/svc/mode/password")[0] is not None

    # Without a cache a process refuses to start, naming the key and the fix.
    cold = confhub("-s", target, "get", "db.host")
    assert cold.returncode == 4
    assert "'/svc/mode' is both a value and the parent" in cold.stderr
    assert "delete or rename" in cold.stderr
    # With the warm cache it starts from it and reports the reason.
    warm = confhub("--cache-dir", cache, "-s", target, "get", "db.host")
    assert (warm.returncode, warm.stdout) == (0, "h1\n")
    health = confhub("--cache-dir", cache, "-s", target, "health", "--json")
    assert health.returncode == 0, health.stderr
    source = json.loads(health.stdout)["sources"][0]
    assert source["state"] == "cached"
    assert "is both a value and the parent" in source["last_error"]

    # 4. The fix: delete the value; the source is live again.
    fixed = confhub("delete", target, "mode")
    assert fixed.returncode == 0, fixed.stderr
    assert "mode deleted from" in fixed.stdout
    health = confhub("--cache-dir", cache, "-s", target, "health", "--json")
    assert json.loads(health.stdout)["sources"][0]["state"] == "live"
    assert confhub("-s", target, "get", "mode.password").stdout == "s3cret\n"


def test_atomic_set_and_dry_run(client: EtcdClient, target: str) -> None:
    """--atomic writes every KEY=VALUE in one revision; --dry-run shows old -> new and
    writes nothing (secret-looking keys are redacted)."""
    client.put("/svc/db/host", "h1")
    preview = confhub("set", target, "db.host=h2", "db.password=pw", "--atomic", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "db.host: 'h1' -> 'h2'" in preview.stdout
    assert "db.password: <absent> -> <redacted>" in preview.stdout and "pw" not in preview.stdout
    assert "nothing was written" in preview.stdout
    assert client.get("/svc/db/password")[0] is None
    done = confhub("set", target, "db.host=h2", "db.password=pw", "--atomic")
    assert done.returncode == 0, done.stderr
    assert "2 key(s) written" in done.stdout and "one transaction" in done.stdout
    host = client.get("/svc/db/host")[0]
    password = client.get("/svc/db/password")[0]
    assert host is not None and password is not None
    assert host.mod_revision == password.mod_revision
    # Delete several keys in one transaction; a key that is not there exits 1.
    missing = confhub("delete", target, "db.nope")
    assert missing.returncode == 1 and "nothing to delete" in missing.stderr
    assert confhub("delete", target, "db.nope", "--missing-ok").returncode == 0
    gone = confhub("delete", target, "db.host", "db.password", "--atomic")
    assert gone.returncode == 0, gone.stderr
    assert client.get("/svc/db/host")[0] is None and client.get("/svc/db/password")[0] is None


def test_check_against_a_class(client: EtcdClient, target: str, tmp_path: Path) -> None:
    """--check MODULE:CLASS binds the resulting content first and refuses what does not fit."""
    (tmp_path / "appsettings.py").write_text(
        "import attrs\n\n@attrs.frozen\nclass Db:\n    host: str\n    port: int = 5432\n"
    )
    client.put("/svc/db/host", "h1")
    check = ("--check", "appsettings:Db", "--check-prefix", "db")
    bad = confhub("set", target, "db.port", "fifty", *check, extra_path=tmp_path)
    assert bad.returncode == 4, bad.stderr
    assert "db.port" in bad.stderr or "$.port" in bad.stderr
    assert client.get("/svc/db/port")[0] is None
    good = confhub("set", target, "db.port", "6000", *check, extra_path=tmp_path)
    assert good.returncode == 0, good.stderr
    assert client.get("/svc/db/port")[0].value == b"6000"  # type: ignore[union-attr]
    unknown = confhub("set", target, "db.port", "1", "--check", "nosuchmodule:X")
    assert unknown.returncode == 2 and "cannot import" in unknown.stderr
