"""A dataset of any shape and task, and its fixed split into training, validator and test
data.

A dataset is features ``x`` (float32, any shape per sample) and targets ``y`` for one of
three tasks: classification (int64 labels ``0..classes-1``), regression (float32 values,
one or several per sample) or multi-label classification (float32 0/1 indicators, one
column per label). The split keeps three roles apart: trainers partition ``train``,
validators vote on ``validator_holdout``, and ``test`` is only ever used for the metrics
that are reported. Splits and partitions that keep label proportions work on
``strata``: the labels themselves, or for regression the target's quantile bins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from flobc.errors import InputError
from flobc.registry import Registry

TASKS = ("classification", "regression", "multilabel")
MAX_CLASSES = 10_000
"""More distinct labels than this is a mistake (a regression target read as labels)."""
REGRESSION_STRATA = 10
"""Regression targets are stratified by this many quantile bins."""


class DatasetError(InputError):
    """Raised when a dataset cannot be loaded as asked or is malformed."""


@dataclass(frozen=True)
class Task:
    """What a model must do for a dataset: its kind, one sample's feature shape, and its
    outputs (classes, labels, or targets per sample). A model is checked against it and
    trained and scored by its kind's loss and metrics (flobc.ml.learner)."""

    kind: str
    sample_shape: tuple[int, ...]
    outputs: int


@dataclass(frozen=True)
class Dataset:
    """Features as float32 (N, ...) and targets of ``task``: int64 (N,) labels below
    ``classes`` (classification), float32 (N,) or (N, k) values (regression), or float32
    (N, ``classes``) indicators of 0 and 1 (multilabel)."""

    x: np.ndarray
    y: np.ndarray
    task: str = "classification"
    classes: int = 0
    """Classification and multilabel: how many labels there are (every part of a split
    keeps the whole dataset's number, even if some label is missing from it)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DatasetError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.x.dtype != np.float32 or self.x.ndim < 2:
            raise DatasetError(f"features must be float32 (N, ...), got {self.x.dtype} "
                               f"{self.x.shape}")
        n = len(self.x)
        if self.task == "classification":
            ok = self.y.dtype == np.int64 and self.y.shape == (n,)
            want = f"int64 ({n},)"
        elif self.task == "regression":
            ok = self.y.dtype == np.float32 and self.y.ndim in (1, 2) and len(self.y) == n
            want = f"float32 ({n},) or ({n}, k)"
        else:
            ok = self.y.dtype == np.float32 and self.y.shape == (n, self.classes)
            want = f"float32 ({n}, {self.classes})"
        if not ok:
            raise DatasetError(f"{self.task} targets must be {want}, got {self.y.dtype} "
                               f"{self.y.shape}")
        if self.task == "regression":
            if self.classes != 0:
                raise DatasetError("a regression dataset has no classes")
        elif not 1 <= self.classes <= MAX_CLASSES:
            raise DatasetError(f"classes must be in 1..{MAX_CLASSES}, got {self.classes}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample's features (a model's input shape)."""
        return tuple(self.x.shape[1:])

    @property
    def spec(self) -> Task:
        """The task this dataset poses."""
        outputs = (self.classes if self.task != "regression"
                   else 1 if self.y.ndim == 1 else self.y.shape[1])
        return Task(self.task, self.sample_shape, outputs)

    @property
    def strata(self) -> np.ndarray:
        """An int64 group per sample for stratified splits and label-skewed partitions:
        the label (classification), the first label set (multilabel; ``classes`` when
        none is), or the quantile bin of the first target (regression)."""
        if self.task == "classification":
            return self.y
        if self.task == "multilabel":
            hit = self.y > 0.5
            return np.where(hit.any(axis=1), hit.argmax(axis=1), self.classes).astype(np.int64)
        first = self.y.reshape(len(self.y), -1)[:, 0].astype(np.float64)
        edges = np.quantile(first, np.linspace(0, 1, REGRESSION_STRATA + 1)[1:-1])
        return np.searchsorted(edges, first, side="right").astype(np.int64)

    def subset(self, indices: np.ndarray) -> Dataset:
        """The samples at ``indices``, in that order (a copy)."""
        return replace(self, x=self.x[indices], y=self.y[indices])


class DatasetSource:
    """One way of getting a dataset; its options are the dataclass fields."""

    needs_file: ClassVar[bool] = False
    """True: the dataset is each node's file (``dataset_file``)."""

    def load(self, path: str | None) -> Dataset:
        """The dataset; ``path`` is the node's file when ``needs_file``, else None."""
        raise NotImplementedError

    def check_importable(self) -> None:
        """DatasetError unless the user's code this source runs is on the import path
        (found, not run: a validator checks it before it starts)."""


DATASETS: Registry[type[DatasetSource]] = Registry("dataset")
"""Filled by flobc.ml.sources and flobc.ml.downloads; import it from flobc.ml.data."""


