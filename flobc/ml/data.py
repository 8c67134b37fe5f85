"""Datasets and the fixed split into training, validator and test data.

The default, ``mnist_5k``, is embedded (5,000 MNIST digits, 500 per class; see
data/ATTRIBUTION) so that a cluster trains offline. The split keeps three roles
apart: trainers partition ``train``, validators vote on ``validator_holdout``, and
``test`` is only ever used for the accuracy that is reported.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import IO

import numpy as np

from flobc.errors import InputError

IMAGE_SHAPE = (28, 28, 1)
N_CLASSES = 10
DATASETS = ("mnist_5k", "mnist", "file")
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class DatasetError(InputError):
    """Raised when a dataset cannot be loaded as asked or is malformed."""


@dataclass(frozen=True)
class Dataset:
    """Images as float32 (N, 28, 28, 1) in [0, 1] and labels as int64 (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.x.shape[1:] != IMAGE_SHAPE:
            raise DatasetError(f"images must be float32 (N, 28, 28, 1), got {self.x.dtype} "
                               f"{self.x.shape}")
        if self.y.dtype != np.int64 or self.y.shape != (len(self.x),):
            raise DatasetError(f"labels must be int64 ({len(self.x)},), got {self.y.dtype} "
                               f"{self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> Dataset:
        """The samples at ``indices``, in that order (a copy)."""
        return Dataset(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class Splits:
    """The three disjoint parts of a dataset, one per role."""

    train: Dataset
    validator_holdout: Dataset
    test: Dataset


def _from_arrays(x: np.ndarray, y: np.ndarray, source: str) -> Dataset:
    """Check raw arrays (uint8 0-255 or float in [0, 1]) and convert to a Dataset."""
    if x.shape[1:] not in (IMAGE_SHAPE, IMAGE_SHAPE[:2]):
        raise DatasetError(f"{source}: images must be (N, 28, 28) or (N, 28, 28, 1), "
                           f"got {x.shape}")
    x = x.reshape(len(x), *IMAGE_SHAPE)
    if y.shape != (len(x),):
        raise DatasetError(f"{source}: labels must have shape ({len(x)},), got {y.shape}")
    if len(x) == 0:
        raise DatasetError(f"{source}: no samples")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{source}: labels must be integers, got {y.dtype}")
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise DatasetError(f"{source}: labels must be in 0..{N_CLASSES - 1}, "
                           f"got {y.min()}..{y.max()}")
    if x.dtype == np.uint8:
        images = x.astype(np.float32) / np.float32(255)
    elif np.issubdtype(x.dtype, np.floating):
        images = x.astype(np.float32)
        if not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
            raise DatasetError(f"{source}: float images must be finite and in [0, 1]")
    else:
        raise DatasetError(f"{source}: images must be uint8 or float, got {x.dtype}")
    return Dataset(images, y.astype(np.int64))


def _load_npz(file: str | IO[bytes], source: str) -> Dataset:
    try:
        npz = np.load(file, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise DatasetError(f"{source}: not a readable .npz file: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{source}: not an .npz archive")
    with npz:
        if not {"x", "y"} <= set(npz.files):
            raise DatasetError(f"{source}: needs arrays 'x' and 'y', has {npz.files}")
        try:
            x, y = npz["x"], npz["y"]
        except _READ_ERRORS as exc:  # e.g. an object array, which would need pickle
            raise DatasetError(f"{source}: unreadable arrays: {exc}") from exc
    return _from_arrays(x, y, source)


def _load_full_mnist() -> Dataset:
    """All 70,000 MNIST images (Keras' train and test sets together)."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as exc:  # Keras raises a bare Exception when the download fails
        raise DatasetError("full MNIST needs network access to download; use mnist_5k or "
                           f"a local file ({exc})") from exc
    return _from_arrays(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]),
                        "mnist")


def load_dataset(name: str = "mnist_5k", path: str | None = None) -> Dataset:
    """A dataset by name: ``mnist_5k`` (embedded), ``mnist`` (download) or ``file``.

    ``file`` reads a local .npz with arrays ``x`` (uint8 0-255 or float 0-1 images)
    and ``y`` (labels 0-9).
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if (name == "file") != (path is not None):
        raise DatasetError("a path is needed with dataset 'file', and only with it")
    if path is not None:
        return _load_npz(path, path)
    if name == "mnist":
        return _load_full_mnist()
    with resources.files(__package__).joinpath("data/mnist_5k.npz").open("rb") as f:
        return _load_npz(f, "mnist_5k")


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
    """The fixed, seeded, stratified split (for mnist_5k: 4,000 / 500 / 500)."""
    train, holdout, test = split_indices(
        ds.y, test_fraction=test_fraction, validator_fraction=validator_fraction, seed=seed)
    return Splits(ds.subset(train), ds.subset(holdout), ds.subset(test))


def validator_shard(holdout: Dataset, index: int, count: int) -> Dataset:
    """Validator ``index``'s share of the holdout: disjoint, covering, and stratified.

    Samples are ordered by label and dealt out in turn, so every validator gets
    about the same number of each class.
    """
    if not 0 <= index < count:
        raise ValueError(f"validator index must be in 0..{count - 1}, got {index}")
    by_label = np.argsort(holdout.y, kind="stable")
    return holdout.subset(np.sort(by_label[index::count]))
