"""How a model of each task kind is trained and scored: its loss and its metrics.

One class per task kind in ``OBJECTIVES``. ``keras_loss`` and ``keras_metrics`` are
what the model is compiled with; ``score`` computes the same loss (and the kind's
metrics) in numpy from the model's outputs, batch by batch, so that every framework's
learner reports the same numbers for the same outputs. Every score has ``loss``
(lower is better), which is all a validation rule may rely on.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from flobc.registry import Registry

PROB_EPSILON = 1e-7
"""Probabilities are clipped as Keras' cross-entropies do, so a confident wrong answer
costs a finite loss."""


class Objective:
    """A task kind's loss and metrics; ``Sums`` accumulate over batches."""

    keras_loss: ClassVar[str]
    keras_metrics: ClassVar[tuple[str, ...]]
    metrics: ClassVar[tuple[str, ...]]
    """The names ``score`` reports besides ``loss``."""

    def batch(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Sums over one batch (divided by the sample count at the end)."""
        raise NotImplementedError

    def chance(self, y: np.ndarray, classes: int) -> dict[str, float]:
        """What a model that knows nothing scores on targets ``y`` (of ``classes``
        labels): the level a validation rule may measure progress from."""
        raise NotImplementedError

    def finish(self, sums: dict[str, float], n: int) -> dict[str, float]:
        """The metrics from the summed batches."""
        return {name: value / n for name, value in sums.items()}

    def score(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        """``loss`` and the metrics over (outputs, targets) batches."""
        sums: dict[str, float] = {}
        n = 0
        for outputs, y in batches:
            for name, value in self.batch(np.asarray(outputs, dtype=np.float64), y).items():
                sums[name] = sums.get(name, 0.0) + value
            n += len(y)
        if n == 0:
            raise ValueError("scoring needs at least one sample")
        return self.finish(sums, n)


OBJECTIVES: Registry[type[Objective]] = Registry("task kind")


@OBJECTIVES.register("classification")
class Classification(Objective):
    """Softmax outputs, one per class: cross-entropy and accuracy."""

    keras_loss = "sparse_categorical_crossentropy"
    keras_metrics = ("accuracy",)
    metrics = ("accuracy",)

    def batch(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        labels = y.astype(np.int64)
        picked = outputs[np.arange(len(labels)), labels]
        return {"loss": -float(np.log(np.clip(picked, PROB_EPSILON, 1.0)).sum()),
                "accuracy": float((outputs.argmax(axis=1) == labels).sum())}

    def chance(self, y: np.ndarray, classes: int) -> dict[str, float]:
        """A uniform guess over the classes."""
        return {"loss": math.log(classes), "accuracy": 1 / classes}


@OBJECTIVES.register("regression")
class Regression(Objective):
    """Real-valued outputs, one per target: mean squared error, MAE and RMSE."""

    keras_loss = "mean_squared_error"
    keras_metrics = ("mae",)
    metrics = ("mae", "rmse")

    def batch(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        error = outputs.reshape(len(y), -1) - np.asarray(y, np.float64).reshape(len(y), -1)
        return {"loss": float((error ** 2).mean(axis=1).sum()),
                "mae": float(np.abs(error).mean(axis=1).sum())}

    def finish(self, sums: dict[str, float], n: int) -> dict[str, float]:
        out = super().finish(sums, n)
        out["rmse"] = float(np.sqrt(out["loss"]))
        return out

    def chance(self, y: np.ndarray, classes: int) -> dict[str, float]:
        """Always the targets' mean."""
        t = np.asarray(y, np.float64).reshape(len(y), -1)
        mean = t.mean(axis=0)
        return self.finish(self.batch(np.broadcast_to(mean, t.shape), t), len(t))


@OBJECTIVES.register("multilabel")
class Multilabel(Objective):
    """Sigmoid outputs, one per label: binary cross-entropy and per-label accuracy."""

    keras_loss = "binary_crossentropy"
    keras_metrics = ("binary_accuracy",)
    metrics = ("accuracy",)

    def batch(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        p = np.clip(outputs, PROB_EPSILON, 1 - PROB_EPSILON)
        t = np.asarray(y, np.float64)
        bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1)
        return {"loss": float(bce.sum()),
                "accuracy": float(((outputs > 0.5) == (t > 0.5)).mean(axis=1).sum())}

    def chance(self, y: np.ndarray, classes: int) -> dict[str, float]:
        """A coin toss per label."""
        return {"loss": math.log(2), "accuracy": 0.5}
