"""Byzantine trainer behaviours, for experiments and tests of the validators' vote.

A behaviour is one class in ``BEHAVIOURS``. It may change the trainer's local data
before training, the trained delta, or the update as submitted (samples and metrics);
each hook's default leaves its input alone, so a behaviour overrides only what it
corrupts. What it may know of the round beyond its own work (the other trainers'
deltas, for colluding and copying attacks) comes in a ``RoundView``. One instance
serves a trainer for the whole run, so a behaviour may remember earlier rounds. The
built-in attacks poison the data, corrupt the delta or free-ride, in the model's shapes
and dtypes with finite values, so the update passes every cheap check and only the
validators' evaluation (or a norm bound) can reject it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
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
    trainers: int = 0
    """How many trainers take part in the round; 0 if unknown."""
    colluders: int = 0
    """How many of them collude in this behaviour (this one included); 0 if unknown."""


@dataclass(frozen=True)
class Behaviour:
    """What a trainer does to its honest work; every hook defaults to nothing."""

    scale: float
    """The behaviour's strength (its meaning is the behaviour's own)."""

    default_scale: ClassVar[float] = 1.0
    scale_help: ClassVar[str] = ""
    """What ``scale`` means, for the command line's help; empty if it is unused."""
    copies_submitted: ClassVar[bool] = False
    """On a live chain, whether ``RoundView.peers`` are the updates other trainers have
    already committed in the round (to copy them), rather than stand-ins the trainer
    trains itself on its own data (to estimate honest statistics)."""

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


@BEHAVIOURS.register("label_flip")
class LabelFlip(Behaviour):
    """Data poisoning: trains honestly on flipped labels (Tolpegin et al., "Data Poisoning
    Attacks Against Federated Learning Systems", ESORICS 2020).

    The paper flips one source class to one target class; here every class present in
    the local data is moved along one seeded random cycle through those classes, so no
    class keeps its label and any number of classes (two or more) works.
    """

    def data(self, data: Dataset, rng: np.random.Generator) -> Dataset:
        if data.task != "classification":
            raise ValueError(f"label_flip needs class labels; this dataset is "
                             f"{data.task}")
        classes = np.unique(data.y)
        if len(classes) < 2:
            raise ValueError(f"label_flip needs at least two classes in the local data; "
                             f"it holds only {classes.tolist()}")
        order = rng.permutation(classes)
        relabel = dict(zip(order.tolist(), np.roll(order, -1).tolist(), strict=True))
        flipped = np.array([relabel[label] for label in data.y.tolist()], dtype=data.y.dtype)
        return replace(data, y=flipped)


@BEHAVIOURS.register("scaling")
class Scaling(Behaviour):
    """Model replacement (Bagdasaryan et al., "How To Backdoor Federated Learning",
    AISTATS 2020): the delta boosted by ``scale`` so that it outweighs the others in
    the average.

    The paper boosts a backdoored model by about n / learning rate; here the boosted
    delta is the trainer's honest one, so the attack tests whether one large step is
    bounded (norm clipping, robust aggregation), not whether a backdoor survives.
    """

    default_scale = 10.0
    scale_help = "boost of the honest update"

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        return [(self.scale * d).astype(d.dtype) for d in delta]


@BEHAVIOURS.register("zero")
class Zero(Behaviour):
    """Free rider that sends a delta of zeros (Lin et al., "Free-riders in Federated
    Learning: Attacks and Defenses", 2019, the plain free rider).

    The paper's free rider trains nothing; this one still trains (the loop is shared)
    and discards the work, and reports its honest sample count and metrics.
    """

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        return [np.zeros_like(d) for d in delta]


@BEHAVIOURS.register("replay")
@dataclass(frozen=True)
class Replay(Behaviour):
    """Free rider that resubmits its own first delta in every later round (the stale
    update of Fraboni et al., "Free-rider Attacks on Model Aggregation in Federated
    Learning", AISTATS 2021, which replays the global model's past change instead).

    It needs one instance per trainer for the whole run: the first delta is kept in it.
    """

    _first: list[np.ndarray] = field(default_factory=list, init=False, repr=False,
                                     compare=False)

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        if not self._first:
            self._first.extend(np.array(d) for d in delta)
        return [np.array(d) for d in self._first]


