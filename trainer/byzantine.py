"""Byzantine trainer behaviours, for experiments and tests of the validators' vote.

A behaviour is one class in ``BEHAVIOURS``. It may change the trainer's local data
before training, the trained delta, or the update as submitted (samples and metrics);
each hook's default leaves its input alone, so a behaviour overrides only what it
corrupts. What it may know of the round beyond its own work (the other trainers'
deltas, for colluding and copying attacks) comes in a ``RoundView``. The built-in
attacks train honestly and corrupt the delta, so the update still passes every cheap
check (shapes, dtypes, finite values) and only the validators' evaluation on held-out
data can reject it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from flobc.ml.data import Dataset
from flobc.registry import Registry
from flobc.trainer.update import LocalUpdate


def _no_peers() -> list[list[np.ndarray]]:
    return []


@dataclass(frozen=True)
class RoundView:
    """What a behaviour may see of the round it submits to."""

    round: int
    peers: Callable[[], list[list[np.ndarray]]] = field(default=_no_peers)
    """Other trainers' deltas for this round, computed only when asked for: in the
    experiment harness every honest trainer's actual delta (the worst case); on a live
    chain what the trainer can learn itself (an estimate from its own data, or
    updates already submitted)."""


@dataclass(frozen=True)
class Behaviour:
    """What a trainer does to its honest work; every hook defaults to nothing."""

    scale: float
    """The behaviour's strength (its meaning is the behaviour's own)."""

    default_scale: ClassVar[float] = 1.0
    scale_help: ClassVar[str] = ""
    """What ``scale`` means, for the command line's help; empty if it is unused."""

    def data(self, data: Dataset, rng: np.random.Generator) -> Dataset:
        """The local data trained on."""
        return data

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        """The delta to submit, in the trained delta's dtypes and shapes."""
        return [np.array(d) for d in delta]

    def submit(self, update: LocalUpdate) -> LocalUpdate:
        """The update as submitted: its delta, sample count and reported metrics."""
        return update


BEHAVIOURS: Registry[type[Behaviour]] = Registry("behaviour")
BEHAVIOURS.add("honest", Behaviour)


@BEHAVIOURS.register("sign_flip")
class SignFlip(Behaviour):
    """The delta negated and scaled, pushing the model away from the optimum."""

    default_scale = 4.0
    scale_help = "factor of the negated update"

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        return [(-self.scale * d).astype(d.dtype) for d in delta]


@BEHAVIOURS.register("noise")
class Noise(Behaviour):
    """The delta drowned in large Gaussian noise."""

    scale_help = "standard deviation of the added noise"

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        return [(d + rng.normal(0.0, self.scale, d.shape)).astype(d.dtype) for d in delta]


def make_behaviour(name: str, scale: float | None = None) -> Behaviour:
    """The behaviour registered as ``name``, at ``scale`` or its default strength."""
    kind = BEHAVIOURS.get(name)
    return kind(kind.default_scale if scale is None else scale)
