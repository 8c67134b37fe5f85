"""ReplicaHost: carries out a replica's effects against storage and an application.

The host is the one piece that both the asyncio node and the deterministic simulator
run, so that the code under simulation is the code in production. It is synchronous
and single-threaded: the caller feeds it frames, timer firings and client transactions,
and gives it three callbacks for I/O (send a frame, arm a timer, cancel a timer) and a
clock.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from flobc import codec
from flobc.config import ConsensusParams
from flobc.consensus.application import Application, BlockState, CommittedState
from flobc.consensus.availability import MAX_REPLY_BYTES, Availability
from flobc.consensus.chunks import chunks_of, split_blobs
from flobc.consensus.effects import (
    CancelTimer,
    Effect,
    Execute,
    Persist,
    SetTimer,
    StableCheckpoint,
)
from flobc.consensus.mempool import FULL
from flobc.consensus.messages import (
    BlobChunk,
    BlobData,
    Block,
    Blocks,
    CertifiedBlock,
    CheckpointCertificate,
    CommitCertificate,
    FetchBlobs,
    FetchBlocks,
    Message,
    MessageError,
    Proposal,
    Status,
    Transactions,
    decode_message,
    encode_message,
)
from flobc.consensus.replica import FETCH_BATCH, RESEND, Recovery, Replica
from flobc.consensus.validators import ValidatorSet
from flobc.crypto import PrivateKey, sha256

log = logging.getLogger("flobc.consensus")

SendFn = Callable[[int | None, bytes], None]
"""send(to, frame): to a replica index, or to every other replica when to is None."""
TimerFn = Callable[[str, int], None]
"""set_timer(name, delay_ms): (re)arm a named timer; firing calls host.on_timer(name)."""
CancelFn = Callable[[str], object]
"""cancel_timer(name): disarm a named timer, if armed; what it returns is not used."""
ClockFn = Callable[[], int]
"""now_ms(): wall-clock milliseconds (block time stamps and skew checks)."""

MAX_FETCH_BYTES = 4 * 1024 * 1024
UNSIGNED = (Status, FetchBlocks, Blocks, Transactions, FetchBlobs, BlobData, BlobChunk)
"""Messages trusted only as far as the authenticated connection they came over."""
DUPLICATE = "duplicate transaction"


class ReplicaHost:
    """One validator's consensus core: replica + mempool + ledger + application."""

    def __init__(self, *, chain_id: str, public_keys: tuple[bytes, ...], index: int,
                 key: PrivateKey, params: ConsensusParams, ledger: Any, app: Application,
                 send: SendFn, set_timer: TimerFn, cancel_timer: CancelFn, now_ms: ClockFn,
                 mempool_max_txs: int = 10_000, gossip_txs: bool = True) -> None:
        self.validators = ValidatorSet(chain_id, public_keys)
        self.replica = Replica(self.validators, index, key, params, mempool_max_txs,
                               gossip_txs)
        self.index = index
        self.params = params
        self.ledger = ledger
        self.app = app
        self._send = send
        self._set_timer = set_timer
        self._cancel_timer = cancel_timer
        self.now_ms = now_ms
        self.dropped_frames = 0
        self._snapshots: dict[int, Any] = {}
        self._proof: tuple[int, bytes, Any] | None = None
        self._on_commit: list[Callable[[int], None]] = []
        self._on_latency: list[Callable[[list[int]], None]] = []
        self._admitted_ms: dict[bytes, int] = {}
        """When each transaction in the mempool was admitted here (local clock); an entry
        leaves with its transaction, when its block executes."""
        self._view_seen = (0, False, 0)
        self.availability = Availability(ledger, app, index, send)
        self.committed = CommittedState(ledger)
        """Read-only committed state and blobs, as check_tx and queries see them."""

    # --- inputs -----------------------------------------------------------------------

    def start(self) -> None:
        """Recover from the ledger's consensus records and arm timers. Call once."""
        height = self.ledger.height
        meta = self.ledger.meta(height) if height else None
        latest = self.ledger.latest_checkpoint()
        checkpoint = CheckpointCertificate.decode(latest[1]) if latest else None
        recovery = Recovery(height=height, last_block_time=meta.time_ms if meta else 0,
                            checkpoint=checkpoint, records=dict(self.ledger.records()))
        if latest is not None and latest[0] == height:
            self._snapshots[height] = self.ledger.state.snapshot()  # provable again at once
            self._use_snapshot()
        self._run(self.replica.start(self.now_ms(), recovery))
        log.info("validator %d started at height %d, view %d", self.index, height,
                 self.replica.view)

    def on_frame(self, sender: int, frame: bytes) -> None:
        """A frame from peer ``sender``. Malformed or unverifiable frames are dropped."""
        try:
            msg = decode_message(frame)
        except MessageError as exc:
            self.dropped_frames += 1
            log.debug("dropped frame from %d: %s", sender, exc)
            return
        if isinstance(msg, UNSIGNED) and msg.replica != sender:
            self.dropped_frames += 1
            return
        if isinstance(msg, FetchBlocks):
            self._answer_fetch(msg)
        elif isinstance(msg, Transactions):
            self._gossiped(msg)
        elif isinstance(msg, FetchBlobs):
            self.availability.answer(msg)
        elif isinstance(msg, BlobData):
            self.availability.store(msg)
            self._blobs_arrived()
        elif isinstance(msg, BlobChunk):
            self.availability.store_chunk(sender, msg)
            self._blobs_arrived()
        elif isinstance(msg, Proposal) and (missing := self.availability.missing(msg.block.txs)):
            self.availability.hold_proposal(msg, missing)
        else:
            self._run(self.replica.on_message(self.now_ms(), msg))

    def _blobs_arrived(self) -> None:
        """Carry on with whatever waited for blobs that are now all here."""
        for tx, blobs in self.availability.ready_txs():
            self._admit([tx], blobs, gossip=False)
        for execute in self.availability.ready_executions():  # in order, already released
            self._run(self._execute(execute.block, execute.certificate))
        for proposal in self.availability.ready_proposals():
            self._run(self.replica.on_message(self.now_ms(), proposal))

    def on_timer(self, name: str) -> None:
        if name == RESEND:
            self.availability.retry()
            self._blobs_arrived()
            self._drop_lingering_invalid_txs()
        self._run(self.replica.on_timer(self.now_ms(), name))

    def submit_tx(self, tx: bytes) -> tuple[bytes, str | None]:
        """Admit a client transaction: returns (tx_hash, None) or (tx_hash, reason refused)."""
        return self.submit_txs([tx])[0]

    def submit_txs(self, txs: list[bytes], blobs: list[bytes] | None = None
                   ) -> list[tuple[bytes, str | None]]:
        """Admit client transactions, with the blobs they refer to, and gossip the
        accepted ones (and their blobs) to every peer."""
        return self._admit(txs, blobs or [], gossip=True)

    def on_commit(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(height)`` after each block is executed and stored."""
        self._on_commit.append(callback)

    def on_commit_latency(self, callback: Callable[[list[int]], None]) -> None:
        """Call ``callback(latencies_ms)`` after each block is executed and stored, with
        one entry per transaction of the block that this validator admitted to its
        mempool (from a client or a peer): the milliseconds from admission to commit."""
        self._on_latency.append(callback)

    def _drop_lingering_invalid_txs(self) -> None:
        """Check again, against committed state, the transactions that have stayed in the
        mempool a whole resend interval (the replica's ``stale_txs``), and drop those that
        can no longer execute: a vote or close for a round that has closed since, a
        replayed nonce. Peers refuse them, so no block would ever take them out, and they
        would be re-sent for ever and keep the mempool from draining."""
        mempool = self.replica.mempool
        invalid = [h for h, tx in mempool.items() if h in self.replica.stale_txs
                   and self.app.check_tx(tx, self.committed) is not None]
        mempool.remove(invalid)
        for h in invalid:
            self._admitted_ms.pop(h, None)

    # --- queries ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """height, view, primary, state_root (hex), last_commit_time_ms, mempool_size,
        stable_checkpoint, in_view_change.

        ``stable_checkpoint`` is the one state proofs are served against (0: none yet), so
        a status that names one promises ``/state/proof`` answers; the replica's own,
        which may be newer while the block it certifies is still to execute here, is
        ``consensus_checkpoint``."""
        st = self.replica.status()
        st["consensus_checkpoint"] = st["stable_checkpoint"]
        st["stable_checkpoint"] = self._proof[0] if self._proof is not None else 0
        height = self.ledger.height
        meta = self.ledger.meta(height) if height else None
        st["state_root"] = self.ledger.state.root.hex()
        st["last_block_time_ms"] = meta.time_ms if meta else 0
        st["last_commit_time_ms"] = st.pop("last_commit_ms")
        st["dropped_frames"] = self.dropped_frames
        return st

    def proof_snapshot(self) -> tuple[int, bytes, Any] | None:
        """(seq, checkpoint certificate, state snapshot) of the latest stable checkpoint."""
        return self._proof

    # --- effects ------------------------------------------------------------------------

    def _log_view(self) -> None:
        """One log line when the replica starts a view change or enters a new view."""
        r = self.replica
        now = (r.view, r.in_view_change, r.target_view)
        if now == self._view_seen:
            return
        self._view_seen = now
        if r.in_view_change:
            log.warning("validator %d: view change from view %d to %d (primary %d suspected)",
                        self.index, r.view, r.target_view, r.primary,
                        extra={"event": "view_change", "view": r.view,
                               "target_view": r.target_view, "suspected_primary": r.primary})
        else:
            log.info("validator %d: entered view %d, primary is %d, at height %d",
                     self.index, r.view, r.primary, r.executed,
                     extra={"event": "new_view", "view": r.view, "primary": r.primary,
                            "height": r.executed})

    def _run(self, effects: Iterable[Effect]) -> None:
        self._log_view()
        queue: deque[Effect] = deque(effects)
        while queue:
            effect = queue.popleft()
            if isinstance(effect, Persist):
                puts, deletes = list(effect.puts), list(effect.deletes)
                while queue and isinstance(queue[0], Persist):
                    more = queue.popleft()
                    puts += more.puts  # type: ignore[union-attr]
                    deletes += more.deletes  # type: ignore[union-attr]
                self.ledger.write_records(puts, deletes)
            elif isinstance(effect, Execute):
                if self.availability.executions or self.availability.missing(effect.block.txs):
                    self.availability.hold_execution(effect)
                else:
                    queue.extend(self._execute(effect.block, effect.certificate))
            elif isinstance(effect, SetTimer):
                self._set_timer(effect.name, effect.delay_ms)
            elif isinstance(effect, CancelTimer):
                self._cancel_timer(effect.name)
            elif isinstance(effect, StableCheckpoint):
                self._stable(effect.seq, effect.certificate_bytes)
            else:
                self._send(effect.to, encode_message(effect.message))

    def _execute(self, block: Block, cert: CommitCertificate) -> list[Effect]:
        height = block.height
        previous = self.ledger.meta(height - 1) if height > 1 else None
        block_time = max(block.time_ms, previous.time_ms if previous else 0)
        hashes = [sha256(tx) for tx in block.txs]
        seen: set[bytes] = set()
        fresh: list[int] = []
        for i, h in enumerate(hashes):
            if h not in seen and self.ledger.tx(h) is None:
                fresh.append(i)
            seen.add(h)
        overlay = self.ledger.state.overlay()
        state = BlockState(self.ledger, overlay)
        outcome = self.app.execute_block(height, block_time, [block.txs[i] for i in fresh],
                                         state)
        results: list[str | None] = [DUPLICATE] * len(hashes)
        for i, reason in zip(fresh, outcome, strict=True):
            results[i] = reason
        root = self.ledger.commit_block(
            height, block.encode(), cert.encode(), cert.digest, block_time, hashes,
            [codec.pack(r) for r in results], overlay, state.new_blobs)
        checkpoint = state.checkpoint_requested or height % self.params.checkpoint_interval == 0
        if checkpoint:
            self._snapshots[height] = self.ledger.state.snapshot()
            self._use_snapshot()
        for callback in self._on_commit:
            callback(height)
        now = self.now_ms()
        latencies = [now - t for h in hashes if (t := self._admitted_ms.pop(h, None)) is not None]
        for observe in self._on_latency:
            observe(latencies)
        return self.replica.on_executed(self.now_ms(), height, root, block_time, checkpoint)

    def _stable(self, seq: int, cert: bytes) -> None:
        self.ledger.put_checkpoint(seq, cert)
        self._use_snapshot()

    def _use_snapshot(self) -> None:
        """Serve proofs from the newest snapshot whose checkpoint is stable."""
        latest = self.ledger.latest_checkpoint()
        if latest is None:
            return
        seq, cert = latest
        if seq in self._snapshots:
            if self._proof is not None and self._proof[0] != seq:
                self._proof[2].release()
            self._proof = (seq, cert, self._snapshots.pop(seq))
        for old in [s for s in self._snapshots if s < seq]:  # older than what is stable
            self._snapshots.pop(old).release()

    # --- transactions and state transfer ------------------------------------------------

    def _admit(self, txs: list[bytes], blobs: list[bytes],
               gossip: bool) -> list[tuple[bytes, str | None]]:
        given = {sha256(b): b for b in blobs}
        checked: list[tuple[bytes, bytes]] = []
        results: list[tuple[bytes, str | None]] = []
        for tx in txs:
            h = sha256(tx)
            reason = self._tx_error(h, tx, given)
            results.append((h, reason))
            if reason is None:
                checked.append((h, tx))
        if not checked:
            return results
        now = self.now_ms()
        reasons, effects = self.replica.add_txs(now, checked)
        accepted = dict(zip([h for h, _ in checked], reasons, strict=True))
        self._admitted_ms.update((h, now) for h, _ in checked if accepted[h] is None)
        results = [(h, r if r is not None else accepted.get(h)) for h, r in results]
        fresh = [tx for h, tx in checked if accepted[h] is None]
        needed = {d: given[d] for tx in fresh for d in self.app.required_blobs(tx) if d in given}
        for blob in needed.values():
            self.ledger.put_blob(blob)
        if gossip and self.replica.gossip_txs and fresh:
            whole, chunked = split_blobs(needed.values(), MAX_REPLY_BYTES)
            self._send(None, encode_message(Transactions(tuple(fresh), tuple(whole), self.index)))
            for blob in chunked:  # after the transactions, which peers then hold for them
                for chunk in chunks_of(blob, self.index):
                    self._send(None, encode_message(chunk))
        self._run(effects)
        return results

    def _gossiped(self, msg: Transactions) -> None:
        """Admit a peer's transactions; those whose blobs are still to come (as chunks
        behind the message) wait for them, once the cheap checks pass."""
        given = {sha256(b) for b in msg.blobs}
        now: list[bytes] = []
        for tx in msg.txs:
            h = sha256(tx)
            missing = [] if self._refusal(h, tx) else [
                d for d in self.app.required_blobs(tx)
                if d not in given and not self.ledger.has_blob(d)]
            if missing:
                self.availability.hold_tx(h, tx, missing)
            else:
                now.append(tx)
        self._admit(now, list(msg.blobs), gossip=False)

    def _tx_error(self, tx_hash: bytes, tx: bytes, given: dict[bytes, bytes]) -> str | None:
        refusal = self._refusal(tx_hash, tx)
        if refusal is not None:
            return refusal
        for digest in self.app.required_blobs(tx):
            if digest not in given and not self.ledger.has_blob(digest):
                return f"blob {digest.hex()} is missing: send it with the transaction"
        return self.app.check_tx(tx, CommittedState(self.ledger, given) if given
                                 else self.committed)

    def _refusal(self, tx_hash: bytes, tx: bytes) -> str | None:
        """Why ``tx`` may not enter the mempool, from the checks that need neither its
        blobs nor the application."""
        if len(tx) > self.params.max_tx_bytes:
            return f"transaction is {len(tx)} bytes, limit is {self.params.max_tx_bytes}"
        if tx_hash in self.replica.mempool:
            return "transaction already in the mempool"
        if self.replica.mempool.full:
            return FULL  # refused before any costly check: overload must not starve consensus
        if self.ledger.tx(tx_hash) is not None:
            return "transaction already committed"
        return None

    def _answer_fetch(self, msg: FetchBlocks) -> None:
        top = self.ledger.height
        blocks: list[CertifiedBlock] = []
        size = 0
        last = min(msg.last, top, msg.first + FETCH_BATCH - 1)
        for height in range(max(msg.first, 1), last + 1):
            raw, cert = self.ledger.block(height), self.ledger.certificate(height)
            size += len(raw) + len(cert)
            if blocks and size > MAX_FETCH_BYTES:
                break
            blocks.append(CertifiedBlock(Block.decode(raw), CommitCertificate.decode(cert)))
        stable = self.replica.stable_cert
        reply: Message = Blocks(tuple(blocks), top, (stable,) if stable else (), self.index)
        self._send(msg.replica, encode_message(reply))
