"""How a validator judges the updates of a round: the validation rules, by name.

Votes are cast off-chain, but every validator should judge by the same rule, so genesis
names it in ``[app.validation]`` (``name`` and the rule's settings, its dataclass
fields). A rule's ``judge`` gets the round's base weights, the round's candidate updates
(those not rejected), which of them to vote on, and a ``Scorer`` that scores any weights
on the validator's hold-out shard; it answers a ``Verdict`` per update. A rule that
looks at one update at a time implements ``decide`` on the base's and base + delta's
scores; a rule that compares an update with the others of its round sets
``round_wise``, so the voter waits for the round's updates before voting. A new rule is
one class registered here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import numpy as np

from flobc.ml.models import N_CLASSES
from flobc.protocol.txs import SCORE_RANGE
from flobc.registry import Registry

CHANCE_LOSS = math.log(N_CLASSES)
"""Cross-entropy of a model that knows nothing (a uniform guess)."""
CHANCE_ACCURACY = 1 / N_CLASSES


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy on the hold-out shard, of the base model and of base + delta."""

    base_loss: float
    base_accuracy: float
    new_loss: float
    new_accuracy: float


Metrics = Mapping[str, float]
"""A model's scores on a data set: always ``loss`` (lower is better), and the task's
other metrics by name (``accuracy`` for classification)."""


class Scorer(Protocol):
    """Scores weights on the validator's hold-out shard."""

    def __call__(self, weights: Sequence[np.ndarray], /) -> Metrics: ...


@dataclass(frozen=True)
class Candidate:
    """An update of the round being judged: its trainer, its delta (relative to the
    round's base) and the sample count it claims."""

    trainer: bytes
    delta: Sequence[np.ndarray]
    samples: int


@dataclass(frozen=True)
class Verdict:
    """A validator's vote on one update: accept or reject, and a score in thousandths
    (carried on chain for reporting; only ``accept`` is counted)."""

    accept: bool
    score_milli: int


def plus(base: Sequence[np.ndarray], delta: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``base + delta``, summed in float64 and cast back to each tensor's dtype."""
    return [(np.asarray(b, dtype=np.float64) + d).astype(b.dtype)
            for b, d in zip(base, delta, strict=True)]


def loss_gain_milli(e: Evaluation) -> int:
    """The loss improvement in thousandths, clamped to what a vote can carry."""
    gain = e.base_loss - e.new_loss
    score = round(gain * 1000) if math.isfinite(gain) else SCORE_RANGE[0]
    return min(max(score, SCORE_RANGE[0]), SCORE_RANGE[1])


class ValidationRule:
    """One way of judging a round's updates; settings are the dataclass fields."""

    round_wise: ClassVar[bool] = False
    """True when an update is judged against the round's other candidates."""

    def judge(self, base: Sequence[np.ndarray], candidates: Sequence[Candidate],
              todo: Sequence[bytes], score: Scorer) -> dict[bytes, Verdict]:
        """A verdict for each trainer in ``todo`` (all of whose updates are among
        ``candidates``). By default, each update alone: ``decide`` on the base's and
        base + delta's scores."""
        base_metrics = score(base)
        by_trainer = {c.trainer: c for c in candidates}
        verdicts = {}
        for trainer in todo:
            new = score(plus(base, by_trainer[trainer].delta))
            e = Evaluation(base_metrics["loss"], base_metrics.get("accuracy", 0.0),
                           new["loss"], new.get("accuracy", 0.0))
            verdicts[trainer] = Verdict(*self.decide(e))
        return verdicts

    def decide(self, e: Evaluation) -> tuple[bool, int]:
        """(accept, score_milli) for one evaluation, for rules that judge each update
        alone."""
        raise NotImplementedError

    def table(self) -> dict[str, object]:
        """The rule as its genesis ``[app.validation]`` table: its name and settings."""
        return {"name": VALIDATION_RULES.name_of(type(self)),
                **asdict(self)}  # type: ignore[call-overload]


VALIDATION_RULES: Registry[type[ValidationRule]] = Registry("validation rule")


@VALIDATION_RULES.register("chance_bound")
@dataclass(frozen=True)
class ChanceBound(ValidationRule):
    """An update may give up at most ``give_up`` of the base model's advantage over
    chance, in loss and in accuracy, plus a small slack (both models are scored on the
    same images, so the difference is not very noisy):

        new_loss <= base_loss + give_up * max(CHANCE_LOSS - base_loss, 0) + loss_slack
        new_accuracy >= base_accuracy - give_up * max(base_accuracy - CHANCE_ACCURACY, 0)
                        - accuracy_slack

    Why not a fixed ratio: one epoch of SGD at the zoo's learning rate leaves an honest
    model noisy late in training (seen on mnist_cnn: loss 0.17 -> 0.63, accuracy 0.97
    -> 0.78 on a shard), while in round 1, where the base is at chance, an update
    sign-flipped and scaled x4 raises the loss by as little as 0.025 to 0.1 when
    trainers hold 1,000 samples each (an honest one lowers it by 0.1 to 0.8). Measured
    against chance, the first is well inside the bound and the second outside it,
    which is why the slack is small; sign-flipped updates in later rounds (loss 4 to
    13) and N(0, 1) noise (loss in the thousands) are far outside. The score is the
    loss improvement in thousandths.
    """

    give_up: float = 0.5
    loss_slack: float = 0.02
    accuracy_slack: float = 0.05

    def decide(self, e: Evaluation) -> tuple[bool, int]:
        loss_bound = (e.base_loss + self.give_up * max(CHANCE_LOSS - e.base_loss, 0)
                      + self.loss_slack)
        accuracy_bound = (e.base_accuracy
                          - self.give_up * max(e.base_accuracy - CHANCE_ACCURACY, 0)
                          - self.accuracy_slack)
        accept = (math.isfinite(e.new_loss) and e.new_loss <= loss_bound
                  and e.new_accuracy >= accuracy_bound)
        return accept, loss_gain_milli(e)
