"""PyTorch models behind the same Learner: built from a builder that returns an
``nn.Module``, checked against the dataset's task, trained and scored by the task's
objective, their weights plain numpy arrays, and saved as a state_dict file that
``torch.load(weights_only=True)`` reads back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from flobc.ml.data import load_dataset, split
from flobc.ml.learner import learner_for
from flobc.ml.models import initial_weights
from flobc.ml.torch_learner import TorchLearner

BUILDERS = '''
import torch


def tabular(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 2))


def regressor(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
'''


@pytest.fixture(scope="module", autouse=True)
def builders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder of the builders' module, put on this process's path."""
    folder = tmp_path_factory.mktemp("torch_builders")
    (folder / "flobc_torch_builders.py").write_text(BUILDERS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("flobc_torch_builders", None)


@pytest.mark.parametrize(("dataset", "builder", "metric"), [
    ("breast_cancer", "flobc_torch_builders:tabular", "accuracy"),
    ("diabetes", "flobc_torch_builders:regressor", "rmse"),
])
def test_a_torch_model_learns_and_reports_its_tasks_metrics(dataset: str, builder: str,
                                                            metric: str) -> None:
    data = load_dataset(dataset)
    parts = split(data, seed=0)
    learner = learner_for(builder, 0, task=data.spec)
    assert isinstance(learner, TorchLearner)
    before = learner.evaluate(parts.test.x, parts.test.y)
    trained = learner.fit(parts.train.x, parts.train.y, 10, 16, seed=0)
    assert trained["samples"] == len(parts.train) and np.isfinite(trained["loss"])
    after = learner.evaluate(parts.test.x, parts.test.y)
    assert after["loss"] < before["loss"]
    if metric == "accuracy":
        assert after["accuracy"] >= 0.9
    else:
        assert after["rmse"] <= 0.85


def test_weights_are_numpy_arrays_that_round_trip_and_are_seeded() -> None:
    task = load_dataset("breast_cancer").spec
    first = initial_weights("flobc_torch_builders:tabular", 3, task)
    assert [w.dtype for w in first] == [np.float32] * 4
    assert [w.shape for w in first] == [(16, 30), (16,), (2, 16), (2,)]
    again = initial_weights("flobc_torch_builders:tabular", 3, task)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    learner = learner_for("flobc_torch_builders:tabular", 4, task=task)
    learner.set_weights(first)
    assert all(np.array_equal(a, b) for a, b in zip(learner.get_weights(), first,
                                                   strict=True))


def test_the_saved_file_loads_back_into_the_builders_module(tmp_path: Path) -> None:
    data = load_dataset("breast_cancer")
    learner = learner_for("flobc_torch_builders:tabular", 0, task=data.spec)
    learner.fit(data.x, data.y, 2, 32, seed=1)
    path = tmp_path / f"model{learner.file_suffix}"
    learner.save(str(path))
    saved = torch.load(path, weights_only=True)
    assert saved["builder"] == "flobc_torch_builders:tabular"
    import flobc_torch_builders

    module = flobc_torch_builders.tabular(0)
    module.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        logits = module(torch.from_numpy(data.x[:50])).numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.log(probs[np.arange(50), data.y[:50]]).mean()
    assert learner.evaluate(data.x[:50], data.y[:50])["loss"] == pytest.approx(expected,
                                                                             rel=1e-5)


WORKER = '''
import sys

from flobc.ml.data import load_dataset, split
from flobc.ml.learner import learner_for

data = load_dataset("breast_cancer")
test = split(data, seed=0).test
learner_for(sys.argv[1], 0, task=data.spec, single_thread=True).evaluate(test.x, test.y)
print(sorted({"torch", "tensorflow"} & set(sys.modules)))
'''


@pytest.mark.parametrize(("builder", "frameworks"), [
    ("flobc_torch_builders:tabular", "['torch']"),
    ("breast_cancer_mlp", "['tensorflow']"),
])
def test_a_single_thread_worker_imports_only_its_models_framework(
        builders: Path, builder: str, frameworks: str) -> None:
    """An evaluator worker of a PyTorch model never loads TensorFlow (seconds of start-up
    in each of a cluster's workers), nor one of a Keras model PyTorch."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(builders), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", WORKER, builder],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == frameworks
