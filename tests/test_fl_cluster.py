"""End to end: ``flobc cluster up`` trains MNIST with 4 validators and 4 trainers.

Each run is the real command as a user types it, with real processes on loopback; the
rows of ``--history`` are what is checked. Two 20-round runs (about 75 s each here):
one clean, one where trainer 3 sends sign-flipped, scaled updates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flobc.config import load_key

pytestmark = pytest.mark.slow

ROUNDS = 20
TARGET_ACCURACY = 0.94
TRUST_THRESHOLD = 0.1
"""The genesis default ``trust_threshold`` (100,000 millionths)."""


def cluster_up(tmp: Path, *extra: str, rounds: int = ROUNDS
               ) -> tuple[list[dict[str, Any]], Path]:
    """Run ``flobc cluster up`` for ``rounds`` rounds; its history rows and testnet folder."""
    history, keep = tmp / "history.json", tmp / "net"
    command = [sys.executable, "-m", "flobc", "cluster", "up", "--rounds", str(rounds),
               "--history", str(history), "--keep", str(keep), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"cluster up failed:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    assert "validators hold model" in done.stdout, done.stdout[-2000:]
    return json.loads(history.read_text()), keep


def final_accuracy(rows: list[dict[str, Any]]) -> float:
    """Mean test accuracy of the last three rounds (a 500-image test split is noisy)."""
    return sum(r["accuracy"] for r in rows[-3:]) / 3


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    rows, _ = cluster_up(tmp_path_factory.mktemp("clean"))
    return rows


def test_four_iid_trainers_reach_94_percent_within_20_rounds(clean: list[dict]) -> None:
    assert [r["round"] for r in clean] == list(range(1, ROUNDS + 1))
    best = max(r["accuracy"] for r in clean)
    assert best >= TARGET_ACCURACY, [r["accuracy"] for r in clean]
    assert all(len(r["model_hash"]) == 64 for r in clean)
    assert len({r["model_hash"] for r in clean}) == ROUNDS, "every round is a new model"


def test_a_sign_flipping_trainer_is_voted_out(tmp_path: Path, clean: list[dict]) -> None:
    rows, net = cluster_up(tmp_path, "--byzantine", "3:sign_flip")
    bad = load_key(net / "trainer-3" / "trainer_key.json").public_key.hex()
    assert rows[0]["updates"].get(bad) == "rejected", "rejected by votes from round 1"
    excluded_at = next(r["round"] for r in rows if bad in r["excluded"])
    assert excluded_at <= 3
    assert rows[excluded_at - 1]["trust"][bad] < TRUST_THRESHOLD
    assert all(bad not in r["updates"] or r["updates"][bad] == "rejected" for r in rows)
    honest = [k for k in rows[-1]["trust"] if k != bad]
    assert all(r["updates"].get(k) == "accepted" for r in rows[:3] for k in honest)
    assert abs(final_accuracy(rows) - final_accuracy(clean)) <= 0.01, (
        [r["accuracy"] for r in rows], [r["accuracy"] for r in clean])
