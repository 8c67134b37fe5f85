"""The validation rules' ``judge`` on a real model and real label-skewed data.

Ten trainers hold two label shards each of the embedded MNIST sample (most see two
digits), train one local epoch of mnist_mlp from the same base, as trainers do, and
FedAvg moves the base on for the next round; each of the four validators' hold-out
shards scores through ``ShardScorer``, as the evaluator worker and the experiment
harness do. Judged alone against a balanced shard (``chance_bound``) these honest
updates look harmful; judged inside their round (``influence``) they do not, while a
scaled (x10) or sign-flipped (x4) update still is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from flobc.config import ConfigError
from flobc.ml.data import Dataset, load_dataset, split, validator_shard
from flobc.ml.partition import partition
from flobc.protocol.aggregation import fedavg
from flobc.protocol.settings import FLConfig
from flobc.protocol.validation import (
    SCORE_RANGE,
    VALIDATION_RULES,
    Candidate,
    ChanceBound,
    Influence,
    Scorer,
    plus,
)

MODEL, SEED = "mnist_mlp", 0
TRAINERS, VALIDATORS, ROUNDS = 10, 4, 2
Weights = list[np.ndarray]
Round = tuple[Weights, list[Candidate]]


@pytest.fixture(scope="module")
def learner():  # one TensorFlow model for the whole module
    from flobc.ml.learner import learner_for

    return learner_for(MODEL, SEED)


@pytest.fixture(scope="module")
def shards() -> list[Dataset]:
    holdout = split(load_dataset("mnist_5k"), seed=SEED).validator_holdout
    return [validator_shard(holdout, i, VALIDATORS) for i in range(VALIDATORS)]


@pytest.fixture(scope="module")
def scorers(learner, shards: list[Dataset]) -> list[Scorer]:
    from flobc.ml.learner import ShardScorer

    return [ShardScorer(learner, s) for s in shards]


@pytest.fixture(scope="module")
def rounds(learner) -> list[Round]:
    """ROUNDS rounds of honest label-skewed updates, each on the FedAvg of the last."""
    from flobc.ml.models import initial_weights

    train = split(load_dataset("mnist_5k"), seed=SEED).train
    parts = partition("shards", train.y, TRAINERS, seed=SEED)
    base = initial_weights(MODEL, SEED)
    played = []
    for r in range(ROUNDS):
        candidates = []
        for t, part in enumerate(parts):
            learner.set_weights(base)
            learner.fit(train.x[part], train.y[part], epochs=1, batch_size=32, seed=100 * r + t)
            delta = [new - old for new, old in zip(learner.get_weights(), base, strict=True)]
            candidates.append(Candidate(bytes([t]) * 32, delta, len(part)))
        played.append((base, candidates))
        base = fedavg(base, [c.delta for c in candidates], [c.samples for c in candidates])
    return played


@dataclass
class Scores:
    """A scorer of plain arithmetic (not a model), to pin a rule's decision exactly."""

    score: Callable[[Sequence[np.ndarray]], dict[str, float]]
    chance: dict[str, float] = field(default_factory=lambda: {"loss": math.inf})

    def __call__(self, weights: Sequence[np.ndarray], /) -> dict[str, float]:
        return self.score(weights)


def everyone(candidates: Sequence[Candidate]) -> list[bytes]:
    return [c.trainer for c in candidates]


def with_first(candidates: list[Candidate], attack: Callable[[np.ndarray], np.ndarray]
               ) -> list[Candidate]:
    """The round with trainer 0's update replaced by ``attack`` of it."""
    first = candidates[0]
    return [Candidate(first.trainer, [attack(d) for d in first.delta], first.samples),
            *candidates[1:]]


def test_trainers_hold_few_labels(rounds: list[Round]) -> None:
    train = split(load_dataset("mnist_5k"), seed=SEED).train
    parts = partition("shards", train.y, TRAINERS, seed=SEED)
    assert all(len(np.unique(train.y[p])) <= 3 for p in parts)


def test_chance_bound_rejects_most_honest_label_skewed_updates(
        rounds: list[Round], scorers: list[Scorer]) -> None:
    """The defect the round-wise rule is for: each update alone forgets most digits."""
    for base, candidates in rounds:
        for score in scorers:
            verdicts = ChanceBound().judge(base, candidates, everyone(candidates), score)
            assert sum(v.accept for v in verdicts.values()) <= 1, verdicts


def test_influence_accepts_every_honest_label_skewed_update(
        rounds: list[Round], scorers: list[Scorer]) -> None:
    for n, (base, candidates) in enumerate(rounds, 1):
        for i, score in enumerate(scorers):
            verdicts = Influence().judge(base, candidates, everyone(candidates), score)
            assert all(v.accept for v in verdicts.values()), (n, i, verdicts)
            for v in verdicts.values():  # the score is what the round loses without it
                assert v.evaluation is not None
                influence = v.evaluation.new_loss - v.evaluation.base_loss
                assert v.score_milli == round(-1000 * influence)


@pytest.mark.parametrize(("name", "attack"), [("scaled x10", lambda d: 10 * d),
                                              ("sign-flipped x4", lambda d: -4 * d)])
def test_influence_rejects_boosted_updates_and_keeps_the_honest_ones(
        rounds: list[Round], scorers: list[Scorer], name: str,
        attack: Callable[[np.ndarray], np.ndarray]) -> None:
    for n, (base, candidates) in enumerate(rounds, 1):
        attacked = with_first(candidates, attack)
        for i, score in enumerate(scorers):
            verdicts = Influence().judge(base, attacked, everyone(attacked), score)
            bad = verdicts.pop(attacked[0].trainer)
            assert not bad.accept and bad.score_milli < 0, (name, n, i, bad)
            assert all(v.accept for v in verdicts.values()), (name, n, i, verdicts)


