"""Round transitions and model versions: the chain's first round, closing a round
(BSP and SSP aggregate it into a new version), and BAP's immediate merges.

Every new version's weights are stored as a blob in the same atomic batch as the block
that made them, its record names the updates that went into it, and the block asks
consensus to certify its state root, so a version is checkable as soon as it exists.
"""

from __future__ import annotations

from dataclasses import replace

from flobc.consensus.application import BlockState, CommittedState
from flobc.ml.weights import Spec, decode_weights, encode_weights
from flobc.protocol.aggregation import (
    Contribution,
    Weights,
    bap_merge,
    rebase,
    staleness_discount,
)
from flobc.protocol.reputation import MICRO
from flobc.protocol.settings import FLConfig
from flobc.protocol.state import (
    ACCEPTED,
    PENDING,
    Meta,
    ModelRecord,
    UpdateRecord,
    read_meta,
    read_model,
    round_updates,
    trainers,
    write_meta,
    write_model,
)


def model_weights(state: CommittedState, version: int, spec: Spec) -> Weights:
    """The weights of a committed version. Its blob is always present (version 0 is
    stored before the node starts, later ones with their block), so a miss is a broken
    ledger, not bad input."""
    record = read_model(state, version)
    blob = None if record is None else state.blob(record.hash)
    if blob is None:
        raise RuntimeError(f"the weights of model version {version} are not in the ledger")
    return decode_weights(blob, max_bytes=len(blob), max_tensors=len(spec), expected=spec)


def update_delta(state: CommittedState, update: UpdateRecord, config: FLConfig,
                 spec: Spec) -> Weights:
    """An accepted update's delta; it passed every check when it was submitted."""
    blob = state.blob(update.blob)
    if blob is None:
        raise RuntimeError(f"update blob {update.blob.hex()} is not in the ledger")
    return decode_weights(blob, max_bytes=config.max_blob_bytes, max_tensors=len(spec),
                          expected=spec)


def active_trainers(state: CommittedState) -> tuple[bytes, ...]:
    """Registered trainers that are not excluded, sorted by key."""
    return tuple(key for key, record in trainers(state) if not record.excluded)


def _open(config: FLConfig, state: BlockState, round_: int, version: int,
          time_ms: int) -> None:
    write_meta(state, Meta(round_, version, time_ms, time_ms + config.round_deadline_ms,
                           active_trainers(state)))


def start_chain(config: FLConfig, state: BlockState, height: int, time_ms: int) -> None:
    """The first block's writes: version 0 (the genesis weights) and round 1."""
    write_model(state, ModelRecord(0, config.model_v0_hash, 0, height, time_ms, None))
    _open(config, state, 1, 0, time_ms)
    state.request_checkpoint()


def _publish(state: BlockState, weights: Weights, meta: Meta, height: int, time_ms: int,
             updates: list[tuple[bytes, bytes, int]]) -> int:
    version = meta.version + 1
    digest = state.put_blob(encode_weights(weights))
    write_model(state, ModelRecord(version, digest, meta.round, height, time_ms,
                                   meta.version, tuple(updates)))
    state.request_checkpoint()
    return version


def _aggregate(config: FLConfig, spec: Spec, state: BlockState, meta: Meta, height: int,
               time_ms: int) -> int:
    """Publish the round's accepted updates, combined by the genesis rule, as the next
    version (the same weights when none was accepted); return its number."""
    current = model_weights(state, meta.version, spec)
    bases: dict[int, Weights] = {}
    trust = {key: record.trust_micro for key, record in trainers(state)}
    contributions, blobs = [], {}
    for trainer, update in round_updates(state, meta.round):
        if update.status != ACCEPTED:
            continue  # rejected, or undecided at close: left out
        delta = update_delta(state, update, config, spec)
        if update.base != meta.version:  # SSP: applied to the model it was trained on
            if update.base not in bases:
                bases[update.base] = model_weights(state, update.base, spec)
            delta = rebase(current, bases[update.base], delta)
        contributions.append(Contribution(trainer, delta, update.samples * trust[trainer]))
        blobs[trainer] = update.blob
    weights, shares = config.make_aggregator().combine(current, contributions)
    return _publish(state, weights, meta, height, time_ms,
                    [(trainer, blobs[trainer], share) for trainer, share in shares])


def close_round(config: FLConfig, spec: Spec, state: BlockState, meta: Meta, height: int,
                time_ms: int) -> None:
    """End ``meta.round`` and open the next one on the latest version. A scheme that
    merges on accept (BAP) merged the round's accepted updates as they were decided, so
    its rounds end without a new version."""
    version = meta.version
    if not config.scheme.merges_on_accept:
        version = _aggregate(config, spec, state, meta, height, time_ms)
    _open(config, state, meta.round + 1, version, time_ms)


def _progress(state: CommittedState, meta: Meta) -> tuple[int, int]:
    """(decided, arrived) updates of the expected trainers in the open round."""
    expected = set(meta.expected)
    decided = arrived = 0
    for trainer, update in round_updates(state, meta.round):
        if trainer in expected:
            arrived += 1
            decided += update.status != PENDING
    return decided, arrived


def deadline_passed(config: FLConfig, spec: Spec, state: BlockState, meta: Meta,
                    height: int, time_ms: int) -> None:
    """At the deadline the scheme may extend the round (SSP, once); otherwise it closes."""
    if config.scheme.extends_at_deadline(config, meta, _progress(state, meta)[1]):
        write_meta(state, replace(meta, deadline_ms=meta.deadline_ms + config.round_deadline_ms,
                                  extended=True))
    else:
        close_round(config, spec, state, meta, height, time_ms)


def settle(config: FLConfig, spec: Spec, state: BlockState, height: int, time_ms: int) -> None:
    """After a block's transactions: close (or extend) the round if its scheme says so."""
    meta = read_meta(state)
    assert meta is not None, "settle runs after start_chain"
    decided, _ = _progress(state, meta)
    if config.scheme.enough_decided(config, len(meta.expected), decided):
        close_round(config, spec, state, meta, height, time_ms)
    elif time_ms >= meta.deadline_ms:
        deadline_passed(config, spec, state, meta, height, time_ms)


def merge_now(config: FLConfig, spec: Spec, state: BlockState, trainer: bytes,
              update: UpdateRecord, height: int, time_ms: int) -> None:
    """BAP: mix a just-accepted update into the latest version at once, discounted by how
    many versions behind its base is."""
    meta = read_meta(state)
    assert meta is not None, "merges happen after start_chain"
    current = model_weights(state, meta.version, spec)
    base = current if update.base == meta.version else model_weights(state, update.base, spec)
    share = staleness_discount(config.bap_alpha_micro, meta.version - update.base)
    merged = bap_merge(current, base, update_delta(state, update, config, spec), share / MICRO)
    version = _publish(state, merged, meta, height, time_ms, [(trainer, update.blob, share)])
    write_meta(state, replace(meta, version=version))
