"""Read-only answers about the learning state, for the wire API (JSON: bytes as hex).

Parameters arrive as text from the network, so each is parsed with bounds; a bad one
raises ``QueryError`` naming it, and something that does not exist raises ``NotFound``.
"""

from __future__ import annotations

from typing import Any

from flobc.consensus.application import CommittedState
from flobc.errors import InputError, ValidatorError
from flobc.protocol.reputation import shares_micro
from flobc.protocol.state import (
    ACCEPTED,
    PENDING,
    REJECTED,
    Meta,
    ModelRecord,
    UpdateRecord,
    read_meta,
    read_model,
    round_updates,
    trainers,
)

QUERIES = ("model_latest", "model", "round", "rounds", "trainers")
MAX_NUMBER = 2**63 - 1
MAX_ROUNDS = 1000
DEFAULT_ROUNDS = 20


class QueryError(ValidatorError, InputError):
    """A query or parameter that is not understood."""


class NotFound(QueryError):
    """The query is fine; what it asks for does not exist (yet)."""


def number_param(params: dict[str, str], name: str, low: int, high: int,
                 default: int | None = None) -> int:
    """The integer query parameter ``name`` in low..high (``default`` when absent)."""
    text = params.get(name)
    if text is None:
        if default is None:
            raise QueryError(f"query needs a {name!r} parameter")
        return default
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 19
            and low <= int(text) <= high):
        raise QueryError(f"{name} must be an integer in {low}..{high}")
    return int(text)


def _meta(state: CommittedState) -> Meta:
    meta = read_meta(state)
    if meta is None:
        raise NotFound("the chain has not executed its first block yet")
    return meta


def _model(record: ModelRecord) -> dict[str, Any]:
    return {"version": record.version, "hash": record.hash.hex(), "round": record.round,
            "height": record.height, "time_ms": record.time_ms, "parent": record.parent,
            "updates": [{"trainer": t.hex(), "blob": b.hex(), "weight_micro": w}
                        for t, b, w in record.updates]}


def _find_model(state: CommittedState, version: int) -> dict[str, Any]:
    record = read_model(state, version)
    if record is None:
        raise NotFound(f"no model version {version} (the latest is {_meta(state).version})")
    return _model(record)


def _update(trainer: bytes, update: UpdateRecord) -> dict[str, Any]:
    accepts, rejects = update.tally()
    return {"trainer": trainer.hex(), "blob": update.blob.hex(), "base": update.base,
            "samples": update.samples, "loss_milli": update.loss_milli,
            "accuracy_milli": update.accuracy_milli, "status": update.status,
            "height": update.height, "accepts": accepts, "rejects": rejects,
            "votes": {v.hex(): {"accept": a, "score_milli": s}
                      for v, (a, s) in sorted(update.votes.items())}}


def _round(state: CommittedState, round_: int) -> dict[str, Any]:
    meta = _meta(state)
    if round_ > meta.round:
        raise NotFound(f"round {round_} has not opened yet (round {meta.round} is open)")
    out: dict[str, Any] = {"round": round_, "open": round_ == meta.round,
                           "updates": [_update(t, u) for t, u in round_updates(state, round_)]}
    if round_ == meta.round:
        out.update(version=meta.version, opened_ms=meta.round_opened_ms,
                   deadline_ms=meta.deadline_ms, extended=meta.extended,
                   expected=[t.hex() for t in meta.expected])
    return out


def _rounds(state: CommittedState, limit: int) -> dict[str, Any]:
    """The open round and the ones before it, newest first, with update counts."""
    meta = _meta(state)
    summaries = []
    for r in range(meta.round, max(meta.round - limit, 0), -1):
        statuses = [u.status for _, u in round_updates(state, r)]
        summaries.append({"round": r, "open": r == meta.round, "submitted": len(statuses),
                          "accepted": statuses.count(ACCEPTED),
                          "rejected": statuses.count(REJECTED),
                          "pending": statuses.count(PENDING)})
    return {"round": meta.round, "version": meta.version, "deadline_ms": meta.deadline_ms,
            "rounds": summaries}


def _trainers(state: CommittedState) -> dict[str, Any]:
    """Every trainer with its trust, and its share of the total over active trainers."""
    records = list(trainers(state))
    active = [(key, r.trust_micro) for key, r in records if not r.excluded]
    shares = dict(zip([k for k, _ in active],
                      shares_micro([t for _, t in active]) or [0] * len(active), strict=True))
    return {"trainers": [
        {"trainer": key.hex(), "trust_micro": r.trust_micro, "share_micro": shares.get(key, 0),
         "registered_round": r.registered_round, "accepted": r.accepted,
         "rejected": r.rejected, "excluded": r.excluded} for key, r in records]}


def answer(path: str, params: dict[str, str], state: CommittedState) -> Any:
    """``model_latest``; ``model`` {version}; ``round`` {round}; ``rounds`` {limit};
    ``trainers``."""
    if path == "model_latest":
        return _find_model(state, _meta(state).version)
    if path == "model":
        return _find_model(state, number_param(params, "version", 0, MAX_NUMBER))
    if path == "round":
        return _round(state, number_param(params, "round", 1, MAX_NUMBER))
    if path == "rounds":
        return _rounds(state, number_param(params, "limit", 1, MAX_ROUNDS, DEFAULT_ROUNDS))
    if path == "trainers":
        return _trainers(state)
    raise QueryError(f"unknown query {path[:40]!r}; queries are {', '.join(QUERIES)}")
