"""Learners for tasks other than 10-class images: the zoo's models for scikit-learn's
bundled datasets learn, report their task's own metrics, and are checked against the
dataset they are used on."""

from __future__ import annotations

import numpy as np
import pytest

from flobc.ml.data import load_dataset, split
from flobc.ml.learner import learner_for
from flobc.ml.objectives import OBJECTIVES


@pytest.mark.parametrize(("dataset", "model", "metric", "better"), [
    ("digits", "digits_mlp", "accuracy", 0.85),
    ("breast_cancer", "breast_cancer_mlp", "accuracy", 0.9),
    ("diabetes", "diabetes_mlp", "rmse", 0.85),
])
def test_a_zoo_model_learns_its_dataset_and_reports_its_metrics(
        dataset: str, model: str, metric: str, better: float) -> None:
    data = load_dataset(dataset)
    parts = split(data, seed=0)
    learner = learner_for(model, 0, task=data.spec)
    before = learner.evaluate(parts.test.x, parts.test.y)
    assert set(before) == {"loss", *OBJECTIVES.get(data.task).metrics}
    trained = learner.fit(parts.train.x, parts.train.y, 20, 16, seed=0)
    assert set(trained) == {"loss", "samples", *OBJECTIVES.get(data.task).metrics} - {"rmse"}
    after = learner.evaluate(parts.test.x, parts.test.y)
    assert after["loss"] < before["loss"]
    if metric == "accuracy":
        assert after["accuracy"] >= better
    else:  # standardised targets: guessing the mean gives an RMSE of about 1
        assert after["rmse"] <= better and after["rmse"] == pytest.approx(
            np.sqrt(after["loss"]))


def test_the_numpy_loss_is_the_loss_the_model_is_trained_on() -> None:
    data = load_dataset("diabetes")
    learner = learner_for("diabetes_mlp", 3, task=data.spec)
    ours = learner.evaluate(data.x, data.y)
    keras_loss, keras_mae = learner.model.evaluate(data.x, data.y, verbose=0)
    assert ours["loss"] == pytest.approx(keras_loss, rel=1e-4)
    assert ours["mae"] == pytest.approx(keras_mae, rel=1e-4)


def test_multilabel_scores_are_binary_cross_entropy_and_label_accuracy() -> None:
    objective = OBJECTIVES.get("multilabel")()
    outputs = np.array([[0.9, 0.2], [0.4, 0.6]])
    targets = np.array([[1.0, 0.0], [1.0, 1.0]])
    score = objective.score([(outputs, targets)])
    expected = -np.mean([np.log(0.9), np.log(0.8), np.log(0.4), np.log(0.6)])
    assert score["loss"] == pytest.approx(expected)
    assert score["accuracy"] == pytest.approx(0.75)


@pytest.mark.parametrize(("dataset", "expected"), [
    ("digits", {"loss": np.log(10), "accuracy": 0.1}),
    ("breast_cancer", {"loss": np.log(2), "accuracy": 0.5}),
])
def test_the_chance_level_of_a_classification_task_is_a_uniform_guess(
        dataset: str, expected: dict[str, float]) -> None:
    data = load_dataset(dataset)
    assert OBJECTIVES.get(data.task)().chance(data.y, data.classes) == pytest.approx(expected)


def test_the_chance_level_of_a_regression_task_is_its_mean() -> None:
    """What always predicting the targets' mean scores: the MSE is their variance."""
    y = load_dataset("diabetes").y
    chance = OBJECTIVES.get("regression")().chance(y, 0)
    assert chance["loss"] == pytest.approx(np.var(y.astype(np.float64)))
    assert chance["rmse"] == pytest.approx(np.std(y.astype(np.float64)))
    assert chance["mae"] == pytest.approx(np.abs(y - y.astype(np.float64).mean()).mean())
