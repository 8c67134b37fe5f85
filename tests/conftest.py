"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from loopback_http import LoopbackServer, Reply, Request


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Request], Reply]], LoopbackServer]]:
    """Start loopback HTTP servers answering with a given function; closed afterwards."""
    servers: list[LoopbackServer] = []

    def start(respond: Callable[[Request], Reply]) -> LoopbackServer:
        servers.append(LoopbackServer(respond))
        return servers[-1]
    yield start
    for server in servers:
        server.close()
