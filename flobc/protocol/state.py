"""The learning protocol's state records: keys and canonical values (docs/fl-protocol.md).

Everything lives under ``fl/`` in the application state, so it is covered by the Merkle
root that validators sign. Values are canonical msgpack maps of integers, byte strings,
booleans and short strings only: no floats, so every validator writes identical bytes.
Numbers in keys are 8-byte big-endian, so a prefix scan returns them in numeric order,
and the trainer key in an update's key makes a round's updates come out sorted by key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from flobc import codec
from flobc.config import Genesis
from flobc.consensus.application import KeyReader, StateReader, StateWriter
from flobc.consensus.light import VerificationError, verify_state
from flobc.crypto import HASH_SIZE

META = b"fl/meta"
MODEL = b"fl/model/"
TRAINER = b"fl/trainer/"
UPDATE = b"fl/update/"

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def model_key(version: int) -> bytes:
    return MODEL + _u64(version)


def trainer_key(trainer: bytes) -> bytes:
    return TRAINER + trainer


def round_prefix(round_: int) -> bytes:
    return UPDATE + _u64(round_) + b"/"


def update_key(round_: int, trainer: bytes) -> bytes:
    return round_prefix(round_) + trainer


@dataclass(frozen=True)
class Meta:
    """The open round and the latest version."""

    round: int
    version: int
    round_opened_ms: int
    deadline_ms: int
    expected: tuple[bytes, ...]
    """Trainers the round waits for, sorted."""
    extended: bool = False


@dataclass(frozen=True)
class ModelRecord:
    """One certified model version; its weights are the blob ``hash``."""

    version: int
    hash: bytes
    round: int
    height: int
    time_ms: int
    parent: int | None
    updates: tuple[tuple[bytes, bytes, int], ...] = ()
    """(trainer, blob_hash, weight_micro) of each update that went into it."""


@dataclass(frozen=True)
class TrainerRecord:
    trust_micro: int
    registered_round: int
    accepted: int = 0
    rejected: int = 0
    excluded: bool = False


@dataclass(frozen=True)
class UpdateRecord:
    blob: bytes
    base: int
    samples: int
    loss_milli: int
    accuracy_milli: int
    height: int
    votes: dict[bytes, tuple[bool, int]] = field(default_factory=dict)
    """validator -> (accept, score_milli)."""
    status: str = PENDING

    def tally(self) -> tuple[int, int]:
        """(accept votes, reject votes)."""
        accepts = sum(1 for accept, _ in self.votes.values() if accept)
        return accepts, len(self.votes) - accepts


def read_meta(state: StateReader) -> Meta | None:
    raw = state.get(META)
    if raw is None:
        return None
    v = codec.unpack(raw)
    return Meta(v["round"], v["version"], v["round_opened_ms"], v["deadline_ms"],
                tuple(v["expected"]), v["extended"])


def write_meta(state: StateWriter, meta: Meta) -> None:
    state.put(META, codec.pack({
        "round": meta.round, "version": meta.version, "round_opened_ms": meta.round_opened_ms,
        "deadline_ms": meta.deadline_ms, "expected": list(meta.expected),
        "extended": meta.extended}))


def read_model(state: KeyReader, version: int) -> ModelRecord | None:
    if not 0 <= version < 2**64:
        return None
    raw = state.get(model_key(version))
    if raw is None:
        return None
    v = codec.unpack(raw)
    return ModelRecord(v["version"], v["hash"], v["round"], v["height"], v["time_ms"],
                       v["parent"], tuple((t, b, w) for t, b, w in v["updates"]))


def verify_model_record(genesis: Genesis, version: int, value: bytes, certificate: bytes,
                        proof: bytes) -> tuple[ModelRecord, int]:
    """The record of model ``version`` and the checkpoint height, once ``certificate``
    and the Merkle ``proof`` show ``value`` under ``fl/model/<version>`` in certified
    state, checked with the genesis keys alone; VerificationError names what fails."""
    key = model_key(version)
    height = verify_state(genesis, certificate, key, value, proof)
    try:
        # The value is certified, hence written by the state machine: read it as it does.
        record = read_model({key: value}, version)
    except (codec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"model {version}: certified record does not decode: "
                                f"{exc!r}") from exc
    if record is None or record.version != version:
        raise VerificationError(f"model {version}: certified record is for another version")
    if not isinstance(record.hash, bytes) or len(record.hash) != HASH_SIZE:
        raise VerificationError(f"model {version}: certified record has no valid hash")
    return record, height


def write_model(state: StateWriter, record: ModelRecord) -> None:
    state.put(model_key(record.version), codec.pack({
        "version": record.version, "hash": record.hash, "round": record.round,
        "height": record.height, "time_ms": record.time_ms, "parent": record.parent,
        "updates": [list(u) for u in record.updates]}))


def _trainer(raw: bytes) -> TrainerRecord:
    v = codec.unpack(raw)
    return TrainerRecord(v["trust_micro"], v["registered_round"], v["accepted"],
                         v["rejected"], v["excluded"])


def read_trainer(state: StateReader, trainer: bytes) -> TrainerRecord | None:
    raw = state.get(trainer_key(trainer))
    return None if raw is None else _trainer(raw)


def write_trainer(state: StateWriter, trainer: bytes, record: TrainerRecord) -> None:
    state.put(trainer_key(trainer), codec.pack({
        "trust_micro": record.trust_micro, "registered_round": record.registered_round,
        "accepted": record.accepted, "rejected": record.rejected,
        "excluded": record.excluded}))


def trainers(state: StateReader) -> Iterator[tuple[bytes, TrainerRecord]]:
    """Every registered trainer, sorted by public key."""
    for key, raw in state.items(TRAINER):
        yield key[len(TRAINER):], _trainer(raw)


def _update(raw: bytes) -> UpdateRecord:
    v = codec.unpack(raw)
    votes = {validator: (accept, score) for validator, (accept, score) in v["votes"].items()}
    return UpdateRecord(v["blob"], v["base"], v["samples"], v["loss_milli"],
                        v["accuracy_milli"], v["height"], votes, v["status"])


def read_update(state: StateReader, round_: int, trainer: bytes) -> UpdateRecord | None:
    raw = state.get(update_key(round_, trainer))
    return None if raw is None else _update(raw)


def write_update(state: StateWriter, round_: int, trainer: bytes,
                 record: UpdateRecord) -> None:
    state.put(update_key(round_, trainer), codec.pack({
        "blob": record.blob, "base": record.base, "samples": record.samples,
        "loss_milli": record.loss_milli, "accuracy_milli": record.accuracy_milli,
        "votes": {validator: list(vote) for validator, vote in record.votes.items()},
        "status": record.status, "height": record.height}))


def round_updates(state: StateReader, round_: int) -> Iterator[tuple[bytes, UpdateRecord]]:
    """The updates submitted in ``round_``, sorted by trainer public key."""
    prefix = round_prefix(round_)
    for key, raw in state.items(prefix):
        yield key[len(prefix):], _update(raw)


def has_updates(state: StateReader, round_: int) -> bool:
    return next(iter(state.items(round_prefix(round_))), None) is not None
