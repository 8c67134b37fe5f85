"""``Learner`` for PyTorch models (``pip install 'flobc[torch]'``).

A builder ``function(seed: int) -> torch.nn.Module`` seeds its own initialisation
(``torch.manual_seed(seed)`` first), takes a batch of the dataset's features and
returns one value per output: logits for classification (a softmax is applied when
scoring) and multi-label (a sigmoid per label), the predicted values for regression.
flobc trains it as it trains a Keras model: plain SGD at the zoo's learning rate with
the gradient clipped to the zoo's global norm, the task's loss, our own seeded
shuffling, no optimiser state between rounds. Its weights, as the chain sees them, are
the ``state_dict`` tensors in order, as float32 (or their own dtype) numpy arrays, so
aggregation and the model hash do not depend on the framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flobc.ml.models import CLIP_NORM, LEARNING_RATE, model_weights
from flobc.ml.objectives import OBJECTIVES
from flobc.ml.weights import WeightsError, spec

EVAL_BATCH_SIZE = 256


class TorchLearner:
    """``Learner`` for a PyTorch module of a task kind; ``name`` is its builder, saved
    beside the weights so that the file says how to rebuild the module."""

    def __init__(self, module: torch.nn.Module, kind: str, name: str) -> None:
        self.module = module
        self.kind = kind
        self.name = name
        self.objective = OBJECTIVES.get(kind)()
        self._keys = list(module.state_dict())
        self._spec = spec(model_weights(module))

    def get_weights(self) -> list[np.ndarray]:
        return model_weights(self.module)

    def set_weights(self, ws: list[np.ndarray]) -> None:
        if spec(ws) != self._spec:
            raise WeightsError(f"weights {spec(ws)} do not match the model's {self._spec}")
        self.module.load_state_dict({k: torch.from_numpy(np.array(w))
                                     for k, w in zip(self._keys, ws, strict=True)})

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "classification":
            return torch.nn.functional.cross_entropy(out, y.long())
        if self.kind == "multilabel":
            return torch.nn.functional.binary_cross_entropy_with_logits(out, y.float())
        return torch.nn.functional.mse_loss(out, y.float().reshape(out.shape))

    def _outputs(self, out: torch.Tensor) -> np.ndarray:
        """What ``objectives`` scores: probabilities, or the values themselves."""
        if self.kind == "classification":
            out = torch.softmax(out, dim=1)
        elif self.kind == "multilabel":
            out = torch.sigmoid(out)
        return out.detach().numpy().astype(np.float64)

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
            seed: int) -> dict[str, float]:
        if epochs < 1 or len(x) == 0:
            raise ValueError("fit needs at least one epoch and one sample")
        torch.manual_seed(seed)
        optimiser = torch.optim.SGD(self.module.parameters(), lr=LEARNING_RATE)
        rng = np.random.default_rng(seed)
        features, targets = torch.from_numpy(x), torch.from_numpy(y)
        self.module.train()
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(x)))
            batches: list[tuple[np.ndarray, np.ndarray]] = []
            total = 0.0
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                optimiser.zero_grad()
                out = self.module(features[idx])
                loss = self._loss(out, targets[idx])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), CLIP_NORM)
                optimiser.step()
                total += float(loss.detach()) * len(idx)
                batches.append((self._outputs(out), y[idx.numpy()]))
        metrics: dict[str, Any] = self.objective.score(batches)
        metrics.pop("rmse", None)  # as Keras reports: the loss, then the kind's metrics
        metrics["loss"] = total / len(x)
        metrics["samples"] = len(x)
        return metrics

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        if len(x) == 0:
            raise ValueError("evaluate needs at least one sample")
        self.module.eval()
        with torch.no_grad():
            return self.objective.score([
                (self._outputs(self.module(torch.from_numpy(x[i:i + EVAL_BATCH_SIZE]))),
                 y[i:i + EVAL_BATCH_SIZE]) for i in range(0, len(x), EVAL_BATCH_SIZE)])

    def save(self, path: str) -> None:
        """``{"builder": name, "state_dict": ...}``, which ``torch.load(path,
        weights_only=True)`` reads back without unpickling code."""
        torch.save({"builder": self.name, "state_dict": self.module.state_dict()}, path)

    @property
    def file_suffix(self) -> str:
        return ".pt"
