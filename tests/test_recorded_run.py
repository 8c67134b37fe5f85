"""Recorded chain runs: the same genesis and the same blocks give the same state.

``data/recorded_fl_runs.msgpack`` holds seven learning chains (every aggregator under
BSP, SSP with stale bases and a deadline extension, BAP with open admission), each a
genesis, its version-0 weights and a sequence of blocks of signed transactions with
their blobs, together with what the chain computed when they were recorded: the state
root after every block, every model version's hash, which transactions were skipped,
the open round and version, and whether a checkpoint was requested. Replaying them
through today's application must give exactly that, so a change to the code that
changes what the chain computes cannot pass unnoticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flobc import codec
from flobc.config import Genesis, ValidatorInfo
from flobc.consensus.application import BlockState
from flobc.crypto import sha256
from flobc.protocol.state import read_meta, read_model
from flobc.storage.ledger import Ledger
from flobc.validator.fl.app import FLApp

RECORDED = Path(__file__).parent / "data" / "recorded_fl_runs.msgpack"


def _scenarios() -> list[dict[str, Any]]:
    data = codec.unpack(RECORDED.read_bytes(), RECORDED.stat().st_size)
    assert data["format"] == 1
    return data["scenarios"]


SCENARIOS = _scenarios()


def _model_hashes(ledger: Ledger) -> list[bytes]:
    hashes, version = [], 0
    while (record := read_model(ledger.state, version)) is not None:
        hashes.append(record.hash)
        version += 1
    return hashes


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_replaying_recorded_blocks_gives_the_recorded_state(scenario: dict[str, Any],
                                                            tmp_path: Path) -> None:
    genesis = Genesis(scenario["chain_id"], 0,
                      tuple(ValidatorInfo(f"v{i}", key)
                            for i, key in enumerate(scenario["validators"])),
                      app=scenario["app"])
    with Ledger(tmp_path / "ledger") as ledger:
        ledger.put_blob(scenario["model_v0"])
        app = FLApp.from_genesis(genesis, scenario["model_v0"])
        for block, expected in zip(scenario["blocks"], scenario["expected"], strict=True):
            for blob in block["blobs"]:
                ledger.put_blob(blob)
            height, time_ms, txs = block["height"], block["time_ms"], block["txs"]
            assert height == ledger.height + 1
            overlay = ledger.state.overlay()
            state = BlockState(ledger, overlay)
            results = app.execute_block(height, time_ms, txs, state)
            raw = codec.pack([height, txs])
            ledger.commit_block(height, raw, b"cert", sha256(raw), time_ms,
                                [sha256(tx) for tx in txs], [codec.pack(r) for r in results],
                                overlay, state.new_blobs)
            meta = read_meta(ledger.state)
            assert meta is not None
            got = {"root": ledger.state.root, "models": _model_hashes(ledger),
                   "skipped": [r is not None for r in results], "round": meta.round,
                   "version": meta.version, "checkpoint": state.checkpoint_requested}
            assert got == expected, f"block {height} of {scenario['name']}"
