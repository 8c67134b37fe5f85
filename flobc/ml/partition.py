"""Partitioners: how the training set is divided among trainers.

Each partitioner is one class in ``PARTITIONERS``, its options its fields. ``split``
returns one sorted array of indices per trainer; together they use every index
exactly once, and the same arguments always give the same parts. ``iid`` is the easy
case; ``dirichlet`` (label skew, Hsu et al. 2019), ``shards`` (label skew, McMahan et
al. 2017) and ``quantity`` (quantity skew, Li et al. 2022, "Federated Learning on
Non-IID Data Silos") give the skewed data that make federated learning hard.

On the command line a partition is written ``NAME`` or ``NAME:VALUE``, the value being
the partitioner's first option: ``dirichlet:0.1``, ``shards:2``, ``quantity:0.5``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from flobc.registry import Registry, UnknownChoice


def _check_parts(n_samples: int, n_parts: int, per_part: int = 1) -> None:
    if n_parts < 1:
        raise ValueError(f"need at least one part, got {n_parts}")
    if n_samples < n_parts * per_part:
        raise ValueError(f"{n_samples} samples cannot fill {n_parts} parts "
                         f"with {per_part} each")


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be a 1-D array of integers")
    return labels


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha}")


def _dirichlet_cut(members: np.ndarray, n_parts: int, alpha: float,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """``members`` cut in order into ``n_parts`` runs whose sizes follow proportions
    drawn from Dirichlet(alpha)."""
    counts = rng.multinomial(len(members), rng.dirichlet(np.full(n_parts, alpha)))
    return np.split(members, np.cumsum(counts)[:-1])


def _fill_empty(parts: list[list[int]]) -> list[np.ndarray]:
    """Parts sorted as arrays, an empty one first taking a sample from the largest."""
    for part in parts:
        if not part:
            part.append(max(parts, key=len).pop())
    return [np.sort(np.array(part, dtype=np.int64)) for part in parts]


@dataclass(frozen=True)
class Partitioner:
    """One way to cut a training set; its options are the dataclass fields."""

    summary: ClassVar[str]
    """One line for the command line's help."""

    def split(self, labels: Sequence[int] | np.ndarray, n_parts: int,
              seed: int) -> list[np.ndarray]:
        raise NotImplementedError


PARTITIONERS: Registry[type[Partitioner]] = Registry("partitioner")


@PARTITIONERS.register("iid")
@dataclass(frozen=True)
class IID(Partitioner):
    summary = "a random permutation cut into parts whose sizes differ by at most one"

    def split(self, labels: Sequence[int] | np.ndarray, n_parts: int,
              seed: int) -> list[np.ndarray]:
        n_samples = len(labels)
        _check_parts(n_samples, n_parts)
        order = np.random.default_rng(seed).permutation(n_samples)
        return [np.sort(part) for part in np.array_split(order, n_parts)]


@PARTITIONERS.register("dirichlet")
@dataclass(frozen=True)
class Dirichlet(Partitioner):
    """Each class spread over the parts in proportions drawn from Dirichlet(alpha).

    Small ``alpha`` gives each part few classes; large ``alpha`` approaches IID.
    """

    summary = "label skew, each class spread over the parts by Dirichlet(alpha)"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)

    def split(self, labels: Sequence[int] | np.ndarray, n_parts: int,
              seed: int) -> list[np.ndarray]:
        labels = _labels(labels)
        _check_parts(len(labels), n_parts)
        rng = np.random.default_rng(seed)
        parts: list[list[int]] = [[] for _ in range(n_parts)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            for part, chunk in zip(parts, _dirichlet_cut(members, n_parts, self.alpha, rng),
                                   strict=True):
                part.extend(chunk.tolist())
        return _fill_empty(parts)


@PARTITIONERS.register("shards")
@dataclass(frozen=True)
class LabelShards(Partitioner):
    """Samples sorted by label, cut into equal shards, ``shards_per_part`` dealt to each.

    A part sees at most about ``shards_per_part`` labels (a shard may straddle two).
    """

    summary = ("label skew, samples sorted by label and shards_per_part shards dealt to "
               "each part")
    shards_per_part: int = 2

    def __post_init__(self) -> None:
        if not (isinstance(self.shards_per_part, int) and self.shards_per_part >= 1):
            raise ValueError(f"shards_per_part must be at least 1, got {self.shards_per_part}")

    def split(self, labels: Sequence[int] | np.ndarray, n_parts: int,
              seed: int) -> list[np.ndarray]:
        labels = _labels(labels)
        _check_parts(len(labels), n_parts, self.shards_per_part)
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(len(labels))
        by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
        shards = np.array_split(by_label, n_parts * self.shards_per_part)
        dealt = rng.permutation(len(shards)).reshape(n_parts, self.shards_per_part)
        return [np.sort(np.concatenate([shards[s] for s in row])) for row in dealt]


@PARTITIONERS.register("quantity")
@dataclass(frozen=True)
class Quantity(Partitioner):
    """IID samples, but each part's share of them drawn from Dirichlet(alpha).

    Small ``alpha`` gives a few parts most of the data and the rest a handful.
    """

    summary = "quantity skew, part sizes drawn from Dirichlet(alpha), labels IID"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)

    def split(self, labels: Sequence[int] | np.ndarray, n_parts: int,
              seed: int) -> list[np.ndarray]:
        n_samples = len(labels)
        _check_parts(n_samples, n_parts)
        rng = np.random.default_rng(seed)
        order = rng.permutation(n_samples)
        return _fill_empty([chunk.tolist()
                            for chunk in _dirichlet_cut(order, n_parts, self.alpha, rng)])


def _partitioner_class(name: str) -> type[Partitioner]:
    try:
        return PARTITIONERS.get(name)
    except UnknownChoice as exc:
        raise ValueError(str(exc)) from None


def make_partitioner(name: str, **options: Any) -> Partitioner:
    """The partitioner ``name`` with ``options``; a ValueError names a bad option."""
    cls = _partitioner_class(name)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"partitioner {name!r} has no option {', '.join(unknown)}; "
                         f"its options: {', '.join(known) or 'none'}")
    return cls(**options)


def partition(name: str, labels: Sequence[int] | np.ndarray, n_parts: int, seed: int,
              **options: Any) -> list[np.ndarray]:
    """Split ``labels`` with the partitioner ``name`` and its options."""
    return make_partitioner(name, **options).split(labels, n_parts, seed)


def parse_partition(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:VALUE`` (the first option) as (name, options), checked."""
    name, sep, value = text.partition(":")
    cls = _partitioner_class(name)
    options: dict[str, Any] = {}
    if sep:
        first = next(iter(dataclasses.fields(cls)), None)
        if first is None:
            raise ValueError(f"partitioner {name!r} takes no value, got {text!r}")
        kind = int if first.type in (int, "int") else float
        try:
            options[first.name] = kind(value)
        except ValueError:
            raise ValueError(f"partition {text!r}: {first.name} must be "
                             f"{'an integer' if kind is int else 'a number'}") from None
    make_partitioner(name, **options)
    return name, options


def partition_help() -> str:
    """The partitions the command line takes, from the registry."""
    choices = []
    for name in PARTITIONERS:
        cls = PARTITIONERS.get(name)
        first = next(iter(dataclasses.fields(cls)), None)
        choices.append(f"{name}:{first.name} ({cls.summary})" if first
                       else f"{name} ({cls.summary})")
    return "; ".join(choices)
