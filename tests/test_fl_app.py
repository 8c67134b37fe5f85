"""The learning state machine driven through real ledger commits, as consensus drives it.

Each block is executed by FLApp over the ledger's state overlay and committed with the
blobs it created, exactly as the replica host does; trainers and validators sign with
real keys, and deltas are plain numpy arrays (validators never need TensorFlow).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flobc import codec
from flobc.config import ConfigError, Genesis, ValidatorInfo
from flobc.consensus.application import BlockState, CommittedState
from flobc.crypto import PrivateKey, sha256
from flobc.ml.weights import decode_weights, encode_weights
from flobc.protocol.reputation import MICRO, penalised, rewarded
from flobc.protocol.settings import FLConfig
from flobc.protocol.state import (
    Meta,
    read_meta,
    read_trainer,
    read_update,
    round_updates,
    trainer_key,
)
from flobc.protocol.txs import make_close, make_register, make_update, make_vote
from flobc.storage.ledger import Ledger
from flobc.validator.fl.app import FLApp
from flobc.validator.fl.queries import NotFound, QueryError

CHAIN = "fl-test"
VALIDATORS = [PrivateKey(bytes([100 + i]) * 32) for i in range(7)]
TRAINERS = [PrivateKey(bytes([1 + i]) * 32) for i in range(6)]
A, B, C, D, E, F = TRAINERS
T0 = 1_000_000
DEADLINE = 10_000
V0 = [np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32),
      np.random.default_rng(1).normal(size=3).astype(np.float32),
      np.random.default_rng(2).normal(size=2)]
Weights = list[np.ndarray]


def make_config(v0: Weights = V0, **settings: object) -> FLConfig:
    values: dict = {"trainers": tuple(t.public_key for t in TRAINERS),
                    "round_deadline_ms": DEADLINE, **settings}
    return FLConfig(sha256(encode_weights(v0)), **values)


class Chain:
    """One validator's ledger and application, fed blocks the way the host feeds them."""

    def __init__(self, path: Path, config: FLConfig, v0: Weights = V0, validators: int = 4
                 ) -> None:
        self.ledger = Ledger(path)
        blob = encode_weights(v0)
        self.ledger.put_blob(blob)  # the node stores genesis-model.bin before it starts
        self.validators = VALIDATORS[:validators]
        genesis = Genesis(CHAIN, 0, tuple(ValidatorInfo(f"v{i}", k.public_key)
                                          for i, k in enumerate(self.validators)),
                          app=config.to_app_dict())
        self.app = FLApp.from_genesis(genesis, blob)
        self.time = T0
        self.checkpoints: list[int] = []

    def block(self, txs: Sequence[bytes] = (), blobs: Sequence[bytes] = (),
              at: int | None = None) -> list[str | None]:
        """Execute and commit the next block; blobs arrive first, as with their txs."""
        for blob in blobs:
            self.ledger.put_blob(blob)
        self.time = self.time if at is None else at
        height = self.ledger.height + 1
        overlay = self.ledger.state.overlay()
        state = BlockState(self.ledger, overlay)
        results = self.app.execute_block(height, self.time, list(txs), state)
        raw = codec.pack([height, list(txs)])
        self.ledger.commit_block(height, raw, b"cert", sha256(raw), self.time,
                                 [sha256(tx) for tx in txs], [codec.pack(r) for r in results],
                                 overlay, state.new_blobs)
        if state.checkpoint_requested:
            self.checkpoints.append(height)
        self.time += 1
        return results

    def check(self, tx: bytes, blobs: Sequence[bytes] = ()) -> str | None:
        return self.app.check_tx(tx, CommittedState(self.ledger, {sha256(b): b for b in blobs}))

    def query(self, path: str, **params: str) -> object:
        return self.app.query(path, params, CommittedState(self.ledger))

    @property
    def root(self) -> bytes:
        return self.ledger.state.root

    @property
    def meta(self) -> Meta:
        meta = read_meta(self.ledger.state)
        assert meta is not None
        return meta

    def model(self, version: int) -> dict:
        return self.query("model", version=str(version))  # type: ignore[return-value]

    def weights(self, version: int) -> Weights:
        blob = self.ledger.blob(bytes.fromhex(self.model(version)["hash"]))
        assert blob is not None
        return decode_weights(blob, max_bytes=len(blob))

    def status(self, trainer: PrivateKey, round_: int | None = None) -> str:
        update = read_update(self.ledger.state, round_ or self.meta.round, trainer.public_key)
        assert update is not None
        return update.status

    def register(self, *trainers: PrivateKey) -> list[str | None]:
        return self.block([make_register(t, 0, CHAIN) for t in trainers])

    def update(self, trainer: PrivateKey, delta: Weights, *, samples: int = 100,
               round_: int | None = None, base: int | None = None, nonce: int = 0
               ) -> tuple[bytes, bytes]:
        """A signed update and its blob (not yet submitted)."""
        blob = encode_weights(delta)
        tx = make_update(trainer, CHAIN, self.meta.round if round_ is None else round_,
                         self.meta.version if base is None else base, sha256(blob), samples,
                         400, 800, nonce)
        return tx, blob

    def submit(self, trainer: PrivateKey, delta: Weights, **kw: int) -> list[str | None]:
        tx, blob = self.update(trainer, delta, **kw)
        return self.block([tx], [blob])

    def votes(self, trainer: PrivateKey, delta: Weights, verdicts: Sequence[bool],
              round_: int | None = None) -> list[bytes]:
        """One vote per validator, in validator order, on ``trainer``'s update."""
        digest = sha256(encode_weights(delta))
        return [make_vote(v, CHAIN, self.meta.round if round_ is None else round_,
                          trainer.public_key, digest, ok, 900 if ok else 100)
                for v, ok in zip(self.validators, verdicts, strict=False)]

    def close(self, validator: PrivateKey | None = None, round_: int | None = None,
              at: int | None = None, deadline_ms: int | None = None) -> list[str | None]:
        key = validator or self.validators[0]
        deadline = self.meta.deadline_ms if deadline_ms is None else deadline_ms
        return self.block([make_close(key, CHAIN, round_ or self.meta.round, deadline)], at=at)


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[Iterator[Path]]:
    yield (tmp_path / f"ledger-{i}" for i in range(100))


