"""Running a grid's cells in one process with the chain's, the trainers' and the
validators' own code.

Per cell: a fresh ledger and FLApp (``chain``); trainers whose local data is built by
the trainer's ``local_data`` and trained by its ``train_round``; attackers that train
the same way and then apply their registered behaviour (one instance per trainer for
the whole run, seeing every honest delta of the round: the worst case); four
validators, each judging the round's updates with genesis's validation rule on its own
hold-out shard, as the evaluator worker builds it. Their votes, the updates and the
round closes are signed transactions in blocks; everything else is the chain's.

One learner per model serves every trainer and validator (``set_weights`` before each
use). Work is reused only where it is the same computation: the dataset split, local
data and shards once per grid, and a trainer's training of one round from one base
model (by its hash) on one data set once, whichever cell asks first.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from flobc.crypto import PrivateKey, sha256
from flobc.ml.data import Dataset, load_dataset, split, validator_shard
from flobc.ml.learner import Learner, ShardScorer, learner_for
from flobc.ml.models import initial_weights
from flobc.ml.partition import parse_partition
from flobc.ml.weights import all_finite, encode_weights
from flobc.protocol.state import ACCEPTED, PENDING, REJECTED
from flobc.protocol.txs import (
    MAX_ACCURACY_MILLI,
    MAX_U63,
    make_register,
    make_update,
    make_vote,
)
from flobc.protocol.validation import Candidate, Scorer, Verdict
from flobc.trainer.byzantine import Behaviour, RoundView, make_behaviour
from flobc.trainer.config import TrainerConfig
from flobc.trainer.loop import local_data, milli, round_seed, train_round
from flobc.trainer.update import LocalUpdate
from flobc.trainer.verify import VerifiedModel

from .chain import CHAIN_ID, Chain, derived_key
from .grid import CLEAN, VALIDATORS, Cell, Grid, genesis_app

UNUSED_VALIDATORS = ("http://127.0.0.1:1",)
"""A trainer config needs validator URLs; here no trainer ever contacts one."""
CACHE_BYTES = 1 << 30
"""Trained updates kept for reuse by later cells (least recently used dropped first)."""
FINAL_ROUNDS = 3
"""Final accuracy is the mean over this many last rounds."""
OUTCOMES = ("accepted", "rejected", "left_out", "refused", "not_sent")
"""What became of an update: decided by the votes, undecided at the close, refused by
the chain's cheap checks, or never sent (local training diverged, as a trainer skips)."""


def _digest_data(data: Dataset) -> bytes:
    return sha256(data.x.tobytes() + data.y.tobytes())


class Workbench:
    """What every cell of a grid shares: the learner, version 0, the split, the
    validators' shards, every trainer's local data, and trained updates."""

    def __init__(self, grid: Grid, workdir: Path) -> None:
        self.grid = grid
        self.workdir = workdir
        self.learner: Learner = learner_for(grid.model, grid.seed)
        self.model_v0 = initial_weights(grid.model, grid.seed)
        parts = split(load_dataset(grid.dataset), seed=grid.seed)
        self.shards = [validator_shard(parts.validator_holdout, i, VALIDATORS)
                       for i in range(VALIDATORS)]
        self.test = parts.test
        self.validator_keys = [derived_key("validator", i, grid.seed) for i in range(VALIDATORS)]
        self.trainer_keys = [derived_key("trainer", i, grid.seed) for i in range(grid.trainers)]
        self._data: dict[tuple[str, int, str, float | None], tuple[Dataset, bytes]] = {}
        self._trained: OrderedDict[tuple[Any, ...], LocalUpdate] = OrderedDict()
        self._trained_bytes = 0
        self._scores: dict[bytes, dict[str, float]] = {}
        self.trainings = 0
        self.reused = 0

    def trainer_config(self, partition: str, index: int, behaviour: str = "honest",
                       scale: float | None = None) -> TrainerConfig:
        """Trainer ``index``'s config, as ``testnet init`` writes it for this grid."""
        name, options = parse_partition(partition)
        return TrainerConfig(home=self.workdir, validators=UNUSED_VALIDATORS,
                             partition_index=index, partitions=self.grid.trainers,
                             partitioner=name, partitioner_options=options,
                             dataset=self.grid.dataset, local_epochs=self.grid.epochs,
                             batch_size=self.grid.batch_size, seed=self.grid.seed,
                             behaviour=behaviour, behaviour_scale=scale)

    def local_data(self, cfg: TrainerConfig) -> tuple[Dataset, bytes]:
        """The trainer's data as it builds it (its behaviour's data hook applied)."""
        key = (cfg.partitioner + repr(sorted(cfg.partitioner_options.items())),
               cfg.partition_index, cfg.behaviour, cfg.behaviour_scale)
        if key not in self._data:
            data = local_data(cfg, self.grid.seed)
            self._data[key] = (data, _digest_data(data))
        return self._data[key]

    def train(self, cfg: TrainerConfig, data: tuple[Dataset, bytes], base: VerifiedModel,
              round_: int) -> LocalUpdate:
        """The honest training of one round (``train_round``); reused when the same
        trainer trained the same round from the same base on the same data before."""
        key = (cfg.partition_index, data[1], round_, base.hash)
        if key in self._trained:
            self._trained.move_to_end(key)
            self.reused += 1
            return self._trained[key]
        update = train_round(self.learner, base, data[0],
                             replace(cfg, behaviour="honest", behaviour_scale=None), round_)
        self.trainings += 1
        self._trained[key] = update
        self._trained_bytes += sum(d.nbytes for d in update.delta)
        while self._trained_bytes > CACHE_BYTES and len(self._trained) > 1:
            _, dropped = self._trained.popitem(last=False)
            self._trained_bytes -= sum(d.nbytes for d in dropped.delta)
        return update

    def test_score(self, digest: bytes, weights: list[np.ndarray]) -> dict[str, float]:
        """Loss and accuracy on the test split, which no trainer or validator uses."""
        if digest not in self._scores:
            self.learner.set_weights(weights)
            self._scores[digest] = dict(self.learner.evaluate(self.test.x, self.test.y))
        return self._scores[digest]

    def scorer(self, validator: int) -> Scorer:
        return ShardScorer(self.learner, self.shards[validator])


