"""One cell's chain: a LevelDB ledger on disk and the learning application executing
blocks of signed transactions, as the replica host executes them, without consensus.

Aggregation, trust, exclusion, the sync scheme's rules and round closing are therefore
the chain's own code, and every model version this produces is the one a real
validator would commit from the same blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flobc import codec
from flobc.config import Genesis, ValidatorInfo
from flobc.consensus.application import BlockState, CommittedState
from flobc.crypto import PrivateKey, sha256
from flobc.ml.weights import encode_weights
from flobc.protocol.genesis import GENESIS_MODEL
from flobc.protocol.state import Meta, TrainerRecord, UpdateRecord, read_meta, read_model
from flobc.protocol.state import read_trainer as _read_trainer
from flobc.protocol.state import read_update as _read_update
from flobc.protocol.txs import make_close
from flobc.storage.ledger import Ledger
from flobc.validator.fl.app import FLApp
from flobc.validator.fl.rounds import model_weights

CHAIN_ID = "flobc-experiment"
LEDGER_DIR = "data"
GENESIS_TIME_MS = 1_700_000_000_000
CERTIFICATE = b"in-process"
"""Blocks are not certified by consensus here: there is one executor."""


def derived_key(role: str, index: int, seed: int) -> PrivateKey:
    """A reproducible key, so that every run of a grid signs the same transactions."""
    return PrivateKey(sha256(f"flobc-experiment/{role}/{seed}/{index}".encode()))


class Chain:
    """The application of ``app`` (a genesis ``[app]``) over a ledger in ``home``, laid
    out as a validator's home: ``genesis.toml``, ``genesis-model.bin`` and the ledger in
    ``data/``, so that a kept cell can be inspected or replayed like a node's."""

    def __init__(self, home: Path, app: dict[str, Any], model_v0: Sequence[Any],
                 validators: Sequence[PrivateKey]) -> None:
        blob = encode_weights(list(model_v0))
        self.validators = list(validators)
        genesis = Genesis(CHAIN_ID, GENESIS_TIME_MS,
                          tuple(ValidatorInfo(f"validator-{i}", k.public_key)
                                for i, k in enumerate(self.validators)),
                          app={"name": "fl", **app, "model_v0_hash": sha256(blob).hex()})
        self.app = FLApp.from_genesis(genesis, blob)
        home.mkdir(parents=True, exist_ok=True)
        (home / "genesis.toml").write_text(genesis.to_toml())
        (home / GENESIS_MODEL).write_bytes(blob)
        self.ledger = Ledger(home / LEDGER_DIR)
        self.ledger.put_blob(blob)  # a node stores genesis-model.bin before it starts
        self.time_ms = GENESIS_TIME_MS

    def close(self) -> None:
        self.ledger.close()

    @property
    def spec(self) -> Any:
        return self.app.params.spec

    def block(self, txs: Sequence[bytes], blobs: Sequence[bytes] = (),
              at_ms: int | None = None) -> list[str | None]:
        """Execute and commit the next block (its blobs arrive first, as with their
        transactions); each transaction's result is None or why it was refused."""
        for blob in blobs:
            self.ledger.put_blob(blob)
        self.time_ms = max(self.time_ms + 1, at_ms or 0)
        height = self.ledger.height + 1
        overlay = self.ledger.state.overlay()
        state = BlockState(self.ledger, overlay)
        results = self.app.execute_block(height, self.time_ms, list(txs), state)
        raw = codec.pack([height, list(txs)])
        self.ledger.commit_block(height, raw, CERTIFICATE, sha256(raw), self.time_ms,
                                 [sha256(tx) for tx in txs], [codec.pack(r) for r in results],
                                 overlay, state.new_blobs)
        return results

    def close_round(self) -> None:
        """Close the open round at its deadline, as a validator's voter does when the
        round waits for updates that will not come; SSP may extend it once first."""
        meta = self.meta
        while self.meta.round == meta.round:
            deadline = self.meta.deadline_ms
            self.block([make_close(self.validators[0], CHAIN_ID, meta.round, deadline)],
                       at_ms=deadline)

    @property
    def meta(self) -> Meta:
        meta = read_meta(self.ledger.state)
        assert meta is not None, "the first block writes it"
        return meta

    def weights(self, version: int) -> list[Any]:
        return model_weights(CommittedState(self.ledger), version, self.spec)

    def model_hash(self, version: int) -> bytes:
        record = read_model(self.ledger.state, version)
        assert record is not None, f"version {version} exists"
        return record.hash

    def trainer(self, key: bytes) -> TrainerRecord | None:
        return _read_trainer(self.ledger.state, key)

    def update(self, round_: int, key: bytes) -> UpdateRecord | None:
        return _read_update(self.ledger.state, round_, key)
