"""A flood of strangers' unauthenticated handshakes on a validator's peer port does not
keep a restarted validator (a known peer) from reconnecting."""

from __future__ import annotations

import asyncio
import resource
import socket
from contextlib import suppress

import pytest

from tests.test_transport import Node, close_all, cluster, run, wait_until

FLOOD = 1000
STRANGERS = [f"127.0.0.{50 + i}" for i in range(50)]
RECONNECT_S = 5.0


async def _hold_open(port: int, source: str, garbage: bool, stop: asyncio.Event,
                     open_now: list[int], dialled: list[int]) -> None:
    """Keep one stranger's connection open, dialling again whenever the server drops it."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((source, 0))
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if garbage:
                await loop.sock_sendall(sock, b"\x00\x00\x01\x00GET / HTTP/1.1\r\n")
            open_now[0] += 1
            dialled[0] += 1
            try:
                reading = asyncio.ensure_future(loop.sock_recv(sock, 1024))
                waiting = asyncio.ensure_future(stop.wait())
                await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
                reading.cancel()
                waiting.cancel()
            finally:
                open_now[0] -= 1
        except OSError:
            pass
        finally:
            sock.close()
        with suppress(asyncio.TimeoutError):  # pace re-dials without spinning the loop
            await asyncio.wait_for(stop.wait(), 0.05)


@pytest.fixture(autouse=True)
def _enough_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 512
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} file descriptors, the limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@run
async def test_restarted_validator_reconnects_through_a_handshake_flood() -> None:
    ports, nodes = await cluster([0, 1])
    stop = asyncio.Event()
    flooders: list[asyncio.Task[None]] = []
    try:
        await wait_until(lambda: 0 in nodes[1].transport.connected_peers(), "first link")
        await nodes[1].transport.close()
        open_now, dialled = [0], [0]
        flooders = [asyncio.create_task(_hold_open(ports[0], STRANGERS[i % len(STRANGERS)],
                                                   i % 2 == 1, stop, open_now, dialled))
                    for i in range(FLOOD)]
        await wait_until(lambda: dialled[0] >= FLOOD, "every flooder to have connected")
        nodes[1] = Node(1, ports, [0, 1])
        await nodes[1].transport.start()
        deadline = asyncio.get_running_loop().time() + RECONNECT_S
        while 0 not in nodes[1].transport.connected_peers():
            assert asyncio.get_running_loop().time() < deadline, \
                f"no link from the restarted validator within {RECONNECT_S} s of the flood"
            await asyncio.sleep(0.01)
        assert open_now[0] > 0, "the flood stopped before the validator reconnected"
    finally:
        stop.set()
        await asyncio.gather(*flooders, return_exceptions=True)
        await close_all(nodes)
