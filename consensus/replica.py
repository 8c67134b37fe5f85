"""The PBFT replica as a pure state machine (Castro & Liskov, with Ed25519 signatures).

Inputs are method calls (a verified-or-not message, a timer firing, admitted
transactions, the result of executing a block), each with the current time; outputs are
lists of effects (:mod:`flobc.consensus.effects`) for the host to carry out in order.
The replica never blocks, never reads a clock and never touches storage, so the same
code runs under the asyncio node and under the deterministic simulator.

Safety rests on three rules kept here: a replica persists what it signed before it is
sent (and re-signs identically after a restart, Ed25519 being deterministic); it never
enters a view lower than one it asked to change to; and a NEW-VIEW is accepted only if
its proposals are exactly those computed from its VIEW-CHANGE messages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flobc import codec
from flobc.config import ConsensusParams
from flobc.consensus.effects import (
    CancelTimer,
    Effect,
    Execute,
    Persist,
    Send,
    SetTimer,
    StableCheckpoint,
)
from flobc.consensus.mempool import Mempool
from flobc.consensus.messages import (
    Block,
    Blocks,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    CommitCertificate,
    FetchBlocks,
    Message,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Proposal,
    Status,
    Transactions,
    ViewChange,
)
from flobc.consensus.validators import ValidatorSet
from flobc.consensus.viewchange import new_view_blocks, view_change_error
from flobc.crypto import PrivateKey, sha256

PROGRESS = "progress"
BATCH = "batch"
RESEND = "resend"
IDLE = "idle"

MAX_BACKOFF_DOUBLINGS = 6
FETCH_BATCH = 64
FUTURE_BUFFER = 4096


@dataclass
class Slot:
    """What this replica knows about one sequence number in the current view."""

    seq: int
    proposal: Proposal | None = None
    prepares: dict[int, Prepare] = field(default_factory=dict)
    commits: dict[int, Commit] = field(default_factory=dict)
    sent_prepare: bool = False
    sent_commit: bool = False
    committed: bool = False

    @property
    def digest(self) -> bytes | None:
        return self.proposal.pre_prepare.digest if self.proposal else None


@dataclass(frozen=True)
class Recovery:
    """What the host read back from storage when the replica (re)starts."""

    height: int = 0
    last_block_time: int = 0
    checkpoint: CheckpointCertificate | None = None
    records: dict[bytes, bytes] = field(default_factory=dict)


def _seq_key(prefix: bytes, seq: int) -> bytes:
    return prefix + seq.to_bytes(8, "big")


class Replica:
    """One PBFT replica. See the module docstring for the contract."""

    def __init__(self, validators: ValidatorSet, index: int, key: PrivateKey,
                 params: ConsensusParams, mempool_max_txs: int = 10_000,
                 gossip_txs: bool = True) -> None:
        if key.public_key != validators.public_keys[index]:
            raise ValueError(f"key does not belong to validator {index}")
        self.vs = validators
        self.index = index
        self.key = key
        self.params = params
        self.mempool = Mempool(mempool_max_txs)
        self.gossip_txs = gossip_txs
        """False: held transactions are never sent to peers (see NodeConfig.gossip_txs)."""
        self.view = 0
        self.in_view_change = False
        self.vc_attempts = 0
        self.view_changes: dict[int, ViewChange] = {}  # latest valid VIEW-CHANGE per replica
        self.new_view: NewView | None = None
        self.sent_new_view = -1
        self.slots: dict[int, Slot] = {}
        self.prepared: dict[int, PreparedProof] = {}
        self.next_seq = 1
        self.stable_seq = 0
        self.stable_cert: CheckpointCertificate | None = None
        self.checkpoints: dict[int, dict[int, Checkpoint]] = {}
        self.far_checkpoints: dict[int, Checkpoint] = {}
        """Per replica, its highest CHECKPOINT beyond the two windows that ``checkpoints``
        keeps: 2f+1 agreeing ones are a certificate, however far this replica lags."""
        self.own_checkpoint: Checkpoint | None = None
        self.executed = 0
        self.dispatched = 0
        self.last_block_time = 0
        self.last_commit_ms = 0
        self.ready: dict[int, tuple[Block, CommitCertificate]] = {}
        self.proposed_txs: dict[int, list[bytes]] = {}
        self.hints: dict[int, int] = {}
        self.heard: set[int] = set()
        """Replicas whose STATUS arrived since the progress timer was last armed."""
        self.fetching: int | None = None
        self.fetch_age = 0
        self.future: deque[Message] = deque()
        self.stale_txs: set[bytes] = set()
        self.progress_armed = False
        self.batch_armed = False
        self.filling = False
        self.view_changes_started = 0
        self._out: list[Effect] = []

    # --- public inputs --------------------------------------------------------------

    @property
    def primary(self) -> int:
        return self.vs.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.index and not self.in_view_change

    @property
    def target_view(self) -> int:
        mine = self.view_changes.get(self.index)
        return mine.view if self.in_view_change and mine else self.view

    def start(self, now: int, recovery: Recovery) -> list[Effect]:
        """Restore durable state after a (re)start and arm the periodic timer."""
        self.executed = self.dispatched = recovery.height
        self.last_block_time = self.last_commit_ms = recovery.last_block_time
        if recovery.checkpoint is not None:
            self.stable_cert = recovery.checkpoint
            self.stable_seq = recovery.checkpoint.seq
        self._restore(recovery.records)
        self.next_seq = max([self.executed, self.stable_seq, *self.slots]) + 1
        for seq, slot in self.slots.items():
            if slot.proposal and seq > self.executed:
                self.proposed_txs[seq] = [sha256(tx) for tx in slot.proposal.block.txs]
        self._out.append(SetTimer(RESEND, self._resend_interval))
        self._arm_progress()
        return self._flush()

    def add_txs(self, now: int, txs: list[tuple[bytes, bytes]]) -> tuple[list[str | None],
                                                                          list[Effect]]:
        """Admit already-checked transactions; returns per-tx refusal reasons and effects."""
        reasons = [self.mempool.add(h, tx) for h, tx in txs]
        if any(r is None for r in reasons):
            self.filling = False
            self._out.append(CancelTimer(IDLE))
            if self.is_primary:
                self._schedule_batch(now)
            self._arm_progress()
        return reasons, self._flush()

    def on_message(self, now: int, msg: Message) -> list[Effect]:
        """A message from a peer (sender already authenticated for unsigned messages)."""
        handler = self._handlers.get(type(msg))
        if handler is not None:
            handler(self, now, msg)
        return self._flush()

    def on_timer(self, now: int, name: str) -> list[Effect]:
        if name == PROGRESS:
            self.progress_armed = False
            if not self.in_view_change and self._stall_is_ours():
                self._arm_progress()
            else:
                self._start_view_change(now, self.target_view + 1)
        elif name == BATCH:
            self.batch_armed = False
            self._propose(now)
        elif name == IDLE:
            self.filling = True
            self._propose(now)
        elif name == RESEND:
            self._resend(now)
            self._out.append(SetTimer(RESEND, self._resend_interval))
        return self._flush()

    def on_executed(self, now: int, height: int, state_root: bytes, block_time: int,
                    checkpoint: bool = False) -> list[Effect]:
        """The host executed block ``height`` (in order) and reports its state root.

        A checkpoint is taken every ``checkpoint_interval`` blocks, and also at any height
        where the application asked for one (``checkpoint``), which every correct replica
        does alike because execution is deterministic.
        """
        block, _ = self.ready.pop(height)
        self.executed = height
        self.last_block_time = block_time
        self.last_commit_ms = now
        self.mempool.remove(sha256(tx) for tx in block.txs)
        self.proposed_txs.pop(height, None)
        if not self.in_view_change:
            self.vc_attempts = 0
        if checkpoint or height % self.params.checkpoint_interval == 0:
            cp = Checkpoint(height, state_root, self.index).signed(self.key, self.vs.chain_id)
            self.own_checkpoint = cp
            self._send(cp)
            self._on_checkpoint(now, cp)
        self._progress_made()
        self._propose(now)
        if self.is_primary and not self.mempool and self._idle_fill_needed():
            delay = self.params.batch_delay_ms if self.filling else \
                self.params.empty_block_interval_ms
            self._out.append(SetTimer(IDLE, delay))
        return self._flush()

    def status(self) -> dict:
        return {
            "height": self.executed,
            "view": self.view,
            "primary": self.primary,
            "in_view_change": self.in_view_change,
            "target_view": self.target_view,
            "stable_checkpoint": self.stable_seq,
            "mempool_size": len(self.mempool),
            "last_commit_ms": self.last_commit_ms,
            "view_changes": self.view_changes_started,
        }

    # --- normal case: pre-prepare, prepare, commit -----------------------------------

    def _in_window(self, seq: int) -> bool:
        return self.stable_seq < seq <= self.stable_seq + self.params.window

    def _slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq)
        return slot

    def _buffer_future(self, msg: Message) -> None:
        if len(self.future) < FUTURE_BUFFER:
            self.future.append(msg)

    def _on_proposal(self, now: int, prop: Proposal, fresh: bool = True) -> None:
        pp = prop.pre_prepare
        if pp.view > self.view or (pp.view == self.view and self.in_view_change):
            if pp.view > self.view:
                self._buffer_future(prop)
            return
        if pp.view < self.view or pp.replica != self.primary or not self._in_window(pp.seq):
            return
        slot = self.slots.get(pp.seq)
        if slot is not None and slot.proposal is not None:
            if slot.digest != pp.digest and self.vs.verify(pp):
                self._start_view_change(now, self.view + 1)  # the primary equivocated
            return
        block = prop.block
        if block.height != pp.seq or block.digest() != pp.digest or not self.vs.verify(pp):
            return
        if fresh and self._block_error(now, block, pp.replica):
            return
        self._accept_proposal(prop)

    def _accept_proposal(self, prop: Proposal) -> None:
        slot = self._slot(prop.pre_prepare.seq)
        slot.proposal = prop
        if slot.seq > self.executed:
            # A primary must not propose these again while this block is pending: a
            # NEW-VIEW's re-proposals are in no mempool's "already proposed" set.
            self.proposed_txs[slot.seq] = [sha256(tx) for tx in prop.block.txs]
        for r in [r for r, p in slot.prepares.items() if p.digest != slot.digest]:
            del slot.prepares[r]
        if self.index != self.primary:
            prepare = Prepare(self.view, slot.seq, slot.digest, self.index).signed(  # type: ignore
                self.key, self.vs.chain_id)
            slot.prepares[self.index] = prepare
            slot.sent_prepare = True
            self._persist_slot(slot)
            self._send(prepare)
        self._arm_progress()
        self._check_prepared(slot)

    def _block_error(self, now: int, block: Block, proposer: int) -> str | None:
        p = self.params
        if block.proposer != proposer:
            return "block proposer is not the primary"
        if len(block.txs) > p.max_block_txs:
            return "too many transactions"
        if any(len(tx) > p.max_tx_bytes for tx in block.txs):
            return "transaction too large"
        if sum(len(tx) for tx in block.txs) > p.max_block_bytes:
            return "block too large"
        if len({sha256(tx) for tx in block.txs}) != len(block.txs):
            return "duplicate transaction in block"
        if block.time_ms == 0 or abs(block.time_ms - now) > p.max_clock_skew_ms:
            return "block time too far from local clock"
        previous = self._previous_time(block.height)
        if previous is not None and block.time_ms < previous:
            return "block time goes backwards"
        return None

    def _previous_time(self, seq: int) -> int | None:
        if seq - 1 == self.executed:
            return self.last_block_time
        slot = self.slots.get(seq - 1)
        if slot is not None and slot.proposal is not None and slot.proposal.block.time_ms:
            return slot.proposal.block.time_ms
        return None

    def _on_prepare(self, now: int, p: Prepare) -> None:
        if p.view > self.view:
            self._buffer_future(p)
            return
        if (p.view < self.view or self.in_view_change or not self._in_window(p.seq)
                or p.replica == self.primary):
            return
        slot = self._slot(p.seq)
        if p.replica in slot.prepares or (slot.digest and slot.digest != p.digest):
            return
        if not self.vs.verify(p):
            return
        slot.prepares[p.replica] = p
        self._check_prepared(slot)

    def _check_prepared(self, slot: Slot) -> None:
        if slot.sent_commit or slot.proposal is None:
            return
        matching = [p for p in slot.prepares.values() if p.digest == slot.digest]
        if len(matching) < self.vs.quorum - 1:
            return
        proof = PreparedProof(slot.proposal, tuple(sorted(matching, key=lambda p: p.replica)))
        self.prepared[slot.seq] = proof
        commit = Commit(self.view, slot.seq, slot.digest, self.index).signed(  # type: ignore
            self.key, self.vs.chain_id)
        slot.commits[self.index] = commit
        slot.sent_commit = True
        self._persist_slot(slot, proof)
        self._send(commit)
        self._check_committed(slot)

    def _on_commit(self, now: int, c: Commit) -> None:
        if c.view > self.view:
            self._buffer_future(c)
            return
        if c.view < self.view or self.in_view_change or not self._in_window(c.seq):
            return
        slot = self._slot(c.seq)
        if c.replica in slot.commits or (slot.digest and slot.digest != c.digest):
            return
        if not self.vs.verify(c):
            return
        slot.commits[c.replica] = c
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        if slot.committed or not slot.sent_commit:
            return
        matching = sorted((r, c.signature) for r, c in slot.commits.items()
                          if c.digest == slot.digest)
        if len(matching) < self.vs.quorum:
            return
        slot.committed = True
        if slot.seq > self.dispatched and slot.seq not in self.ready:
            cert = CommitCertificate(self.view, slot.seq, slot.digest, tuple(matching))  # type: ignore
            self.ready[slot.seq] = (slot.proposal.block, cert)  # type: ignore[union-attr]
        self._dispatch_ready()

    def _dispatch_ready(self) -> None:
        while self.dispatched + 1 in self.ready:
            self.dispatched += 1
            block, cert = self.ready[self.dispatched]
            self._out.append(Execute(block, cert))

    # --- the primary ------------------------------------------------------------------

    def _schedule_batch(self, now: int) -> None:
        if len(self.mempool) >= self.params.max_block_txs:
            self._propose(now)
        elif not self.batch_armed:
            self.batch_armed = True
            self._out.append(SetTimer(BATCH, self.params.batch_delay_ms))

    def _in_flight(self) -> int:
        return self.next_seq - 1 - self.executed

    def _can_propose(self) -> bool:
        return (self.is_primary and self._in_flight() < self.params.max_in_flight
                and self._in_window(self.next_seq))

    def _idle_fill_needed(self) -> bool:
        k = self.params.checkpoint_interval
        return (self.next_seq - 1) % k != 0

    def _propose(self, now: int) -> None:
        while self._can_propose():
            skip = {h for hs in self.proposed_txs.values() for h in hs}
            skip.update(sha256(tx) for block, _ in self.ready.values() for tx in block.txs)
            batch = self.mempool.batch(self.params.max_block_txs, self.params.max_block_bytes,
                                       skip)
            if not batch and not (self.filling and self._idle_fill_needed()):
                return
            seq = self.next_seq
            time_ms = max(now, self._previous_time(seq) or 0, 1)
            block = Block(seq, time_ms, self.index, tuple(tx for _, tx in batch))
            pp = PrePrepare(self.view, seq, block.digest(), self.index).signed(
                self.key, self.vs.chain_id)
            prop = Proposal(pp, block)
            self.next_seq += 1
            self.proposed_txs[seq] = [h for h, _ in batch]
            slot = self._slot(seq)
            slot.proposal = prop
            self._persist_slot(slot)
            self._send(prop)
            self._arm_progress()
            self._check_prepared(slot)

    # --- checkpoints and garbage collection ------------------------------------------

    def _on_checkpoint(self, now: int, cp: Checkpoint) -> None:
        if cp.seq <= self.stable_seq:
            return
        votes = self.checkpoints.get(cp.seq, {})
        if cp.replica in votes or not self.vs.verify(cp):
            return
        if cp.replica != self.index:
            self._hint(cp.replica, cp.seq)
        if cp.seq > self.stable_seq + 2 * self.params.window:
            known = self.far_checkpoints.get(cp.replica)
            if known is None or known.seq < cp.seq:
                self.far_checkpoints[cp.replica] = cp
                self._stable_if_quorum(cp, self.far_checkpoints.values())
            return
        votes = self.checkpoints.setdefault(cp.seq, votes)
        votes[cp.replica] = cp
        self._stable_if_quorum(cp, votes.values())

    def _stable_if_quorum(self, cp: Checkpoint, votes: Iterable[Checkpoint]) -> None:
        """Make ``cp``'s checkpoint stable if 2f+1 of ``votes`` (verified, one per replica)
        agree with it."""
        agreeing = [c for c in votes if (c.seq, c.state_root) == (cp.seq, cp.state_root)]
        if len(agreeing) >= self.vs.quorum:
            sigs = tuple(sorted((c.replica, c.signature) for c in agreeing))
            self._make_stable(CheckpointCertificate(cp.seq, cp.state_root, sigs))

    def _adopt_stable(self, cert: CheckpointCertificate) -> None:
        """A stable checkpoint certificate from a peer: proof enough to move to it."""
        if cert.seq > self.stable_seq and self.vs.checkpoint_certificate_error(cert) is None:
            self._make_stable(cert)

    def _make_stable(self, cert: CheckpointCertificate) -> None:
        seq = cert.seq
        if seq <= self.stable_seq:
            return
        self.stable_seq = seq
        self.stable_cert = cert
        deletes = [_seq_key(b"slot/", s) for s in self.slots if s <= seq]
        deletes += [_seq_key(b"prep/", s) for s in self.prepared if s <= seq]
        self.slots = {s: v for s, v in self.slots.items() if s > seq}
        self.prepared = {s: v for s, v in self.prepared.items() if s > seq}
        self.checkpoints = {s: v for s, v in self.checkpoints.items() if s > seq}
        near = [c for c in self.far_checkpoints.values()
                if c.seq <= seq + 2 * self.params.window]
        for cp in near:
            del self.far_checkpoints[cp.replica]
            if cp.seq > seq:
                self.checkpoints.setdefault(cp.seq, {})[cp.replica] = cp
        self.next_seq = max(self.next_seq, seq + 1)
        if deletes:
            self._out.append(Persist(deletes=tuple(deletes)))
        self._out.append(StableCheckpoint(seq, cert.encode()))
        if self.executed < seq:
            self._fetch()

    # --- view change ------------------------------------------------------------------

    def _start_view_change(self, now: int, view: int) -> None:
        if view <= self.target_view and self.in_view_change:
            return
        if view <= self.view:
            return
        if self.in_view_change:
            self.vc_attempts += 1
        self.in_view_change = True
        self.view_changes_started += 1
        checkpoint_proof = tuple(self.stable_cert.checkpoints()) if self.stable_cert else ()
        prepared = tuple(p for s, p in sorted(self.prepared.items()) if self._in_window(s))
        vc = ViewChange(view, self.stable_seq, checkpoint_proof, prepared, self.index).signed(
            self.key, self.vs.chain_id)
        self.view_changes[self.index] = vc
        self.progress_armed = False
        self.batch_armed = False
        self._out += [CancelTimer(PROGRESS), CancelTimer(BATCH), CancelTimer(IDLE)]
        self._persist_view(vc)
        self._send(vc)
        self._after_view_change_vote(now, view)

    def _on_view_change(self, now: int, vc: ViewChange) -> None:
        if vc.view <= self.view:
            return
        known = self.view_changes.get(vc.replica)
        if known is not None and known.view >= vc.view:
            return
        if view_change_error(self.vs, vc, self.params.window):
            return
        self.view_changes[vc.replica] = vc
        higher = sorted(v.view for r, v in self.view_changes.items()
                        if r != self.index and v.view > self.target_view)
        if len(higher) >= self.vs.weak_quorum:
            self._start_view_change(now, higher[0])  # f+1 replicas moved on: follow them
        self._after_view_change_vote(now, vc.view)

    def _after_view_change_vote(self, now: int, view: int) -> None:
        if not self.in_view_change or view < self.target_view:
            return
        view = self.target_view
        votes = [vc for vc in self.view_changes.values() if vc.view == view]
        # Replicas already past our target count for the timer: they saw the quorum for it
        # that we may never see (we restarted, or their VIEW-CHANGE was lost before they
        # moved on). Counting only exact votes leaves everyone waiting with no timer armed.
        if sum(vc.view >= view for vc in self.view_changes.values()) < self.vs.quorum:
            return
        if (len(votes) >= self.vs.quorum and self.vs.primary(view) == self.index
                and self.sent_new_view < view):
            self._send_new_view(now, view, votes)
        elif not self.progress_armed:
            self.progress_armed = True
            delay = self.params.view_change_timeout_ms << min(self.vc_attempts,
                                                              MAX_BACKOFF_DOUBLINGS)
            self._out.append(SetTimer(PROGRESS, delay))

    def _send_new_view(self, now: int, view: int, votes: list[ViewChange]) -> None:
        vcs = tuple(sorted(votes, key=lambda v: v.replica)[: self.vs.quorum])
        _, blocks = new_view_blocks(vcs, self.index)
        proposals = tuple(
            Proposal(PrePrepare(view, b.height, b.digest(), self.index).signed(
                self.key, self.vs.chain_id), b) for b in blocks)
        nv = NewView(view, vcs, proposals, self.index).signed(self.key, self.vs.chain_id)
        self.sent_new_view = view
        self._enter_view(now, nv)
        self._send(nv)

    def _on_new_view(self, now: int, nv: NewView) -> None:
        if nv.view <= self.view or nv.view < self.target_view:
            return
        if self._new_view_error(nv) is None:
            self._enter_view(now, nv)

    def _new_view_error(self, nv: NewView) -> str | None:
        if nv.replica != self.vs.primary(nv.view) or not self.vs.verify(nv):
            return "new view not signed by the view's primary"
        senders = {vc.replica for vc in nv.view_changes}
        if len(senders) != len(nv.view_changes) or len(senders) < self.vs.quorum:
            return "new view without a quorum of distinct view changes"
        for vc in nv.view_changes:
            if vc.view != nv.view:
                return "new view carries a view change for another view"
            error = view_change_error(self.vs, vc, self.params.window)
            if error:
                return error
        _, blocks = new_view_blocks(nv.view_changes, nv.replica)
        if len(blocks) != len(nv.proposals):
            return "new view proposals differ from its view changes"
        for block, prop in zip(blocks, nv.proposals, strict=True):
            pp = prop.pre_prepare
            if (prop.block != block or pp.view != nv.view or pp.seq != block.height
                    or pp.digest != block.digest() or pp.replica != nv.replica
                    or not self.vs.verify(pp)):
                return "new view proposals differ from its view changes"
        return None

    def _enter_view(self, now: int, nv: NewView) -> None:
        self.view = nv.view
        self.in_view_change = False
        self.new_view = nv
        self.slots = {}
        self.proposed_txs = {}
        self.progress_armed = False
        self._out.append(CancelTimer(PROGRESS))
        for vc in nv.view_changes:
            if vc.checkpoint_proof and vc.stable_seq > self.stable_seq:
                cps = vc.checkpoint_proof
                self._make_stable(CheckpointCertificate(
                    vc.stable_seq, cps[0].state_root,
                    tuple(sorted((c.replica, c.signature) for c in cps))))
        self._persist_view(None, nv)
        self.next_seq = max([self.executed, self.stable_seq]
                            + [p.pre_prepare.seq for p in nv.proposals]) + 1
        for prop in nv.proposals:
            if self._in_window(prop.pre_prepare.seq):
                self._accept_proposal(prop)
        buffered, self.future = list(self.future), deque()
        for msg in buffered:
            self._handlers[type(msg)](self, now, msg)
        self._arm_progress()
        if self.is_primary and self.mempool:
            self._schedule_batch(now)

    # --- state transfer and liveness --------------------------------------------------

    def _hint(self, replica: int, height: int) -> None:
        if height > self.hints.get(replica, 0):
            self.hints[replica] = height
        if height > self.dispatched:
            self._fetch()

    def _fetch(self) -> None:
        if self.fetching is not None:
            return
        ahead = [(h, r) for r, h in self.hints.items() if h > self.dispatched]
        if not ahead:
            return
        height, replica = max(ahead)
        self.fetching = replica
        self.fetch_age = 0
        last = min(height, self.dispatched + FETCH_BATCH)
        self._send(FetchBlocks(self.dispatched + 1, last, self.index), to=replica)

    def _on_blocks(self, now: int, msg: Blocks) -> None:
        if msg.replica == self.fetching:
            self.fetching = None
        for cert in msg.stable:
            self._adopt_stable(cert)
        for cb in msg.blocks:
            height = cb.block.height
            if height <= self.dispatched or height in self.ready:
                continue
            if height > self.dispatched + FETCH_BATCH or self.vs.commit_certificate_error(
                    cb.certificate, cb.block):
                self.hints.pop(msg.replica, None)
                break
            self.ready[height] = (cb.block, cb.certificate)
        else:
            self.hints[msg.replica] = msg.top
        self._dispatch_ready()
        self._fetch()

    def _on_status(self, now: int, st: Status) -> None:
        self.heard.add(st.replica)
        self._hint(st.replica, st.height)
        if (st.view < self.view and self.new_view is not None and self.is_primary):
            self._send(self.new_view, to=st.replica)

    def _resend(self, now: int) -> None:
        """Periodic retransmission: what loss may have eaten, plus a heartbeat."""
        self._send(Status(self.executed, self.view, self.in_view_change, self.index))
        if self.fetching is not None:
            self.fetch_age += 1
            if self.fetch_age > 1:
                self.hints.pop(self.fetching, None)
                self.fetching = None
                self._fetch()
        if self.own_checkpoint is not None and self.own_checkpoint.seq > self.stable_seq:
            self._send(self.own_checkpoint)
        # Txs still here a whole interval later go to every peer, even from a replica in a
        # view change: a primary that ignores them is then suspected by all backups.
        held = [(h, tx) for h, tx in self.mempool.items() if h in self.stale_txs]
        held = held[: self.params.max_block_txs]
        if held and self.gossip_txs:
            self._send(Transactions(tuple(tx for _, tx in held), (), self.index))
        self.stale_txs = {h for h, _ in self.mempool.batch(self.params.max_block_txs,
                                                           self.params.max_block_bytes)}
        if self.in_view_change:
            self._send(self.view_changes[self.index])
            return
        for seq, slot in sorted(self.slots.items()):
            if seq <= self.executed or slot.proposal is None:
                continue
            if self.index == self.primary:
                self._send(slot.proposal)
            if self.index in slot.prepares:
                self._send(slot.prepares[self.index])
            if self.index in slot.commits:
                self._send(slot.commits[self.index])

    def _pending(self) -> bool:
        return bool(self.mempool) or any(
            s.proposal is not None and seq > self.executed for seq, s in self.slots.items())

    def _stall_is_ours(self) -> bool:
        """True when the requests pending here do not show that the primary stalls: f+1
        replicas (so at least one correct) are ahead of this one, which is catching up
        (it was away, or restarted); or fewer than f+1 peers were heard from since the
        timer was armed, so a view change would be this replica's alone."""
        ahead = sum(height > self.executed for height in self.hints.values())
        heard = len(self.heard - {self.index})
        return ahead >= self.vs.weak_quorum or heard < self.vs.weak_quorum

    def _set_progress_timer(self) -> None:
        self.progress_armed = True
        self.heard = set()
        self._out.append(SetTimer(PROGRESS, self.params.view_change_timeout_ms))

    def _arm_progress(self) -> None:
        if not self.in_view_change and not self.progress_armed and self._pending():
            self._set_progress_timer()

    def _progress_made(self) -> None:
        if self.in_view_change:
            return
        if self._pending():
            self._set_progress_timer()
        elif self.progress_armed:
            self.progress_armed = False
            self._out.append(CancelTimer(PROGRESS))

    @property
    def _resend_interval(self) -> int:
        return max(20, self.params.view_change_timeout_ms // 2)

    # --- persistence ------------------------------------------------------------------

    def _persist_slot(self, slot: Slot, proof: PreparedProof | None = None) -> None:
        record = codec.pack([self.view, slot.proposal.field_values(),  # type: ignore[union-attr]
                             slot.sent_prepare, slot.sent_commit])
        puts = [(_seq_key(b"slot/", slot.seq), record)]
        if proof is not None:
            puts.append((_seq_key(b"prep/", slot.seq), codec.pack(proof.field_values())))
        self._out.append(Persist(puts=tuple(puts)))

    def _persist_view(self, vc: ViewChange | None, nv: NewView | None = None) -> None:
        puts = [(b"view", codec.pack([self.view, self.in_view_change]))]
        if vc is not None:
            puts.append((b"vc", codec.pack(vc.field_values())))
        if nv is not None:
            puts.append((b"nv", codec.pack(nv.field_values())))
        self._out.append(Persist(puts=tuple(puts)))

    def _restore(self, records: dict[bytes, bytes]) -> None:
        if b"view" in records:
            self.view, self.in_view_change = codec.unpack(records[b"view"])
        if b"vc" in records:
            vc = ViewChange.from_list(codec.unpack(records[b"vc"]))
            self.view_changes[self.index] = vc
        if b"nv" in records:
            self.new_view = NewView.from_list(codec.unpack(records[b"nv"]))
            if self.new_view.replica == self.index:
                self.sent_new_view = self.new_view.view
                if self.new_view.view == self.view and not self.in_view_change:
                    # Its NEW-VIEW pre-prepared these: a restart must not propose others.
                    for prop in self.new_view.proposals:
                        if self._in_window(prop.pre_prepare.seq):
                            self._slot(prop.pre_prepare.seq).proposal = prop
        for key, value in sorted(records.items()):
            if key.startswith(b"prep/"):
                proof = PreparedProof.from_list(codec.unpack(value))
                self.prepared[proof.proposal.pre_prepare.seq] = proof
            elif key.startswith(b"slot/"):
                view, prop, sent_prepare, sent_commit = codec.unpack(value)
                if view != self.view or self.in_view_change:
                    continue
                slot = self._slot(int.from_bytes(key[5:], "big"))
                slot.proposal = Proposal.from_list(prop)
                digest = slot.proposal.pre_prepare.digest
                if sent_prepare:
                    slot.sent_prepare = True
                    slot.prepares[self.index] = Prepare(view, slot.seq, digest, self.index).signed(
                        self.key, self.vs.chain_id)
                if sent_commit:
                    slot.sent_commit = True
                    slot.commits[self.index] = Commit(view, slot.seq, digest, self.index).signed(
                        self.key, self.vs.chain_id)

    # --- plumbing ---------------------------------------------------------------------

    def _send(self, msg: Message, to: int | None = None) -> None:
        self._out.append(Send(msg, to))

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out

    _handlers: ClassVar[dict[type[Message], Callable[[Replica, int, Any], None]]] = {
        Proposal: _on_proposal,
        Prepare: _on_prepare,
        Commit: _on_commit,
        Checkpoint: _on_checkpoint,
        ViewChange: _on_view_change,
        NewView: _on_new_view,
        Blocks: _on_blocks,
        Status: _on_status,
    }
