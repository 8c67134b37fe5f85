"""End to end: ``flobc cluster up`` on tasks other than MNIST (4 validators, 4
trainers, votes on): scikit-learn's digits with a Keras classifier, its diabetes
regression with a Keras model and MSE loss, and its breast cancer table with a PyTorch
module (examples/pytorch). The history rows carry the task's own test metrics; version
0's are computed here from the genesis model. The PyTorch task's last version is then
pulled with ``flobc model pull`` from its restarted validators, loaded back into the
builder's own module and scored as the validators' ``/fl/evaluations`` score it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from flobc.config import Genesis
from flobc.launch.localnet import LocalNet
from flobc.ml.data import load_dataset, split
from flobc.ml.learner import learner_for
from flobc.protocol.settings import FLConfig
from tests.test_fl_cluster import cluster_up

pytestmark = pytest.mark.slow

ROUNDS = 4
TORCH_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pytorch"
TORCH_BUILDER = "breast_cancer_torch:build"
EVALUATED_TIMEOUT_S = 300.0
POLL_S = 0.5


def version_0_scores(net: Path) -> dict[str, float]:
    fl = FLConfig.from_genesis(Genesis.load(net / "genesis.toml"))
    data = load_dataset(fl.dataset)
    test = split(data, seed=fl.seed).test
    return learner_for(fl.model, fl.seed, task=data.spec).evaluate(test.x, test.y)


def check_learned(rows: list[dict[str, Any]], net: Path, metric: str,
                  better_by: float) -> None:
    """Every honest update accepted, a new model each round (``cluster_up`` checks that
    the validators agree on it), and the last one better than version 0 by
    ``better_by`` (negative: lower is better)."""
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["accepted"] == 4 and r["rejected"] == 0 for r in rows), rows
    assert len({r["model_hash"] for r in rows}) == ROUNDS, "every round is a new model"
    assert metric in rows[-1] and "loss" in rows[-1]
    start = version_0_scores(net)[metric]
    if better_by > 0:
        assert rows[-1][metric] >= start + better_by, (start, [r[metric] for r in rows])
    else:
        assert rows[-1][metric] <= start + better_by, (start, [r[metric] for r in rows])


@pytest.mark.parametrize(("dataset", "model", "metric", "better_by"), [
    ("digits", "digits_mlp", "accuracy", 0.2),
    ("diabetes", "diabetes_mlp", "rmse", -0.05),
])
def test_a_task_trains_through_the_cluster_with_its_own_metric(
        tmp_path: Path, dataset: str, model: str, metric: str, better_by: float) -> None:
    rows, net = cluster_up(tmp_path, "--dataset", dataset, "--model", model,
                           "--round-deadline-ms", "20000", rounds=ROUNDS)
    check_learned(rows, net, metric, better_by)


def evaluation_of(url: str, version: int) -> dict[str, Any]:
    """The validator's own test-split scores of ``version``, once it has them."""
    deadline = time.monotonic() + EVALUATED_TIMEOUT_S
    while True:
        served = httpx.get(f"{url}/fl/evaluations", timeout=10).json()
        assert served["split"] == "test"
        found = [e for e in served["versions"] if e["version"] == version]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{url} has not scored version {version}: {served}"
        time.sleep(POLL_S)


def test_a_pytorch_model_trains_through_the_cluster_and_pulls_back_into_its_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every node, the cluster's monitor and this test import the builder from the example.
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(TORCH_EXAMPLE) + (f":{path}" if path else ""))
    monkeypatch.syspath_prepend(str(TORCH_EXAMPLE))
    rows, net = cluster_up(tmp_path, "--dataset", "breast_cancer", "--model", TORCH_BUILDER,
                           rounds=ROUNDS)
    check_learned(rows, net, "accuracy", 0.05)

    import torch

    last = rows[-1]["version"]
    out = tmp_path / "model.pt"
    with LocalNet.open(net) as validators:  # the same chain, without trainers
        validators.start_all()
        pulled = subprocess.run(
            [sys.executable, "-m", "flobc", "model", "pull", "--validator", validators.urls[1],
             "--genesis", str(net / "genesis.toml"), "--version", str(last), "--out",
             str(out)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert pulled.returncode == 0, pulled.stderr
        assert rows[-1]["model_hash"] in pulled.stdout
        served = [evaluation_of(url, last) for url in validators.urls]

    saved = torch.load(out, weights_only=True)
    assert saved["builder"] == TORCH_BUILDER
    module_name, _, function = saved["builder"].partition(":")
    module = getattr(importlib.import_module(module_name), function)(0)
    module.load_state_dict(saved["state_dict"])
    module.eval()
    fl = FLConfig.from_genesis(Genesis.load(net / "genesis.toml"))
    test = split(load_dataset(fl.dataset), seed=fl.seed).test
    with torch.no_grad():
        probs = torch.softmax(module(torch.from_numpy(test.x)), dim=1).numpy()
    accuracy = float(np.mean(probs.argmax(axis=1) == test.y))
    loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(test.y)), test.y], 1e-7))))
    for scores in served:
        assert scores["accuracy"] == pytest.approx(accuracy, abs=1e-6), (scores, accuracy)
        assert scores["loss"] == pytest.approx(loss, rel=1e-4), (scores, loss)
    assert rows[-1]["accuracy"] == pytest.approx(accuracy, abs=1e-4)
