"""The test server's sockets: :class:`HTTPFrontend` owns the listening socket, the accept
thread, the session reaper and the check prober; :class:`_Handler` moves bytes between a
connection and the engine (:class:`confhub_consul._testserver.Engine`), HTTP/1.1 keep-alive
like Go, dripping a reply when a fault asks. No protocol rule lives here.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confhub_consul._testproto import Reply, Request
from confhub_consul._testserver import Engine

__all__ = ["HTTPFrontend"]

_log = logging.getLogger("confhub.consul.testserver")
_MAX_BODY = 64 * 1024 * 1024  # larger requests get the connection closed unread


class _Handler(BaseHTTPRequestHandler):
    """Moves bytes between a socket and the engine; HTTP/1.1 keep-alive like Go."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Go sets TCP_NODELAY; without it, replies wait ~40 ms
    server: _HTTPServer
    timeout = 120  # idle keep-alive connections are also shut down on stop

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _serve(self) -> None:
        length_header = self.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else 0
        if length > _MAX_BODY:
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        raw_path, _, raw_query = self.path.partition("?")
        req = Request(self.command, raw_path, raw_query, self.headers, body, length)
        reply = self.server.engine.handle(req)
        if reply.action == "drop":
            self.close_connection = True
            return
        if reply.drip > 0 and reply.drip_headers:
            self._drip_all(reply)
            return
        self.send_response_only(reply.status)
        self.send_header("Date", email.utils.formatdate(usegmt=True))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            if reply.drip > 0:
                self._drip(reply)
                return
            self.wfile.write(reply.body)

    def _drip(self, reply: Reply) -> None:
        """Send the body one byte per ``reply.drip`` seconds (a slow-drip server)."""
        self.close_connection = True
        self.wfile.flush()
        stopping = self.server.engine.stopping
        for i in range(len(reply.body)):
            if stopping.wait(reply.drip):
                return
            try:
                self.wfile.write(reply.body[i : i + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up

    def _drip_all(self, reply: Reply) -> None:
        """Send everything, status line and headers included, one byte per ``reply.drip``
        seconds (a server whose every ``recv`` succeeds but never finishes its headers)."""
        self.close_connection = True
        phrase = self.responses.get(reply.status, ("",))[0]
        lines = [
            f"{self.protocol_version} {reply.status} {phrase}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            *(f"{name}: {value}" for name, value in reply.headers),
            f"Content-Length: {len(reply.body)}",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            data += reply.body
        stopping = self.server.engine.stopping
        for i in range(len(data)):
            if stopping.wait(reply.drip):
                return
            try:
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up

    do_GET = do_PUT = do_DELETE = do_POST = do_OPTIONS = do_HEAD = do_PATCH = _serve

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        _log.debug("%s " + format, self.address_string(), *args)


class _HTTPServer(ThreadingHTTPServer):
    """A threading server whose handler threads are tracked and joined on close."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True  # a restarted agent on the same port (TIME_WAIT)

    def __init__(
        self, address: tuple[str, int], engine: Engine, context: ssl.SSLContext | None
    ) -> None:
        self.engine = engine
        self._context = context
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self._context is not None:
            sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._open_lock:
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:  # noqa: ANN401 - socketserver signature
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Shut down every open connection so idle keep-alive threads end at once."""
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        _log.debug("connection from %s ended with an error", client_address, exc_info=True)


class HTTPFrontend:
    """Owns the listening socket, the accept thread and the session reaper thread."""

    def __init__(
        self,
        engine: Engine,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        reaper_interval: float,
    ) -> None:
        self.engine = engine
        self._httpd = _HTTPServer((host, port), engine, context)
        self._reaper_interval = reaper_interval
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"consul-testserver-http-{self.port}",
            ),
            threading.Thread(target=self._reap, name=f"consul-testserver-reaper-{self.port}"),
            threading.Thread(target=self._probe, name=f"consul-testserver-checks-{self.port}"),
        ]

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        """Start serving."""
        for thread in self._threads:
            thread.start()

    def sever(self) -> None:
        """Shut down every open connection (requests in progress and idle keep-alives)."""
        self._httpd.close_open_connections()

    def _reap(self) -> None:
        while not self._stop.wait(self._reaper_interval):
            self.engine.tick()

    def _probe(self) -> None:
        """Run HTTP/TCP checks as their intervals come round (loopback targets only)."""
        while not self._stop.wait(self._reaper_interval):
            for check in self.engine.agent.probe_due():
                if self._stop.is_set():
                    return
                self.engine.agent.probe(check)

    def stop(self) -> None:
        """Stop accepting, release every parked request, close sockets, join all threads."""
        self._stop.set()
        self.engine.stopping.set()
        self.engine.state.wake_all()
        self.engine.faults.release_hung()
        if self._threads[0].is_alive():
            self._httpd.shutdown()
        self._httpd.close_open_connections()
        self._httpd.server_close()  # joins handler threads (block_on_close)
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
