"""The learning chain's dashboard panel: rounds, votes, trust history, certified model.

Everything it shows is what this validator can honestly know from committed state. The
"verified by 2f+1 validators" mark is computed here, with the light client's checks on
exactly what ``/fl/models/{v}/proof`` serves, so the page never claims more than a
signed certificate proves. Each answer reads a bounded amount of state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flobc.config import Genesis
from flobc.consensus.light import VerificationError
from flobc.consensus.messages import CheckpointCertificate
from flobc.crypto import sha256
from flobc.protocol.reputation import penalised, rewarded
from flobc.protocol.settings import FLConfig
from flobc.protocol.state import (
    ACCEPTED,
    PENDING,
    REJECTED,
    Meta,
    model_key,
    read_meta,
    round_updates,
    verify_model_record,
)
from flobc.validator.fl.app import FLApp
from flobc.validator.http import state_proof
from flobc.validator.services import NodeParts

HISTORY_ROUNDS = 100
"""Closed rounds of update counts and trust the dashboard returns (the newest ones),
besides the open round."""
MAX_TRAINERS = 100
"""Trainers listed (by public key); the answer says how many there are in all."""
CATCH_UP_SLICE = 200
"""Rounds folded between yields to consensus when the trust history catches up."""


@dataclass
class _Round:
    round: int
    submitted: int
    accepted: int
    rejected: int
    pending: int
    trust: dict[bytes, int] = field(default_factory=dict)
    """Trust after this round of each trainer one of whose updates it decided."""

    def summary(self, open_: bool) -> dict[str, Any]:
        return {"round": self.round, "open": open_, "submitted": self.submitted,
                "accepted": self.accepted, "rejected": self.rejected, "pending": self.pending}


class TrustHistory:
    """Each trainer's trust after each round, for the newest HISTORY_ROUNDS rounds.

    The state keeps only a trainer's current trust, so its history is rebuilt from the
    committed update records with the chain's own rule: a trust moves only when one of
    the trainer's updates is decided, and only in the open round, so folding the rounds
    in order with ``rewarded``/``penalised`` gives exactly the trust the chain wrote.
    A closed round never changes again, so it is folded once and kept; only the open
    round is read on every call. Memory is the current trust per trainer plus the
    changes of the kept rounds.
    """

    def __init__(self, config: FLConfig, window: int = HISTORY_ROUNDS) -> None:
        self.config = config
        self.window = window
        self.closed = 0
        """Rounds folded so far (1..closed)."""
        self.trust: dict[bytes, int] = {}
        """Trust after round ``closed`` of every trainer with a decided update."""
        self.base: dict[bytes, int] = {}
        """Trust before the oldest kept round."""
        self.rounds: deque[_Round] = deque()

    def fold(self, state: Any, round_: int, trust: dict[bytes, int]) -> _Round:
        """Round ``round_``'s counts; the trust changes it made are applied to ``trust``."""
        counts = {ACCEPTED: 0, REJECTED: 0, PENDING: 0}
        changed: dict[bytes, int] = {}
        for trainer, update in round_updates(state, round_):
            counts[update.status] += 1
            before = trust.get(trainer, self.config.trust_initial)
            if update.status == ACCEPTED:
                changed[trainer] = trust[trainer] = rewarded(before, self.config.trust_reward)
            elif update.status == REJECTED:
                changed[trainer] = trust[trainer] = penalised(before, self.config.trust_penalty)
        return _Round(round_, sum(counts.values()), counts[ACCEPTED], counts[REJECTED],
                      counts[PENDING], changed)

    def advance(self, state: Any, last: int) -> None:
        """Fold closed rounds up to ``last``."""
        while self.closed < last:
            self.closed += 1
            kept = self.fold(state, self.closed, self.trust)
            if len(self.rounds) == self.window:
                self.base.update(self.rounds.popleft().trust)
            self.rounds.append(kept)

    async def catch_up(self, state: Any) -> None:
        """Fold the closed rounds in slices, letting consensus run in between, so that a
        long chain's first request does not hold up the node."""
        while (meta := read_meta(state)) is not None and self.closed < meta.round - 1:
            self.advance(state, min(meta.round - 1, self.closed + CATCH_UP_SLICE))
            await asyncio.sleep(0)

    def view(self, state: Any, meta: Meta, registered: dict[bytes, int]
             ) -> tuple[list[dict[str, Any]], dict[bytes, list[int | None]]]:
        """The kept rounds and the open one (round summaries), and for each trainer in
        ``registered`` (key -> round it registered in) its trust after each of them, None
        before it registered."""
        self.advance(state, meta.round - 1)
        live = dict(self.trust)
        open_round = self.fold(state, meta.round, live)
        rounds = [*self.rounds, open_round]
        series: dict[bytes, list[int | None]] = {}
        for trainer, since in registered.items():
            trust = self.base.get(trainer, self.config.trust_initial)
            points: list[int | None] = []
            for r in rounds:
                trust = r.trust.get(trainer, trust)
                points.append(trust if since <= r.round else None)
            series[trainer] = points
        return [r.summary(r is open_round) for r in rounds], series


