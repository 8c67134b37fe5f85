"""Data availability: hold back what needs blobs this validator does not have yet.

Some transactions refer to blobs that travel beside them (a model update's tensors).
A validator must not vote for a block whose blobs it cannot get, nor execute one
without them. So a proposal whose blobs are missing waits here while they are fetched
from peers, and so does the execution of a committed block (and every block after it,
since blocks execute in order). Blobs are self-certifying: only the ones asked for are
stored, each under its own SHA-256.

A gossiped transaction whose blob is too big to travel beside it waits here too, while
the blob's chunks follow it (``consensus.chunks``); it is admitted once the blob is whole,
or dropped after a few retries. Blobs that are asked for or awaited are the only ones
whose chunks are put together.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flobc.consensus.application import Application
from flobc.consensus.chunks import PEER_BLOBS, Assembler, chunks_of
from flobc.consensus.effects import Execute
from flobc.consensus.messages import (
    CHUNK_BYTES,
    BlobChunk,
    BlobData,
    FetchBlobs,
    Proposal,
    encode_message,
)
from flobc.crypto import sha256

log = logging.getLogger("flobc.availability")

MAX_WAITING_PROPOSALS = 256
MAX_WAITING_TXS = 256
WAIT_RETRIES = 4
"""Retry intervals a gossiped transaction waits for its blob before it is dropped."""
MAX_REPLY_BYTES = 6 * 1024 * 1024
"""Whole blobs in one :class:`BlobData` answer."""


@dataclass
class _WaitingTx:
    """A gossiped transaction and the blobs it still lacks."""

    tx: bytes
    missing: set[bytes]
    blobs: dict[bytes, bytes] = field(default_factory=dict)
    retries: int = 0


class Availability:
    """Blob bookkeeping for one validator: what is missing, who waits for it."""

    def __init__(self, ledger: Any, app: Application, index: int,
                 send: Callable[[int | None, bytes], None]) -> None:
        self.ledger = ledger
        self.app = app
        self.index = index
        self._send = send
        self.proposals: list[Proposal] = []
        self.executions: deque[Execute] = deque()
        self.requested: set[bytes] = set()
        self.txs: OrderedDict[bytes, _WaitingTx] = OrderedDict()
        """Gossiped transactions waiting for their blobs, by transaction hash."""
        self.assembler = Assembler(app.max_blob_bytes)
        self.txs_dropped = 0
        """Gossiped transactions given up on since the start: their blobs never came."""

    def missing(self, txs: Iterable[bytes]) -> list[bytes]:
        """Digests of blobs that ``txs`` need and this validator does not hold."""
        needed = {d for tx in txs for d in self.app.required_blobs(tx)}
        return sorted(d for d in needed if not self.ledger.has_blob(d))

    def hold_proposal(self, proposal: Proposal, missing: list[bytes]) -> None:
        if len(self.proposals) < MAX_WAITING_PROPOSALS:
            self.proposals.append(proposal)
        self.request(missing)

    def hold_execution(self, execute: Execute) -> None:
        self.executions.append(execute)
        self.request(self.missing(execute.block.txs))

    def hold_tx(self, tx_hash: bytes, tx: bytes, missing: list[bytes]) -> None:
        """Keep a gossiped transaction until the blobs it lacks arrive (their chunks follow
        it); the oldest waiting one goes when there are too many."""
        if tx_hash in self.txs:
            return
        if len(self.txs) >= MAX_WAITING_TXS:
            self._drop(*self.txs.popitem(last=False))
        self.txs[tx_hash] = _WaitingTx(tx, set(missing))

    def _drop(self, tx_hash: bytes, waiting: _WaitingTx) -> None:
        self.txs_dropped += 1
        log.warning("validator %d: dropped transaction %s, its blobs %s never arrived",
                    self.index, tx_hash.hex()[:16], [d.hex()[:16] for d in waiting.missing],
                    extra={"event": "tx_dropped_missing_blob", "tx": tx_hash.hex(),
                           "blobs": [d.hex() for d in waiting.missing]})

    def stalls(self) -> dict[str, int]:
        """What waits here for blobs, and what was given up on: all zero when healthy."""
        missing = self.requested | {d for w in self.txs.values() for d in w.missing}
        return {"blobs_missing": len(missing), "txs_waiting_for_blobs": len(self.txs),
                "blocks_waiting_for_blobs": len(self.executions),
                "txs_dropped_for_missing_blobs": self.txs_dropped}

    def wanted(self, digest: bytes) -> bool:
        """Whether a blob is asked for or awaited by a waiting transaction."""
        return digest in self.requested or any(digest in w.missing for w in self.txs.values())

    def request(self, digests: Iterable[bytes]) -> None:
        """Ask every peer for these blobs, except those whose chunks are arriving."""
        digests = tuple(digests)
        self.requested.update(digests)
        self._fetch(d for d in digests if not self.assembler.assembling(d))

    def _fetch(self, digests: Iterable[bytes]) -> None:
        digests = tuple(digests)
        if digests:
            self._send(None, encode_message(FetchBlobs(digests, self.index)))

    def retry(self) -> None:
        """Ask again for everything still missing and not arriving (called periodically);
        drop transactions that waited too long, and the chunks nobody needs any more."""
        progressed = self.assembler.progressed()
        self.requested = {d for d in self.requested if not self.ledger.has_blob(d)}
        for tx_hash, waiting in list(self.txs.items()):
            waiting.missing = {d for d in waiting.missing if not self.ledger.has_blob(d)}
            waiting.retries += 1
            if waiting.retries > WAIT_RETRIES:
                self._drop(tx_hash, self.txs.pop(tx_hash))
        late = {d for w in self.txs.values() if w.retries > 1 for d in w.missing}
        self.assembler.keep_only(self.requested | {d for w in self.txs.values()
                                                   for d in w.missing})
        self._fetch(sorted((self.requested | late) - progressed))

    def store(self, msg: BlobData) -> None:
        """Keep the blobs that were asked for or are awaited; ignore everything else."""
        for blob in msg.blobs:
            self._arrived(sha256(blob), blob)

    def store_chunk(self, sender: int, chunk: BlobChunk) -> None:
        """Take a chunk of a blob that is asked for or awaited; ignore everything else."""
        if not self.wanted(chunk.digest) or self.ledger.has_blob(chunk.digest):
            return
        blob = self.assembler.add(sender, chunk)
        if blob is not None:
            self._arrived(chunk.digest, blob)

    def _arrived(self, digest: bytes, blob: bytes) -> None:
        self.assembler.forget(digest)
        if digest in self.requested:
            self.ledger.put_blob(blob)
            self.requested.discard(digest)
        for waiting in self.txs.values():
            if digest in waiting.missing:
                waiting.missing.discard(digest)
                waiting.blobs[digest] = blob

    def ready_txs(self) -> list[tuple[bytes, list[bytes]]]:
        """Waiting transactions whose blobs are now all here, with the blobs that arrived
        for them (removed from the wait list)."""
        ready = [h for h, w in self.txs.items()
                 if all(self.ledger.has_blob(d) for d in w.missing)]
        return [(w.tx, list(w.blobs.values())) for w in map(self.txs.pop, ready)]

    def ready_proposals(self) -> list[Proposal]:
        """Waiting proposals whose blobs are now all here (removed from the wait list)."""
        ready = [p for p in self.proposals if not self.missing(p.block.txs)]
        self.proposals = [p for p in self.proposals if p not in ready]
        return ready

    def ready_executions(self) -> list[Execute]:
        """The longest prefix of waiting executions whose blobs are all here."""
        ready = []
        while self.executions and not self.missing(self.executions[0].block.txs):
            ready.append(self.executions.popleft())
        return ready

    def answer(self, msg: FetchBlobs) -> None:
        """Send the asked-for blobs this validator holds, in order, until a budget is
        spent: small ones whole in one frame, big ones as chunks, ``PEER_BLOBS`` blobs'
        worth (and at least one). The peer asks again for the rest."""
        whole: list[bytes] = []
        size = chunked = 0
        for digest in msg.digests:
            blob = self.ledger.blob(digest)
            if blob is None:
                continue
            if len(blob) <= CHUNK_BYTES:
                if size + len(blob) > MAX_REPLY_BYTES:
                    break
                whole.append(blob)
                size += len(blob)
                continue
            if chunked and chunked + len(blob) > PEER_BLOBS * self.app.max_blob_bytes:
                break
            chunked += len(blob)
            for chunk in chunks_of(blob, self.index):
                self._send(msg.replica, encode_message(chunk))
        if whole:
            self._send(msg.replica, encode_message(BlobData(tuple(whole), self.index)))
