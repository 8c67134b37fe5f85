"""Authenticated TCP links between validators.

Each validator dials every peer and keeps one outgoing connection per peer for what it
sends; what it receives arrives on the connections its peers dialled. Frames are a
4-byte big-endian length followed by that many bytes. A connection starts with a
mutual handshake over fresh nonces, each side signing with its validator key, so that
nobody can speak as a validator index whose key it does not hold, and no recorded
handshake can be replayed. Pending handshakes are bounded per source address, with a
share kept for the validators' own addresses, so that strangers holding handshakes
open cannot keep a validator from connecting. Consensus tolerates message loss, so a
full outgoing queue drops its oldest frame rather than block the caller or grow without
bound.

Everything here runs on one event loop; ``on_frame`` is called on that loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from flobc import codec
from flobc.admission import Admission, Refused, host_of
from flobc.consensus.messages import MAX_FRAME
from flobc.consensus.validators import ValidatorSet
from flobc.crypto import PrivateKey
from flobc.errors import ConsensusError

log = logging.getLogger("flobc.transport")

FrameHandler = Callable[[int, bytes], None]
"""on_frame(sender, frame): an authenticated peer's frame, called on the loop thread."""

HEADER = struct.Struct(">I")
PROTOCOL_VERSION = 1
NONCE_SIZE = 32
HANDSHAKE_MAX_FRAME = 512
HANDSHAKE_TIMEOUT_S = 5.0
MAX_PENDING_HANDSHAKES = 64
MAX_PENDING_PER_ADDRESS = 8
RESERVED_HANDSHAKES = 16
RESOLVE_TIMEOUT_S = 2.0
BACKOFF_START_S = 0.05
BACKOFF_CAP_S = 2.0

_HELLO, _CHALLENGE, _AUTH, _WELCOME, _REJECT = "hello", "challenge", "auth", "welcome", "reject"


class ProtocolError(ConsensusError):
    """A peer broke the framing or handshake rules; the connection is closed."""


# --- framing ----------------------------------------------------------------------


def write_frame(writer: asyncio.StreamWriter, frame: bytes) -> None:
    """Queue one length-prefixed frame on ``writer`` (the caller drains)."""
    writer.writelines((HEADER.pack(len(frame)), frame))


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    """Read one frame of 1..limit bytes; EOFError on a clean close between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from exc
        raise EOFError from exc
    (length,) = HEADER.unpack(header)
    if not 0 < length <= limit:
        raise ProtocolError(f"frame length {length} outside 1..{limit}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError(f"truncated frame: {len(exc.partial)} of {length} bytes") from exc


# --- handshake --------------------------------------------------------------------


def _client_proof(chain_id: str, sender: int, receiver: int, client_nonce: bytes,
                  server_nonce: bytes) -> bytes:
    return codec.pack(["flobc/transport/client", chain_id, sender, receiver, client_nonce,
                       server_nonce])


def _server_proof(chain_id: str, sender: int, receiver: int, client_nonce: bytes,
                  server_nonce: bytes) -> bytes:
    return codec.pack(["flobc/transport/server", chain_id, sender, receiver, client_nonce,
                       server_nonce])


async def _read_handshake(reader: asyncio.StreamReader, tag: str, count: int) -> list[Any]:
    """Read one handshake frame ``[tag, ...]`` of ``count`` items, or raise naming why."""
    try:
        msg = codec.unpack(await read_frame(reader, HANDSHAKE_MAX_FRAME), HANDSHAKE_MAX_FRAME)
    except codec.DecodeError as exc:
        raise ProtocolError(f"handshake: {exc}") from exc
    except EOFError as exc:
        raise ProtocolError("connection closed during the handshake") from exc
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
        raise ProtocolError("handshake: frame is not a [type, ...] array")
    if msg[0] == _REJECT and len(msg) == 2 and isinstance(msg[1], str):
        raise ProtocolError(f"peer refused the handshake: {msg[1][:200]}")
    if msg[0] != tag or len(msg) != count:
        raise ProtocolError(f"handshake: expected a {tag!r} frame of {count} items")
    return msg


def _nonce(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != NONCE_SIZE:
        raise ProtocolError(f"handshake: {what} must be {NONCE_SIZE} bytes")
    return value


# --- outgoing links ---------------------------------------------------------------


class _PeerLink:
    """The outgoing connection to one peer: a bounded queue and a reconnecting sender."""

    def __init__(self, owner: Transport, peer: int, address: tuple[str, int],
                 max_frames: int, max_bytes: int) -> None:
        self.owner = owner
        self.peer = peer
        self.address = address
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.dropped = 0
        self.connected = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def push(self, frame: bytes) -> None:
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        while len(self.queue) > self.max_frames or self.queued_bytes > self.max_bytes:
            self.queued_bytes -= len(self.queue.popleft())
            self.dropped += 1
        self.wake.set()

    async def run(self) -> None:
        """Connect, hand over queued frames, and reconnect with capped back-off."""
        backoff = BACKOFF_START_S
        reported = False
        while not self.owner.closed:
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(*self.address)
                    await self._handshake(reader, writer)
                self.owner.learn_validator_address(writer.get_extra_info("peername"))
                self.connected = True
                backoff, reported = BACKOFF_START_S, False
                log.info("connected to validator %d at %s:%d", self.peer, *self.address)
                await self._pump(reader, writer)
            except (OSError, EOFError, ProtocolError, TimeoutError) as exc:
                if self.connected:
                    log.info("lost connection to validator %d: %s", self.peer, _describe(exc))
                elif not reported:
                    log.info("cannot reach validator %d at %s:%d (%s); retrying",
                             self.peer, *self.address, _describe(exc))
                    reported = True
            finally:
                self.connected = False
                if writer is not None:
                    writer.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP_S)

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        own = self.owner
        client_nonce = os.urandom(NONCE_SIZE)
        write_frame(writer, codec.pack([_HELLO, PROTOCOL_VERSION, own.chain_id, own.index,
                                        self.peer, client_nonce]))
        await writer.drain()
        _, server_nonce, signature = await _read_handshake(reader, _CHALLENGE, 3)
        server_nonce = _nonce(server_nonce, "server nonce")
        proof = _server_proof(own.chain_id, own.index, self.peer, client_nonce, server_nonce)
        if not isinstance(signature, bytes) or not own.validators.check_signature(
                self.peer, proof, signature):
            raise ProtocolError(f"the server did not prove it is validator {self.peer}")
        proof = _client_proof(own.chain_id, own.index, self.peer, client_nonce, server_nonce)
        write_frame(writer, codec.pack([_AUTH, own.key.sign(proof)]))
        await writer.drain()
        await _read_handshake(reader, _WELCOME, 1)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write queued frames until the connection fails; the peer never writes to us."""
        watcher = asyncio.create_task(_until_peer_speaks(reader))
        watcher.add_done_callback(lambda _: self.wake.set())
        try:
            while True:
                while self.queue:
                    frame = self.queue.popleft()
                    self.queued_bytes -= len(frame)
                    write_frame(writer, frame)
                await writer.drain()
                if watcher.done():
                    raise ConnectionResetError("peer closed the connection")
                if not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
        finally:
            watcher.cancel()


