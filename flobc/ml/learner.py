"""What the framework asks of a model: get and set weights, fit, evaluate.

Trainers and validators only move ``list[np.ndarray]`` weights, so any model
that implements ``Learner`` takes part; ``KerasLearner`` adapts a compiled Keras
model. Training is made as reproducible as TensorFlow on CPU allows (seeded,
with our own shuffling and a fresh optimizer state per call), but it is not
promised to be bit-exact: only aggregation, done in numpy, has to be.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from flobc.ml.dataset import Dataset, Task
from flobc.ml.objectives import OBJECTIVES
from flobc.ml.weights import WeightsError, spec

if TYPE_CHECKING:
    import keras

EVAL_BATCH_SIZE = 256


@runtime_checkable
class Learner(Protocol):
    """A model as the framework sees it."""

    def get_weights(self) -> list[np.ndarray]:
        """A copy of the current weights."""
        ...

    def set_weights(self, ws: list[np.ndarray]) -> None:
        """Replace the weights; dtypes and shapes must be the model's."""
        ...

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
            seed: int) -> dict[str, float]:
        """Train in place; return the last epoch's ``loss``, the task's metrics and
        ``samples``."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``loss`` and the task's metrics of the current weights on (x, y)."""
        ...

    def save(self, path: str) -> None:
        """Write the model with its current weights in its framework's own file format
        (the suffix ``file_suffix`` names), loadable without flobc."""
        ...

    @property
    def file_suffix(self) -> str:
        """The suffix of ``save``'s file, with its dot."""
        ...


class KerasLearner:
    """``Learner`` for a compiled Keras 3 model (see ``flobc.ml.models``) of a task
    kind (``flobc.ml.objectives``)."""

    def __init__(self, model: keras.Model, kind: str = "classification") -> None:
        if not model.compiled:
            raise ValueError("the Keras model must be compiled")
        self.model = model
        self.objective = OBJECTIVES.get(kind)()
        self._spec = spec(model.get_weights())
        model.optimizer.build(model.trainable_variables)
        self._fresh_optimizer = [v.numpy() for v in model.optimizer.variables]

    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.model.get_weights()]

    def set_weights(self, ws: list[np.ndarray]) -> None:
        if spec(ws) != self._spec:
            raise WeightsError(f"weights {spec(ws)} do not match the model's {self._spec}")
        self.model.set_weights(ws)

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
            seed: int) -> dict[str, float]:
        import keras

        if epochs < 1 or len(x) == 0:
            raise ValueError("fit needs at least one epoch and one sample")
        keras.utils.set_random_seed(seed)
        # A fresh optimizer, so that a fit depends on the weights it starts from
        # and not on earlier rounds.
        for variable, value in zip(self.model.optimizer.variables, self._fresh_optimizer,
                                   strict=True):
            variable.assign(value)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            order = rng.permutation(len(x))
            history = self.model.fit(x[order], y[order], batch_size=batch_size, epochs=1,
                                     shuffle=False, verbose=0)
        last = {name: float(values[-1]) for name, values in history.history.items()}
        metrics = {"loss": last["loss"], "samples": len(x)}
        for keras_name, name in zip(self.objective.keras_metrics, self.objective.metrics,
                                    strict=False):
            metrics[name] = last[keras_name]
        return metrics

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """The task's loss and metrics from direct calls of the model, batch by batch:
        Keras' ``evaluate`` costs several times the inference itself on small sets, and
        validators evaluate every update."""
        if len(x) == 0:
            raise ValueError("evaluate needs at least one sample")
        return self.objective.score([
            (np.asarray(self.model(x[i:i + EVAL_BATCH_SIZE], training=False)),
             y[i:i + EVAL_BATCH_SIZE]) for i in range(0, len(x), EVAL_BATCH_SIZE)])

    def save(self, path: str) -> None:
        self.model.save(path)

    @property
    def file_suffix(self) -> str:
        return ".keras"


class ShardScorer:
    """Scores weights on a data set with ``learner``: the metrics of ``evaluate``, a loss
    that is not finite counted as infinite (a validation rule's ``Scorer``). ``chance``
    is what a model that knows nothing scores there, from the task's objective."""

    def __init__(self, learner: Learner, data: Dataset) -> None:
        self.learner = learner
        self.data = data
        self.chance = OBJECTIVES.get(data.task)().chance(data.y, data.classes)

    def __call__(self, weights: Sequence[np.ndarray], /) -> dict[str, float]:
        self.learner.set_weights(list(weights))
        metrics = dict(self.learner.evaluate(self.data.x, self.data.y))
        if not math.isfinite(metrics["loss"]):
            metrics["loss"] = math.inf
        return metrics


def _single_thread(model: str) -> None:
    """One TensorFlow thread for a model that uses it; it must be set before TensorFlow
    runs anything, so before the model is built, and a builder's module is imported
    first to tell: a PyTorch-only module never imports TensorFlow, which takes seconds
    (and its module is held to one thread once built). A builder that imports Keras
    only when called finds TensorFlow's thread settings in its environment."""
    from flobc.ml.models import MODELS, model_builder

    model_builder(model)
    if model not in MODELS and not {"keras", "tensorflow"} & set(sys.modules):
        os.environ["TF_NUM_INTEROP_THREADS"] = os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
        return
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)


def learner_for(model: str, seed: int, *, task: Task | None = None,
                single_thread: bool = False) -> Learner:
    """The learner for a genesis model (a zoo name or a builder), its version-0 weights
    drawn from ``seed``, checked against and trained for the dataset's ``task`` (None:
    the zoo model's own task, or an unchecked classifier). Imports TensorFlow, so only
    processes that train or evaluate call it; ``single_thread`` keeps the model's
    framework to one thread (a worker beside consensus)."""
    if single_thread:
        _single_thread(model)
    from flobc.ml.models import build_model, is_torch_module, model_task

    task = task or model_task(model)
    kind = "classification" if task is None else task.kind
    built = build_model(model, seed, task)
    if is_torch_module(built):
        import torch

        from flobc.ml.torch_learner import TorchLearner

        if single_thread:
            torch.set_num_threads(1)
        return TorchLearner(built, kind, model)
    return KerasLearner(built, kind)
