"""A new aggregation rule, attack, validation rule or sync scheme is one class and one
registration: genesis or the command line selects it, and block execution, the trainer
or the validators' vote uses it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pytest

from flobc.config import ConfigError
from flobc.crypto import sha256
from flobc.launch.cli import build_parser
from flobc.protocol.aggregation import AGGREGATORS, Aggregator, Contribution, Shares, Weights
from flobc.protocol.settings import FLConfig
from flobc.protocol.sync import SYNC_SCHEMES, SyncScheme, SyncSettings
from flobc.protocol.validation import VALIDATION_RULES, ChanceBound, Evaluation, ValidationRule
from flobc.trainer.byzantine import BEHAVIOURS, Behaviour, RoundView, make_behaviour
from flobc.trainer.update import LocalUpdate


@dataclass(frozen=True)
class KeepBase(Aggregator):
    """Ignores every update: the model stays where it was, nobody earns a share."""

    def aggregate(self, base: Sequence[np.ndarray], ordered: Sequence[Contribution]
                  ) -> tuple[Weights, Shares]:
        return [np.array(b, copy=True) for b in base], [(c.key, 0) for c in ordered]


@pytest.fixture
def keep_base() -> Iterator[None]:
    AGGREGATORS.add("keep_base", KeepBase)
    yield
    AGGREGATORS.remove("keep_base")


def test_a_registered_aggregator_is_selected_by_genesis_and_used(keep_base: None) -> None:
    config = FLConfig.from_app({"model_v0_hash": sha256(b"v0").hex(), "admission": "open",
                                "aggregator": {"name": "keep_base"}})
    base = [np.zeros(3, dtype=np.float32)]
    update = [Contribution(b"k" * 32, [np.ones(3, dtype=np.float32)], 10)]
    weights, shares = config.make_aggregator().combine(base, update)
    assert weights[0].tolist() == [0.0, 0.0, 0.0] and shares == [(b"k" * 32, 0)]
    fedavg, _ = FLConfig(config.model_v0_hash, admission="open").make_aggregator().combine(
        base, update)
    assert fedavg[0].tolist() == [1.0, 1.0, 1.0]


def test_the_command_line_offers_a_registered_aggregator(keep_base: None) -> None:
    args = build_parser().parse_args(["cluster", "up", "--aggregator", "keep_base"])
    assert args.aggregator == "keep_base"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", "up", "--aggregator", "no_such_rule"])


@dataclass(frozen=True)
class ZeroDoubled(Behaviour):
    """Submits a delta of zeros and claims twice its samples."""

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        return [np.zeros_like(d) for d in delta]

    def submit(self, update: LocalUpdate) -> LocalUpdate:
        return replace(update, samples=2 * update.samples)


@pytest.fixture
def zero_doubled() -> Iterator[None]:
    BEHAVIOURS.add("zero_doubled", ZeroDoubled)
    yield
    BEHAVIOURS.remove("zero_doubled")


def test_a_registered_behaviour_is_offered_and_applied(zero_doubled: None) -> None:
    args = build_parser().parse_args(["cluster", "up", "--byzantine", "1:zero_doubled"])
    assert args.byzantine == [(1, "zero_doubled")]
    assert build_parser().parse_args(["trainer", "join", "--home", "h", "--behaviour",
                                      "zero_doubled"]).behaviour == "zero_doubled"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", "up", "--byzantine", "1:no_such_attack"])
    attack = make_behaviour("zero_doubled")
    delta = attack.delta([np.ones((2, 2), dtype=np.float32)], np.random.default_rng(0),
                         RoundView(1))
    assert delta[0].dtype == np.float32 and delta[0].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert attack.submit(LocalUpdate(delta, 5, 0.1, 0.9)).samples == 10


@dataclass(frozen=True)
class LossFloor(ValidationRule):
    """Accepts an update whose loss is at most ``ceiling``, scoring it 7."""

    ceiling: float = 1.0

    def decide(self, e: Evaluation) -> tuple[bool, int]:
        return e.new_loss <= self.ceiling, 7


@pytest.fixture
def loss_floor() -> Iterator[None]:
    VALIDATION_RULES.add("loss_floor", LossFloor)
    yield
    VALIDATION_RULES.remove("loss_floor")


def test_a_registered_validation_rule_is_selected_by_genesis(loss_floor: None) -> None:
    app = {"model_v0_hash": sha256(b"v0").hex(), "admission": "open",
           "validation": {"name": "loss_floor", "ceiling": 3.0}}
    config = FLConfig.from_app(app)
    assert config.validation == LossFloor(3.0)
    assert FLConfig.from_app(config.to_app_dict()) == config
    chance_bound = ChanceBound()
    worse = Evaluation(base_loss=1.0, base_accuracy=0.9, new_loss=2.5, new_accuracy=0.5,
                       chance_loss=2.3, chance_accuracy=0.1)
    assert config.validation.decide(worse) == (True, 7)
    assert chance_bound.decide(worse) == (False, -1500)
    with pytest.raises(ConfigError, match="app.validation: unknown setting 'give_up' of "
                                          "loss_floor; its settings: ceiling"):
        FLConfig.from_app({**app, "validation": {"name": "loss_floor", "give_up": 0.5}})
    with pytest.raises(ConfigError, match="app.validation.ceiling must be a finite number"):
        FLConfig.from_app({**app, "validation": {"name": "loss_floor", "ceiling": "high"}})
    with pytest.raises(ConfigError, match="app.validation.name: unknown validation rule"):
        FLConfig.from_app({**app, "validation": {"name": "no_such_rule"}})


class Eager(SyncScheme):
    """Closes a round as soon as one update is decided."""

    def enough_decided(self, config: SyncSettings, expected: int, decided: int) -> bool:
        return decided >= 1


@pytest.fixture
def eager() -> Iterator[None]:
    SYNC_SCHEMES.add("eager", Eager)
    yield
    SYNC_SCHEMES.remove("eager")


def test_a_registered_sync_scheme_is_selected_by_genesis(eager: None) -> None:
    app = {"model_v0_hash": sha256(b"v0").hex(), "admission": "open",
           "sync": {"name": "eager", "staleness": 5}}
    config = FLConfig.from_app(app)
    assert (config.sync, config.staleness, type(config.scheme)) == ("eager", 5, Eager)
    assert config.scheme.enough_decided(config, expected=4, decided=1)
    assert config.scheme.base_problem(config, version=7, base=2) is None
    assert "the limit is 5 (eager)" in str(config.scheme.base_problem(config, 8, 2))
    bsp = FLConfig(config.model_v0_hash, admission="open")
    assert not bsp.scheme.enough_decided(bsp, expected=4, decided=1)
    assert build_parser().parse_args(["cluster", "up", "--sync", "eager"]).sync == "eager"
    with pytest.raises(ConfigError, match="app.sync: unknown setting 'alpha' of eager"):
        FLConfig.from_app({**app, "sync": {"name": "eager", "alpha": 0.5}})
    ssp = FLConfig.from_app({**app, "sync": {"name": "ssp", "min_fraction": 0.5}})
    assert (ssp.sync, ssp.ssp_min_fraction) == ("ssp", 0.5)
