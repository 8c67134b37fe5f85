"""End to end: a round-wise vote keeps a label-skewed federation learning, and still
stops attackers.

``flobc cluster up`` as a user types it, with 4 validators and 10 trainers that each
hold two label shards (``--partition shards:2``). Judged alone against the validators'
balanced shards (``chance_bound``) every honest update is rejected and the model never
leaves version 0. Under ``influence``, the default, each validator waits for the round's
updates and judges each one's influence on their aggregate against a zero update in its
place: over 20 rounds every honest update is accepted and the model learns; with three
attackers of different kinds among the ten, their updates are rejected, no honest
trainer is excluded and the seven honest trainers keep learning.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from flobc.config import load_key
from tests.test_fl_cluster import cluster_up, final_accuracy

pytestmark = pytest.mark.slow

ROUNDS = 20
TRAINERS = 10
SKEWED = ("--trainers", str(TRAINERS), "--partition", "shards:2")  # the default vote
ATTACKERS = {0: "sign_flip", 1: "scaling", 3: "noise"}
"""Trainers whose labels (3 and 7, 1 and 9, 4 and 6 of this split) other trainers also
hold, so that every digit is still learnt once they are voted out."""
TARGET_ACCURACY = 0.80
ATTACK_COST = 0.08
"""How far below the clean run's final accuracy the attacked run may end. Measured: 6.1
points (80.9% against 87.0%), all of it the attackers' data: every attacker update is
rejected from round 1, and six digits are left with one trainer's shard instead of
two, which the 20 rounds do not make up for."""


def keys(net: Path) -> list[str]:
    return [load_key(net / f"trainer-{i}" / "trainer_key.json").public_key.hex()
            for i in range(TRAINERS)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    return cluster_up(tmp_path_factory.mktemp("clean"), *SKEWED, rounds=ROUNDS)


def test_label_shard_trainers_are_accepted_and_learn_under_the_influence_rule(
        clean: tuple[list[dict[str, Any]], Path]) -> None:
    rows, net = clean
    genesis = tomllib.loads((net / "genesis.toml").read_text())
    assert genesis["app"]["validation"]["name"] == "influence"
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    statuses = [s for r in rows for s in r["updates"].values()]
    assert len(statuses) == TRAINERS * ROUNDS and set(statuses) == {"accepted"}, rows
    assert all(r["excluded"] == [] for r in rows)
    assert final_accuracy(rows) >= TARGET_ACCURACY, [r["accuracy"] for r in rows]


def test_three_attackers_of_different_kinds_are_rejected_and_cost_little(
        tmp_path: Path, clean: tuple[list[dict[str, Any]], Path]) -> None:
    byzantine = [arg for i, name in ATTACKERS.items() for arg in ("--byzantine", f"{i}:{name}")]
    rows, net = cluster_up(tmp_path, *SKEWED, *byzantine, rounds=ROUNDS)
    trainers = keys(net)
    bad = {trainers[i] for i in ATTACKERS}
    for r in rows:
        assert all(s == "rejected" for k, s in r["updates"].items() if k in bad), r
        assert not set(r["excluded"]) - bad, f"an honest trainer excluded: {r}"
    assert bad <= set(rows[-1]["excluded"])
    honest = [s for r in rows for k, s in r["updates"].items() if k not in bad]
    assert honest.count("accepted") >= 0.95 * len(honest), rows
    clean_accuracy = final_accuracy(clean[0])
    assert final_accuracy(rows) >= clean_accuracy - ATTACK_COST, (
        [r["accuracy"] for r in rows], clean_accuracy)


def test_the_same_federation_under_chance_bound_never_leaves_version_0(tmp_path: Path
                                                                       ) -> None:
    """The other rule on the same run: why the round-wise rule exists."""
    rows, _ = cluster_up(tmp_path, "--trainers", str(TRAINERS), "--partition", "shards:2",
                         "--validation", "chance_bound", rounds=3)
    statuses = [s for r in rows for s in r["updates"].values()]
    assert statuses and set(statuses) == {"rejected"}, rows
    assert len({r["model_hash"] for r in rows}) == 1, "every version is version 0's weights"
