"""Hugging Face ``datasets`` as a dataset source (``pip install 'flobc[hf]'``).

``repo`` is what ``datasets.load_dataset`` takes first: a dataset on the Hub
(``owner/name``, downloaded once into Hugging Face's own cache, ``HF_HOME``), or one of
its packaged formats, ``csv``, ``json`` or ``parquet``, read from ``data_files``. The
``split`` is loaded, and its columns become features and targets: every column but the
``label`` by default, or the named ``features``. Numeric columns are one feature each;
a single column of arrays (images, embeddings) keeps its shape. A ``ClassLabel``
target gives its number of classes. ``datasets`` is imported only when such a dataset
is loaded, and nothing is unpickled: Hub datasets that run a loading script are
refused by ``datasets`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flobc.ml.dataset import DATASETS, Dataset, DatasetError, DatasetSource, from_arrays
from flobc.ml.sources import check_task


@DATASETS.register("huggingface")
@dataclass(frozen=True)
class HuggingFace(DatasetSource):
    """A split of a Hugging Face dataset: ``repo`` (Hub name, or csv/json/parquet with
    ``data_files``), its ``label`` column and its ``features`` columns (default: all
    others)."""

    repo: str = ""
    split: str = "train"
    label: str = "label"
    features: tuple[str, ...] = ()
    data_files: tuple[str, ...] = ()
    task: str | None = None
    """By default from the label column: integers are classes, floats regression."""
    classes: int | None = None

    def __post_init__(self) -> None:
        if not self.repo:
            raise ValueError("needs option repo: a dataset on the Hugging Face Hub "
                             "(owner/name), or csv, json or parquet with data_files")
        check_task(self.task)
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "data_files", tuple(self.data_files))

    @property
    def source(self) -> str:
        return f"huggingface {self.repo!r} split {self.split!r}"

    def load(self, path: str | None) -> Dataset:
        table = self._columns(self._split())
        columns = list(self.features) or [c for c in table if c != self.label]
        x = _features([table[c] for c in columns], columns, self.source)
        classes = self.classes if self.classes is not None else table.classes
        return from_arrays(x, table[self.label], self.source, task=self.task,
                           classes=classes)

    def _split(self) -> Any:
        try:
            import datasets
        except ImportError as exc:
            raise DatasetError("dataset 'huggingface' needs the datasets package: "
                               "pip install 'flobc[hf]'") from exc
        try:
            return datasets.load_dataset(self.repo, data_files=list(self.data_files) or None,
                                         split=self.split)
        except Exception as exc:  # the library's own errors: missing split, file, network
            raise DatasetError(f"{self.source}: cannot load it: {type(exc).__name__}: "
                               f"{exc}") from exc

    def _columns(self, split: Any) -> _Table:
        names = list(split.column_names)
        for column in (self.label, *self.features):
            if column not in names:
                kind = "label" if column == self.label else "feature"
                raise DatasetError(f"{self.source}: no {kind} column {column!r}; columns: "
                                   f"{', '.join(names)}")
        if not (self.features or len(names) > 1):
            raise DatasetError(f"{self.source}: no feature columns besides {self.label!r}")
        wanted = list(dict.fromkeys([*(self.features or names), self.label]))
        arrays = split.select_columns(wanted).with_format("numpy")[:]
        label = split.features[self.label]
        return _Table(arrays, getattr(label, "num_classes", None))


class _Table(dict[str, np.ndarray]):
    """Columns by name, and the label's number of classes when it is a ClassLabel."""

    def __init__(self, arrays: dict[str, Any], classes: int | None) -> None:
        super().__init__({name: np.asarray(a) for name, a in arrays.items()})
        self.classes = classes


def _features(arrays: list[np.ndarray], columns: list[str], source: str) -> np.ndarray:
    """One column of arrays as it is, or numeric columns side by side."""
    if len(arrays) == 1 and arrays[0].ndim > 1:
        return arrays[0]
    flat = [c for c, a in zip(columns, arrays, strict=True) if a.ndim != 1]
    if flat:
        raise DatasetError(f"{source}: feature column {flat[0]!r} holds arrays; name it "
                           f"alone in features, or only columns of single numbers")
    return np.stack(arrays, axis=1)
