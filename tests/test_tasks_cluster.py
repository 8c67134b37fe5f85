"""End to end: ``flobc cluster up`` on tasks other than MNIST (4 validators, 4
trainers, votes on): scikit-learn's digits with a Keras classifier and its diabetes
regression with a Keras model and MSE loss. The history rows carry the task's own
test metrics; version 0's are computed here from the genesis model."""

from __future__ import annotations

from pathlib import Path

import pytest

from flobc.config import Genesis
from flobc.ml.data import load_dataset, split
from flobc.ml.learner import learner_for
from flobc.protocol.settings import FLConfig
from tests.test_fl_cluster import cluster_up

pytestmark = pytest.mark.slow

ROUNDS = 4


def version_0_scores(net: Path) -> dict[str, float]:
    fl = FLConfig.from_genesis(Genesis.load(net / "genesis.toml"))
    data = load_dataset(fl.dataset)
    test = split(data, seed=fl.seed).test
    return learner_for(fl.model, fl.seed, task=data.spec).evaluate(test.x, test.y)


@pytest.mark.parametrize(("dataset", "model", "metric", "better_by"), [
    ("digits", "digits_mlp", "accuracy", 0.2),
    ("diabetes", "diabetes_mlp", "rmse", -0.05),
])
def test_a_task_trains_through_the_cluster_with_its_own_metric(
        tmp_path: Path, dataset: str, model: str, metric: str, better_by: float) -> None:
    rows, net = cluster_up(tmp_path, "--dataset", dataset, "--model", model,
                           "--round-deadline-ms", "20000", rounds=ROUNDS)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["accepted"] == 4 and r["rejected"] == 0 for r in rows), rows
    assert len({r["model_hash"] for r in rows}) == ROUNDS, "every round is a new model"
    assert metric in rows[-1] and "loss" in rows[-1]
    start = version_0_scores(net)[metric]
    if better_by > 0:
        assert rows[-1][metric] >= start + better_by, (start, [r[metric] for r in rows])
    else:
        assert rows[-1][metric] <= start + better_by, (start, [r[metric] for r in rows])
