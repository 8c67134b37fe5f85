"""What must hold after a simulated run, checked from what replicas stored and signed.

Safety is judged from the durable ledgers alone (blocks, commit certificates, state
roots, checkpoint certificates), the way an auditor or a light client would judge it,
and from every signed message honest replicas put on the wire: an honest replica never
signs two conflicting messages, even across a crash and restart.
"""

from __future__ import annotations

from collections.abc import Mapping

from flobc.consensus.messages import (
    Block,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    CommitCertificate,
    Message,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Proposal,
    ViewChange,
)
from flobc.consensus.validators import ValidatorSet
from flobc.crypto import sha256
from flobc.storage.ledger import Ledger

MAX_REPORTED = 5
"""Violations of one kind reported per run: the first few tell the story."""


class SignatureLog:
    """Every signed statement honest replicas made on the wire, keyed by what it is about.

    A second, different statement about the same thing (two digests for one view and
    sequence number, two state roots for one checkpoint, two view changes for one view)
    is equivocation, which PBFT assumes honest replicas never commit.
    """

    def __init__(self, honest: frozenset[int]) -> None:
        self.honest = honest
        self.statements: dict[tuple, bytes] = {}
        self.violations: list[str] = []
        self.prepared_digests: dict[tuple[int, int], set[bytes]] = {}
        """Digests honest replicas prepared per (view, seq): more than one means the
        primary equivocated with valid signatures (honest replicas verified them)."""

    def record(self, msg: Message) -> None:
        """Record ``msg``, sent by an honest replica, and every signed message in it."""
        if isinstance(msg, Proposal):
            self.record(msg.pre_prepare)
        elif isinstance(msg, PrePrepare | Prepare | Commit):
            self._state(msg.replica, (msg.TAG, msg.replica, msg.view, msg.seq), msg.digest)
        elif isinstance(msg, Checkpoint):
            self._state(msg.replica, (msg.TAG, msg.replica, msg.seq), msg.state_root)
        elif isinstance(msg, ViewChange):
            self._whole(msg, (msg.TAG, msg.replica, msg.view))
            for cp in msg.checkpoint_proof:
                self.record(cp)
            for proof in msg.prepared:
                self._record_proof(proof)
        elif isinstance(msg, NewView):
            self._whole(msg, (msg.TAG, msg.replica, msg.view))
            for nested in (*msg.view_changes, *msg.proposals):
                self.record(nested)

    def _record_proof(self, proof: PreparedProof) -> None:
        self.record(proof.proposal)
        for p in proof.prepares:
            self.record(p)

    def _whole(self, msg: ViewChange | NewView, about: tuple) -> None:
        self._state(msg.replica, about, sha256(msg.signing_bytes("")))

    @property
    def split_slots(self) -> int:
        """How many (view, seq) honest replicas prepared different blocks for."""
        return sum(len(d) > 1 for d in self.prepared_digests.values())

    def _state(self, signer: int, about: tuple, value: bytes) -> None:
        if signer not in self.honest:
            return
        if about[0] == Prepare.TAG:
            self.prepared_digests.setdefault(about[2:], set()).add(value)
        known = self.statements.setdefault(about, value)
        if known != value and len(self.violations) < MAX_REPORTED:
            what = " ".join(str(x) for x in about[2:])
            self.violations.append(
                f"EQUIVOCATION: honest replica {signer} signed two different {about[0]} "
                f"messages for {what}: {known.hex()[:12]} and {value.hex()[:12]}")


def ledger_violations(vs: ValidatorSet, ledgers: Mapping[int, Ledger]) -> list[str]:
    """SAFETY and certificates: honest ledgers agree at every height, and every stored
    block carries a commit certificate that verifies against it."""
    violations: list[str] = []
    top = max((ledger.height for ledger in ledgers.values()), default=0)
    verified: dict[tuple[bytes, bytes], str | None] = {}
    for height in range(1, top + 1):
        metas = {i: meta for i, ledger in ledgers.items()
                 if ledger.height >= height and (meta := ledger.meta(height)) is not None}
        hashes = {m.block_hash for m in metas.values()}
        if len(hashes) > 1:
            violations.append(f"SAFETY: honest replicas committed different blocks at height "
                              f"{height}: " + _by_replica({i: m.block_hash for i, m in
                                                          metas.items()}))
        elif len({m.state_root for m in metas.values()}) > 1:
            violations.append(f"DETERMINISM: same block, different state roots at height "
                              f"{height}: " + _by_replica({i: m.state_root for i, m in
                                                          metas.items()}))
        for i, ledger in ledgers.items():
            if height <= ledger.height:
                raw, cert = ledger.block(height), ledger.certificate(height)
                key = (raw or b"", cert or b"")
                if key not in verified:
                    verified[key] = _certificate_error(vs, height, raw, cert)
                if verified[key] is not None:
                    violations.append(f"CERTIFICATE: replica {i} height {height}: "
                                      f"{verified[key]}")
    return violations[:MAX_REPORTED * 3]


def _certificate_error(vs: ValidatorSet, height: int, raw: bytes | None,
                       cert: bytes | None) -> str | None:
    if raw is None or cert is None:
        return "block or certificate missing"
    block = Block.decode(raw)
    if block.height != height:
        return f"block stored at height {height} says height {block.height}"
    return vs.commit_certificate_error(CommitCertificate.decode(cert), block)


def checkpoint_violations(vs: ValidatorSet, ledgers: Mapping[int, Ledger], interval: int,
                          beyond: int) -> tuple[list[str], int]:
    """Every stored stable checkpoint has a valid certificate for the root the replica
    itself computed at that height. Returns (violations, stable checkpoints found)."""
    violations: list[str] = []
    found = 0
    for i, ledger in ledgers.items():
        for seq in range(interval, ledger.height + beyond + 1, interval):
            raw = ledger.checkpoint(seq)
            if raw is None:
                continue
            found += 1
            cert = CheckpointCertificate.decode(raw)
            meta = ledger.meta(seq)
            error = vs.checkpoint_certificate_error(cert)
            if cert.seq != seq:
                error = f"certificate for {cert.seq} stored under {seq}"
            elif error is None and meta is not None and meta.state_root != cert.state_root:
                error = "certified root differs from the root the replica computed"
            if error is not None and len(violations) < MAX_REPORTED:
                violations.append(f"CHECKPOINT: replica {i} seq {seq}: {error}")
    return violations, found


def _by_replica(values: Mapping[int, bytes]) -> str:
    return ", ".join(f"r{i}={v.hex()[:12]}" for i, v in sorted(values.items()))
