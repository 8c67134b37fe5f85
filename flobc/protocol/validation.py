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

from flobc.protocol.aggregation import fedavg
from flobc.protocol.txs import SCORE_RANGE
from flobc.registry import Registry


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy on the hold-out shard, of the base model, of base + delta, and
    of a model that knows nothing (the task's chance level: for classification a uniform
    guess, for regression the targets' mean; accuracy 0 where the task has none)."""

    base_loss: float
    base_accuracy: float
    new_loss: float
    new_accuracy: float
    chance_loss: float
    chance_accuracy: float


Metrics = Mapping[str, float]
"""A model's scores on a data set: always ``loss`` (lower is better), and the task's
other metrics by name (``accuracy`` for classification)."""


class Scorer(Protocol):
    """Scores weights on the validator's hold-out shard; ``chance`` is what a model that
    knows nothing scores there."""

    chance: Metrics

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
    (carried on chain for reporting; only ``accept`` is counted). ``evaluation``, when
    the rule gives it, is what the score was measured from: the loss and accuracy of the
    two models it compared (for logs)."""

    accept: bool
    score_milli: int
    evaluation: Evaluation | None = None


def evaluation(base: Metrics, new: Metrics, chance: Metrics) -> Evaluation:
    """The Evaluation of two models' scores, beside the chance level."""
    return Evaluation(base["loss"], base.get("accuracy", 0.0), new["loss"],
                      new.get("accuracy", 0.0), chance["loss"], chance.get("accuracy", 0.0))


def plus(base: Sequence[np.ndarray], delta: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``base + delta``, summed in float64 and cast back to each tensor's dtype."""
    return [(np.asarray(b, dtype=np.float64) + d).astype(b.dtype)
            for b, d in zip(base, delta, strict=True)]


def loss_gain_milli(e: Evaluation) -> int:
    """The loss improvement in thousandths, clamped to what a vote can carry."""
    return milli(e.base_loss - e.new_loss)


def milli(gain: float) -> int:
    """``gain`` in thousandths, clamped to what a vote can carry; not finite: the worst."""
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
            e = evaluation(base_metrics, new, score.chance)
            verdicts[trainer] = Verdict(*self.decide(e), e)
        return verdicts

    def decide(self, e: Evaluation) -> tuple[bool, int]:
        """(accept, score_milli) for one evaluation, for rules that judge each update
        alone."""
        raise NotImplementedError

    def vote_wait_fraction(self) -> float:
        """For a round-wise rule: how much of ``round_deadline_ms``, from a round's
        opening, a validator waits for the round's expected updates before judging those
        it has."""
        return 0.0

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

        new_loss <= base_loss + give_up * max(chance_loss - base_loss, 0) + loss_slack
        new_accuracy >= base_accuracy - give_up * max(base_accuracy - chance_accuracy, 0)
                        - accuracy_slack

    (chance: the scores of a model that knows nothing on the same shard, from the task's
    objective: for 10 classes, loss ln 10 and accuracy 0.1).

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
        loss_bound = (e.base_loss + self.give_up * max(e.chance_loss - e.base_loss, 0)
                      + self.loss_slack)
        accuracy_bound = (e.base_accuracy
                          - self.give_up * max(e.base_accuracy - e.chance_accuracy, 0)
                          - self.accuracy_slack)
        accept = (math.isfinite(e.new_loss) and e.new_loss <= loss_bound
                  and e.new_accuracy >= accuracy_bound)
        return accept, loss_gain_milli(e)


def _norm(delta: Sequence[np.ndarray]) -> float:
    return math.sqrt(math.fsum(float(np.square(d, dtype=np.float64).sum()) for d in delta))


@VALIDATION_RULES.register("influence")
@dataclass(frozen=True)
class Influence(ValidationRule):
    """The influence of each update's own step on the round's aggregate, with a norm
    bound against the round's median.

    With A the sample-weighted FedAvg of the round's candidates and A_0i the same with
    update i replaced by a zero update of the same weight (so A - A_0i = share_i *
    delta_i, ``share_i`` its samples over the round's), on the validator's hold-out
    shard:

        influence_i = loss(base + A) - loss(base + A_0i)

    and the update is rejected when ``influence_i > tolerance * share_i`` (it makes the
    round's model worse than sending nothing would, by more than ``tolerance`` per unit
    of its weight) or when its norm is over the norm bound: ``||delta_i|| > norm_factor
    * median`` of the candidates' norms and also ``||delta_i|| / samples_i >
    norm_factor * median`` of their norms per sample. (A trainer with many samples takes
    many SGD steps: under quantity skew, mnist_cnn, round 1, trainers of 740, 811 and
    1,836 samples had 3.9, 3.8 and 11.9 times the median norm, and the bound on the norm
    alone excluded all three; per sample they are below the median. A model replacement
    is over both bounds unless it also claims many samples, and then its weight makes
    its influence large.) A is taken over the candidates within the norm bound (and the
    judged update):
    a model-replacement step ten times an honest one would otherwise be most of A, and
    on top of it an honest step can raise the loss. The score is ``-influence_i`` in
    thousandths. With one candidate, A_0i is no step at all: base + delta against base.

    Why against a zero update and not leaving the update out (leave-one-out): leaving
    an update out also gives the others its weight, so under quantity skew, where one
    trainer's many samples make its step the round's largest, every smaller honest step
    looked harmful for diluting it (mnist_cnn, Dirichlet(0.5) sizes, round 1: trainers
    of 740 and 811 samples at +0.17 and +0.10, and 7 of 10 honest trainers excluded in
    30 rounds). Against a zero update of the same weight the same steps score -0.47 and
    -0.70 per unit of share, and the 10 label-shard trainers of ``shards:2`` -0.11 to
    -0.74 (leave-one-out: up to +0.43), while a sign flip x4 of a tenth of the round
    scores +1.0 in round 1 and +3.3 to +4.3 later; the highest honest score seen was
    +0.41, a trainer of 74 samples. Why per unit of share: the influence grows with the
    update's weight, so one tolerance fits ten trainers and four. Judged alone against
    a balanced shard an honest label-skewed update looks harmful (it forgets the labels
    its trainer lacks); inside the round's aggregate it pulls its own labels up while
    the others hold theirs. ``norm_factor`` 3 bounds model replacement, whose norm is
    10x or more an honest one, and a sign flip x4, while an honest norm stays within 3x
    of the round's median. No cosine check: against the mean of the others, honest
    updates scored 0.10 to 0.62 and sign flips -0.53 to -0.28 on mnist_cnn, but on
    mnist_mlp honest ones fell to -0.13 while sign flips x4 were at -0.06.

    References: influence of a training point (Cook 1977; Koh & Liang, "Understanding
    Black-box Predictions via Influence Functions", ICML 2017), here computed exactly on
    whole updates, since a round has few. FLTrust (Cao et al., NDSS 2021) weights
    updates by their cosine similarity with a reference update trained on the server's
    own data and scales their norms to the reference's; here the norm reference is the
    median of the round's candidates, so a validator needs no training step, and an
    update over the bound is rejected rather than rescaled, since only the chain
    aggregates. The tolerance is in units of the model's own loss, with no constant of
    one task.

    ``wait_fraction``: how much of ``round_deadline_ms`` (from the round's opening) a
    validator waits for the round's expected updates before judging those it has, so
    that the votes still commit before the deadline.
    """

    round_wise: ClassVar[bool] = True

    tolerance: float = 1.0
    norm_factor: float = 3.0
    wait_fraction: float = 0.5

    def vote_wait_fraction(self) -> float:
        return self.wait_fraction

    def judge(self, base: Sequence[np.ndarray], candidates: Sequence[Candidate],
              todo: Sequence[bytes], score: Scorer) -> dict[bytes, Verdict]:
        deltas = [c.delta for c in candidates]
        norms = [_norm(d) for d in deltas]
        per_sample = [n / c.samples for n, c in zip(norms, candidates, strict=True)]
        bound = self.norm_factor * float(np.median(norms))
        sample_bound = self.norm_factor * float(np.median(per_sample))
        within = [j for j in range(len(candidates))
                  if norms[j] <= bound or per_sample[j] <= sample_bound]
        kept_score = None
        index = {c.trainer: i for i, c in enumerate(candidates)}
        verdicts = {}
        for trainer in todo:
            i = index[trainer]
            group = within if i in within else [*within, i]
            if group is within and kept_score is not None:
                with_all = kept_score
            else:
                with_all = score(fedavg(base, [deltas[j] for j in group],
                                        [candidates[j].samples for j in group]))
                if group is within:
                    kept_score = with_all
            zeroed = [[np.zeros_like(t) for t in deltas[j]] if j == i else deltas[j]
                      for j in group]
            without = score(fedavg(base, zeroed, [candidates[j].samples for j in group]))
            influence = with_all["loss"] - without["loss"]
            if math.isnan(influence):  # both infinite: this update cannot rescue it
                influence = math.inf
            share = candidates[i].samples / sum(candidates[j].samples for j in group)
            accept = influence <= self.tolerance * share and i in within
            e = evaluation(without, with_all, score.chance)
            verdicts[trainer] = Verdict(accept, milli(-influence), e)
        return verdicts
