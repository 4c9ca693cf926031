"""Issue 14 (security) against real stores: credentials with ``#``/``?`` never shown and
never merging caches; the reader's identity is part of the cache identity.

Real etcd (``confhub_etcd.testing.EtcdServer`` with auth) and the in-repo Consul test server.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from confhub_consul.testing import AclToken, ConsulTestServer
from confhub_etcd.testing import EtcdServer, find_etcd_binary

from confhub import Hub, StartupError

FAST = "retry_initial=0.05&retry_max=0.3&progress_interval=0.5&timeout=1"
HASH_PASSWORD = "Hash#Pw-77"
WRONG_PASSWORD = "Wr0ng#Pw-88"


def _hub(source: str, cache_dir: Path, **kw: Any) -> Hub:
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("start_timeout", 5.0)
    return Hub([source], cache_dir=cache_dir, **kw)


def _files_text(root: Path) -> str:
    parts = []
    for path in sorted(root.rglob("*")):
        parts.append(path.name)
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_hash_in_an_etcd_url_password_is_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """etcd://root:Hash#Pw-77@.../appA/ authenticates; repr, health, explain, a wrong
    password's StartupError, logs and the cache directory never hold either password."""
    caplog.set_level(logging.DEBUG)
    cache_dir = tmp_path / "cache"
    with EtcdServer(auth=True, root_password=HASH_PASSWORD) as etcd:
        etcd.put("/appA/db/host", "a.internal")
        texts: list[Any] = []
        source = f"etcd://root:{HASH_PASSWORD}@{etcd.endpoint}/appA/?{FAST}"
        with _hub(source, cache_dir) as hub:
            assert hub.get("db.host") == "a.internal"
            texts += [repr(hub), hub.sources, hub.health().to_dict(), hub.explain("db.host")]
            texts += [e.to_dict() for e in hub.explain_all()]
        wrong = f"etcd://root:{WRONG_PASSWORD}@{etcd.endpoint}/appA/?{FAST}"
        hub = _hub(wrong, tmp_path / "other-cache")
        with pytest.raises(StartupError) as info:
            hub.start()
        texts += [str(info.value), repr(info.value), repr(hub), hub.health().to_dict()]
        texts += [str(e) for _, e in info.value.attempts]
    out = capsys.readouterr()
    texts += [caplog.text, out.out, out.err, _files_text(tmp_path)]
    for text in texts:
        for password in (HASH_PASSWORD, WRONG_PASSWORD, "Pw-77", "Pw-88"):
            assert password not in str(text), f"{password} leaked in {str(text)[:300]}"


def test_same_credentials_on_two_prefixes_never_share_a_cache(tmp_path: Path) -> None:
    """/appA/ and /appB/ with the same '#'-password have a cache file each; with etcd down
    the /appB/ app starts from /appB/'s copy, not /appA/'s."""
    cache_dir = tmp_path / "cache"
    with EtcdServer(auth=True, root_password=HASH_PASSWORD) as etcd:
        etcd.put("/appA/who", "A")
        etcd.put("/appB/who", "B")

        def source(prefix: str) -> str:
            return f"etcd://root:{HASH_PASSWORD}@{etcd.endpoint}{prefix}?{FAST}"

        for prefix, who in (("/appA/", "A"), ("/appB/", "B")):
            with _hub(source(prefix), cache_dir) as hub:
                assert hub.get("who") == who
        files = sorted(cache_dir.glob("etcd-*.json"))
        assert len(files) == 2, files
        assert {json.loads(f.read_text())["data"]["who"] for f in files} == {"A", "B"}
        etcd.kill()
        with _hub(source("/appB/"), cache_dir) as hub:
            assert hub.health().sources[0].state == "cached"
            assert hub.get("who") == "B"


