"""What a trainer does on its own: its share of the data, local training into a delta,
Byzantine transforms of it, and the journal that survives restarts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flobc.config import ConfigError
from flobc.ml.data import load_dataset, split
from flobc.ml.learner import KerasLearner
from flobc.ml.models import build_model, initial_weights
from flobc.ml.weights import spec
from flobc.registry import UnknownChoice
from flobc.trainer.byzantine import RoundView, make_behaviour
from flobc.trainer.config import TrainerConfig
from flobc.trainer.journal import KEEP_ROUNDS, SENDING, SUBMITTED, Journal
from flobc.trainer.loop import local_data, milli, round_seed, train_round
from flobc.trainer.verify import VerifiedModel

DELTA = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), np.ones(4, np.float32)]


def config(tmp_path: Path, index: int, **kw: object) -> TrainerConfig:
    return TrainerConfig(home=tmp_path, validators=("http://127.0.0.1:1",),
                         partition_index=index, partitions=4, seed=3, **kw)  # type: ignore[arg-type]


# --- Byzantine transforms ---------------------------------------------------------------


def transform(name: str, delta: list[np.ndarray], *, scale: float | None = None,
              seed: int = 0) -> list[np.ndarray]:
    return make_behaviour(name, scale).delta(delta, np.random.default_rng(seed), RoundView(1))


def test_honest_keeps_the_delta():
    out = transform("honest", DELTA)
    assert all(np.array_equal(a, b) and a is not b for a, b in zip(out, DELTA, strict=True))


def test_sign_flip_negates_and_scales_in_the_same_dtype():
    out = transform("sign_flip", DELTA, scale=3.0)
    for got, d in zip(out, DELTA, strict=True):
        assert got.dtype == np.float32 and np.array_equal(got, -3 * d)
    assert np.array_equal(transform("sign_flip", DELTA)[1], -4 * DELTA[1])


def test_noise_is_large_seeded_and_keeps_shapes():
    big = [np.zeros((200, 100), np.float32)]
    a, b, c = (transform("noise", big, seed=s)[0] for s in (1, 1, 2))
    assert a.dtype == np.float32 and a.shape == (200, 100)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.95 < float(a.std()) < 1.05
    assert 4.5 < float(transform("noise", big, scale=5.0, seed=1)[0].std()) < 5.5


def test_an_unknown_behaviour_is_refused():
    with pytest.raises(UnknownChoice, match="unknown behaviour 'evil'; known: honest"):
        transform("evil", DELTA)


# --- data, seeds, metrics ---------------------------------------------------------------


def test_trainers_get_disjoint_shares_of_the_training_split_only(tmp_path: Path):
    shares = [local_data(config(tmp_path, i), split_seed=0) for i in range(4)]
    splits = split(load_dataset("mnist_5k"), seed=0)
    assert sum(len(s) for s in shares) == len(splits.train)

    def rows(ds) -> set[bytes]:
        return {x.tobytes() for x in ds.x}
    seen: set[bytes] = set()
    for share in shares:
        mine = rows(share)
        assert not mine & seen
        seen |= mine
    assert not seen & rows(splits.validator_holdout)
    assert not seen & rows(splits.test)


def test_a_bad_partitioner_option_is_a_clear_error(tmp_path: Path):
    from flobc.config import ConfigError

    with pytest.raises(ConfigError, match="partitioner 'dirichlet' has no option beta"):
        config(tmp_path, 0, partitioner="dirichlet", partitioner_options={"beta": 1})


def test_round_seeds_are_stable_and_distinct():
    seeds = {round_seed(3, i, r) for i in range(4) for r in range(1, 50)}
    assert len(seeds) == 4 * 49
    assert round_seed(3, 1, 7) == round_seed(3, 1, 7)


def test_metrics_in_thousandths_are_clamped():
    assert milli(0.8766, 1000) == 877
    assert milli(1.2, 1000) == 1000
    assert milli(-0.1, 1000) == 0


# --- local training -----------------------------------------------------------------------


def test_a_round_trains_into_a_float32_delta_from_the_base(tmp_path: Path):
    base_weights = initial_weights("mnist_mlp", 0)
    base = VerifiedModel(0, b"", base_weights, 0)
    learner = KerasLearner(build_model("mnist_mlp", 0))
    cfg = config(tmp_path, 2, batch_size=64)
    data = local_data(cfg, split_seed=0)
    update = train_round(learner, base, data, cfg, round_=1)
    assert update.samples == len(data) == 1000
    assert np.isfinite(update.loss) and 0 <= update.accuracy <= 1
    assert spec(update.delta) == spec(base_weights)
    trained = learner.get_weights()
    for d, t, b in zip(update.delta, trained, base_weights, strict=True):
        assert d.dtype == np.float32 and np.array_equal(d, t - b)
    assert any(np.abs(d).max() > 0 for d in update.delta)

    flipped = train_round(learner, base, data, config(tmp_path, 2, batch_size=64,
                                                      behaviour="sign_flip"), round_=1)
    honest_norm = np.sqrt(sum(float(np.square(d).sum()) for d in update.delta))
    flipped_norm = np.sqrt(sum(float(np.square(d).sum()) for d in flipped.delta))
    assert flipped_norm == pytest.approx(4 * honest_norm, rel=0.05)
    assert float(np.vdot(flipped.delta[0], update.delta[0])) < 0


# --- journal ------------------------------------------------------------------------------


def test_the_journal_survives_a_restart_and_stays_small(tmp_path: Path):
    journal = Journal(tmp_path)
    assert journal.get(1) is None
    journal.record(1, SENDING, "aa" * 32)
    journal.record(1, SUBMITTED, "bb" * 32)
    assert Journal(tmp_path).get(1) == (SUBMITTED, "bb" * 32)
    for r in range(2, KEEP_ROUNDS + 3):
        journal.record(r, SUBMITTED, None)
    reopened = Journal(tmp_path)
    assert reopened.get(1) is None and reopened.get(2) is None
    assert reopened.get(KEEP_ROUNDS + 2) == (SUBMITTED, None)
    assert [p.name for p in tmp_path.iterdir()] == ["journal.json"]


def test_a_corrupt_journal_is_a_clear_error(tmp_path: Path):
    (tmp_path / "journal.json").write_text(json.dumps({"rounds": {"x": {}}}))
    with pytest.raises(ConfigError, match="journal.json is not a trainer journal"):
        Journal(tmp_path)
