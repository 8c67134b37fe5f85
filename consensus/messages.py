"""PBFT messages, their canonical wire form and what each signature covers.

Every message is a frozen dataclass. ``encode_message`` turns one into canonical
msgpack (``[tag, *fields]``); ``decode_message`` parses and validates the shape and
bounds of every field before anything else looks at it, so malformed input fails here
with a :class:`MessageError` naming the problem. Signatures cover
``signing_bytes(chain_id)``: the tag, the chain id and every field but the signature,
so a vote from one chain or one message type can never be replayed as another.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Self

from flobc import codec
from flobc.crypto import HASH_SIZE, SIGNATURE_SIZE, PrivateKey, sha256, verify
from flobc.errors import ConsensusError, InputError

MAX_FRAME = 8 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
"""A blob bigger than this travels as :class:`BlobChunk` messages of this size (the last
one shorter), so no blob has to fit in one frame."""
MAX_INT = 2**63 - 1
MAX_LIST = 100_000


class MessageError(ConsensusError, InputError):
    """A message that is malformed, oversized or of an unknown type."""


# --- field validators -------------------------------------------------------------


def _int(v: Any, name: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_INT:
        raise MessageError(f"{name}: expected a non-negative integer")
    return v


def _bytes(v: Any, name: str, size: int | None = None, max_size: int = MAX_FRAME) -> bytes:
    if not isinstance(v, bytes):
        raise MessageError(f"{name}: expected bytes")
    if size is not None and len(v) != size:
        raise MessageError(f"{name}: expected {size} bytes, got {len(v)}")
    if len(v) > max_size:
        raise MessageError(f"{name}: {len(v)} bytes exceeds {max_size}")
    return v


def _digest(v: Any, name: str) -> bytes:
    return _bytes(v, name, HASH_SIZE)


def _sig(v: Any, name: str = "signature") -> bytes:
    return _bytes(v, name, SIGNATURE_SIZE)


def _list(v: Any, name: str, max_len: int = MAX_LIST) -> list:
    if not isinstance(v, list):
        raise MessageError(f"{name}: expected a list")
    if len(v) > max_len:
        raise MessageError(f"{name}: {len(v)} items exceeds {max_len}")
    return v


def _fields(raw: Any, name: str, count: int) -> list:
    items = _list(raw, name)
    if len(items) != count:
        raise MessageError(f"{name}: expected {count} fields, got {len(items)}")
    return items


def _signatures(raw: Any, name: str) -> tuple[tuple[int, bytes], ...]:
    """A certificate's [[replica, signature], ...] list."""
    pairs = []
    for item in _list(raw, f"{name}.signatures", 1000):
        r, sig = _fields(item, f"{name}.signature", 2)
        pairs.append((_int(r, "replica"), _sig(sig)))
    return tuple(pairs)