def new_chain(paths: Iterator[Path], validators: int = 4, v0: Weights = V0,
              **settings: object) -> Chain:
    return Chain(next(paths), make_config(v0, **settings), v0, validators)


def delta_of(seed: int, scale: float = 0.1, like: Weights = V0) -> Weights:
    rng = np.random.default_rng(1000 + seed)
    return [(rng.normal(size=w.shape) * scale).astype(w.dtype) for w in like]


ALL_ACCEPT = [True] * 7


def accepted_round(chain: Chain, deltas: dict[PrivateKey, Weights],
                   samples: dict[PrivateKey, int] | None = None) -> list[str | None]:
    """Submit every delta, then every validator accepts every update, in one block."""
    updates = [chain.update(t, d, samples=(samples or {}).get(t, 100))
               for t, d in deltas.items()]
    assert chain.block([tx for tx, _ in updates], [b for _, b in updates]) == (
        [None] * len(updates))
    return chain.block([v for t, d in deltas.items() for v in chain.votes(t, d, ALL_ACCEPT)])


# --- the first block and a full round ----------------------------------------------------


def test_the_first_block_writes_version_0_and_opens_round_1(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    with pytest.raises(NotFound, match="has not executed its first block"):
        chain.query("model_latest")
    assert chain.check(make_register(A, 0, CHAIN)) is None
    assert chain.block() == []
    assert chain.meta == Meta(1, 0, T0, T0 + DEADLINE, ())
    latest = chain.query("model_latest")
    assert latest == {"version": 0, "hash": sha256(encode_weights(V0)).hex(), "round": 0,
                      "height": 1, "time_ms": T0, "parent": None, "updates": []}
    assert chain.checkpoints == [1]


def _expected_fedavg(base: Weights, deltas: list[Weights], weights: list[int]) -> Weights:
    """A straightforward numpy recomputation: base + sum(w_i delta_i) / sum(w)."""
    total = sum(weights)
    out = []
    for t, b in enumerate(base):
        step = np.zeros(b.shape)
        for w, d in zip(weights, deltas, strict=True):
            step = step + (w / total) * d[t].astype(np.float64)
        out.append((b.astype(np.float64) + step).astype(b.dtype))
    return out


def test_a_full_bsp_round_gives_the_same_version_1_on_two_ledgers(
        paths: Iterator[Path]) -> None:
    chains = [new_chain(paths), new_chain(paths)]
    trainers = [A, B, C, D]
    deltas = {t: delta_of(i) for i, t in enumerate(trainers)}
    samples = {t: 100 * (i + 1) for i, t in enumerate(trainers)}
    for chain in chains:
        assert chain.register(*trainers) == [None] * 4
        assert chain.meta.expected == tuple(sorted(t.public_key for t in trainers))
        results = accepted_round(chain, deltas, samples)
        # 3 of 4 accepts decide an update (n - f); the fourth vote comes too late.
        assert results == [None, None, None, "the update is already accepted"] * 4
        assert chain.meta.round == 2 and chain.meta.version == 1
        assert chain.checkpoints == [1, 3]  # genesis version and version 1 are certified
    first, second = chains
    assert first.root == second.root
    assert first.model(1)["hash"] == second.model(1)["hash"]
    ordered = sorted(trainers, key=lambda t: t.public_key)
    trust = rewarded(500_000, 100_000)
    weights = [samples[t] * trust for t in ordered]
    expected = _expected_fedavg(V0, [deltas[t] for t in ordered], weights)
    for got, want in zip(first.weights(1), expected, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    record = first.model(1)
    assert record["parent"] == 0 and record["round"] == 1
    assert [u["trainer"] for u in record["updates"]] == [t.public_key.hex() for t in ordered]
    assert [u["weight_micro"] for u in record["updates"]] == [
        w * MICRO // sum(weights) for w in weights]


def test_two_ledgers_fed_the_same_blocks_agree_at_every_height(
        paths: Iterator[Path]) -> None:
    chains = [new_chain(paths, sync="bap"), new_chain(paths, sync="bap")]
    author = chains[0]
    tx_a, blob_a = author.update(A, delta_of(1), round_=1, base=0)
    tx_b, blob_b = author.update(B, delta_of(2), round_=1, base=0)
    script = [([make_register(A, 0, CHAIN), make_register(B, 0, CHAIN)], []),
              ([tx_a, tx_b], [blob_a, blob_b]),
              (author.votes(A, delta_of(1), ALL_ACCEPT, round_=1), []),
              (author.votes(B, delta_of(2), [True, False, True, True], round_=1), [])]
    roots: list[list[bytes]] = [[], []]
    for chain, trail in zip(chains, roots, strict=True):
        for txs, blobs in script:
            chain.block(txs, blobs)
            trail.append(chain.root)
    assert roots[0] == roots[1] and len(set(roots[0])) == len(script)
    assert chains[0].meta.version == 2 and chains[0].model(2) == chains[1].model(2)


# --- votes ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, 7])
def test_accepted_at_n_minus_f_votes_rejected_at_f_plus_1(paths: Iterator[Path],
                                                          n: int) -> None:
    f = (n - 1) // 3
    chain = new_chain(paths, validators=n)
    chain.register(A, B)
    chain.block(*zip(chain.update(A, delta_of(1)), chain.update(B, delta_of(2)),
                     strict=True))
    accepts = chain.votes(A, delta_of(1), [True] * n)
    rejects = chain.votes(B, delta_of(2), [False] * n)
    for i in range(n - f - 1):
        assert chain.block([accepts[i]]) == [None]
    for i in range(f):
        assert chain.block([rejects[i]]) == [None]
    assert chain.status(A) == chain.status(B) == "pending"
    assert chain.block([accepts[n - f - 1]]) == [None]
    assert chain.status(A) == "accepted"
    assert chain.block([rejects[f]]) == [None]
    assert chain.status(B, 1) == "rejected"
    assert chain.meta.round == 2  # every expected update decided: BSP closes the round


def test_mixed_votes_decide_only_at_a_quorum(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    chain.register(A, B)
    chain.submit(A, delta_of(1))
    votes = chain.votes(A, delta_of(1), [True, True, False, False])
    assert chain.block(votes[:3]) == [None] * 3
    assert chain.status(A) == "pending"  # 2 accepts, 1 reject: neither quorum
    assert chain.block(votes[3:]) == [None]
    assert chain.status(A) == "rejected"  # the second reject is f + 1


def test_bad_votes_are_refused_and_change_nothing(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    chain.register(A, B)
    chain.submit(A, delta_of(1))
    chain.block(chain.votes(A, delta_of(1), [True]))
    root = chain.root
    digest = sha256(encode_weights(delta_of(1)))
    outsider = make_vote(A, CHAIN, 1, A.public_key, digest, True, 0)
    cases = {
        outsider: "is not a validator: only validators vote",
        chain.votes(A, delta_of(1), [False])[0]: "already voted on this update",
        chain.votes(A, delta_of(2), ALL_ACCEPT)[1]: "vote is for blob",
        chain.votes(B, delta_of(1), ALL_ACCEPT)[1]: "no update from trainer",
        chain.votes(A, delta_of(1), ALL_ACCEPT, round_=2)[1]: "vote is for round 2, but round 1",
    }
    for tx, reason in cases.items():
        assert reason in chain.check(tx)
        assert reason in chain.block([tx])[0]
        assert chain.root == root


# --- deadlines: nobody stalls a round -----------------------------------------------------


def test_a_trainer_that_never_submits_does_not_stall_bsp(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    chain.register(A, B, C)  # C never submits
    accepted_round(chain, {A: delta_of(1), B: delta_of(2)})
    assert chain.meta.round == 1
    root = chain.root
    assert chain.block(at=T0 + DEADLINE - 1) == []
    assert chain.meta.round == 1
    refused = chain.close(at=T0 + DEADLINE - 1)[0]
    assert refused == (f"round 1 is before its deadline: block time {T0 + DEADLINE - 1} ms, "
                       f"deadline {T0 + DEADLINE} ms")
    assert "only validators close rounds" in chain.close(A, at=T0 + DEADLINE - 1)[0]
    assert chain.root == root
    assert chain.close(at=T0 + DEADLINE) == [None]
    assert chain.meta.round == 2 and chain.meta.version == 1
    assert chain.meta.expected == tuple(sorted(t.public_key for t in (A, B, C)))
    assert chain.close(round_=1)[0] == "round 1 is not open (round 2 is)"
    used = [u["trainer"] for u in chain.model(1)["updates"]]
    assert used == sorted(t.public_key.hex() for t in (A, B))


def test_any_block_after_the_deadline_closes_the_round(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    chain.register(A)
    chain.block(at=T0 + DEADLINE)
    assert chain.meta.round == 2 and chain.meta.version == 1
    # Nothing was accepted: the version keeps the weights, so trainers move on.
    assert chain.model(1)["hash"] == chain.model(0)["hash"] and chain.model(1)["updates"] == []
    assert chain.meta.deadline_ms == T0 + 2 * DEADLINE


def test_undecided_updates_are_left_out_at_the_deadline(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    chain.register(A, B, C)
    for t, seed in ((A, 1), (B, 2), (C, 3)):
        chain.submit(t, delta_of(seed))
    chain.block(chain.votes(A, delta_of(1), ALL_ACCEPT)[:3]
                + chain.votes(B, delta_of(2), ALL_ACCEPT)[:1]
                + chain.votes(C, delta_of(3), [False] * 4)[:2])
    assert [chain.status(t) for t in (A, B, C)] == ["accepted", "pending", "rejected"]
    assert chain.close(at=T0 + DEADLINE) == [None]
    expected = [(w.astype(np.float64) + d.astype(np.float64)).astype(w.dtype)
                for w, d in zip(V0, delta_of(1), strict=True)]
    for got, want in zip(chain.weights(1), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert chain.status(B, 1) == "pending"
    late = chain.votes(B, delta_of(2), ALL_ACCEPT, round_=1)[1]
    assert chain.block([late]) == ["vote is for round 1, but round 2 is open"]


# --- SSP and BAP --------------------------------------------------------------------------


def test_ssp_applies_a_stale_delta_to_its_own_base_within_the_bound(
        paths: Iterator[Path]) -> None:
    chain = new_chain(paths, sync="ssp", staleness=1, ssp_min_fraction=0.5)
    chain.register(A, B)
    accepted_round(chain, {A: delta_of(1)})  # 1 of 2 decided is enough: version 1
    assert (chain.meta.round, chain.meta.version) == (2, 1)
    v1 = chain.weights(1)
    late = delta_of(2)  # B trained on version 0 meanwhile
    tx, blob = chain.update(B, late, base=0)
    assert chain.check(tx, [blob]) is None
    assert chain.block([tx], [blob]) == [None]
    chain.block(chain.votes(B, late, ALL_ACCEPT))
    assert chain.meta.version == 2
    trained = [w.astype(np.float64) + d for w, d in zip(V0, late, strict=True)]
    wrong = [w.astype(np.float64) + d for w, d in zip(v1, late, strict=True)]
    for got, want, bad in zip(chain.weights(2), trained, wrong, strict=True):
        np.testing.assert_allclose(got, want.astype(got.dtype), rtol=1e-6, atol=1e-6)
        assert np.abs(got - bad).max() > 0.01  # not applied to the newer version
    too_old = chain.update(A, delta_of(3), base=0)
    assert chain.block([too_old[0]], [too_old[1]]) == [
        "base version 0 is 2 versions behind the latest 2; the limit is 1 (ssp)"]


def test_ssp_extends_a_thin_round_once(paths: Iterator[Path]) -> None:
    chain = new_chain(paths, sync="ssp", ssp_min_fraction=0.75)
    chain.register(A, B, C, D)
    chain.submit(A, delta_of(1))  # 1 of 4 arrived: fewer than half
    chain.block(at=T0 + DEADLINE)
    assert chain.meta.round == 1 and chain.meta.extended
    assert chain.meta.deadline_ms == T0 + 2 * DEADLINE
    chain.block(chain.votes(A, delta_of(1), ALL_ACCEPT))
    assert chain.close(at=T0 + 2 * DEADLINE) == [None]  # extended once only
    assert chain.meta.round == 2 and not chain.meta.extended


def test_ssp_one_validator_extends_then_closes_the_same_round(paths: Iterator[Path]) -> None:
    """The close that extends a round names the old deadline; the close of the extended
    round names the new one, so one validator alone can do both (no replay)."""
    chain = new_chain(paths, sync="ssp", ssp_min_fraction=0.75)
    chain.register(A, B, C, D)
    chain.submit(A, delta_of(1))
    chain.block(chain.votes(A, delta_of(1), ALL_ACCEPT), at=T0 + 1)
    assert chain.close(at=T0 + DEADLINE) == [None]
    assert chain.meta.round == 1 and chain.meta.extended
    stale = chain.close(at=T0 + DEADLINE + 1, deadline_ms=T0 + DEADLINE)
    assert stale == [f"close of round 1 names deadline {T0 + DEADLINE} ms, but the round's "
                     f"deadline is {T0 + 2 * DEADLINE} ms"]
    assert chain.meta.round == 1
    assert make_close(VALIDATORS[0], CHAIN, 1, T0 + DEADLINE) != make_close(
        VALIDATORS[0], CHAIN, 1, T0 + 2 * DEADLINE)  # not a replay of the first
    assert chain.close(at=T0 + 2 * DEADLINE) == [None]
    assert chain.meta.round == 2 and chain.meta.version == 1

    full = new_chain(paths, sync="ssp", ssp_min_fraction=0.75)
    full.register(A, B, C, D)
    full.submit(A, delta_of(1))
    full.submit(B, delta_of(2))  # half arrived: no extension
    full.block(at=T0 + DEADLINE)
    assert full.meta.round == 2


def test_ssp_closes_once_the_fraction_is_decided(paths: Iterator[Path]) -> None:
    chain = new_chain(paths, sync="ssp", ssp_min_fraction=0.75)
    chain.register(A, B, C, D)
    accepted_round(chain, {A: delta_of(1), B: delta_of(2)})
    assert chain.meta.round == 1  # 2 of 4 < 3
    chain.submit(C, delta_of(3))
    chain.block(chain.votes(C, delta_of(3), [False] * 4))
    assert chain.meta.round == 2  # 3 decided; rejected ones count as decided


def test_bap_merges_each_accepted_update_at_once_with_a_staleness_discount(
        paths: Iterator[Path]) -> None:
    chain = new_chain(paths, sync="bap", bap_alpha=0.5, staleness=2)
    chain.register(A, B)
    da, db = delta_of(1), delta_of(2)
    chain.block(*zip(chain.update(A, da), chain.update(B, db), strict=True))
    chain.block(chain.votes(A, da, ALL_ACCEPT))
    assert (chain.meta.round, chain.meta.version) == (1, 1)  # merged before the round ends
    v1 = [(0.5 * w.astype(np.float64) + 0.5 * (w.astype(np.float64) + d)).astype(w.dtype)
          for w, d in zip(V0, da, strict=True)]
    for got, want in zip(chain.weights(1), v1, strict=True):
        np.testing.assert_array_equal(got, want)
    chain.block(chain.votes(B, db, ALL_ACCEPT))  # B's base is now one version behind
    v2 = [(0.75 * x.astype(np.float64) + 0.25 * (w.astype(np.float64) + d)).astype(w.dtype)
          for x, w, d in zip(v1, V0, db, strict=True)]
    for got, want in zip(chain.weights(2), v2, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [u["weight_micro"] for u in chain.model(1)["updates"] + chain.model(2)["updates"]
            ] == [500_000, 250_000]
    assert (chain.meta.round, chain.meta.version) == (2, 2)  # closing adds no version
    chain.submit(A, delta_of(3))  # B has left: the deadline ends the round
    chain.block(at=chain.meta.deadline_ms)
    assert chain.meta.round == 3


# --- trust ----------------------------------------------------------------------------


def test_trust_moves_with_decisions_and_weights_the_average(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    chain.register(A, B, C)
    chain.submit(A, delta_of(1))
    chain.submit(B, delta_of(2))
    chain.block(chain.votes(A, delta_of(1), ALL_ACCEPT)[:3]
                + chain.votes(B, delta_of(2), [False] * 4)[:2])
    state = chain.ledger.state
    trust = {t: read_trainer(state, t.public_key).trust_micro for t in (A, B, C)}
    assert trust == {A: 550_000, B: 250_000, C: 500_000}
    before = {t: state.get(trainer_key(t.public_key)) for t in (A, B, C)}
    assert chain.register(D) == [None]  # a newcomer resets no one
    assert {t: state.get(trainer_key(t.public_key)) for t in (A, B, C)} == before
    assert read_trainer(state, D.public_key).trust_micro == 500_000
    chain.close(at=T0 + DEADLINE)
    accepted_round(chain, {A: delta_of(3), B: delta_of(4)}, {A: 100, B: 300})
    chain.close(at=chain.meta.deadline_ms)
    a, b = rewarded(550_000, 100_000), rewarded(250_000, 100_000)
    shares = {u["trainer"]: u["weight_micro"] for u in chain.model(2)["updates"]}
    total = 100 * a + 300 * b
    assert shares == {A.public_key.hex(): 100 * a * MICRO // total,
                      B.public_key.hex(): 300 * b * MICRO // total}
    trainers = {t["trainer"]: t for t in chain.query("trainers")["trainers"]}
    assert trainers[B.public_key.hex()]["rejected"] == 1
    assert sum(t["share_micro"] for t in trainers.values()) <= MICRO


W_TRUE = np.array([[2.0], [-3.0], [1.0]])


def _regression(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, x @ W_TRUE + 0.5 + rng.normal(size=(n, 1)) * 0.1


def _loss(weights: Weights, data: tuple[np.ndarray, np.ndarray]) -> float:
    x, y = data
    w, b = (np.asarray(t, dtype=np.float64) for t in weights)
    return float(np.mean((x @ w + b - y) ** 2))


def _train(weights: Weights, data: tuple[np.ndarray, np.ndarray], steps: int = 5,
           lr: float = 0.1) -> Weights:
    """Local gradient descent; returns the delta from ``weights``."""
    x, y = data
    w, b = (np.asarray(t, dtype=np.float64) for t in weights)
    w0, b0 = w.copy(), b.copy()
    for _ in range(steps):
        err = x @ w + b - y
        w = w - lr * 2 * x.T @ err / len(x)
        b = b - lr * 2 * err.mean(axis=0)
    return [(w - w0).astype(np.float32), (b - b0).astype(np.float32)]


def test_a_sign_flipped_update_is_voted_down_and_its_trainer_excluded(
        paths: Iterator[Path]) -> None:
    v0 = [np.zeros((3, 1), dtype=np.float32), np.zeros(1, dtype=np.float32)]
    chain = new_chain(paths, v0=v0)
    honest, attacker = [A, B, C], D
    data = {t: _regression(i) for i, t in enumerate(TRAINERS)}
    held_out = [_regression(50 + i) for i in range(4)]  # each validator's own data
    chain.register(*honest, attacker)
    losses = []
    for round_ in (1, 2, 3):
        model = chain.weights(chain.meta.version)
        deltas = {t: _train(model, data[t]) for t in honest}
        deltas[attacker] = [-5 * d for d in _train(model, data[attacker])]
        updates = [chain.update(t, d) for t, d in deltas.items()]
        chain.block([tx for tx, _ in updates], [b for _, b in updates])
        votes = []
        for t, d in deltas.items():
            trained = [w + s for w, s in zip(model, d, strict=True)]
            verdicts = [_loss(trained, h) <= 1.05 * _loss(model, h) for h in held_out]
            votes += chain.votes(t, d, verdicts)
        chain.block(votes)
        assert chain.status(attacker, round_) == "rejected"
        assert all(chain.status(t, round_) == "accepted" for t in honest)
        losses.append(_loss(chain.weights(chain.meta.version), held_out[0]))
    record = read_trainer(chain.ledger.state, attacker.public_key)
    assert record.excluded and record.rejected == 3
    assert record.trust_micro == penalised(penalised(penalised(500_000, 500_000), 500_000),
                                           500_000)
    assert attacker.public_key not in chain.meta.expected
    assert "is excluded" in chain.submit(attacker, _train(chain.weights(3), data[attacker]))[0]
    assert losses[0] > losses[1] > losses[2]


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "krum"])
def test_robust_aggregators_resist_an_accepted_outlier(paths: Iterator[Path],
                                                       aggregator: str) -> None:
    chain = new_chain(paths, aggregator=aggregator, trim_fraction=0.2, krum_f=1)
    honest = [A, B, C, D]
    deltas = {t: [np.full(w.shape, 0.1, dtype=w.dtype) + d for w, d in
                  zip(V0, delta_of(i, scale=0.001), strict=True)] for i, t in enumerate(honest)}
    deltas[E] = [np.full(w.shape, -50.0, dtype=w.dtype) for w in V0]  # within the norm bound
    chain.register(*deltas)
    accepted_round(chain, deltas)
    assert chain.meta.version == 1
    for got, w in zip(chain.weights(1), V0, strict=True):
        assert np.abs(got.astype(np.float64) - (w.astype(np.float64) + 0.1)).max() < 0.01


def test_zero_total_trust_keeps_the_weights(paths: Iterator[Path]) -> None:
    chain = new_chain(paths, trust_initial=0, trust_reward=0, trust_threshold=0)
    chain.register(A, B)
    with np.errstate(all="raise"):
        accepted_round(chain, {A: delta_of(1), B: delta_of(2)})
    assert chain.meta.version == 1
    assert chain.model(1)["hash"] == chain.model(0)["hash"]
    assert [u["weight_micro"] for u in chain.model(1)["updates"]] == [0, 0]
    assert [t["share_micro"] for t in chain.query("trainers")["trainers"]] == [0, 0]


# --- arrival order and determinism ---------------------------------------------------------


ORDER_TRAINERS = [A, B, C, D]


def _play(path: Path, submit_order: Sequence[int], cuts: Sequence[int],
          vote_order: Sequence[int]) -> bytes:
    """One BSP round with the given arrival orders; returns version 1's model hash."""
    chain = Chain(path, make_config())
    chain.register(*ORDER_TRAINERS)
    updates = [chain.update(ORDER_TRAINERS[i], delta_of(i), samples=50 * (i + 1))
               for i in submit_order]
    bounds = [0, *sorted(set(cuts)), len(updates)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        chain.block([tx for tx, _ in updates[lo:hi]], [b for _, b in updates[lo:hi]])
    votes = [chain.votes(ORDER_TRAINERS[i], delta_of(i), ALL_ACCEPT)[:3] for i in vote_order]
    chain.block([v for three in votes for v in three])
    assert chain.meta.version == 1
    digest = chain.model(1)["hash"]
    chain.ledger.close()
    return bytes.fromhex(digest)


@functools.cache
def _reference_hash() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return _play(Path(tmp), range(4), [], range(4))


@settings(max_examples=15, deadline=None)
@given(st.permutations(range(4)), st.lists(st.integers(1, 3), max_size=3),
       st.permutations(range(4)))
def test_the_model_does_not_depend_on_arrival_order(submit_order: list[int], cuts: list[int],
                                                    vote_order: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        assert _play(Path(tmp), submit_order, cuts, vote_order) == _reference_hash()


def test_aggregation_is_bit_identical_across_runs(tmp_path: Path) -> None:
    hashes = {_play(tmp_path / f"run-{i}", [2, 0, 3, 1], [2], [1, 3, 0, 2]) for i in range(3)}
    assert hashes == {_reference_hash()}


# --- bad input --------------------------------------------------------------------------


def _blob(ws: Weights) -> bytes:
    return encode_weights(ws)


def _bad_updates(replay: bytes) -> list[tuple[str, bytes, list[bytes], str]]:
    """(case, tx, blobs, reason) for every kind of bad update, in round 2 (version 1)
    after A's update ``replay``."""
    good = delta_of(7)

    def update(key: PrivateKey = B, ws: Weights = good, blob: bytes | None = None,
               **kw: int) -> tuple[bytes, list[bytes]]:
        data = _blob(ws) if blob is None else blob
        rnd, base = kw.get("round_", 2), kw.get("base", 1)
        tx = make_update(key, CHAIN, rnd, base, sha256(data), 10, 400, 800, kw.get("nonce", 0))
        return tx, [data]

    nan = [w.copy() for w in good]
    nan[1][0] = np.nan
    inf = [w.copy() for w in good]
    inf[2][1] = -np.inf
    kind, body, signer, signature = codec.unpack(update()[0])
    forged = codec.pack([kind, body, signer, bytes([signature[0] ^ 1]) + signature[1:]])
    cases = [
        ("wrong shape", *update(ws=[good[0].T, good[1], good[2]]),
         "update blob: tensor 0: shape (3, 4) does not match the model's (4, 3)"),
        ("wrong dtype", *update(ws=[good[0].astype(np.float64), good[1], good[2]]),
         "update blob: tensor 0: dtype float64 does not match the model's float32"),
        ("missing tensor", *update(ws=good[:2]), "update blob: 2 tensors, the model has 3"),
        ("NaN", *update(ws=nan), "update blob has NaN or infinite values"),
        ("Inf", *update(ws=inf), "update blob has NaN or infinite values"),
        ("truncated", *update(blob=_blob(good)[:-5]), "update blob: weights are not decodable"),
        ("oversized", *update(ws=[np.zeros((40, 30), np.float32), good[1], good[2]]),
         "update blob: weights are"),
        ("too large a step", *update(ws=[w * 1e4 for w in good]),
         "exceeds max_update_norm 100"),
        ("not stored", update()[0], [], "is missing: send it with the transaction"),
        ("wrong signature", forged, update()[1], "bad signature"),
        ("unknown trainer", *update(key=F), "is not registered"),
        ("stale round", *update(round_=1), "update is for round 1, but round 2 is open"),
        ("future round", *update(round_=3), "update is for round 3, but round 2 is open"),
        ("wrong base", *update(base=0), "base version 0 is not the latest version 1 (bsp)"),
        ("unknown base", *update(base=9), "base version 9 does not exist yet"),
        ("duplicate", *update(key=A, nonce=1), "already submitted an update in round 2"),
        ("replay", replay, [], "already submitted an update in round 2"),
        ("replayed register", make_register(A, 0, CHAIN), [], "is already registered"),
    ]
    return cases


CASES = [
    "wrong shape", "wrong dtype", "missing tensor", "NaN", "Inf", "truncated", "oversized",
    "too large a step", "not stored", "wrong signature", "unknown trainer", "stale round",
    "future round", "wrong base", "unknown base", "duplicate", "replay", "replayed register"]


@pytest.mark.parametrize("case", CASES)
def test_every_bad_update_is_refused_with_a_reason_and_changes_nothing(
        paths: Iterator[Path], case: str) -> None:
    v0_size = len(encode_weights(V0))
    chain = new_chain(paths, max_update_norm=100.0, max_blob_bytes=v0_size + 64)
    chain.register(A, B)
    chain.block(at=T0 + DEADLINE)  # round 2 on version 1
    tx, blob = chain.update(A, delta_of(1))
    chain.block([tx], [blob])
    found = {name: rest for name, *rest in _bad_updates(tx)}
    assert sorted(found) == sorted(CASES)
    bad, blobs, reason = found[case]
    root = chain.root
    assert reason in chain.check(bad, blobs)
    assert reason in chain.block([bad], blobs)[0]
    assert chain.root == root


def test_registration_follows_admission(paths: Iterator[Path]) -> None:
    chain = new_chain(paths, trainers=(A.public_key, B.public_key))
    assert chain.register(C) == [f"trainer {C.public_key.hex()[:16]} is not on the genesis "
                                 "allowlist"]
    chain.register(A)
    chain.submit(A, delta_of(1))
    chain.register(B)  # the round already has an update: B joins from the next round
    assert chain.meta.expected == (A.public_key,)
    chain.close(at=T0 + DEADLINE)
    assert set(chain.meta.expected) == {A.public_key, B.public_key}
    open_chain = new_chain(paths, admission="open", trainers=())
    assert open_chain.register(C, F) == [None, None]


def test_required_blobs_name_the_update_blob_only(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    chain.block()
    tx, blob = chain.update(A, delta_of(1))
    assert chain.app.required_blobs(tx) == [sha256(blob)]
    assert chain.app.required_blobs(make_register(A, 0, CHAIN)) == []
    assert chain.app.required_blobs(b"\x93junk") == []


def test_genesis_model_must_match_the_configured_hash(paths: Iterator[Path]) -> None:
    genesis = Genesis(CHAIN, 0, (ValidatorInfo("v0", VALIDATORS[0].public_key),),
                      app=make_config().to_app_dict())
    with pytest.raises(ConfigError, match="does not match app.model_v0_hash"):
        FLApp.from_genesis(genesis, encode_weights(V0[:2]))
    small = make_config(max_blob_bytes=16).to_app_dict()
    with pytest.raises(ConfigError, match="no update could ever be accepted"):
        FLApp.from_genesis(Genesis(CHAIN, 0, genesis.validators, app=small),
                           encode_weights(V0))


# --- queries ---------------------------------------------------------------------------


def test_queries_answer_for_the_api(paths: Iterator[Path]) -> None:
    chain = new_chain(paths)
    chain.register(A, B)
    accepted_round(chain, {A: delta_of(1)})
    chain.submit(B, delta_of(2), round_=1)
    assert chain.query("model_latest") == chain.model(0)
    closed = chain.close(at=T0 + DEADLINE)
    assert closed == [None]
    assert chain.query("model_latest")["version"] == 1
    round_1 = chain.query("round", round="1")
    assert round_1["open"] is False
    assert [(u["trainer"], u["status"], u["accepts"]) for u in round_1["updates"]] == sorted(
        [(A.public_key.hex(), "accepted", 3), (B.public_key.hex(), "pending", 0)])
    round_2 = chain.query("round", round="2")
    assert round_2["open"] and round_2["version"] == 1 and round_2["updates"] == []
    assert chain.query("rounds", limit="5")["rounds"] == [
        {"round": 2, "open": True, "submitted": 0, "accepted": 0, "rejected": 0, "pending": 0},
        {"round": 1, "open": False, "submitted": 2, "accepted": 1, "rejected": 0, "pending": 1}]
    trainers = chain.query("trainers")["trainers"]
    assert [t["trust_micro"] for t in trainers] == [
        550_000 if t["trainer"] == A.public_key.hex() else 500_000 for t in trainers]
    with pytest.raises(NotFound, match="no model version 7"):
        chain.query("model", version="7")
    with pytest.raises(NotFound, match="round 3 has not opened yet"):
        chain.query("round", round="3")
    for path, params, reason in [("model", {}, "needs a 'version' parameter"),
                                 ("model", {"version": "-1"}, "version must be an integer"),
                                 ("round", {"round": "0"}, "round must be an integer"),
                                 ("rounds", {"limit": "1001"}, "limit must be an integer"),
                                 ("blocks", {}, "unknown query 'blocks'")]:
        with pytest.raises(QueryError, match=reason):
            chain.query(path, **params)


OPS = st.tuples(st.sampled_from(["register", "update", "vote", "close"]), st.integers(0, 3),
                st.integers(1, 3), st.booleans(), st.integers(0, 5))


def _op(kind: str, i: int, r: int, flag: bool, k: int) -> tuple[bytes, list[bytes]]:
    """A well-signed transaction with arbitrary (often wrong) contents."""
    if kind == "register":
        return make_register(TRAINERS[i], k, CHAIN), []
    if kind == "update":
        blob = encode_weights(delta_of(i))
        return make_update(TRAINERS[i], CHAIN, r, k % 2, sha256(blob), 1 + k, k, k, k), [blob]
    if kind == "vote":
        digest = sha256(encode_weights(delta_of(k % 4)))
        return make_vote(VALIDATORS[i], CHAIN, r, TRAINERS[k % 4].public_key, digest,
                         flag or k > 1, k), []
    return make_close(VALIDATORS[i] if flag else TRAINERS[i], CHAIN, r, k), []


def _votes_on_pending(chain: Chain, verdicts: list[bool]) -> list[bytes]:
    """Every validator's vote on every pending update of the open round."""
    meta = chain.meta
    pending = [(t, u) for t, u in round_updates(chain.ledger.state, meta.round)
               if u.status == "pending"]
    return [make_vote(v, CHAIN, meta.round, t, u.blob, verdicts[(i + j) % len(verdicts)], 0)
            for j, (t, u) in enumerate(pending) for i, v in enumerate(chain.validators)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.lists(OPS, max_size=6), st.lists(st.booleans(), min_size=1)),
                max_size=6),
       st.sampled_from(["bsp", "ssp", "bap"]))
def test_any_signed_transactions_execute_deterministically(blocks: list[tuple], sync: str
                                                          ) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        chains = [Chain(Path(tmp) / name, make_config(sync=sync, staleness=1))
                  for name in ("one", "two")]
        for chain in chains:
            chain.register(A, B)
        for n, (ops, verdicts) in enumerate(blocks):
            made = [_op(*op) for op in ops]
            txs, blobs = [tx for tx, _ in made], [b for _, bs in made for b in bs]
            votes = []
            for chain in chains:
                results = chain.block(txs, blobs, at=T0 + (n + 1) * DEADLINE // 3)
                assert all(r is None or isinstance(r, str) for r in results)
                votes = _votes_on_pending(chain, verdicts)
                chain.block(votes)
            assert chains[0].root == chains[1].root
        meta = chains[0].meta
        versions = [chains[0].model(v) for v in range(meta.version + 1)]
        assert [m["parent"] for m in versions] == [None, *range(meta.version)]
        with pytest.raises(NotFound):
            chains[0].model(meta.version + 1)
        for chain in chains:
            chain.ledger.close()
