"""Combining updates into a model, bit-identically on every validator (numpy only).

Every validator runs this inside block execution, so the result must not depend on the
machine, the run or the order updates arrived in: contributions are sorted by trainer
key, every sum is accumulated in float64 one term at a time in that order with
elementwise operations only (no BLAS, no threads), and each tensor is cast back to its
own dtype at the end. Deltas are always relative to the weights they are added to; the
caller rebases a stale update (``rebase``) so that it is applied to the model it was
trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flobc.protocol.reputation import MICRO, shares_micro
from flobc.registry import Registry

Weights = list[np.ndarray]
Shares = list[tuple[bytes, int]]


def widen(ws: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(w, dtype=np.float64) for w in ws]


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 -> ``dtype``; integer tensors are rounded and clipped (casting an
    out-of-range float to an integer is undefined, so it must never happen)."""
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    high = float(info.max)
    if high > info.max:
        high = float(np.nextafter(high, 0.0))
    return np.clip(np.rint(values), float(info.min), high).astype(dtype)


def cast_like(values: Sequence[np.ndarray], like: Sequence[np.ndarray]) -> Weights:
    return [_cast(v, w.dtype) for v, w in zip(values, like, strict=True)]


def rebase(current: Sequence[np.ndarray], base: Sequence[np.ndarray],
           delta: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The delta, trained on ``base``, as a float64 step from ``current``:
    ``(base + delta) - current``; just the delta when ``base`` is ``current``."""
    return [(b + d) - c for c, b, d in zip(widen(current), widen(base), widen(delta),
                                           strict=True)]


def fedavg(base: Sequence[np.ndarray], deltas: Sequence[Sequence[np.ndarray]],
           weights: Sequence[int | float]) -> Weights:
    """``base + sum(w_i * delta_i) / sum(w)``, summed in the given order; ``base``
    unchanged when the weights sum to zero."""
    total = sum(weights)
    if total <= 0:
        return [np.array(b, copy=True) for b in base]
    shares = [w / total for w in weights]
    out = []
    for t, b in enumerate(base):
        acc = np.zeros(b.shape, dtype=np.float64)
        for share, delta in zip(shares, deltas, strict=True):
            acc += share * np.asarray(delta[t], dtype=np.float64)
        out.append(np.asarray(b, dtype=np.float64) + acc)
    return cast_like(out, base)


def _stacked(deltas: Sequence[Sequence[np.ndarray]], t: int) -> np.ndarray:
    return np.stack([np.asarray(d[t], dtype=np.float64) for d in deltas])


def coordinate_median(base: Sequence[np.ndarray],
                      deltas: Sequence[Sequence[np.ndarray]]) -> Weights:
    """``base`` plus the per-coordinate median of the deltas (mean of the middle two
    when their number is even)."""
    if not deltas:
        return [np.array(b, copy=True) for b in base]
    out = [np.asarray(b, dtype=np.float64) + np.median(_stacked(deltas, t), axis=0)
           for t, b in enumerate(base)]
    return cast_like(out, base)


def trim_count(n: int, trim_fraction: float) -> int:
    """Values dropped at each end of ``n``: the fraction's share, in integer arithmetic,
    always leaving at least one value."""
    return min(round(trim_fraction * MICRO) * n // MICRO, max(n - 1, 0) // 2)


def trimmed_mean(base: Sequence[np.ndarray], deltas: Sequence[Sequence[np.ndarray]],
                 trim_fraction: float) -> Weights:
    """``base`` plus the per-coordinate mean of the deltas once the largest and the
    smallest ``trim_count`` values are dropped."""
    if not deltas:
        return [np.array(b, copy=True) for b in base]
    n = len(deltas)
    cut = trim_count(n, trim_fraction)
    out = []
    for t, b in enumerate(base):
        kept = np.sort(_stacked(deltas, t), axis=0)[cut:n - cut]
        acc = np.zeros(b.shape, dtype=np.float64)
        for row in kept:
            acc += row
        out.append(np.asarray(b, dtype=np.float64) + acc / len(kept))
    return cast_like(out, base)


def _squared_distance(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return math.fsum(float(np.square(np.asarray(x, dtype=np.float64) -
                                     np.asarray(y, dtype=np.float64)).sum())
                     for x, y in zip(a, b, strict=True))


def krum_select(deltas: Sequence[Sequence[np.ndarray]], f: int, m: int) -> list[int]:
    """Multi-Krum: the indices (ascending) of the ``m`` deltas closest to their
    ``n - f - 2`` nearest neighbours; ``m = 0`` means ``n - f``. Both counts are kept
    within 1..n (and neighbours within 1..n-1), so a small round still selects; ties go
    to the earlier index."""
    n = len(deltas)
    if n == 0:
        return []
    neighbours = min(max(n - f - 2, 1), n - 1)
    distance = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            distance[i][j] = distance[j][i] = _squared_distance(deltas[i], deltas[j])
    scores = [math.fsum(sorted(distance[i][j] for j in range(n) if j != i)[:neighbours])
              for i in range(n)]
    count = min(max(m if m > 0 else n - f, 1), n)
    return sorted(sorted(range(n), key=lambda i: (scores[i], i))[:count])


def staleness_discount(alpha_micro: int, staleness: int) -> int:
    """FedAsync's mixing weight, in millionths, for an update ``staleness`` versions
    behind: ``alpha / (1 + staleness)``, in integer arithmetic."""
    return alpha_micro // (1 + max(staleness, 0))


def bap_merge(current: Sequence[np.ndarray], base: Sequence[np.ndarray],
              delta: Sequence[np.ndarray], a: float) -> Weights:
    """``(1 - a) * current + a * (base + delta)``: the trained model, built on the base it
    was trained on, mixed into the latest one."""
    mixed = [(1.0 - a) * c + a * (b + d)
             for c, b, d in zip(widen(current), widen(base), widen(delta), strict=True)]
    return cast_like(mixed, current)


@dataclass(frozen=True)
class Contribution:
    """One accepted update as aggregation sees it."""

    key: bytes
    """The trainer's public key: fixes the order of every sum."""
    delta: Sequence[np.ndarray]
    """Step from the weights being updated (``rebase`` it first if it is stale)."""
    weight: int
    """Samples x trust, a non-negative integer."""


def _ordered(contributions: Sequence[Contribution]) -> list[Contribution]:
    ordered = sorted(contributions, key=lambda c: c.key)
    keys = [c.key for c in ordered]
    if len(set(keys)) != len(keys):
        raise ValueError("two contributions from one trainer")
    return ordered


def _equal_shares(ordered: Sequence[Contribution]) -> Shares:
    return [(c.key, MICRO // len(ordered)) for c in ordered]


def _weighted(base: Sequence[np.ndarray], ordered: Sequence[Contribution],
              chosen: Sequence[int]) -> tuple[Weights, Shares]:
    """FedAvg over the ``chosen`` contributions; the others get a zero share."""
    weights = [ordered[i].weight for i in chosen]
    shares = dict(zip(chosen, shares_micro(weights) or [0] * len(chosen), strict=True))
    merged = fedavg(base, [ordered[i].delta for i in chosen], weights)
    return merged, [(c.key, shares.get(i, 0)) for i, c in enumerate(ordered)]


@dataclass(frozen=True)
class Aggregator:
    """One aggregation rule, shaped like a Flower strategy's ``aggregate_fit``; its
    settings are the dataclass fields, written in genesis under ``[app.aggregator]``."""

    genesis_keys: ClassVar[dict[str, str]] = {}
    """Field -> the flat ``[app]`` setting that also holds it (older genesis files)."""

    def combine(self, base: Sequence[np.ndarray], contributions: Sequence[Contribution]
                ) -> tuple[Weights, Shares]:
        """The new weights and each contributor's share in millionths (key order),
        independent of the order ``contributions`` come in."""
        ordered = _ordered(contributions)
        return self.aggregate(base, ordered)

    def aggregate(self, base: Sequence[np.ndarray], ordered: Sequence[Contribution]
                  ) -> tuple[Weights, Shares]:
        """``combine`` on contributions already sorted by key, with distinct keys."""
        raise NotImplementedError


AGGREGATORS: Registry[type[Aggregator]] = Registry("aggregator")


@AGGREGATORS.register("fedavg")
@dataclass(frozen=True)
class FedAvg(Aggregator):
    """The mean of the deltas weighted by samples x trust (McMahan et al. 2017)."""

    def aggregate(self, base: Sequence[np.ndarray], ordered: Sequence[Contribution]
                  ) -> tuple[Weights, Shares]:
        return _weighted(base, ordered, range(len(ordered)))


@AGGREGATORS.register("median")
@dataclass(frozen=True)
class Median(Aggregator):
    """The per-coordinate median (Yin et al. 2018); equal shares."""

    def aggregate(self, base: Sequence[np.ndarray], ordered: Sequence[Contribution]
                  ) -> tuple[Weights, Shares]:
        return (coordinate_median(base, [c.delta for c in ordered]),
                _equal_shares(ordered))


@AGGREGATORS.register("trimmed_mean")
@dataclass(frozen=True)
class TrimmedMean(Aggregator):
    """The per-coordinate trimmed mean (Yin et al. 2018); equal shares."""

    trim_fraction: float = 0.1
    """The fraction of values dropped at each end, per coordinate."""
    genesis_keys: ClassVar[dict[str, str]] = {"trim_fraction": "trim_fraction"}

    def aggregate(self, base: Sequence[np.ndarray], ordered: Sequence[Contribution]
                  ) -> tuple[Weights, Shares]:
        return (trimmed_mean(base, [c.delta for c in ordered], self.trim_fraction),
                _equal_shares(ordered))


@AGGREGATORS.register("krum")
@dataclass(frozen=True)
class MultiKrum(Aggregator):
    """FedAvg over the Multi-Krum selection (Blanchard et al. 2017)."""

    f: int = 1
    """How many Byzantine updates to tolerate."""
    m: int = 0
    """How many updates to average; 0 means all but ``f``."""
    genesis_keys: ClassVar[dict[str, str]] = {"f": "krum_f", "m": "krum_m"}

    def aggregate(self, base: Sequence[np.ndarray], ordered: Sequence[Contribution]
                  ) -> tuple[Weights, Shares]:
        return _weighted(base, ordered,
                         krum_select([c.delta for c in ordered], self.f, self.m))
