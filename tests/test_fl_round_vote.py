"""End to end: a round-wise vote keeps a label-skewed federation learning.

``flobc cluster up`` as a user types it, with 4 validators and 4 trainers that each
hold two label shards (``--partition shards:2``): judged alone against the validators'
balanced shards (``chance_bound``, the default) every honest update is rejected and the
model never leaves version 0; with ``--validation influence`` each validator waits for
the round's updates, judges each one's leave-one-out influence on their aggregate, and
the honest updates are accepted.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.test_fl_cluster import cluster_up

pytestmark = pytest.mark.slow

ROUNDS = 3
TRAINERS = 10


def test_label_shard_trainers_are_accepted_under_the_influence_rule(tmp_path: Path
                                                                    ) -> None:
    rows, net = cluster_up(tmp_path, "--trainers", str(TRAINERS), "--partition", "shards:2",
                           "--validation", "influence", rounds=ROUNDS)
    genesis = tomllib.loads((net / "genesis.toml").read_text())
    assert genesis["app"]["validation"]["name"] == "influence"
    assert [r["round"] for r in rows[:ROUNDS]] == list(range(1, ROUNDS + 1))
    statuses = [s for r in rows[:ROUNDS] for s in r["updates"].values()]
    assert len(statuses) == TRAINERS * ROUNDS and set(statuses) == {"accepted"}, rows
    assert all(r["excluded"] == [] for r in rows)
    assert len({r["model_hash"] for r in rows}) == len(rows), "every round moves the model"
    assert rows[-1]["accuracy"] > rows[0]["accuracy"], [r["accuracy"] for r in rows]


def test_the_same_federation_under_chance_bound_never_leaves_version_0(tmp_path: Path
                                                                       ) -> None:
    """The default rule on the same run: why the round-wise rule exists."""
    rows, _ = cluster_up(tmp_path, "--trainers", str(TRAINERS), "--partition", "shards:2",
                         rounds=ROUNDS)
    statuses = [s for r in rows[:ROUNDS] for s in r["updates"].values()]
    assert statuses and set(statuses) == {"rejected"}, rows
    assert len({r["model_hash"] for r in rows}) == 1, "every version is version 0's weights"