async def _until_peer_speaks(reader: asyncio.StreamReader) -> None:
    """Return once the peer closes, fails or sends anything: each ends the link."""
    with suppress(OSError):
        await reader.read(1)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --- the transport ----------------------------------------------------------------


class Transport:
    """Frames to and from the other validators of one chain over authenticated TCP."""

    def __init__(self, *, validators: ValidatorSet, index: int, key: PrivateKey,
                 listen: tuple[str, int], peers: Mapping[int, tuple[str, int]],
                 on_frame: FrameHandler, max_frame: int = MAX_FRAME,
                 queue_frames: int = 4096, queue_bytes: int = 64 * 1024 * 1024,
                 max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
                 max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
                 reserved_handshakes: int = RESERVED_HANDSHAKES) -> None:
        if not 0 <= index < validators.n:
            raise ValueError(f"index {index} is not a validator (n = {validators.n})")
        if key.public_key != validators.public_keys[index]:
            raise ValueError(f"the key is not validator {index}'s key")
        for peer in peers:
            if peer == index or not 0 <= peer < validators.n:
                raise ValueError(f"peer index {peer} is not another validator")
        self.validators = validators
        self.chain_id = validators.chain_id
        self.index = index
        self.key = key
        self.listen = listen
        self.on_frame = on_frame
        self.max_frame = max_frame
        self._links = {p: _PeerLink(self, p, a, queue_frames, queue_bytes)
                       for p, a in sorted(peers.items())}
        self._server: asyncio.Server | None = None
        self._inbound: dict[int, asyncio.StreamWriter] = {}
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._pending = Admission(max_pending_handshakes, max_pending_per_address,
                                  reserved_handshakes)
        """Pending inbound handshakes; the peers' addresses are known (reserved share)."""
        self.closed = False

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the port is chosen when ``listen`` says 0)."""
        if self._server is None:
            raise RuntimeError("transport not started")
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        """Listen for peers and start dialling them."""
        await self._resolve_peers()
        self._server = await asyncio.start_server(self._on_connection, *self.listen)
        for link in self._links.values():
            link.task = asyncio.create_task(link.run(), name=f"link-{link.peer}")
        log.info("validator %d listening for peers on %s:%d", self.index, *self.address)

    async def _resolve_peers(self) -> None:
        """Count the peers' hosts as validator addresses; a name that does not resolve
        yet is learnt when its link connects."""
        loop = asyncio.get_running_loop()
        for host in sorted({link.address[0] for link in self._links.values()}):
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError) as exc:
                log.info("cannot resolve peer host %r yet (%s)", host, _describe(exc))
                continue
            for info in infos:
                self._pending.learn(str(info[4][0]))

    def learn_validator_address(self, peername: object) -> None:
        """Give the address an authenticated peer spoke from the reserved share."""
        self._pending.learn(host_of(peername))

    def send(self, to: int | None, frame: bytes) -> None:
        """Queue ``frame`` for peer ``to`` (every peer when None); never blocks."""
        if not 0 < len(frame) <= self.max_frame:
            log.error("not sending a frame of %d bytes (limit %d)", len(frame), self.max_frame)
            return
        if to is None:
            for link in self._links.values():
                link.push(frame)
        elif to in self._links:
            self._links[to].push(frame)
        else:
            log.error("not sending to %d: not a configured peer", to)

    def connected_peers(self) -> list[int]:
        """Peers whose outgoing connection is established and authenticated."""
        return [p for p, link in self._links.items() if link.connected]

    def dropped_frames(self) -> int:
        """Frames dropped from full outgoing queues since start."""
        return sum(link.dropped for link in self._links.values())

    async def close(self) -> None:
        """Stop listening, close every connection and stop reconnecting."""
        self.closed = True
        if self._server is not None:
            self._server.close()
        links = [link.task for link in self._links.values() if link.task is not None]
        for task in links:
            task.cancel()
        # Inbound handlers end on their own once their connection is closed (cancelling
        # them instead makes asyncio's stream machinery log spurious errors).
        for writer in self._handlers.values():
            writer.close()
        await asyncio.gather(*links, *self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # --- inbound ----------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            await self._serve_connection(reader, writer)
        finally:
            del self._handlers[task]
            writer.close()

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        origin = writer.get_extra_info("peername")
        try:
            slot = self._pending.admit(host_of(origin))
        except Refused as exc:
            log.debug("refused connection from %s: %s", origin, exc)
            return
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                sender = await self._accept(reader, writer)
        except (OSError, ProtocolError, TimeoutError) as exc:
            if not self.closed:
                log.warning("refused connection from %s: %s", origin, _describe(exc))
            return
        finally:
            slot.release()
        self.learn_validator_address(origin)
        previous = self._inbound.pop(sender, None)
        if previous is not None:
            previous.close()
        self._inbound[sender] = writer
        try:
            while True:
                self.on_frame(sender, await read_frame(reader, self.max_frame))
        except EOFError:
            log.debug("validator %d closed its connection to us", sender)
        except (OSError, ProtocolError) as exc:
            log.warning("dropped connection from validator %d: %s", sender, _describe(exc))
        except Exception:
            log.exception("frame handler failed on a frame from validator %d; "
                          "dropping the connection", sender)
        finally:
            if self._inbound.get(sender) is writer:
                del self._inbound[sender]

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> int:
        """Server side of the handshake; returns the authenticated sender's index."""
        try:
            sender, client_nonce = self._check_hello(await _read_handshake(reader, _HELLO, 6))
            server_nonce = os.urandom(NONCE_SIZE)
            proof = _server_proof(self.chain_id, sender, self.index, client_nonce, server_nonce)
            write_frame(writer, codec.pack([_CHALLENGE, server_nonce, self.key.sign(proof)]))
            await writer.drain()
            _, signature = await _read_handshake(reader, _AUTH, 2)
            proof = _client_proof(self.chain_id, sender, self.index, client_nonce, server_nonce)
            if not isinstance(signature, bytes) or not self.validators.check_signature(
                    sender, proof, signature):
                raise ProtocolError(f"handshake: bad signature for validator {sender}")
        except ProtocolError as exc:
            await _reject(writer, str(exc))
            raise
        write_frame(writer, codec.pack([_WELCOME]))
        await writer.drain()
        return sender

    def _check_hello(self, msg: list[Any]) -> tuple[int, bytes]:
        _, version, chain_id, sender, receiver, client_nonce = msg
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise ProtocolError(f"handshake: protocol version {version!r} is not "
                                f"{PROTOCOL_VERSION}")
        if chain_id != self.chain_id:
            raise ProtocolError(f"handshake: chain id {str(chain_id)[:80]!r} is not "
                                f"{self.chain_id!r}")
        if type(sender) is not int or sender == self.index or not 0 <= sender < self.validators.n:
            raise ProtocolError(f"handshake: sender {str(sender)[:20]} is not another validator")
        if type(receiver) is not int or receiver != self.index:
            raise ProtocolError(f"handshake: addressed to validator {str(receiver)[:20]}, "
                                f"this is validator {self.index}")
        return sender, _nonce(client_nonce, "client nonce")


async def _reject(writer: asyncio.StreamWriter, reason: str) -> None:
    """Tell the peer why its handshake failed, best effort, before the caller closes."""
    with suppress(OSError):
        write_frame(writer, codec.pack([_REJECT, reason[:200]]))
        await writer.drain()
