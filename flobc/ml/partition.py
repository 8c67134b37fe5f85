"""Partitioners: how the training set is divided among trainers.

Each returns one sorted array of indices per trainer; together they use every
index exactly once, and the same arguments always give the same parts. ``iid``
is the easy case; ``dirichlet`` (Hsu et al., 2019) and ``label_shards``
(McMahan et al., 2017) give the skewed label distributions that make federated
learning hard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "label_shards": {"shards_per_part": 2},
}


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


def iid(n_samples: int, n_parts: int, seed: int) -> list[np.ndarray]:
    """A random permutation cut into parts whose sizes differ by at most one."""
    _check_parts(n_samples, n_parts)
    order = np.random.default_rng(seed).permutation(n_samples)
    return [np.sort(part) for part in np.array_split(order, n_parts)]


def dirichlet(labels: Sequence[int] | np.ndarray, n_parts: int, alpha: float,
              seed: int) -> list[np.ndarray]:
    """Each class spread over the parts in proportions drawn from Dirichlet(alpha).

    Small ``alpha`` gives each part few classes; large ``alpha`` approaches IID.
    A part left empty takes one sample from the largest part, so none is empty.
    """
    labels = _labels(labels)
    _check_parts(len(labels), n_parts)
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        counts = rng.multinomial(len(members), rng.dirichlet(np.full(n_parts, alpha)))
        for part, chunk in zip(parts, np.split(members, np.cumsum(counts)[:-1]), strict=True):
            part.extend(chunk.tolist())
    for part in parts:
        if not part:
            part.append(max(parts, key=len).pop())
    return [np.sort(np.array(part, dtype=np.int64)) for part in parts]


def label_shards(labels: Sequence[int] | np.ndarray, n_parts: int, shards_per_part: int,
                 seed: int) -> list[np.ndarray]:
    """Samples sorted by label, cut into equal shards, ``shards_per_part`` dealt to each.

    A part sees at most about ``shards_per_part`` labels (a shard may straddle two).
    """
    labels = _labels(labels)
    if shards_per_part < 1:
        raise ValueError(f"shards_per_part must be at least 1, got {shards_per_part}")
    _check_parts(len(labels), n_parts, shards_per_part)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, n_parts * shards_per_part)
    dealt = rng.permutation(len(shards)).reshape(n_parts, shards_per_part)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in dealt]


def partition(name: str, labels: Sequence[int] | np.ndarray, n_parts: int, seed: int,
              **options: Any) -> list[np.ndarray]:
    """A partitioner by name (``iid``, ``dirichlet``, ``label_shards``) and its options."""
    if name not in DEFAULT_OPTIONS:
        raise ValueError(f"unknown partitioner {name!r}; known partitioners: "
                         f"{', '.join(DEFAULT_OPTIONS)}")
    unknown = set(options) - set(DEFAULT_OPTIONS[name])
    if unknown:
        raise ValueError(f"partitioner {name!r} has no option {', '.join(sorted(unknown))}; "
                         f"its options: {', '.join(DEFAULT_OPTIONS[name]) or 'none'}")
    options = {**DEFAULT_OPTIONS[name], **options}
    if name == "iid":
        return iid(len(labels), n_parts, seed)
    if name == "dirichlet":
        return dirichlet(labels, n_parts, seed=seed, **options)
    return label_shards(labels, n_parts, seed=seed, **options)
