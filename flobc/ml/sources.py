"""The dataset sources that work offline: the embedded MNIST sample (``mnist_5k``, the
default: 5,000 digits, 500 per class; see data/ATTRIBUTION), ``.npz`` and ``.csv``
files, the datasets bundled with scikit-learn, and a loader function of the user's own
(``python``)."""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import IO, ClassVar

import numpy as np

from flobc.ml.dataset import DATASETS, Dataset, DatasetError, DatasetSource, from_arrays
from flobc.ml.imports import check_importable, import_function, is_function_name

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
MAX_CSV_BYTES = 1 << 30


def read_npz(file: str | IO[bytes], source: str) -> dict[str, np.ndarray]:
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
            return {"x": npz["x"], "y": npz["y"]}
        except _READ_ERRORS as exc:  # e.g. an object array, which would need pickle
            raise DatasetError(f"{source}: unreadable arrays: {exc}") from exc


def check_task(task: str | None) -> str | None:
    if task not in (None, "classification", "regression", "multilabel"):
        raise ValueError(f"task must be classification, regression or multilabel, "
                         f"got {task!r}")
    return task


@DATASETS.register("mnist_5k")
@dataclass(frozen=True)
class Mnist5k(DatasetSource):
    """The embedded MNIST sample: 5,000 28x28 digits, 500 per class, 10 classes."""

    def load(self, path: str | None) -> Dataset:
        with resources.files(__package__).joinpath("data/mnist_5k.npz").open("rb") as f:
            arrays = read_npz(f, "mnist_5k")
        return from_arrays(arrays["x"], arrays["y"], "mnist_5k", classes=10)


@DATASETS.register("file")
@dataclass(frozen=True)
class NpzFile(DatasetSource):
    """A local ``.npz`` of arrays ``x`` (features of any shape; uint8 images are scaled
    to [0, 1]) and ``y`` (integer labels, float targets, or (N, k) 0/1 indicators)."""

    task: str | None = None
    """``classification``, ``regression`` or ``multilabel``; by default from ``y``'s
    dtype (integers: classification)."""
    classes: int | None = None
    """Classification: the number of classes, if more than the labels present show."""
    needs_file = True

    def __post_init__(self) -> None:
        check_task(self.task)

    def load(self, path: str | None) -> Dataset:
        assert path is not None
        arrays = read_npz(path, path)
        return from_arrays(arrays["x"], arrays["y"], path, task=self.task,
                           classes=self.classes)


@DATASETS.register("csv")
@dataclass(frozen=True)
class CsvFile(DatasetSource):
    """A local ``.csv`` table with a header row: the ``features`` columns (all other
    columns but the target when empty) and the ``target`` column, numbers only."""

    target: str = "target"
    features: tuple[str, ...] = ()
    task: str | None = None
    """By default classification when every target is an integer, else regression."""
    classes: int | None = None
    needs_file = True

    def __post_init__(self) -> None:
        check_task(self.task)
        object.__setattr__(self, "features", tuple(self.features))

    def load(self, path: str | None) -> Dataset:
        assert path is not None
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CSV_BYTES + 1)
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read: {exc.strerror}") from exc
        if len(raw) > MAX_CSV_BYTES:
            raise DatasetError(f"{path}: larger than {MAX_CSV_BYTES} bytes")
        try:
            rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"{path}: not a readable CSV file: {exc}") from exc
        if not rows:
            raise DatasetError(f"{path}: empty file (a header row is needed)")
        header, body = rows[0], [r for r in rows[1:] if r]
        columns = self._columns(header, path)
        table = self._numbers(body, header, path)
        x = table[:, [header.index(c) for c in columns]]
        y = table[:, header.index(self.target)]
        task = self.task
        if task is None:
            task = "classification" if np.all(y == np.round(y)) else "regression"
        if task == "classification":
            if not np.all(y == np.round(y)):
                raise DatasetError(f"{path}: column {self.target!r} has a non-integer "
                                   f"value, so it cannot be a class label")
            y = y.astype(np.int64)
        return from_arrays(x, y, path, task=task, classes=self.classes)

    def _columns(self, header: list[str], path: str) -> list[str]:
        if len(set(header)) != len(header):
            raise DatasetError(f"{path}: the header names a column twice")
        if self.target not in header:
            raise DatasetError(f"{path}: no target column {self.target!r}; columns: "
                               f"{', '.join(header)}")
        columns = list(self.features) or [c for c in header if c != self.target]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(f"{path}: no feature column {missing[0]!r}; columns: "
                               f"{', '.join(header)}")
        if not columns:
            raise DatasetError(f"{path}: no feature columns besides {self.target!r}")
        return columns

    @staticmethod
    def _numbers(body: list[list[str]], header: list[str], path: str) -> np.ndarray:
        """The table as floats, or the first line and column that is not a finite
        number."""
        table = np.empty((len(body), len(header)), dtype=np.float64)
        for line, row in enumerate(body, start=2):
            if len(row) != len(header):
                raise DatasetError(f"{path}: line {line} has {len(row)} fields, the "
                                   f"header {len(header)}")
            for column, value in enumerate(row):
                try:
                    table[line - 2, column] = number = float(value)
                except ValueError:
                    raise DatasetError(f"{path}: line {line}, column {header[column]!r}: "
                                       f"{value[:40]!r} is not a number") from None
                if not np.isfinite(number):
                    raise DatasetError(f"{path}: line {line}, column {header[column]!r} "
                                       f"is NaN or infinite ({value[:40]!r})")
        return table