def test_cache_secrets_false_keeps_nested_secrets_of_an_etcd_document_out_of_the_cache(
    tmp_path: Path,
) -> None:
    """Item 3 on a real store: an etcd JSON document with a secret in a list of tables, a
    SECRET_KEY, a DSN and api_keys under a table, read with ?cache_secrets=false, leaves
    none of them in the cache file (it wrote them), keeps the rest, and a start from that
    cache while etcd is down serves the rest."""
    document = {
        "users": [{"name": "alice", "password": "S3CRET-1"}],
        "secret_key": "S3CRET-2",
        "dsn": "postgres://app:S3CRET-3@db.internal:5432/app",
        "cfg": {"api_keys": ["S3CRET-4"], "region": "eu"},
        "compass": "north",
    }
    cache_dir = tmp_path / "cache"
    with EtcdServer() as etcd:
        etcd.put("/app/config.json", json.dumps(document))
        source = f"etcd://{etcd.endpoint}/app/config.json?format=json&cache_secrets=false&{FAST}"
        with _hub(source, cache_dir) as hub:
            assert hub.get("users")[0]["password"] == "S3CRET-1"  # the app gets real values
        (path,) = cache_dir.glob("etcd-*.json")
        assert "S3CRET" not in path.read_text()
        assert json.loads(path.read_text())["data"] == {
            "users": [{"name": "alice"}],
            "cfg.region": "eu",  # the cache keeps a table's leaves by their dotted keys
            "compass": "north",
        }
        etcd.kill()
        with _hub(source, cache_dir) as hub:
            assert hub.health().sources[0].state == "cached"
            assert hub.get("cfg.region") == "eu"
            assert hub.get("secret_key", None) is None


# -- item 2: the reader is part of the cache identity -----------------------------------------


def _etcdctl(etcd: EtcdServer, *args: str) -> None:
    """Run etcd's own admin tool (next to the etcd binary) as root."""
    etcdctl = Path(find_etcd_binary()).with_name("etcdctl")
    subprocess.run(
        [
            str(etcdctl),
            f"--endpoints={etcd.client_urls[0]}",
            f"--user={etcd.root_user}:{etcd.root_password}",
            "--dial-timeout=5s",
            *args,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_etcd_user_refused_live_is_never_served_another_users_cache(tmp_path: Path) -> None:
    """An RBAC user without access to /app/ that starts while etcd is down gets no cache,
    not root's cached copy (secrets included); root still starts from its own."""
    cache_dir = tmp_path / "cache"
    with EtcdServer(auth=True) as etcd:
        etcd.put("/app/db/password", "S3CRET-PASS")
        _etcdctl(etcd, "user", "add", "intruder", "--new-user-password=intruder-pw")
        root = f"etcd://root:{etcd.root_password}@{etcd.endpoint}/app/?{FAST}"
        intruder = f"etcd://intruder:intruder-pw@{etcd.endpoint}/app/?{FAST}"
        with _hub(root, cache_dir) as hub:
            assert hub.get("db.password") == "S3CRET-PASS"
        with pytest.raises(StartupError):  # refused live, and nothing cached for it
            _hub(intruder, cache_dir).start()
        etcd.kill()
        with pytest.raises(StartupError):
            _hub(intruder, cache_dir).start()
        with _hub(root, cache_dir) as hub:
            assert hub.health().sources[0].state == "cached"
            assert hub.get("db.password") == "S3CRET-PASS"
    text = _files_text(cache_dir)
    assert "intruder" not in text
    assert etcd.root_password not in text


CONSUL_FAST = "wait=1&timeout=1&retry_initial=0.05&retry_max=0.3"


def test_consul_token_from_the_environment_never_gets_another_tokens_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CONSUL_HTTP_TOKEN without read on myapp/ that starts while Consul is down is not
    served the cached copy of the token that may read it; that token still starts from it."""
    reader = AclToken(secret_id="reader-token-S3CRET", key_prefix={"myapp/": "read"})
    outsider = AclToken(secret_id="outsider-token-S3CRET", key_prefix={"other/": "read"})
    cache_dir = tmp_path / "cache"
    with ConsulTestServer(
        acl_enabled=True, acl_default_policy="deny", tokens=[reader, outsider],
        default_query_time=2, max_query_time=3,
    ) as srv:  # fmt: skip
        srv.put("myapp/db/password", "S3CRET-PASS")
        trusted = f"consul://{srv.address}/myapp/?token=reader-token-S3CRET&{CONSUL_FAST}"
        plain = f"consul://{srv.address}/myapp/?{CONSUL_FAST}"
        with _hub(trusted, cache_dir) as hub:
            assert hub.get("db.password") == "S3CRET-PASS"
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "outsider-token-S3CRET")
        with pytest.raises(StartupError):  # refused live, and nothing cached for it
            _hub(plain, cache_dir).start()
        srv.stop()
        with pytest.raises(StartupError):
            _hub(plain, cache_dir).start()
        monkeypatch.delenv("CONSUL_HTTP_TOKEN")
        with _hub(trusted, cache_dir) as hub:
            assert hub.health().sources[0].state == "cached"
            assert hub.get("db.password") == "S3CRET-PASS"
    assert "token-S3CRET" not in _files_text(cache_dir)
