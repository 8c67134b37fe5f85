"""Byzantine behaviours for the simulator: what a faulty replica does to its own frames.

A Byzantine replica runs the real :class:`ReplicaHost` with its real key; only what
leaves it changes. A behaviour sees every outgoing frame with its destination and
returns the frames actually sent there, so it can tell different peers different
things, sign forged votes with its own key, corrupt signatures, inject garbage or
replay what it saw. It cannot forge another validator's signature, which is exactly
the power PBFT assumes a faulty replica has.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

from flobc import codec
from flobc.consensus.messages import (
    Blocks,
    Checkpoint,
    Commit,
    FetchBlocks,
    Message,
    MessageError,
    NewView,
    Prepare,
    PrePrepare,
    Proposal,
    Status,
    Transactions,
    ViewChange,
    decode_message,
    encode_message,
)
from flobc.crypto import PrivateKey

M = TypeVar("M", bound=Message)

REPLAY_MEMORY = 256


@dataclass(frozen=True)
class Identity:
    """Who the Byzantine replica is: everything it needs to sign as itself."""

    index: int
    key: PrivateKey
    chain_id: str
    n: int


class Behaviour:
    """Base class: passes frames through. Subclasses override :meth:`outgoing`."""

    name: ClassVar[str] = "honest"

    def __init__(self, me: Identity, rng: random.Random) -> None:
        self.me = me
        self.rng = rng
        self._last: tuple[bytes, Message | None] | None = None

    def outgoing(self, to: int, frame: bytes) -> list[bytes]:
        """The frames to send to ``to`` in place of ``frame``."""
        return [frame]

    def observe(self, frame: bytes) -> None:
        """A frame the replica received (lets a behaviour replay it later)."""

    def decode(self, frame: bytes) -> Message | None:
        """Decode, caching the last frame: a broadcast reaches here once per peer."""
        if self._last is None or self._last[0] is not frame:
            try:
                msg: Message | None = decode_message(frame)
            except MessageError:
                msg = None
            self._last = (frame, msg)
        return self._last[1]

    def sign(self, msg: M) -> M:
        return msg.signed(self.me.key, self.me.chain_id)


class Equivocate(Behaviour):
    """As primary, sends a fixed set of peers another validly signed block for each slot.

    Retransmissions stay consistent per peer. Depending on how many it fools, the rest
    commit without them, or no version gathers a quorum and the view changes (carrying a
    version that 2f backups prepared into the next view), or all honest replicas commit
    the other version.
    """

    name = "equivocate"

    def __init__(self, me: Identity, rng: random.Random) -> None:
        super().__init__(me, rng)
        self.fooled = frozenset(p for p in range(me.n) if p != me.index and rng.random() < 0.5)

    def outgoing(self, to: int, frame: bytes) -> list[bytes]:
        msg = self.decode(frame)
        if not isinstance(msg, Proposal) or to not in self.fooled:
            return [frame]
        pp, block = msg.pre_prepare, msg.block
        if pp.replica != self.me.index or block.is_null:
            return [frame]
        other = replace(block, time_ms=block.time_ms + 1, txs=block.txs[::-1])
        forged = self.sign(PrePrepare(pp.view, pp.seq, other.digest(), pp.replica))
        return [encode_message(Proposal(forged, other))]


class ConflictingVotes(Behaviour):
    """Signs prepares, commits and checkpoints for random digests, per peer at random."""

    name = "conflicting-votes"

    def outgoing(self, to: int, frame: bytes) -> list[bytes]:
        msg = self.decode(frame)
        forged: Message
        if isinstance(msg, Prepare | Commit):
            forged = self.sign(replace(msg, digest=self.rng.randbytes(32)))
        elif isinstance(msg, Checkpoint):
            forged = self.sign(replace(msg, state_root=self.rng.randbytes(32)))
        else:
            return [frame]
        return self.rng.choice([[frame], [encode_message(forged)],
                                [encode_message(forged), frame]])


class BadSignatures(Behaviour):
    """Flips a byte in the signature of most signed messages, including certificates."""

    name = "bad-signatures"

    def _flip(self, signature: bytes) -> bytes:
        i = self.rng.randrange(len(signature))
        return signature[:i] + bytes([signature[i] ^ (1 << self.rng.randrange(8))]) + \
            signature[i + 1:]

    def outgoing(self, to: int, frame: bytes) -> list[bytes]:
        msg = self.decode(frame)
        if msg is None or self.rng.random() < 0.3:
            return [frame]
        if isinstance(msg, Proposal):
            pp = msg.pre_prepare
            bad: Message = replace(msg, pre_prepare=replace(pp, signature=self._flip(pp.signature)))
        elif isinstance(msg, Prepare | Commit | Checkpoint | ViewChange | NewView):
            bad = replace(msg, signature=self._flip(msg.signature))
        elif isinstance(msg, Blocks) and msg.blocks:
            first = msg.blocks[0]
            (r, sig), *rest = first.certificate.signatures
            cert = replace(first.certificate, signatures=((r, self._flip(sig)), *rest))
            bad = replace(msg, blocks=(replace(first, certificate=cert), *msg.blocks[1:]))
            if msg.stable:
                (r, sig), *rest = msg.stable[0].signatures
                bad = replace(bad, stable=(replace(msg.stable[0],
                                                   signatures=((r, self._flip(sig)), *rest)),))
        else:
            return [frame]
        return [encode_message(bad)]


class FutureViews(Behaviour):
    """Also sends validly signed copies of its messages for views ahead of the real one,
    and view changes nobody else asked for."""

    name = "future-views"

    def outgoing(self, to: int, frame: bytes) -> list[bytes]:
        msg = self.decode(frame)
        ahead = self.rng.randint(1, 3)
        if isinstance(msg, Prepare | Commit):
            future: Message = self.sign(replace(msg, view=msg.view + ahead))
        elif isinstance(msg, Proposal):
            pp = msg.pre_prepare
            future = replace(msg, pre_prepare=self.sign(replace(pp, view=pp.view + ahead)))
        elif isinstance(msg, Status):
            future = self.sign(ViewChange(msg.view + ahead, 0, (), (), self.me.index))
        else:
            return [frame]
        return [frame, encode_message(future)]


class Garbage(Behaviour):
    """Sends its real traffic plus malformed, truncated, hostile or nonsensical frames."""

    name = "garbage"

    def _garbage(self, frame: bytes) -> bytes:
        rng, me = self.rng, self.me.index
        cut = rng.randrange(max(len(frame), 1))
        makers: list[Callable[[], bytes]] = [
            lambda: rng.randbytes(rng.randint(0, 64)),
            lambda: frame[:cut],
            lambda: frame[:cut] + bytes([frame[cut] ^ 0xFF]) + frame[cut + 1:],
            lambda: codec.pack(["prepare", 1, 2]),
            lambda: codec.pack(["no-such-message", 1]),
            lambda: codec.pack(["commit", 2**64 - 1, -1, b"x", me, b""]),
            lambda: codec.pack(["status", 1, 0, 1, me]),
            lambda: b"\x91" * 200 + b"\x90",  # lists nested 200 deep
            lambda: b"\xdd\xff\xff\xff\xff",  # claims 4 billion items
            lambda: encode_message(Transactions((rng.randbytes(40), b""), (), me)),
            lambda: encode_message(FetchBlocks(0, 2**62, me)),
            lambda: encode_message(Status(2**62, 2**62, False, me)),
        ]
        return rng.choice(makers)()

    def outgoing(self, to: int, frame: bytes) -> list[bytes]:
        if self.rng.random() < 0.5:
            return [frame]
        return self.rng.choice([[frame, self._garbage(frame)], [self._garbage(frame), frame]])


class Replay(Behaviour):
    """Resends old frames it received or sent, as if they were new."""

    name = "replay"

    def __init__(self, me: Identity, rng: random.Random) -> None:
        super().__init__(me, rng)
        self.seen: list[bytes] = []
        self.count = 0
        self._last_sent: bytes | None = None

    def observe(self, frame: bytes) -> None:
        """Reservoir sampling: a uniform sample of everything seen, in bounded memory."""
        self.count += 1
        if len(self.seen) < REPLAY_MEMORY:
            self.seen.append(frame)
        else:
            i = self.rng.randrange(self.count)
            if i < REPLAY_MEMORY:
                self.seen[i] = frame

    def outgoing(self, to: int, frame: bytes) -> list[bytes]:
        if frame is not self._last_sent:  # a broadcast comes here once per peer
            self._last_sent = frame
            self.observe(frame)
        if self.rng.random() < 0.3:
            return [frame, self.rng.choice(self.seen)]
        return [frame]


BEHAVIOURS: dict[str, type[Behaviour]] = {
    cls.name: cls for cls in (Equivocate, ConflictingVotes, BadSignatures, FutureViews,
                              Garbage, Replay)
}