@dataclass(frozen=True)
class _Sklearn(DatasetSource):
    """A dataset bundled with scikit-learn (no download)."""

    loader: ClassVar[str]
    task: ClassVar[str]
    scale: ClassVar[float] = 1.0
    """Features are divided by this (digits' pixels run 0..16)."""
    standardise: ClassVar[bool] = False
    """Features and targets are standardised (zero mean, unit variance)."""

    def load(self, path: str | None) -> Dataset:
        try:
            import sklearn.datasets
        except ImportError as exc:
            raise DatasetError(f"dataset {DATASETS.name_of(type(self))!r} needs "
                               f"scikit-learn: pip install scikit-learn") from exc
        bundle = getattr(sklearn.datasets, self.loader)()
        x, y = bundle.data.astype(np.float64) / self.scale, bundle.target
        if self.standardise:
            x = (x - x.mean(axis=0)) / x.std(axis=0)
        if self.task == "regression":
            y = (y - y.mean()) / y.std() if self.standardise else y
            y = y.astype(np.float32)
        return from_arrays(x, y, DATASETS.name_of(type(self)), task=self.task)


@DATASETS.register("digits")
@dataclass(frozen=True)
class Digits(_Sklearn):
    """scikit-learn's ``load_digits``: 1,797 8x8 digit images as 64 features in [0, 1],
    10 classes."""

    loader = "load_digits"
    task = "classification"
    scale = 16.0


@DATASETS.register("breast_cancer")
@dataclass(frozen=True)
class BreastCancer(_Sklearn):
    """scikit-learn's ``load_breast_cancer``: 569 tumours, 30 standardised features,
    2 classes (malignant 0, benign 1)."""

    loader = "load_breast_cancer"
    task = "classification"
    standardise = True


@DATASETS.register("diabetes")
@dataclass(frozen=True)
class Diabetes(_Sklearn):
    """scikit-learn's ``load_diabetes``: 442 patients, 10 features, and a disease
    progression score to regress, standardised (so a loss of 1.0 is guessing the
    mean)."""

    loader = "load_diabetes"
    task = "regression"
    standardise = True


@DATASETS.register("python")
@dataclass(frozen=True)
class PythonLoader(DatasetSource):
    """The user's own function ``loader = "package.module:function"``, imported on each
    node like a model builder: called with no arguments, it returns arrays ``(x, y)`` (as
    an ``.npz`` file holds them) or a ``flobc.ml.data.Dataset``. It must give the same data
    on every node: validators vote on its split."""

    loader: str = ""
    task: str | None = None
    """As for ``file``: by default from the targets' dtype (integers: classification)."""
    classes: int | None = None

    def __post_init__(self) -> None:
        if not is_function_name(self.loader):
            raise ValueError(f"loader must name a function as package.module:function, "
                             f"got {self.loader!r}")
        check_task(self.task)

    def check_importable(self) -> None:
        check_importable(self.loader, f"dataset loader {self.loader!r}", DatasetError)

    def load(self, path: str | None) -> Dataset:
        what = f"dataset loader {self.loader!r}"
        function = import_function(self.loader, what, DatasetError)
        try:
            result = function()
        except Exception as exc:  # the user's own code: report it, whatever it raised
            raise DatasetError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, Dataset):
            return result
        if not (isinstance(result, tuple) and len(result) == 2):
            raise DatasetError(f"{what} returned {type(result).__name__}; it must return "
                               f"a pair of arrays (x, y) or a flobc Dataset")
        return from_arrays(result[0], result[1], what, task=self.task, classes=self.classes)