def from_arrays(x: Any, y: Any, source: str, *, task: str | None = None,
                classes: int | None = None) -> Dataset:
    """Raw arrays checked and converted, or DatasetError naming ``source`` and the
    problem. uint8 features are images: scaled to [0, 1], and (N, H, W) gets a channel
    axis. ``task`` defaults to classification for integer targets and regression for
    float ones; ``classes`` to one more than the largest label."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2:
        raise DatasetError(f"{source}: features must have a sample axis and at least one "
                           f"more, got shape {x.shape}")
    if len(x) == 0:
        raise DatasetError(f"{source}: no samples")
    if len(y) != len(x):
        raise DatasetError(f"{source}: {len(x)} samples but {len(y)} targets")
    features = _features(x, source)
    if task is None and not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise DatasetError(f"{source}: targets must be numbers, got {y.dtype} (integer "
                           f"class labels, or float values to regress)")
    if task is None:
        task = "classification" if np.issubdtype(y.dtype, np.integer) else "regression"
    if task == "classification":
        labels, classes = _labels(y, source, classes)
        return Dataset(features, labels, task, classes)
    if task == "multilabel":
        return _multilabel(features, y, source)
    if task == "regression":
        return Dataset(features, _targets(y, source), task)
    raise DatasetError(f"{source}: task must be one of {', '.join(TASKS)}, got {task!r}")


def _features(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype == np.uint8:
        images = x.astype(np.float32) / np.float32(255)
        return images[..., np.newaxis] if x.ndim == 3 else images
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DatasetError(f"{source}: features must be numbers (uint8 images, integers or "
                           f"floats), got {x.dtype}")
    with np.errstate(over="ignore"):  # beyond float32 becomes infinite: refused below
        features = x.astype(np.float32)
    if not np.isfinite(features).all():
        raise DatasetError(f"{source}: features must be finite (found NaN or infinity, "
                           f"or values beyond float32)")
    return features


def _labels(y: np.ndarray, source: str, classes: int | None) -> tuple[np.ndarray, int]:
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{source}: class labels must be integers, got {y.dtype}")
    if y.ndim != 1:
        raise DatasetError(f"{source}: class labels must be one per sample, got shape "
                           f"{y.shape}")
    if y.min() < 0:
        raise DatasetError(f"{source}: class labels must be at least 0, got {y.min()}")
    high = int(y.max()) + 1 if classes is None else classes
    if high > MAX_CLASSES:
        raise DatasetError(f"{source}: too many classes ({high}; at most {MAX_CLASSES}): "
                           f"is the target a regression value?")
    if y.max() >= high:
        raise DatasetError(f"{source}: class labels must be below {high}, got {y.max()}")
    return y.astype(np.int64), high


def _targets(y: np.ndarray, source: str) -> np.ndarray:
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise DatasetError(f"{source}: regression targets must be numbers, got {y.dtype}")
    if y.ndim not in (1, 2):
        raise DatasetError(f"{source}: regression targets must be (N,) or (N, k), got "
                           f"{y.shape}")
    targets = y.astype(np.float32)
    if not np.isfinite(targets).all():
        raise DatasetError(f"{source}: regression targets must be finite (found NaN or "
                           f"infinity)")
    return targets


def _multilabel(features: np.ndarray, y: np.ndarray, source: str) -> Dataset:
    if y.ndim != 2 or not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise DatasetError(f"{source}: multi-label targets must be (N, labels) of 0 and 1, "
                           f"got {y.dtype} {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise DatasetError(f"{source}: multi-label targets must be 0 or 1")
    return Dataset(features, y.astype(np.float32), "multilabel", y.shape[1])


@dataclass(frozen=True)
class Splits:
    """The three disjoint parts of a dataset, one per role."""

    train: Dataset
    validator_holdout: Dataset
    test: Dataset


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def split_indices(
    labels: np.ndarray, *, test_fraction: float, validator_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (train, validator_holdout, test) indices, stratified by label.

    Each class is shuffled with ``seed`` and cut separately, so each part keeps the
    class proportions of the whole.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validator_fraction", validator_fraction)
    if test_fraction + validator_fraction >= 1:
        raise ValueError("test_fraction + validator_fraction must leave some training data")
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * validator_fraction)
        parts[2].append(members[:n_test])
        parts[1].append(members[n_test:n_test + n_val])
        parts[0].append(members[n_test + n_val:])
    train, holdout, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, holdout, test


def split(
    ds: Dataset, *, test_fraction: float = 0.1, validator_fraction: float = 0.1, seed: int = 0
) -> Splits:
    """The fixed, seeded split, stratified by ``strata`` (for mnist_5k: 4,000 / 500 /
    500)."""
    train, holdout, test = split_indices(
        ds.strata, test_fraction=test_fraction, validator_fraction=validator_fraction,
        seed=seed)
    return Splits(ds.subset(train), ds.subset(holdout), ds.subset(test))


def validator_shard(holdout: Dataset, index: int, count: int) -> Dataset:
    """Validator ``index``'s share of the holdout: disjoint, covering, and stratified.

    Samples are ordered by stratum and dealt out in turn, so every validator gets
    about the same number of each class.
    """
    if not 0 <= index < count:
        raise ValueError(f"validator index must be in 0..{count - 1}, got {index}")
    by_label = np.argsort(holdout.strata, kind="stable")
    return holdout.subset(np.sort(by_label[index::count]))