class CertifiedModel:
    """The newest model version the latest stable checkpoint covers, checked as a light
    client checks it: checkpoint certificate against the genesis keys, Merkle proof of
    ``fl/model/<v>``, and the stored weights' SHA-256 against the proven record. The
    result only changes with a new checkpoint, so it is kept until then."""

    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self._cached: tuple[int, dict[str, Any]] | None = None

    def get(self) -> dict[str, Any] | None:
        """None until a stable checkpoint covers a model version."""
        found = self.node.host.proof_snapshot()
        if found is None:
            return None
        seq, _, snapshot = found
        if self._cached is None or self._cached[0] != seq:
            meta = read_meta(snapshot)
            if meta is None:
                return None
            self._cached = seq, self._check(meta.version)
        return self._cached[1]

    def _check(self, version: int) -> dict[str, Any]:
        validators = self.node.host.validators
        served = state_proof(self.node.host, model_key(version))  # as /fl/models/{v}/proof
        certificate = bytes.fromhex(served["checkpoint"]["certificate"])
        answer: dict[str, Any] = {"version": version, "checkpoint": served["checkpoint"]["seq"],
                                  "quorum": validators.quorum, "n": validators.n}
        try:
            model_hash = verify_served_model(self.node.genesis, version, served,
                                             self.node.ledger.blob)
        except VerificationError as exc:
            return {**answer, "verified": False, "verified_by": 0, "signers": [],
                    "hash": None, "error": str(exc)}
        signers = sorted(r for r, _ in CheckpointCertificate.decode(certificate).signatures)
        return {**answer, "verified": True, "verified_by": len(signers), "signers": signers,
                "hash": model_hash.hex(), "error": None}


def verify_served_model(genesis: Genesis, version: int, served: dict[str, Any],
                        weights: Callable[[bytes], bytes | None]) -> bytes:
    """The weights' hash of ``version``, once ``served`` (a ``/fl/models/{v}/proof``
    answer) checks out against the genesis keys alone: a checkpoint certificate with
    2f+1 valid signatures, a Merkle proof of the record ``fl/model/<v>`` under its state
    root, and weights (``weights(hash)``) that hash to the proven record's hash.
    Raises VerificationError naming the first check that fails."""
    key = model_key(version)
    if served["key"] != key.hex() or served["value"] is None or served["proof"] is None:
        raise VerificationError(f"model {version} is not in the checkpoint's state")
    record, _ = verify_model_record(genesis, version, bytes.fromhex(served["value"]),
                                    bytes.fromhex(served["checkpoint"]["certificate"]),
                                    bytes.fromhex(served["proof"]))
    blob = weights(record.hash)
    if blob is None or sha256(blob) != record.hash:
        raise VerificationError(f"model {version}: the weights do not match the certified "
                                f"hash {record.hash.hex()}")
    return record.hash


class LearningPanel:
    """The learning chain's part of the dashboard state."""

    def __init__(self, node: NodeParts, app: FLApp) -> None:
        self.node = node
        self.app = app
        self.history = TrustHistory(app.config)
        self.certified = CertifiedModel(node)

    def _query(self, path: str, **params: str) -> Any:
        return self.app.query(path, params, self.node.host.committed)

    async def state(self) -> dict[str, Any] | None:
        """None before the chain's first block."""
        await self.history.catch_up(self.node.host.committed)
        committed = self.node.host.committed
        meta = read_meta(committed)
        if meta is None:
            return None
        model = self._query("model_latest")
        trainers = self._query("trainers")["trainers"]
        shown = trainers[:MAX_TRAINERS]
        rounds, series = self.history.view(
            committed, meta, {bytes.fromhex(t["trainer"]): t["registered_round"] for t in shown})
        config = self.app.config
        return {
            "round": meta.round, "version": meta.version, "sync": config.sync,
            "aggregator": config.aggregator, "opened_ms": meta.round_opened_ms,
            "deadline_ms": meta.deadline_ms, "trust_threshold": config.trust_threshold,
            "model": {k: model[k] for k in ("version", "hash", "round", "height", "time_ms")}
                     | {"updates": len(model["updates"])},
            "certified": self.certified.get(),
            "rounds": rounds,
            "open_round": self._query("round", round=str(meta.round)),
            "last_closed_round": (self._query("round", round=str(meta.round - 1))
                                  if meta.round > 1 else None),
            "trainers": [{**t, "trust_history": series[bytes.fromhex(t["trainer"])]}
                         for t in shown],
            "trainers_total": len(trainers)}

