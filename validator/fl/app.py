"""The federated-learning application that consensus runs (docs/fl-protocol.md).

Validators replace the central server: this state machine admits trainers, records
their updates after the cheap checks, counts the validators' votes, moves trust, and
closes rounds into new model versions, all deterministically from the blocks alone.
It never trains or evaluates (no TensorFlow here): votes are computed off-chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flobc.config import ConfigError, Genesis
from flobc.consensus.application import BlockState, CommittedState
from flobc.crypto import sha256
from flobc.ml.weights import Spec, WeightsError, decode_weights, spec
from flobc.protocol.settings import FLConfig
from flobc.protocol.state import Meta, read_meta
from flobc.protocol.txs import Update, decode_tx
from flobc.validator.fl import queries, rules
from flobc.validator.fl.rounds import settle, start_chain


class FLApp:
    """Implements consensus.application.Application for federated learning."""

    def __init__(self, chain_id: str, config: FLConfig, validator_keys: tuple[bytes, ...],
                 model_spec: Spec) -> None:
        if not validator_keys or len(set(validator_keys)) != len(validator_keys):
            raise ValueError("validator_keys must be a non-empty list of distinct keys")
        if not model_spec:
            raise ValueError("model_spec must describe at least one tensor")
        self.params = rules.ChainParams(
            chain_id, config, frozenset(validator_keys),
            [(str(dtype), tuple(int(d) for d in shape)) for dtype, shape in model_spec])

    @classmethod
    def from_genesis(cls, genesis: Genesis, model_v0: bytes) -> FLApp:
        """The application for ``genesis``, whose version-0 weights are ``model_v0``
        (the contents of ``genesis-model.bin``); the model's tensor spec comes from them."""
        config = FLConfig.from_app(genesis.app)
        if sha256(model_v0) != config.model_v0_hash:
            raise ConfigError("the genesis model does not match app.model_v0_hash")
        if len(model_v0) > config.max_blob_bytes:
            raise ConfigError(f"the model is {len(model_v0)} bytes, over app.max_blob_bytes "
                              f"{config.max_blob_bytes}: no update could ever be accepted")
        try:
            weights = decode_weights(model_v0, max_bytes=len(model_v0))
        except WeightsError as exc:
            raise ConfigError(f"the genesis model is not valid weights: {exc}") from exc
        return cls(genesis.chain_id, config, genesis.public_keys, spec(weights))

    @property
    def config(self) -> FLConfig:
        return self.params.config

    @property
    def max_blob_bytes(self) -> int:
        return self.params.config.max_blob_bytes

    def required_blobs(self, tx: bytes) -> list[bytes]:
        """An update needs its delta blob; nothing else needs one."""
        parsed = decode_tx(tx, self.params.chain_id)
        return [parsed.blob_hash] if isinstance(parsed, Update) else []

    def check_tx(self, tx: bytes, state: CommittedState) -> str | None:
        """Every check that execution makes, against committed state (block time is not
        known yet, so a close is only checked for its signer and round)."""
        parsed = decode_tx(tx, self.params.chain_id)
        if isinstance(parsed, str):
            return parsed
        meta = read_meta(state) or Meta(1, 0, 0, 0, ())
        return rules.problem(self.params, parsed, state, meta, None)

    def execute_block(self, height: int, time_ms: int, txs: Sequence[bytes],
                      state: BlockState) -> list[str | None]:
        """Apply ``txs`` in order, then close the round if its scheme says so. The first
        block also writes version 0 and opens round 1."""
        if read_meta(state) is None:
            start_chain(self.config, state, height, time_ms)
        results = [self._execute(tx, state, height, time_ms) for tx in txs]
        settle(self.config, self.params.spec, state, height, time_ms)
        return results

    def _execute(self, tx: bytes, state: BlockState, height: int, time_ms: int) -> str | None:
        parsed = decode_tx(tx, self.params.chain_id)
        if isinstance(parsed, str):
            return parsed
        meta = read_meta(state)
        assert meta is not None, "start_chain wrote it"
        problem = rules.problem(self.params, parsed, state, meta, time_ms)
        if problem is None:
            rules.apply(self.params, parsed, state, meta, height, time_ms)
        return problem

    def query(self, path: str, params: dict[str, str], state: CommittedState) -> Any:
        """See ``queries.answer``: raises QueryError (NotFound when absent)."""
        return queries.answer(path, params, state)
