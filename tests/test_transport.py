"""The validator transport over real loopback sockets: delivery, reconnection, hostile input."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from flobc import codec
from flobc.consensus.transport import Transport
from flobc.consensus.validators import ValidatorSet
from flobc.crypto import PrivateKey

CHAIN = "transport-test"
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
VALIDATORS = ValidatorSet(CHAIN, [k.public_key for k in KEYS])
TIMEOUT = 10.0


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop."""
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))
    return wrapper


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` to hold, failing after TIMEOUT."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Node:
    """A transport plus a queue of what it delivered."""

    def __init__(self, index: int, ports: dict[int, int], members: list[int],
                 **options: Any) -> None:
        self.inbox: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.transport = Transport(
            validators=VALIDATORS, index=index, key=KEYS[index],
            listen=("127.0.0.1", ports[index]),
            peers={p: ("127.0.0.1", ports[p]) for p in members if p != index},
            on_frame=lambda sender, frame: self.inbox.put_nowait((sender, frame)), **options)

    async def receive(self) -> tuple[int, bytes]:
        return await asyncio.wait_for(self.inbox.get(), TIMEOUT)


async def cluster(members: list[int], **options: Any) -> tuple[dict[int, int], dict[int, Node]]:
    ports = {i: free_port() for i in range(len(KEYS))}
    nodes = {i: Node(i, ports, members, **options) for i in members}
    for node in nodes.values():
        await node.transport.start()
    return ports, nodes


async def close_all(nodes: dict[int, Node]) -> None:
    for node in nodes.values():
        await node.transport.close()


# --- a raw, hand-driven client speaking the wire protocol -------------------------


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def read_raw_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return codec.unpack(await reader.readexactly(length))


async def raw_handshake(port: int, claimed: int, signer: PrivateKey, receiver: int = 0,
                        chain_id: str = CHAIN, auth: bytes | None = None
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """Dial ``port`` claiming to be ``claimed``; returns the streams and the server's verdict."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    nonce = os.urandom(32)
    writer.write(frame(codec.pack(["hello", 1, chain_id, claimed, receiver, nonce])))
    challenge = await read_raw_frame(reader)
    if challenge[0] != "challenge":
        return reader, writer, challenge
    proof = codec.pack(["flobc/transport/client", chain_id, claimed, receiver, nonce,
                        challenge[1]])
    writer.write(frame(codec.pack(["auth", auth or signer.sign(proof)])))
    return reader, writer, await read_raw_frame(reader)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (after any final frames)."""
    try:
        while await asyncio.wait_for(reader.read(4096), TIMEOUT):
            pass
    except ConnectionResetError:
        pass
    return True


async def assert_still_serving(nodes: dict[int, Node], sender: int = 1, receiver: int = 0,
                               ) -> None:
    payload = os.urandom(16)
    nodes[sender].transport.send(receiver, payload)
    assert await nodes[receiver].receive() == (sender, payload)


# --- tests ------------------------------------------------------------------------


@run
async def test_three_transports_exchange_frames_in_order_both_ways() -> None:
    _, nodes = await cluster([0, 1, 2])
    try:
        for i in nodes:
            for n in range(20):
                for j in nodes:
                    if j != i:
                        nodes[i].transport.send(j, f"{i}->{j} #{n}".encode())
            nodes[i].transport.send(None, f"{i} to all".encode())
        for j, node in nodes.items():
            got: dict[int, list[bytes]] = {}
            for _ in range(2 * 21):
                sender, payload = await node.receive()
                got.setdefault(sender, []).append(payload)
            assert got == {i: [f"{i}->{j} #{n}".encode() for n in range(20)]
                           + [f"{i} to all".encode()] for i in nodes if i != j}
        await wait_until(lambda: all(sorted(n.transport.connected_peers()) ==
                                     [p for p in nodes if p != i] for i, n in nodes.items()),
                         "every link to be up")
    finally:
        await close_all(nodes)


@run
async def test_large_frame_up_to_the_limit_is_delivered() -> None:
    _, nodes = await cluster([0, 1], max_frame=1 << 20)
    try:
        big = os.urandom(1 << 20)
        nodes[1].transport.send(0, big)
        nodes[1].transport.send(0, b"x" * ((1 << 20) + 1))  # over the limit: not sent
        nodes[1].transport.send(0, b"after")
        assert await nodes[0].receive() == (1, big)
        assert await nodes[0].receive() == (1, b"after")
    finally:
        await close_all(nodes)


@run
async def test_peer_reconnects_after_the_other_restarts() -> None:
    ports, nodes = await cluster([0, 1])
    try:
        await assert_still_serving(nodes, 1, 0)
        await assert_still_serving(nodes, 0, 1)
        await nodes[1].transport.close()
        await wait_until(lambda: 1 not in nodes[0].transport.connected_peers(),
                         "validator 0 to notice validator 1 is gone")
        nodes[0].transport.send(1, b"sent while 1 was down")
        nodes[1] = Node(1, ports, [0, 1])
        await nodes[1].transport.start()
        assert await nodes[1].receive() == (0, b"sent while 1 was down")
        await assert_still_serving(nodes, 1, 0)
        await wait_until(lambda: nodes[0].transport.connected_peers() == [1], "reconnection")
    finally:
        await close_all(nodes)


@run
async def test_full_queue_drops_the_oldest_frames() -> None:
    ports = {i: free_port() for i in range(2)}
    nodes = {0: Node(0, ports, [0, 1], queue_frames=5)}
    await nodes[0].transport.start()
    try:
        for n in range(20):
            nodes[0].transport.send(1, b"%d" % n)
        assert nodes[0].transport.dropped_frames() == 15
        nodes[1] = Node(1, ports, [0, 1])
        await nodes[1].transport.start()
        assert [(await nodes[1].receive())[1] for _ in range(5)] == [
            b"15", b"16", b"17", b"18", b"19"]
        nodes[0].transport.send(1, b"next")
        assert await nodes[1].receive() == (0, b"next")
    finally:
        await close_all(nodes)


@run
async def test_garbage_and_bad_lengths_before_the_handshake_are_refused() -> None:
    ports, nodes = await cluster([0, 1])
    try:
        for data in (os.urandom(64), b"\xff\xff\xff\xff", struct.pack(">I", 0),
                     frame(b"\xc1not msgpack"), frame(codec.pack(["hello"])),
                     struct.pack(">I", 400) + b"truncated"):
            reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
            writer.write(data)
            if data.endswith(b"truncated"):
                writer.write_eof()
            assert await closed_by_server(reader)
            writer.close()
        await assert_still_serving(nodes)
        assert nodes[0].inbox.empty()
    finally:
        await close_all(nodes)


@run
async def test_handshake_claiming_another_validators_index_is_refused() -> None:
    ports, nodes = await cluster([0, 1])
    try:
        # Validator 2's key (or any other) cannot speak as validator 1.
        for signer in (KEYS[2], PrivateKey.generate()):
            reader, writer, verdict = await raw_handshake(ports[0], claimed=1, signer=signer)
            assert verdict == ["reject", "handshake: bad signature for validator 1"]
            writer.write(frame(b"forged"))
            assert await closed_by_server(reader)
            writer.close()
        # A signature from an earlier handshake is no good against a fresh challenge.
        reader, writer, verdict = await raw_handshake(ports[0], claimed=3, signer=KEYS[3])
        assert verdict == ["welcome"]
        writer.close()
        replayed = KEYS[3].sign(codec.pack(["flobc/transport/client", CHAIN, 3, 0,
                                            bytes(32), bytes(32)]))
        reader, writer, verdict = await raw_handshake(ports[0], claimed=3, signer=KEYS[3],
                                                      auth=replayed)
        assert verdict[0] == "reject"
        writer.close()
        await assert_still_serving(nodes)
        assert nodes[0].inbox.empty()
    finally:
        await close_all(nodes)


@pytest.mark.parametrize(("hello", "reason"), [
    (["hello", 1, "other-chain", 1, 0, bytes(32)], "chain id 'other-chain'"),
    (["hello", 2, CHAIN, 1, 0, bytes(32)], "protocol version 2"),
    (["hello", 1, CHAIN, 0, 0, bytes(32)], "sender 0 is not another validator"),
    (["hello", 1, CHAIN, 9, 0, bytes(32)], "sender 9 is not another validator"),
    (["hello", 1, CHAIN, 1, 2, bytes(32)], "addressed to validator 2"),
    (["hello", 1, CHAIN, 1, 0, b"short"], "client nonce must be 32 bytes"),
    (["hello", 1, CHAIN, 1], "expected a 'hello' frame of 6 items"),
])
@run
async def test_bad_hello_is_rejected_with_a_reason(hello: list, reason: str) -> None:
    ports, nodes = await cluster([0, 1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
        writer.write(frame(codec.pack(hello)))
        verdict = await read_raw_frame(reader)
        assert verdict[0] == "reject" and reason in verdict[1], verdict
        assert await closed_by_server(reader)
        writer.close()
        await assert_still_serving(nodes)
    finally:
        await close_all(nodes)


@run
async def test_authenticated_peer_sending_bad_frames_is_cut_off_alone() -> None:
    ports, nodes = await cluster([0, 1], max_frame=1024)
    try:
        for bad in (struct.pack(">I", 2**31), struct.pack(">I", 1025),
                    struct.pack(">I", 0), struct.pack(">I", 100) + b"only ten b"):
            reader, writer, verdict = await raw_handshake(ports[0], claimed=3, signer=KEYS[3])
            assert verdict == ["welcome"]
            writer.write(frame(b"good frame") + bad)
            if len(bad) > 4:
                writer.write_eof()
            assert await closed_by_server(reader)
            writer.close()
            assert await nodes[0].receive() == (3, b"good frame")
        await assert_still_serving(nodes)
        assert nodes[0].inbox.empty()
    finally:
        await close_all(nodes)


@run
async def test_dialling_an_impostor_never_connects() -> None:
    """A listener that cannot sign as the validator dialled gets no auth and no frames."""
    hellos: asyncio.Queue[Any] = asyncio.Queue()
    after_challenge: list[bytes] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await read_raw_frame(reader)
        hellos.put_nowait(hello)
        nonce = os.urandom(32)
        proof = codec.pack(["flobc/transport/server", CHAIN, 0, 1, hello[5], nonce])
        writer.write(frame(codec.pack(["challenge", nonce, KEYS[2].sign(proof)])))
        after_challenge.append(await reader.read())
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    zero = Transport(validators=VALIDATORS, index=0, key=KEYS[0],
                     listen=("127.0.0.1", free_port()), peers={1: ("127.0.0.1", port)},
                     on_frame=lambda s, f: None)
    await zero.start()
    try:
        zero.send(1, b"meant for 1")
        for _ in range(2):  # refused, then retried after back-off
            hello = await asyncio.wait_for(hellos.get(), TIMEOUT)
            assert hello[:5] == ["hello", 1, CHAIN, 0, 1]
        assert zero.connected_peers() == []
        await wait_until(lambda: len(after_challenge) >= 1, "the impostor to see the close")
        assert after_challenge[0] == b""  # neither an auth frame nor the queued frame
    finally:
        await zero.close()
        server.close()
        await server.wait_closed()


def test_constructor_refuses_inconsistent_identity() -> None:
    with pytest.raises(ValueError, match="not validator 1's key"):
        Transport(validators=VALIDATORS, index=1, key=KEYS[0], listen=("127.0.0.1", 0),
                  peers={}, on_frame=lambda s, f: None)
    with pytest.raises(ValueError, match="peer index 0 is not another validator"):
        Transport(validators=VALIDATORS, index=0, key=KEYS[0], listen=("127.0.0.1", 0),
                  peers={0: ("127.0.0.1", 1)}, on_frame=lambda s, f: None)