def test_the_norm_bound_alone_stops_a_scaled_update(rounds: list[Round],
                                                    scorers: list[Scorer]) -> None:
    base, candidates = rounds[0]
    attacked = with_first(candidates, lambda d: 10 * d)
    lenient = Influence(tolerance=1e9)
    assert not lenient.judge(base, attacked, everyone(attacked)[:1], scorers[0])[
        attacked[0].trainer].accept
    unbounded = Influence(tolerance=1e9, norm_factor=1e9)
    assert unbounded.judge(base, attacked, everyone(attacked)[:1], scorers[0])[
        attacked[0].trainer].accept


def test_one_candidate_is_judged_against_the_base(rounds: list[Round],
                                                  scorers: list[Scorer]) -> None:
    base, candidates = rounds[1]
    score = scorers[0]
    alone = candidates[:1]
    v = Influence().judge(base, alone, everyone(alone), score)[alone[0].trainer]
    assert v.evaluation is not None
    assert v.evaluation.base_loss == score(base)["loss"]
    assert v.evaluation.new_loss == score(plus(base, alone[0].delta))["loss"]
    flipped = with_first(alone, lambda d: -4 * d)
    assert not Influence().judge(base, flipped, everyone(flipped), score)[
        alone[0].trainer].accept


def test_only_the_updates_asked_for_are_judged(rounds: list[Round],
                                               scorers: list[Scorer]) -> None:
    base, candidates = rounds[0]
    some = everyone(candidates)[3:5]
    for rule in (ChanceBound(), Influence()):
        assert sorted(rule.judge(base, candidates, some, scorers[0])) == some


def test_a_non_finite_model_is_rejected_with_the_worst_score(rounds: list[Round]) -> None:
    base, candidates = rounds[0]

    def broken(weights: Sequence[np.ndarray]) -> dict[str, float]:
        return {"loss": float("inf"), "accuracy": 0.0}

    v = Influence().judge(base, candidates, everyone(candidates)[:1], Scores(broken))
    assert [(x.accept, x.score_milli) for x in v.values()] == [(False, SCORE_RANGE[0])]


def test_influence_is_registered_with_its_settings_and_is_the_default() -> None:
    assert VALIDATION_RULES.get("influence") is Influence and Influence.round_wise
    assert not ChanceBound.round_wise
    assert FLConfig(model_v0_hash=bytes(32), admission="open").validation == Influence()
    app = {"model_v0_hash": "00" * 32, "admission": "open",
           "validation": {"name": "influence", "tolerance": 0.1, "wait_fraction": 0.25}}
    config = FLConfig.from_app(app)
    assert config.validation == Influence(tolerance=0.1, wait_fraction=0.25)
    assert config.validation.vote_wait_fraction() == 0.25
    assert FLConfig.from_app({**app, "validation": config.to_app_dict()["validation"]}
                             ) == config
    with pytest.raises(ConfigError, match="unknown setting 'give_up' of influence"):
        FLConfig.from_app({**app, "validation": {"name": "influence", "give_up": 0.5}})


def test_the_influence_tolerance_is_per_unit_of_weight_in_the_round() -> None:
    """An update may cost the round ``tolerance`` times its share of the aggregate: the
    same harm is allowed to an update of four trainers' weight that is refused to one of
    a hundredth. Scored by a quadratic loss, so each influence is exact arithmetic."""
    target = np.array([1.0, -2.0, 0.5])

    def quadratic(weights: Sequence[np.ndarray]) -> dict[str, float]:
        return {"loss": float(np.square(weights[0] - target).sum())}

    base = [np.zeros(3)]
    rng = np.random.default_rng(0)
    candidates = [Candidate(bytes([i]) * 32, [target + rng.normal(0, 1.5, 3)], samples)
                  for i, samples in enumerate((400, 400, 100, 100, 10, 10, 1))]
    total = sum(c.samples for c in candidates)
    measured = Influence(tolerance=1e9).judge(base, candidates, everyone(candidates),
                                              Scores(quadratic))
    per_weight = {}
    for c in candidates:
        e = measured[c.trainer].evaluation
        assert e is not None
        per_weight[c.trainer] = (e.new_loss - e.base_loss) / (c.samples / total)
    harmful = [t for t, v in per_weight.items() if v > 0]
    assert len(harmful) >= 2, per_weight
    tolerance = float(np.median([per_weight[t] for t in harmful]))
    verdicts = Influence(tolerance=tolerance).judge(base, candidates, everyone(candidates),
                                                    Scores(quadratic))
    assert {t for t, v in verdicts.items() if v.accept} == {
        t for t, v in per_weight.items() if v <= tolerance}


def test_a_step_as_long_as_its_samples_make_it_is_within_the_norm_bound() -> None:
    """Many samples, many SGD steps, a long delta: within the bound per sample. The same
    length from a trainer of ordinary size is over both bounds."""
    unit = np.ones(4) / 2.0  # norm 1
    ordinary = [Candidate(bytes([i]) * 32, [unit * (1 + i / 10)], 100) for i in range(6)]
    big = Candidate(b"B" * 32, [unit * 10], 1000)
    boosted = Candidate(b"X" * 32, [unit * 10], 100)
    candidates = [*ordinary, big, boosted]
    rule = Influence(tolerance=1e9)  # only the norm bound decides
    verdicts = rule.judge([np.zeros(4)], candidates, everyone(candidates),
                          Scores(lambda w: {"loss": float(np.square(w[0] - 1).sum())}))
    assert verdicts[big.trainer].accept
    assert not verdicts[boosted.trainer].accept
    assert all(verdicts[c.trainer].accept for c in ordinary)
