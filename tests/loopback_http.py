"""Tiny real HTTP servers on loopback, for testing what a trainer does with what it gets.

Each server answers every request with ``respond(request)``, in its own thread, and
records the requests it saw, so a test can check which validator was asked and how
often. A response that should never arrive waits on ``release``, which closing the
server sets, so no handler outlives its test.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes


Reply = tuple[int, dict[str, str], bytes]


def json_reply(status: int, data: Any) -> Reply:
    body = json.dumps(data).encode()
    return status, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body


def bytes_reply(body: bytes, *, declared: int | None = None) -> Reply:
    """An octet-stream answer; ``declared`` overrides its Content-Length, and ``-1``
    omits it, so that the body ends when the connection closes."""
    headers = {"Content-Type": "application/octet-stream"}
    if declared != -1:
        headers["Content-Length"] = str(len(body) if declared is None else declared)
    return 200, headers, body


class LoopbackServer:
    """A threaded HTTP/1.0 server on 127.0.0.1 answering with ``respond``."""

    def __init__(self, respond: Callable[[Request], Reply]) -> None:
        self.requests: list[Request] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, self.rfile.read(length))
                server.requests.append(request)
                status, headers, body = respond(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                # The client may give up reading, as a bounded client should.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            do_GET = do_POST = _handle

            def log_message(self, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.01,),
                                        daemon=True)
        self._thread.start()

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def close(self) -> None:
        self.release.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


def dead_url() -> str:
    """The URL of a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
