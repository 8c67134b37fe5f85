"""Datasets by name: genesis names the dataset (and its options), so every trainer
trains on and every validator votes on the same task.

A source is one class in ``DATASETS``: the offline ones are in ``flobc.ml.sources``,
the ones that download in ``flobc.ml.downloads``, Hugging Face datasets in
``flobc.ml.huggingface``; ``needs_file`` sources read each
node's own copy of a file (``dataset_file``). The dataset type and the split into
roles are in ``flobc.ml.dataset``; this module gathers them for the rest of flobc.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from flobc.ml import downloads, huggingface, sources
from flobc.ml.dataset import (
    DATASETS,
    Dataset,
    DatasetError,
    DatasetSource,
    Splits,
    split,
    split_indices,
    validator_shard,
)
from flobc.registry import UnknownChoice

__all__ = ["DATASETS", "Dataset", "DatasetError", "DatasetSource", "Splits", "downloads",
           "dataset_source", "huggingface", "load_dataset", "sources", "split", "split_indices",
           "validator_shard"]


def dataset_source(name: str, options: Mapping[str, Any] | None = None) -> DatasetSource:
    """The source ``name`` with its ``options`` (nothing loaded yet), or DatasetError
    naming the problem."""
    try:
        source = DATASETS.get(name)
    except UnknownChoice:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: "
                           f"{', '.join(DATASETS.names())}") from None
    options = dict(options or {})
    known = {f.name for f in fields(source)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise DatasetError(f"dataset {name!r} has no option {unknown[0]!r}; its options: "
                           f"{', '.join(sorted(known)) or 'none'}")
    try:
        return source(**options)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"dataset {name!r}: {exc}") from exc


def load_dataset(name: str = "mnist_5k", path: str | None = None,
                 **options: Any) -> Dataset:
    """The dataset ``name`` with its ``options``, or DatasetError naming the problem."""
    source = dataset_source(name, options)
    if source.needs_file != (path is not None):
        raise DatasetError(f"a path is needed with dataset {name!r}, and only with a "
                           f"dataset read from a file "
                           f"({', '.join(n for n in DATASETS if DATASETS.get(n).needs_file)})")
    return source.load(path)