@BEHAVIOURS.register("copy")
class Copy(Behaviour):
    """Free rider that submits another trainer's delta of the round as its own (the
    copying free rider of Lin et al., 2019).

    It copies one of ``view.peers()`` picked by the round's seed; with no peer to copy
    (it submits first) it sends zeros, as a free rider with no work of its own would.
    On a live chain it waits for another update of the round until shortly before the
    round's deadline.
    """

    copies_submitted = True

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        peers = _matching(view.peers(), delta)
        if not peers:
            return [np.zeros_like(d) for d in delta]
        return [np.array(p, dtype=d.dtype) for p, d in
                zip(peers[int(rng.integers(len(peers)))], delta, strict=True)]


@BEHAVIOURS.register("alie")
class ALittleIsEnough(Behaviour):
    """Colluders send mean - z * std of the honest deltas, coordinate by coordinate
    (Baruch et al., "A Little Is Enough: Circumventing Defenses For Distributed
    Learning", NeurIPS 2019).

    ``z`` is the paper's z_max = Phi^-1((n - s) / n) with s = floor(n / 2 + 1) - m for n
    trainers of which m collude (``RoundView.trainers`` and ``colluders``), unless a
    scale is set; when n or m is unknown (a live chain does not say how many collude) it
    is ``FALLBACK_Z``, one standard deviation. The paper takes the statistics over the
    workers' gradients; here over the peers' deltas (sample standard deviation), or over
    the trainer's own delta alone if it sees none. The paper's sign of the shift is
    free; this takes the minus side. The paper's colluders share one estimate and send
    the same vector; on a live chain each estimates from its own data, so theirs differ.
    """

    default_scale = 0.0
    scale_help = "z, standard deviations off the honest mean; 0 takes the paper's z_max"
    FALLBACK_Z: ClassVar[float] = 1.0

    def z(self, view: RoundView) -> float:
        if self.scale > 0:
            return self.scale
        n, m = view.trainers, view.colluders
        if n < 2 or m < 1:
            return self.FALLBACK_Z
        s = max(n // 2 + 1 - m, 1)
        return NormalDist().inv_cdf((n - s) / n)

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        peers = _matching(view.peers(), delta) or [list(delta)]
        z = self.z(view)
        out = []
        for i, d in enumerate(delta):
            stacked = np.stack([np.asarray(p[i], dtype=np.float64) for p in peers])
            std = stacked.std(axis=0, ddof=1) if len(peers) > 1 else 0.0
            out.append((stacked.mean(axis=0) - z * std).astype(d.dtype))
        return out


@BEHAVIOURS.register("ipm")
class InnerProductManipulation(Behaviour):
    """Colluders send -epsilon times the mean of the honest deltas (Xie et al., "Fall of
    Empires: Breaking Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2020).

    The paper shows that a small epsilon (0.1) keeps the update inside what median- and
    Krum-like rules select, while turning a plain mean around needs epsilon over
    (n - m) / m for m colluders among n; the default 0.5 sits between (it is also the
    Blades benchmark's default). With no peers to see, the trainer's own delta stands
    in for the mean.
    """

    default_scale = 0.5
    scale_help = "epsilon, factor of the negated honest mean"

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        peers = _matching(view.peers(), delta) or [list(delta)]
        return [(-self.scale * np.mean([np.asarray(p[i], dtype=np.float64) for p in peers],
                                       axis=0)).astype(d.dtype)
                for i, d in enumerate(delta)]


def _matching(peers: list[list[np.ndarray]], delta: Sequence[np.ndarray]
              ) -> list[list[np.ndarray]]:
    """The peers' deltas that have the trained delta's shapes (a live chain's may not)."""
    shapes = [np.shape(d) for d in delta]
    return [p for p in peers if len(p) == len(shapes)
            and all(np.shape(t) == s for t, s in zip(p, shapes, strict=True))]


def make_behaviour(name: str, scale: float | None = None) -> Behaviour:
    """The behaviour registered as ``name``, at ``scale`` or its default strength."""
    kind = BEHAVIOURS.get(name)
    return kind(kind.default_scale if scale is None else scale)
