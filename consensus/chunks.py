"""Blobs bigger than a chunk travel as :class:`BlobChunk` messages and are put back together
here, so that the peer frame limit never caps how big a blob (a model update) may be.

A sender cuts a blob into ``CHUNK_BYTES`` pieces (:func:`chunks_of`); small blobs still
travel whole, inside the message that needs them (:func:`split_blobs`). A receiver keeps
the pieces of each blob apart per sending peer, so a faulty peer can spoil only its own
copies, and only for blobs the caller says it needs. What it holds is bounded per peer (a
few partial blobs, at most ``PEER_BLOBS`` blobs' worth of bytes, each blob within the
application's limit); the oldest partial blob of a peer goes first when it needs room.
A whole blob is checked against its SHA-256 before anyone sees it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from flobc.consensus.messages import CHUNK_BYTES, BlobChunk
from flobc.crypto import sha256

log = logging.getLogger("flobc.consensus")

PEER_PARTIALS = 4
"""Partial blobs kept per peer: a peer sends blobs one after the other, so more than one
or two in progress means some of its chunks were lost."""
PEER_BLOBS = 2
"""Bytes held per peer, in blobs of the application's largest size."""


def split_blobs(blobs: Iterable[bytes], budget: int) -> tuple[list[bytes], list[bytes]]:
    """(blobs that travel whole, blobs that travel as chunks): a blob goes whole when it
    fits in one chunk and the whole ones so far stay within ``budget`` bytes."""
    whole: list[bytes] = []
    chunked: list[bytes] = []
    size = 0
    for blob in blobs:
        if len(blob) <= CHUNK_BYTES and size + len(blob) <= budget:
            whole.append(blob)
            size += len(blob)
        else:
            chunked.append(blob)
    return whole, chunked


def chunks_of(blob: bytes, replica: int) -> Iterator[BlobChunk]:
    """``blob`` as the chunks ``replica`` sends, in order."""
    digest = sha256(blob)
    for offset in range(0, len(blob), CHUNK_BYTES):
        yield BlobChunk(digest, offset, len(blob), blob[offset:offset + CHUNK_BYTES], replica)


@dataclass
class _Partial:
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)
    held: int = 0


class Assembler:
    """The partial blobs one validator is receiving, per sending peer."""

    def __init__(self, max_blob_bytes: int, peer_partials: int = PEER_PARTIALS,
                 peer_bytes: int | None = None) -> None:
        self.max_blob_bytes = max_blob_bytes
        self.peer_partials = peer_partials
        self.peer_bytes = PEER_BLOBS * max_blob_bytes if peer_bytes is None else peer_bytes
        self._peers: dict[int, OrderedDict[bytes, _Partial]] = {}
        self._progress: set[bytes] = set()
        self.refused = 0
        """Chunks refused (a blob over the limit) and blobs that did not match their
        digest, since start."""

    def add(self, sender: int, chunk: BlobChunk) -> bytes | None:
        """Take one chunk from ``sender``; return the blob once it is whole and matches
        its digest. The caller passes only chunks of blobs it needs."""
        if chunk.total > self.max_blob_bytes:
            self.refused += 1
            log.warning("validator %d sent a chunk of a %d-byte blob, over the limit of %d "
                        "bytes", sender, chunk.total, self.max_blob_bytes)
            return None
        own = self._peers.setdefault(sender, OrderedDict())
        partial = own.get(chunk.digest)
        if partial is None or partial.total != chunk.total:
            partial = own[chunk.digest] = _Partial(chunk.total)
        own.move_to_end(chunk.digest)
        index = chunk.offset // CHUNK_BYTES
        if index in partial.parts:
            return None
        partial.parts[index] = chunk.data
        partial.held += len(chunk.data)
        self._progress.add(chunk.digest)
        if partial.held < partial.total:
            self._make_room(own)
            return None
        del own[chunk.digest]
        # Every index has one size, so bytes held == total means every chunk is here.
        blob = b"".join(partial.parts[i] for i in range(len(partial.parts)))
        if sha256(blob) != chunk.digest:
            self.refused += 1
            log.warning("validator %d sent a blob that does not match its digest %s",
                        sender, chunk.digest.hex())
            return None
        return blob

    def _make_room(self, own: OrderedDict[bytes, _Partial]) -> None:
        """Drop a peer's oldest partial blobs (never its newest) until it is within bounds."""
        while len(own) > 1 and (len(own) > self.peer_partials
                                or sum(p.held for p in own.values()) > self.peer_bytes):
            own.popitem(last=False)

    def assembling(self, digest: bytes) -> bool:
        """Whether some peer's chunks of ``digest`` are arriving."""
        return any(digest in own for own in self._peers.values())

    def progressed(self) -> set[bytes]:
        """Digests that received a new chunk since the last call."""
        progress, self._progress = self._progress, set()
        return progress

    def keep_only(self, digests: set[bytes]) -> None:
        """Forget every partial blob whose digest is not in ``digests``."""
        for own in self._peers.values():
            for digest in [d for d in own if d not in digests]:
                del own[digest]

    def forget(self, digest: bytes) -> None:
        """Forget every peer's partial copy of ``digest`` (it arrived, or is not needed)."""
        for own in self._peers.values():
            own.pop(digest, None)

    def held_bytes(self) -> int:
        return sum(p.held for own in self._peers.values() for p in own.values())
