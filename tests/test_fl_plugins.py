"""A new aggregation rule is one class and one registration: genesis selects it and
block execution's combine step uses it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from flobc.crypto import sha256
from flobc.launch.cli import build_parser
from flobc.protocol.aggregation import AGGREGATORS, Aggregator, Contribution, Shares, Weights
from flobc.protocol.settings import FLConfig


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