# --- blocks and certificates --------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A batch of transactions at one height, stamped by the primary that proposed it.

    ``time_ms`` is 0 for a null block (one a new primary proposes to fill a gap);
    executing applications see ``max(time_ms, previous block time)``.
    """

    height: int
    time_ms: int
    proposer: int
    txs: tuple[bytes, ...]

    def to_list(self) -> list:
        return [self.height, self.time_ms, self.proposer, list(self.txs)]

    @classmethod
    def from_list(cls, raw: Any) -> Block:
        h, t, p, txs = _fields(raw, "block", 4)
        return cls(_int(h, "block.height"), _int(t, "block.time_ms"),
                   _int(p, "block.proposer"),
                   tuple(_bytes(x, "block.tx") for x in _list(txs, "block.txs")))

    def encode(self) -> bytes:
        return codec.pack(self.to_list())

    @classmethod
    def decode(cls, data: bytes) -> Block:
        return cls.from_list(_unpack(data))

    def digest(self) -> bytes:
        return sha256(self.encode())

    @property
    def is_null(self) -> bool:
        return not self.txs and self.time_ms == 0


def null_block(height: int, proposer: int) -> Block:
    return Block(height, 0, proposer, ())


# --- signed messages ----------------------------------------------------------------


class Message:
    """Base of all consensus messages; subclasses are frozen dataclasses."""

    TAG: ClassVar[str]
    SIGNED: ClassVar[bool] = True

    def field_values(self) -> list:
        return [_to_wire(getattr(self, f.name)) for f in fields(self)]  # type: ignore[arg-type]

    def signing_bytes(self, chain_id: str) -> bytes:
        values = self.field_values()[:-1] if self.SIGNED else self.field_values()
        return codec.pack([self.TAG, chain_id, *values])

    @classmethod
    def from_list(cls, raw: Any) -> Self:
        """The message whose fields are ``raw``, each validated (MessageError if not)."""
        raise NotImplementedError

    def signed(self, key: PrivateKey, chain_id: str) -> Self:
        return replace(self, signature=key.sign(self.signing_bytes(chain_id)))  # type: ignore

    def verify(self, public_key: bytes, chain_id: str) -> bool:
        return verify(public_key, self.signing_bytes(chain_id), self.signature)  # type: ignore


def _to_wire(value: Any) -> Any:
    if isinstance(value, Block):
        return value.to_list()
    if hasattr(value, "field_values"):
        return value.field_values()
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    return value


@dataclass(frozen=True)
class _Vote(Message):
    """A replica's signed statement about the request ``digest`` at (view, seq).

    PRE-PREPARE, PREPARE and COMMIT carry the same fields; the tag in what is signed
    keeps one from ever counting as another.
    """

    view: int
    seq: int
    digest: bytes
    replica: int
    signature: bytes = b""

    @classmethod
    def from_list(cls, raw: Any) -> Self:
        v, s, d, r, sig = _fields(raw, cls.TAG, 5)
        return cls(_int(v, "view"), _int(s, "seq"), _digest(d, "digest"), _int(r, "replica"),
                   _sig(sig))


@dataclass(frozen=True)
class PrePrepare(_Vote):
    TAG = "preprepare"


@dataclass(frozen=True)
class Prepare(_Vote):
    TAG = "prepare"


@dataclass(frozen=True)
class Commit(_Vote):
    TAG = "commit"


@dataclass(frozen=True)
class Checkpoint(Message):
    TAG = "checkpoint"
    seq: int
    state_root: bytes
    replica: int
    signature: bytes = b""

    @classmethod
    def from_list(cls, raw: Any) -> Checkpoint:
        s, root, r, sig = _fields(raw, cls.TAG, 4)
        return cls(_int(s, "seq"), _digest(root, "state_root"), _int(r, "replica"), _sig(sig))


@dataclass(frozen=True)
class Proposal(Message):
    """A signed pre-prepare together with the block it names (the PBFT request batch)."""

    TAG = "proposal"
    SIGNED = False
    pre_prepare: PrePrepare
    block: Block

    @classmethod
    def from_list(cls, raw: Any) -> Proposal:
        pp, block = _fields(raw, cls.TAG, 2)
        return cls(PrePrepare.from_list(pp), Block.from_list(block))


@dataclass(frozen=True)
class PreparedProof:
    """Evidence that a request was prepared: its proposal and 2f matching prepares."""

    proposal: Proposal
    prepares: tuple[Prepare, ...]

    def field_values(self) -> list:
        return [self.proposal.field_values(), [p.field_values() for p in self.prepares]]

    @classmethod
    def from_list(cls, raw: Any) -> PreparedProof:
        prop, prepares = _fields(raw, "prepared", 2)
        return cls(Proposal.from_list(prop),
                   tuple(Prepare.from_list(p) for p in _list(prepares, "prepares", 1000)))


@dataclass(frozen=True)
class ViewChange(Message):
    TAG = "viewchange"
    view: int
    stable_seq: int
    checkpoint_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedProof, ...]
    replica: int
    signature: bytes = b""

    @classmethod
    def from_list(cls, raw: Any) -> ViewChange:
        v, s, cps, prepared, r, sig = _fields(raw, cls.TAG, 6)
        return cls(_int(v, "view"), _int(s, "stable_seq"),
                   tuple(Checkpoint.from_list(c) for c in _list(cps, "checkpoint_proof", 1000)),
                   tuple(PreparedProof.from_list(p) for p in _list(prepared, "prepared", 10_000)),
                   _int(r, "replica"), _sig(sig))


@dataclass(frozen=True)
class NewView(Message):
    TAG = "newview"
    view: int
    view_changes: tuple[ViewChange, ...]
    proposals: tuple[Proposal, ...]
    replica: int
    signature: bytes = b""

    @classmethod
    def from_list(cls, raw: Any) -> NewView:
        v, vcs, props, r, sig = _fields(raw, cls.TAG, 5)
        return cls(_int(v, "view"),
                   tuple(ViewChange.from_list(x) for x in _list(vcs, "view_changes", 1000)),
                   tuple(Proposal.from_list(x) for x in _list(props, "proposals", 10_000)),
                   _int(r, "replica"), _sig(sig))


@dataclass(frozen=True)
class CommitCertificate:
    """2f+1 signed COMMITs of one view for one block: what makes a block verifiable."""

    view: int
    seq: int
    digest: bytes
    signatures: tuple[tuple[int, bytes], ...]

    def field_values(self) -> list:
        return [self.view, self.seq, self.digest, [[r, s] for r, s in self.signatures]]

    @classmethod
    def from_list(cls, raw: Any) -> CommitCertificate:
        v, s, d, sigs = _fields(raw, "certificate", 4)
        return cls(_int(v, "view"), _int(s, "seq"), _digest(d, "digest"),
                   _signatures(sigs, "certificate"))

    def encode(self) -> bytes:
        return codec.pack(self.field_values())

    @classmethod
    def decode(cls, data: bytes) -> CommitCertificate:
        return cls.from_list(_unpack(data))

    def commits(self) -> list[Commit]:
        return [Commit(self.view, self.seq, self.digest, r, s) for r, s in self.signatures]


@dataclass(frozen=True)
class CheckpointCertificate:
    """2f+1 signed CHECKPOINTs agreeing on the state root at one height."""

    seq: int
    state_root: bytes
    signatures: tuple[tuple[int, bytes], ...]

    def field_values(self) -> list:
        return [self.seq, self.state_root, [[r, s] for r, s in self.signatures]]

    @classmethod
    def from_list(cls, raw: Any) -> CheckpointCertificate:
        s, root, sigs = _fields(raw, "checkpoint_certificate", 3)
        return cls(_int(s, "seq"), _digest(root, "state_root"),
                   _signatures(sigs, "checkpoint_certificate"))

    def encode(self) -> bytes:
        return codec.pack(self.field_values())

    @classmethod
    def decode(cls, data: bytes) -> CheckpointCertificate:
        return cls.from_list(_unpack(data))

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint(self.seq, self.state_root, r, s) for r, s in self.signatures]


# --- unsigned messages: state transfer and transaction gossip ----------------------


@dataclass(frozen=True)
class FetchBlocks(Message):
    """Ask a peer for committed blocks ``first..last`` (inclusive) with certificates."""

    TAG = "fetchblocks"
    SIGNED = False
    first: int
    last: int
    replica: int

    @classmethod
    def from_list(cls, raw: Any) -> FetchBlocks:
        a, b, r = _fields(raw, cls.TAG, 3)
        return cls(_int(a, "first"), _int(b, "last"), _int(r, "replica"))


@dataclass(frozen=True)
class CertifiedBlock:
    block: Block
    certificate: CommitCertificate

    def field_values(self) -> list:
        return [self.block.to_list(), self.certificate.field_values()]

    @classmethod
    def from_list(cls, raw: Any) -> CertifiedBlock:
        b, c = _fields(raw, "certified_block", 2)
        return cls(Block.from_list(b), CommitCertificate.from_list(c))


@dataclass(frozen=True)
class Blocks(Message):
    """Committed blocks with their certificates, answering :class:`FetchBlocks`.

    ``top`` is the sender's committed height, so the receiver knows whether to ask again;
    ``stable`` holds the sender's latest stable checkpoint certificate (none before its
    first), so a replica catching up moves its own stable checkpoint and watermarks with
    the blocks instead of staying out of the current window.
    """

    TAG = "blocks"
    SIGNED = False
    blocks: tuple[CertifiedBlock, ...]
    top: int
    stable: tuple[CheckpointCertificate, ...]
    replica: int

    @classmethod
    def from_list(cls, raw: Any) -> Blocks:
        bs, top, stable, r = _fields(raw, cls.TAG, 4)
        return cls(tuple(CertifiedBlock.from_list(b) for b in _list(bs, "blocks", 10_000)),
                   _int(top, "top"),
                   tuple(CheckpointCertificate.from_list(c) for c in _list(stable, "stable", 1)),
                   _int(r, "replica"))


@dataclass(frozen=True)
class Transactions(Message):
    """Transactions gossiped between mempools so that any primary can propose them,
    with the blobs they refer to (data availability travels with the transaction)."""

    TAG = "txs"
    SIGNED = False
    txs: tuple[bytes, ...]
    blobs: tuple[bytes, ...]
    replica: int

    @classmethod
    def from_list(cls, raw: Any) -> Transactions:
        txs, blobs, r = _fields(raw, cls.TAG, 3)
        return cls(tuple(_bytes(t, "tx") for t in _list(txs, "txs")),
                   tuple(_bytes(b, "blob") for b in _list(blobs, "blobs", 1000)),
                   _int(r, "replica"))


@dataclass(frozen=True)
class FetchBlobs(Message):
    """Ask a peer for blobs by digest (ones a proposal or a committed block needs)."""

    TAG = "fetchblobs"
    SIGNED = False
    digests: tuple[bytes, ...]
    replica: int

    @classmethod
    def from_list(cls, raw: Any) -> FetchBlobs:
        digests, r = _fields(raw, cls.TAG, 2)
        return cls(tuple(_digest(d, "digest") for d in _list(digests, "digests", 1000)),
                   _int(r, "replica"))


@dataclass(frozen=True)
class BlobData(Message):
    """Blobs answering :class:`FetchBlobs`; each is checked against its digest."""

    TAG = "blobdata"
    SIGNED = False
    blobs: tuple[bytes, ...]
    replica: int

    @classmethod
    def from_list(cls, raw: Any) -> BlobData:
        blobs, r = _fields(raw, cls.TAG, 2)
        return cls(tuple(_bytes(b, "blob") for b in _list(blobs, "blobs", 1000)),
                   _int(r, "replica"))


@dataclass(frozen=True)
class BlobChunk(Message):
    """The ``CHUNK_BYTES`` of blob ``digest`` (``total`` bytes) that start at ``offset``.

    Decoding holds every chunk to the one shape a sender can give it: ``offset`` is a
    multiple of ``CHUNK_BYTES`` inside the blob, and ``data`` runs to the next multiple or
    to the end, so a receiver places each chunk by its offset alone.
    """

    TAG = "blobchunk"
    SIGNED = False
    digest: bytes
    offset: int
    total: int
    data: bytes
    replica: int

    @classmethod
    def from_list(cls, raw: Any) -> BlobChunk:
        d, offset, total, data, r = _fields(raw, cls.TAG, 5)
        offset, total = _int(offset, "offset"), _int(total, "total")
        data = _bytes(data, "data", max_size=CHUNK_BYTES)
        if offset % CHUNK_BYTES or offset >= total:
            raise MessageError(f"offset: {offset} is not a multiple of {CHUNK_BYTES} below "
                               f"total {total}")
        if len(data) != min(CHUNK_BYTES, total - offset):
            raise MessageError(f"data: {len(data)} bytes at offset {offset} of {total}, "
                               f"expected {min(CHUNK_BYTES, total - offset)}")
        return cls(_digest(d, "digest"), offset, total, data, _int(r, "replica"))


@dataclass(frozen=True)
class Status(Message):
    """A periodic heartbeat: lets lagging replicas notice they should catch up.

    Unsigned: it only ever triggers a fetch of self-certifying blocks or a resend.
    """

    TAG = "status"
    SIGNED = False
    height: int
    view: int
    in_view_change: bool
    replica: int

    @classmethod
    def from_list(cls, raw: Any) -> Status:
        h, v, ivc, r = _fields(raw, cls.TAG, 4)
        if not isinstance(ivc, bool):
            raise MessageError("in_view_change: expected a boolean")
        return cls(_int(h, "height"), _int(v, "view"), ivc, _int(r, "replica"))


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TAG: cls
    for cls in (PrePrepare, Prepare, Commit, Checkpoint, Proposal, ViewChange, NewView,
                FetchBlocks, Blocks, Transactions, FetchBlobs, BlobData, BlobChunk, Status)
}


def _unpack(data: bytes) -> Any:
    try:
        return codec.unpack(data, MAX_FRAME)
    except codec.DecodeError as exc:
        raise MessageError(str(exc)) from exc


def encode_message(msg: Message) -> bytes:
    return codec.pack([msg.TAG, *msg.field_values()])


def decode_message(data: bytes) -> Message:
    """Parse one wire frame into a message, validating every field."""
    raw = _unpack(data)
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise MessageError("frame is not a [type, fields...] array")
    cls = MESSAGE_TYPES.get(raw[0])
    if cls is None:
        raise MessageError(f"unknown message type {raw[0][:40]!r}")
    return cls.from_list(raw[1:])
