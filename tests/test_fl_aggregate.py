"""Aggregation and trust: the arithmetic every validator must repeat bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flobc.ml.weights import encode_weights
from flobc.protocol.aggregation import (
    AGGREGATORS,
    Contribution,
    bap_merge,
    coordinate_median,
    fedavg,
    krum_select,
    rebase,
    staleness_discount,
    trim_count,
    trimmed_mean,
)
from flobc.protocol.reputation import (
    MICRO,
    is_excluded,
    penalised,
    rewarded,
    shares_micro,
)
from flobc.registry import UnknownChoice

RULES = ("fedavg", "median", "trimmed_mean", "krum")

RULES = AGGREGATORS.names()
ROBUST_SETTINGS = {"trimmed_mean": {"trim_fraction": 0.2}, "krum": {"f": 1}}


def combine(rule: str, base: list[np.ndarray], contributions: list[Contribution],
            **settings: float) -> tuple[list[np.ndarray], list[tuple[bytes, int]]]:
    """The registered rule ``rule`` with ``settings`` (those it has) applied."""
    kind = AGGREGATORS.get(rule)
    own = {k: v for k, v in settings.items() if k in kind.genesis_keys}
    return kind(**own).combine(base, contributions)


def _model(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float64),
            rng.integers(-5, 5, size=2).astype(np.int32)]


def _delta(rng: np.random.Generator, like: list[np.ndarray], scale: float = 0.1
           ) -> list[np.ndarray]:
    return [(rng.normal(size=w.shape) * scale).astype(w.dtype) if w.dtype.kind == "f"
            else rng.integers(-2, 3, size=w.shape).astype(w.dtype) for w in like]


def test_fedavg_is_the_weighted_mean_of_deltas_in_each_tensors_dtype() -> None:
    rng = np.random.default_rng(1)
    base = _model(rng)
    deltas = [_delta(rng, base) for _ in range(3)]
    weights = [600 * 500_000, 300 * 700_000, 100 * 100_000]
    out = fedavg(base, deltas, weights)
    total = sum(weights)
    for t, b in enumerate(base):
        step = sum((w / total) * d[t].astype(np.float64) for w, d in zip(weights, deltas,
                                                                       strict=True))
        expected = b.astype(np.float64) + step
        if b.dtype.kind == "i":
            expected = np.rint(expected)
        np.testing.assert_array_equal(out[t], expected.astype(b.dtype))
        assert out[t].dtype == b.dtype


def test_zero_total_weight_leaves_the_base_unchanged() -> None:
    rng = np.random.default_rng(2)
    base = _model(rng)
    out = fedavg(base, [_delta(rng, base)], [0])
    assert encode_weights(out) == encode_weights(base)
    assert encode_weights(fedavg(base, [], [])) == encode_weights(base)
    merged, shares = combine("fedavg", base, [Contribution(b"a", _delta(rng, base), 0)])
    assert encode_weights(merged) == encode_weights(base) and shares == [(b"a", 0)]


def test_integer_tensors_are_rounded_and_clipped_never_wrapped() -> None:
    base = [np.array([2**31 - 10, -(2**31) + 10, 5], dtype=np.int32),
            np.array([2**62], dtype=np.int64)]
    deltas = [[np.array([100, -100, 1], dtype=np.int32), np.array([2**62], dtype=np.int64)]]
    out = fedavg(base, deltas, [1])
    assert out[0].tolist() == [2**31 - 1, -(2**31), 6]
    assert 0 < int(out[1][0]) <= 2**63 - 1


def test_rebase_applies_a_stale_delta_to_the_model_it_was_trained_on() -> None:
    current = [np.array([10.0, 10.0], dtype=np.float32)]
    base = [np.array([4.0, 6.0], dtype=np.float32)]
    delta = [np.array([1.0, -1.0], dtype=np.float32)]
    # The trained model is base + delta = [5, 5]: a step of -5 from the current model.
    assert rebase(current, base, delta)[0].tolist() == [-5.0, -5.0]
    assert rebase(current, current, delta)[0].tolist() == [1.0, -1.0]


def test_bap_merge_mixes_the_trained_model_with_a_staleness_discount() -> None:
    current = [np.array([1.0, 2.0], dtype=np.float32)]
    base = [np.array([0.0, 0.0], dtype=np.float32)]
    delta = [np.array([4.0, 8.0], dtype=np.float32)]
    assert staleness_discount(500_000, 0) == 500_000
    assert staleness_discount(500_000, 3) == 125_000
    a = staleness_discount(600_000, 1) / MICRO
    merged = bap_merge(current, base, delta, a)
    assert merged[0].dtype == np.float32
    np.testing.assert_array_equal(merged[0], np.array([0.7 * 1 + 0.3 * 4, 0.7 * 2 + 0.3 * 8],
                                                      dtype=np.float32))


@pytest.mark.parametrize(("n", "fraction", "cut"), [
    (1, 0.4, 0), (2, 0.4, 0), (3, 0.45, 1), (10, 0.1, 1), (10, 0.29, 2), (100, 0.29, 29),
    (5, 0.0, 0)])
def test_trim_count_always_keeps_a_value(n: int, fraction: float, cut: int) -> None:
    assert trim_count(n, fraction) == cut


def _honest_and_outlier(rng: np.random.Generator) -> tuple[list[np.ndarray], list]:
    base = [np.zeros((8,), dtype=np.float32), np.zeros((2, 2), dtype=np.float32)]
    honest = [[np.full(w.shape, 1.0, dtype=np.float32) + rng.normal(size=w.shape).astype(
        np.float32) * 0.01 for w in base] for _ in range(4)]
    outlier = [np.full(w.shape, -100.0, dtype=np.float32) for w in base]
    return base, honest + [outlier]


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum"])
def test_robust_rules_resist_one_outlier_where_fedavg_does_not(rule: str) -> None:
    base, deltas = _honest_and_outlier(np.random.default_rng(3))
    contributions = [Contribution(bytes([i]) * 32, d, 100) for i, d in enumerate(deltas)]
    robust, shares = combine(rule, base, contributions, trim_fraction=0.2, f=1)
    plain, _ = combine("fedavg", base, contributions)
    assert all(np.abs(w - 1.0).max() < 0.05 for w in robust)
    assert all(np.abs(w - 1.0).max() > 10 for w in plain)
    if rule == "krum":
        assert shares[-1] == (bytes([4]) * 32, 0)  # the outlier was not selected


def test_krum_selects_the_clustered_deltas_and_handles_tiny_rounds() -> None:
    _, deltas = _honest_and_outlier(np.random.default_rng(4))
    assert krum_select(deltas, 1, 0) == [0, 1, 2, 3]
    assert krum_select(deltas, 1, 2) in ([0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3])
    assert krum_select(deltas[:1], 1, 0) == [0]
    assert krum_select(deltas[:2], 3, 0) == [0]  # tie goes to the earlier index
    assert krum_select([], 1, 0) == []


def test_median_and_trimmed_mean_of_a_known_set() -> None:
    base = [np.zeros(2, dtype=np.float64)]
    deltas = [[np.array([v, -v])] for v in (1.0, 2.0, 3.0, 10.0)]
    assert coordinate_median(base, deltas)[0].tolist() == [2.5, -2.5]
    assert trimmed_mean(base, deltas, 0.25)[0].tolist() == [2.5, -2.5]
    assert trimmed_mean(base, deltas, 0.0)[0].tolist() == [4.0, -4.0]


def test_combine_refuses_a_trainer_twice_and_unknown_rules() -> None:
    base = [np.zeros(2, dtype=np.float32)]
    twice = [Contribution(b"a", base, 1), Contribution(b"a", base, 1)]
    with pytest.raises(ValueError, match="two contributions from one trainer"):
        combine("fedavg", base, twice)
    with pytest.raises(UnknownChoice, match="unknown aggregator 'mean'"):
        combine("mean", base, twice[:1])


@st.composite
def _rounds(draw: st.DrawFn) -> tuple[list[np.ndarray], list[Contribution], list[int]]:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 6))
    rng = np.random.default_rng(seed)
    base = _model(rng)
    weights = draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n))
    keys = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=n, max_size=n,
                         unique=True))
    contributions = [Contribution(k, _delta(rng, base, scale=draw(st.sampled_from(
        [0.0, 1e-3, 1.0, 1e3]))), w) for k, w in zip(keys, weights, strict=True)]
    order = draw(st.permutations(range(n)))
    return base, contributions, order


@settings(max_examples=60, deadline=None)
@given(_rounds(), st.sampled_from(RULES))
def test_results_do_not_depend_on_arrival_order(case: tuple, rule: str) -> None:
    base, contributions, order = case
    with np.errstate(all="raise"):  # no division by zero, no invalid values, anywhere
        first = combine(rule, base, contributions, trim_fraction=0.2)
        again = combine(rule, base, contributions, trim_fraction=0.2)
        shuffled = combine(rule, base, [contributions[i] for i in order], trim_fraction=0.2)
    assert encode_weights(first[0]) == encode_weights(again[0]) == encode_weights(shuffled[0])
    assert first[1] == shuffled[1]
    assert sum(share for _, share in first[1]) <= MICRO


@settings(max_examples=300, deadline=None)
@given(st.integers(0, MICRO), st.integers(0, MICRO))
def test_trust_stays_in_range_and_moves_the_right_way(trust: int, rate: int) -> None:
    up, down = rewarded(trust, rate), penalised(trust, rate)
    assert trust <= up <= MICRO and 0 <= down <= trust
    if rate > 0 and trust > 0:
        assert down < trust


def test_trust_arithmetic_and_exclusion() -> None:
    assert rewarded(500_000, 100_000) == 550_000
    assert penalised(500_000, 500_000) == 250_000
    assert penalised(1, 500_000) == 0  # a positive penalty always bites
    assert is_excluded(99_999, 100_000) and not is_excluded(100_000, 100_000)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2**60), max_size=20))
def test_shares_never_divide_by_zero(amounts: list[int]) -> None:
    shares = shares_micro(amounts)
    if sum(amounts) == 0:
        assert shares is None
    else:
        assert shares is not None and MICRO - len(amounts) < sum(shares) <= MICRO
