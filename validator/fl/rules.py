"""What each transaction may do and what it does (docs/fl-protocol.md, Transactions).

``problem`` is the whole set of checks, run when a transaction asks to enter the
mempool (against committed state, no block time) and again when its block executes;
``apply`` runs only when ``problem`` found nothing, so a refused transaction writes
nothing. Votes are only counted here: whether an update is good is decided off-chain
by each validator on its own data, never inside block execution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flobc.consensus.application import BlockState, CommittedState
from flobc.ml.weights import Spec, WeightsError, all_finite, decode_weights, l2_norm
from flobc.protocol.reputation import is_excluded, penalised, rewarded
from flobc.protocol.settings import FLConfig
from flobc.protocol.state import (
    ACCEPTED,
    PENDING,
    REJECTED,
    Meta,
    TrainerRecord,
    UpdateRecord,
    has_updates,
    read_trainer,
    read_update,
    write_meta,
    write_trainer,
    write_update,
)
from flobc.protocol.txs import Close, FLTx, Register, Update, Vote
from flobc.validator.fl.rounds import deadline_passed, merge_now


@dataclass(frozen=True)
class ChainParams:
    """What every block of one chain is executed under."""

    chain_id: str
    config: FLConfig
    validators: frozenset[bytes]
    spec: Spec

    @property
    def accept_quorum(self) -> int:
        """n - f accept votes accept an update (2f+1 when n = 3f+1)."""
        return len(self.validators) - self.faulty

    @property
    def reject_quorum(self) -> int:
        """f + 1 reject votes reject it: at least one of them is honest."""
        return self.faulty + 1

    @property
    def faulty(self) -> int:
        return (len(self.validators) - 1) // 3


def _short(key: bytes) -> str:
    return key.hex()[:16]


def problem(params: ChainParams, tx: FLTx, state: CommittedState, meta: Meta,
            time_ms: int | None) -> str | None:
    """Why ``tx`` may not take effect now; ``time_ms`` is None outside a block."""
    if isinstance(tx, Register):
        return _register_problem(params.config, tx, state)
    if isinstance(tx, Update):
        return _update_problem(params, tx, state, meta)
    if isinstance(tx, Vote):
        return _vote_problem(params, tx, state, meta)
    return _close_problem(params, tx, meta, time_ms)


def apply(params: ChainParams, tx: FLTx, state: BlockState, meta: Meta, height: int,
          time_ms: int) -> None:
    """The effect of ``tx``, which ``problem`` has just let through."""
    if isinstance(tx, Register):
        _register(params.config, tx, state, meta)
    elif isinstance(tx, Update):
        write_update(state, tx.round, tx.signer, UpdateRecord(
            tx.blob_hash, tx.base_version, tx.samples, tx.loss_milli, tx.accuracy_milli,
            height))
    elif isinstance(tx, Vote):
        _vote(params, tx, state, height, time_ms)
    else:
        deadline_passed(params.config, params.spec, state, meta, height, time_ms)


def _register_problem(config: FLConfig, tx: Register, state: CommittedState) -> str | None:
    if config.admission == "allowlist" and tx.signer not in config.trainers:
        return f"trainer {_short(tx.signer)} is not on the genesis allowlist"
    record = read_trainer(state, tx.signer)
    if record is not None:
        return (f"trainer {_short(tx.signer)} is already registered "
                f"(since round {record.registered_round})")
    return None


def _register(config: FLConfig, tx: Register, state: BlockState, meta: Meta) -> None:
    """A newcomer starts at the initial trust and changes no one else's. It is expected
    in the open round if no update has arrived in it yet, so a new chain's first round
    does not wait out its deadline for trainers that registered after it opened."""
    write_trainer(state, tx.signer, TrainerRecord(config.trust_initial, meta.round))
    if not has_updates(state, meta.round):
        write_meta(state, replace(meta, expected=tuple(sorted({*meta.expected, tx.signer}))))


def _update_problem(params: ChainParams, tx: Update, state: CommittedState,
                    meta: Meta) -> str | None:
    config = params.config
    trainer = read_trainer(state, tx.signer)
    if trainer is None:
        return f"trainer {_short(tx.signer)} is not registered"
    if trainer.excluded:
        return (f"trainer {_short(tx.signer)} is excluded (trust {trainer.trust_micro} is "
                f"under the threshold {config.trust_threshold})")
    if tx.round != meta.round:
        return f"update is for round {tx.round}, but round {meta.round} is open"
    base = config.scheme.base_problem(config, meta.version, tx.base_version)
    if base:
        return base
    if read_update(state, tx.round, tx.signer) is not None:
        return f"trainer {_short(tx.signer)} already submitted an update in round {tx.round}"
    return _blob_problem(params, tx.blob_hash, state)


def _blob_problem(params: ChainParams, digest: bytes, state: CommittedState) -> str | None:
    """The update's tensors: present, within size, the model's shapes and dtypes, finite,
    and not too large a step."""
    blob = state.blob(digest)
    if blob is None:
        return f"update blob {digest.hex()} is missing: send it with the transaction"
    try:
        delta = decode_weights(blob, max_bytes=params.config.max_blob_bytes,
                               max_tensors=len(params.spec), expected=params.spec)
    except WeightsError as exc:
        return f"update blob: {exc}"
    if not all_finite(delta):
        return "update blob has NaN or infinite values"
    norm = l2_norm(delta)
    if not norm <= params.config.max_update_norm:
        return (f"update L2 norm {norm:.6g} exceeds max_update_norm "
                f"{params.config.max_update_norm:g}")
    return None


def _vote_problem(params: ChainParams, tx: Vote, state: CommittedState,
                  meta: Meta) -> str | None:
    if tx.signer not in params.validators:
        return f"{_short(tx.signer)} is not a validator: only validators vote"
    if tx.round != meta.round:
        return f"vote is for round {tx.round}, but round {meta.round} is open"
    update = read_update(state, tx.round, tx.trainer)
    if update is None:
        return f"no update from trainer {_short(tx.trainer)} in round {tx.round}"
    if update.blob != tx.blob_hash:
        return (f"vote is for blob {tx.blob_hash.hex()}, but the update's blob is "
                f"{update.blob.hex()}")
    if update.status != PENDING:
        return f"the update is already {update.status}"
    if tx.signer in update.votes:
        return f"validator {_short(tx.signer)} already voted on this update"
    return None


def _vote(params: ChainParams, tx: Vote, state: BlockState, height: int,
          time_ms: int) -> None:
    """Count the vote; an update decided by it moves its trainer's trust, and under a
    scheme that merges on accept (BAP) an accepted one is merged at once."""
    update = read_update(state, tx.round, tx.trainer)
    assert update is not None, "checked by _vote_problem"
    update = replace(update, votes={**update.votes, tx.signer: (tx.accept, tx.score_milli)})
    accepts, rejects = update.tally()
    if accepts >= params.accept_quorum:
        update = replace(update, status=ACCEPTED)
    elif rejects >= params.reject_quorum:
        update = replace(update, status=REJECTED)
    write_update(state, tx.round, tx.trainer, update)
    if update.status == PENDING:
        return
    _judge(params.config, state, tx.trainer, update.status == ACCEPTED)
    if update.status == ACCEPTED and params.config.scheme.merges_on_accept:
        merge_now(params.config, params.spec, state, tx.trainer, update, height, time_ms)


def _judge(config: FLConfig, state: BlockState, trainer: bytes, accepted: bool) -> None:
    record = read_trainer(state, trainer)
    assert record is not None, "only registered trainers have updates"
    if accepted:
        record = replace(record, trust_micro=rewarded(record.trust_micro, config.trust_reward),
                         accepted=record.accepted + 1)
    else:
        trust = penalised(record.trust_micro, config.trust_penalty)
        record = replace(record, trust_micro=trust, rejected=record.rejected + 1,
                         excluded=record.excluded or is_excluded(trust, config.trust_threshold))
    write_trainer(state, trainer, record)


def _close_problem(params: ChainParams, tx: Close, meta: Meta,
                   time_ms: int | None) -> str | None:
    if tx.signer not in params.validators:
        return f"{_short(tx.signer)} is not a validator: only validators close rounds"
    if tx.round != meta.round:
        return f"round {tx.round} is not open (round {meta.round} is)"
    if tx.deadline_ms != meta.deadline_ms:
        return (f"close of round {tx.round} names deadline {tx.deadline_ms} ms, but the "
                f"round's deadline is {meta.deadline_ms} ms")
    if time_ms is not None and time_ms < meta.deadline_ms:
        return (f"round {tx.round} is before its deadline: block time {time_ms} ms, "
                f"deadline {meta.deadline_ms} ms")
    return None