@dataclass
class _Trainer:
    index: int
    key: PrivateKey
    cfg: TrainerConfig
    data: tuple[Dataset, bytes]
    behaviour: Behaviour | None
    """None for an honest trainer."""

    @property
    def role(self) -> str:
        return "honest" if self.behaviour is None else "attacker"


def _trainers(bench: Workbench, cell: Cell) -> list[_Trainer]:
    """The cell's trainers: the last ``cell.attackers`` run the attack."""
    out = []
    first_attacker = bench.grid.trainers - cell.attackers
    for i, key in enumerate(bench.trainer_keys):
        attacker = cell.attack.name != CLEAN and i >= first_attacker
        cfg = (bench.trainer_config(cell.partition, i, cell.attack.name, cell.attack.scale)
               if attacker else bench.trainer_config(cell.partition, i))
        behaviour = make_behaviour(cell.attack.name, cell.attack.scale) if attacker else None
        out.append(_Trainer(i, key, cfg, bench.local_data(cfg), behaviour))
    return out


def _zero_counts() -> dict[str, dict[str, int]]:
    return {role: dict.fromkeys(OUTCOMES, 0) for role in ("honest", "attacker")}


class _CellRun:
    """One cell's chain and trainers, round by round."""

    def __init__(self, bench: Workbench, cell: Cell, path: Path) -> None:
        self.bench = bench
        self.cell = cell
        self.trainers = _trainers(bench, cell)
        app = {**genesis_app(bench.grid, cell.defence),
               "trainers": [t.key.public_key.hex() for t in self.trainers]}
        self.chain = Chain(path, app, bench.model_v0, bench.validator_keys)
        self.rule = None if cell.defence.validation is None else self.chain.app.config.validation
        self.vote_seconds = 0.0
        self.votes_judged = 0

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        problems = self.chain.block([make_register(t.key, 0, CHAIN_ID) for t in self.trainers])
        if any(problems):
            raise RuntimeError(f"registration refused: {problems}")
        rounds = [self._round(r) for r in range(1, self.bench.grid.rounds + 1)]
        totals = _zero_counts()
        for record in rounds:
            for role, counts in record["updates"].items():
                for outcome, n in counts.items():
                    totals[role][outcome] += n
        seconds = time.monotonic() - started
        version = self.chain.meta.version
        final_hash = self.chain.model_hash(version)
        return {
            "partition": self.cell.partition, "attack": self.cell.attack.label,
            "attackers": self.cell.attackers, "defence": self.cell.defence.name,
            "validation": self.cell.defence.validation,
            "aggregator": self.cell.defence.aggregator,
            "rounds": rounds, "updates": totals, "trust": self._trust(),
            "final_accuracy": statistics.fmean(r["accuracy"]
                                               for r in rounds[-FINAL_ROUNDS:]),
            "final_version": version, "final_model_hash": final_hash.hex(),
            "seconds": round(seconds, 3),
            "seconds_per_round": round(seconds / len(rounds), 3),
            "vote_seconds_per_update_per_validator": (
                round(self.vote_seconds / self.votes_judged, 6) if self.votes_judged else None),
        }

    def _trust(self) -> list[dict[str, Any]]:
        out = []
        for t in self.trainers:
            record = self.chain.trainer(t.key.public_key)
            assert record is not None, "every trainer registered"
            out.append({"trainer": t.index, "role": t.role, "trust": record.trust_micro / 1e6,
                        "accepted": record.accepted, "rejected": record.rejected,
                        "excluded": record.excluded})
        return out

    def _round(self, round_: int) -> dict[str, Any]:
        started = time.monotonic()
        meta = self.chain.meta
        assert meta.round == round_, f"round {meta.round} is open, expected {round_}"
        weights = self.chain.weights(meta.version)
        base = VerifiedModel(meta.version, self.chain.model_hash(meta.version), weights, 0)
        taking_part = [t for t in self.trainers if t.key.public_key in set(meta.expected)]
        updates = self._train(taking_part, base, round_)
        counts = _zero_counts()
        sent = {}
        for t in taking_part:
            update = updates[t.index]
            if not (math.isfinite(update.loss) and all_finite(update.delta)):
                counts[t.role]["not_sent"] += 1
                continue
            blob = encode_weights(update.delta)
            tx = make_update(t.key, CHAIN_ID, round_, base.version, sha256(blob),
                             update.samples, milli(update.loss, MAX_U63),
                             milli(update.accuracy, MAX_ACCURACY_MILLI), round_)
            sent[t.index] = (tx, blob)
        results = self.chain.block([tx for tx, _ in sent.values()],
                                   [blob for _, blob in sent.values()])
        recorded = [t for t in taking_part if t.index in sent]
        for t, problem in zip(recorded, results, strict=True):
            if problem is not None:
                counts[t.role]["refused"] += 1
        on_chain = [t for t, problem in zip(recorded, results, strict=True) if problem is None]
        if on_chain:
            self.chain.block(self._votes(round_, base, on_chain, updates, sent))
        if self.chain.meta.round == round_:
            self.chain.close_round()
        for t in on_chain:
            record = self.chain.update(round_, t.key.public_key)
            assert record is not None
            outcome = {ACCEPTED: "accepted", REJECTED: "rejected", PENDING: "left_out"}
            counts[t.role][outcome[record.status]] += 1
        version = self.chain.meta.version
        digest = self.chain.model_hash(version)
        score = self.bench.test_score(digest, self.chain.weights(version))
        return {"round": round_, "version": version, "model_hash": digest.hex(),
                "accuracy": score["accuracy"], "loss": score["loss"], "updates": counts,
                "seconds": round(time.monotonic() - started, 3)}

    def _train(self, taking_part: list[_Trainer], base: VerifiedModel,
               round_: int) -> dict[int, LocalUpdate]:
        """Every trainer's update: honest ones first, so that attackers can see them."""
        out = {t.index: self.bench.train(t.cfg, t.data, base, round_)
               for t in taking_part if t.behaviour is None}
        honest = [out[i].delta for i in sorted(out)]
        view = RoundView(round_, peers=lambda: [[np.array(x) for x in d] for d in honest],
                         trainers=len(taking_part), colluders=len(taking_part) - len(honest))
        for t in taking_part:
            if t.behaviour is None:
                continue
            trained = self.bench.train(t.cfg, t.data, base, round_)
            rng = np.random.default_rng(round_seed(t.cfg.seed, t.index, round_))
            delta = t.behaviour.delta(trained.delta, rng, view)
            out[t.index] = t.behaviour.submit(LocalUpdate(delta, trained.samples, trained.loss,
                                                          trained.accuracy))
        return out

    def _votes(self, round_: int, base: VerifiedModel, on_chain: list[_Trainer],
               updates: dict[int, LocalUpdate], sent: dict[int, tuple[bytes, bytes]]
               ) -> list[bytes]:
        """Every validator's vote on every update of the round, judged together (as
        under BSP, where they all share one base)."""
        candidates = sorted((Candidate(t.key.public_key, updates[t.index].delta,
                                       updates[t.index].samples) for t in on_chain),
                            key=lambda c: c.trainer)
        blob_hashes = {t.key.public_key: sha256(sent[t.index][1]) for t in on_chain}
        todo = [c.trainer for c in candidates]
        txs = []
        for v, key in enumerate(self.bench.validator_keys):
            if self.rule is None:
                verdicts = dict.fromkeys(todo, Verdict(True, 0))
            else:
                started = time.monotonic()
                verdicts = self.rule.judge(base.weights, candidates, todo, self.bench.scorer(v))
                self.vote_seconds += time.monotonic() - started
                self.votes_judged += len(todo)
            txs += [make_vote(key, CHAIN_ID, round_, trainer, blob_hashes[trainer],
                              verdicts[trainer].accept, verdicts[trainer].score_milli)
                    for trainer in todo]
        return txs


def run_cell(bench: Workbench, cell: Cell, path: Path) -> dict[str, Any]:
    """One cell on a ledger at ``path``; its JSON record."""
    cell_run = _CellRun(bench, cell, path)
    try:
        return cell_run.run()
    finally:
        cell_run.chain.close()


def run_grid(grid: Grid, keep: Path | None = None,
             progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every cell of ``grid``; ledgers under ``keep`` (kept) or a temporary folder."""
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="flobc-experiment-") as tmp:
        root = keep or Path(tmp)
        bench = Workbench(grid, root)
        records = []
        cells = grid.cells()
        for n, cell in enumerate(cells):
            record = run_cell(bench, cell, root / f"cell-{n}")
            records.append(record)
            say(f"[{n + 1}/{len(cells)}] {cell.label}: final accuracy "
                f"{record['final_accuracy']:.3f}, {record['seconds_per_round']:.2f} s/round "
                f"(trainings {bench.trainings}, reused {bench.reused})")
        return records
