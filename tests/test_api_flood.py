"""300 idle and 300 slowloris connections from 20 client addresses do not starve a
validator's HTTP API, and the server closes them after its header and body deadlines."""

from __future__ import annotations

import dataclasses
import resource
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from cluster import Cluster

from flobc.config import NodeConfig

pytestmark = pytest.mark.slow

TRAINER = "127.0.0.1"
"""The trainers' host, configured as a known API client."""
SOURCES = [f"127.0.0.{i}" for i in range(2, 22)]
IDLE = SLOW = 300
HEADER_TIMEOUT_MS = BODY_TIMEOUT_MS = 1500
BOUND_S = 20.0


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 and (hard == resource.RLIM_INFINITY or hard >= 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    with Cluster.create(tmp_path_factory.mktemp("net"), validators=1, app="fl") as cluster:  # type: ignore[arg-type]
        home = cluster.validators[0].home
        dataclasses.replace(NodeConfig.load(home), api_header_timeout_ms=HEADER_TIMEOUT_MS,
                            api_body_timeout_ms=BODY_TIMEOUT_MS,
                            api_known_addresses=(TRAINER,)).save()
        cluster.start(0)
        yield cluster


def _open(address: tuple[str, int], source: str, payload: bytes) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(address)
    if payload:
        sock.sendall(payload)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b"" or _closed(sock)
    except BlockingIOError:
        return False
    except OSError:
        return True


def _post_update(client: httpx.Client) -> httpx.Response:
    """An update the handler reads and answers (a malformed one: its answer is the
    handler's own, the same with or without a flood)."""
    return client.post("/fl/updates", content=b"{}",
                       headers={"Content-Type": "application/json"})


def test_idle_and_slow_connections_do_not_starve_the_api(validator: Cluster) -> None:
    url = validator.validators[0].url
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    partial_headers = b"GET /status HTTP/1.1\r\nHost: x\r\n"
    short_body = (b"POST /fl/updates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 100\r\n\r\n0123456789")
    with httpx.Client(base_url=url, timeout=10.0) as client:
        normal = _post_update(client)
    flood = [_open(address, SOURCES[i % len(SOURCES)], b"") for i in range(IDLE)]
    flood += [_open(address, SOURCES[i % len(SOURCES)],
                    partial_headers if i % 2 else short_body) for i in range(SLOW)]
    try:
        with httpx.Client(base_url=url, timeout=10.0) as client:
            status = client.get("/status")
            assert status.status_code == 200, status.text
            update = _post_update(client)
            assert update.status_code == normal.status_code != 503, update.text
            assert update.json() == normal.json()
        deadline = time.monotonic() + BOUND_S
        while not all(_closed(s) for s in flood):
            assert time.monotonic() < deadline, (
                f"{sum(not _closed(s) for s in flood)} of {len(flood)} idle or slow "
                f"connections still open {BOUND_S} s after the flood")
            time.sleep(0.05)
    finally:
        for sock in flood:
            sock.close()
