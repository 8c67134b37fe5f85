"""Data availability: hold back what needs blobs this validator does not have yet.

Some transactions refer to blobs that travel beside them (a model update's tensors).
A validator must not vote for a block whose blobs it cannot get, nor execute one
without them. So a proposal whose blobs are missing waits here while they are fetched
from peers, and so does the execution of a committed block (and every block after it,
since blocks execute in order). Blobs are self-certifying: only the ones asked for are
stored, each under its own SHA-256.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from flobc.consensus.application import Application
from flobc.consensus.effects import Execute
from flobc.consensus.messages import BlobData, FetchBlobs, Proposal, encode_message
from flobc.crypto import sha256

MAX_WAITING_PROPOSALS = 256
MAX_REPLY_BYTES = 6 * 1024 * 1024


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

    def request(self, digests: Iterable[bytes]) -> None:
        digests = tuple(digests)
        if digests:
            self.requested.update(digests)
            self._send(None, encode_message(FetchBlobs(digests, self.index)))

    def retry(self) -> None:
        """Ask again for everything still missing (called periodically)."""
        missing = {d for d in self.requested if not self.ledger.has_blob(d)}
        self.requested = missing
        self.request(sorted(missing))

    def store(self, msg: BlobData) -> None:
        """Keep the blobs that were asked for; ignore everything else."""
        for blob in msg.blobs:
            digest = sha256(blob)
            if digest in self.requested:
                self.ledger.put_blob(blob)
                self.requested.discard(digest)

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
        """Send the asked-for blobs this validator holds, within a frame's budget."""
        blobs: list[bytes] = []
        size = 0
        for digest in msg.digests:
            blob = self.ledger.blob(digest)
            if blob is None:
                continue
            size += len(blob)
            if blobs and size > MAX_REPLY_BYTES:
                break
            blobs.append(blob)
        if blobs:
            self._send(msg.replica, encode_message(BlobData(tuple(blobs), self.index)))
