"""What a learning chain tells its operator: Prometheus collectors over committed state,
and one log line per event of the chain.

Metrics are read when scraped, not counted as things happen: the collector reads the
committed state through the application's queries, so what the metrics say about
learning is what the chain says, also after a restart. Only what cannot be read back
later is recorded as it happens: each closed round's duration.

Block execution must stay a pure function of the blocks, so it logs nothing; instead
:class:`LearningEvents` compares the committed learning state after each block with
what it saw after the previous one, and logs the rounds closed, updates rejected and
trainers excluded. Each line carries its facts as ``extra`` fields (``event``,
``round``, ...) for the JSON log format.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flobc.consensus.host import ReplicaHost
from flobc.protocol.reputation import MICRO
from flobc.protocol.state import (
    ACCEPTED,
    PENDING,
    REJECTED,
    Meta,
    read_meta,
    read_model,
    round_updates,
    trainers,
)
from flobc.validator.fl.app import FLApp
from flobc.validator.fl.health import Health, learning_health, rounds_without_update
from flobc.validator.fl.queries import NotFound
from flobc.validator.fl.voter import Voter

log = logging.getLogger("flobc.fl")

ROUND_DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                          1800.0, 3600.0)
HASH_PREFIX = 16
"""Hex digits of a key or hash in a human-readable line (JSON fields carry all of it)."""


def register_learning_metrics(registry: CollectorRegistry, host: ReplicaHost, app: FLApp,
                              voter: Voter) -> LearningEvents:
    """The learning collector and the round-duration histogram in ``registry``, and the
    event log that feeds it."""
    round_duration = Histogram(
        "flobc_fl_round_duration_seconds",
        "Block time from a round's opening to its close, for rounds closed while "
        "this validator ran.", buckets=ROUND_DURATION_BUCKETS, registry=registry)
    registry.register(LearningCollector(host, app, voter))
    return LearningEvents(host, app, round_duration.observe)


class LearningCollector(Collector):
    """The learning chain's committed state, read through the application's queries."""

    def __init__(self, host: ReplicaHost, app: FLApp, voter: Voter) -> None:
        self._host = host
        self._app = app
        self._voter = voter

    def collect(self) -> Iterator[Metric]:
        state = self._host.committed
        listing = self._app.query("trainers", {}, state)["trainers"]
        updates = CounterMetricFamily(
            "flobc_fl_updates", "Updates decided by the validators' votes, as committed "
            "(accepted at 2f+1 accept votes, rejected at f+1 reject votes).",
            labels=["outcome"])
        for outcome in (ACCEPTED, REJECTED):
            updates.add_metric([outcome], sum(t[outcome] for t in listing))
        yield updates
        reputation = GaugeMetricFamily("flobc_fl_trainer_reputation",
                                       "A trainer's committed trust score, 0 to 1.",
                                       labels=["trainer"])
        excluded = GaugeMetricFamily("flobc_fl_trainer_excluded",
                                     "1 if the trainer is excluded (its trust fell under "
                                     "the genesis threshold), else 0.", labels=["trainer"])
        for t in listing:
            reputation.add_metric([t["trainer"]], t["trust_micro"] / MICRO)
            excluded.add_metric([t["trainer"]], int(t["excluded"]))
        yield reputation
        yield excluded
        try:
            rounds = self._app.query("rounds", {"limit": "1"}, state)
        except NotFound:  # before the first block
            pass
        else:
            yield GaugeMetricFamily("flobc_fl_model_version",
                                    "The latest committed model version.", rounds["version"])
            yield GaugeMetricFamily("flobc_fl_round", "The open round.", rounds["round"])
        yield from self._voter_metrics(self._voter)
        yield from self._health_metrics(learning_health(self._host, self._voter))

    @staticmethod
    def _health_metrics(health: Health) -> Iterator[Metric]:
        """One gauge per stall condition of :class:`Health`, named after its field."""
        for name, value in health.fields().items():
            yield GaugeMetricFamily(f"flobc_fl_{name}",
                                    f"Learning stall condition: {name.replace('_', ' ')} "
                                    "(0 when healthy).", value)

    @staticmethod
    def _voter_metrics(voter: Voter) -> Iterator[Metric]:
        votes = CounterMetricFamily(
            "flobc_fl_votes_cast", "Votes this validator signed and got admitted to its "
            "mempool since it started, by verdict.", labels=["vote"])
        for verdict, count in sorted(voter.votes_cast.items()):
            votes.add_metric([verdict], count)
        yield votes
        yield CounterMetricFamily(
            "flobc_fl_updates_judged", "Updates this validator's evaluator worker judged "
            "since it started.", voter.updates_judged)
        yield CounterMetricFamily(
            "flobc_fl_judge_seconds", "Wall time this validator's evaluator worker spent "
            "judging updates since it started (over flobc_fl_updates_judged_total: the "
            "vote's cost per update).", voter.judge_seconds)
        scores = voter.test_scores()
        if not scores:
            return
        latest = scores[-1][1]
        if latest.accuracy is not None:
            yield GaugeMetricFamily(
                "flobc_fl_model_test_accuracy", "Accuracy on the test split of the latest "
                "model version this validator has scored.", latest.accuracy)
        metric = GaugeMetricFamily(
            "flobc_fl_model_test_metric", "The task's metrics (and loss) on the test split "
            "of the latest model version this validator has scored.", labels=["metric"])
        for name, value in sorted(latest.metrics.items()):
            metric.add_metric([name], value)
        yield metric


class LearningEvents:
    """Logs what each committed block changed in the learning state; see the module
    docstring. ``round_closed(seconds)`` is called for each round that closes."""

    def __init__(self, host: ReplicaHost, app: FLApp,
                 round_closed: Callable[[float], None]) -> None:
        self._host = host
        self._threshold = app.config.trust_threshold
        self._round_closed = round_closed
        state = host.committed
        self._meta = read_meta(state)
        self._statuses = self._open_round_statuses(self._meta)
        self._excluded = {key for key, record in trainers(state) if record.excluded}
        host.on_commit(self._after_block)

    def _open_round_statuses(self, meta: Meta | None) -> dict[bytes, str]:
        if meta is None:
            return {}
        return {trainer: u.status for trainer, u in round_updates(self._host.committed,
                                                                  meta.round)}

    def _after_block(self, height: int) -> None:
        """Runs inside the host's commit: an error here is logged, never raised, since
        observing the chain must not stop it."""
        try:
            self._compare(height)
        except Exception:
            log.exception("cannot report the learning events of block %d", height)

    def _compare(self, height: int) -> None:
        before = self._meta
        meta = read_meta(self._host.committed)
        if meta is None:
            return
        if before is not None:
            self._rejections(before.round)
        self._exclusions()
        if before is not None and meta.round != before.round:
            self._closed(before, meta, height)
        self._meta = meta
        self._statuses = self._open_round_statuses(meta)

    def _rejections(self, round_: int) -> None:
        """Updates of ``round_`` (open before this block) that its votes rejected."""
        for trainer, update in round_updates(self._host.committed, round_):
            if update.status != REJECTED or self._statuses.get(trainer) == REJECTED:
                continue
            accepts, rejects = update.tally()
            log.warning("update from trainer %s in round %d rejected by votes: %d reject, "
                        "%d accept", trainer.hex()[:HASH_PREFIX], round_, rejects, accepts,
                        extra={"event": "update_rejected", "trainer": trainer.hex(),
                               "round": round_, "reject_votes": rejects,
                               "accept_votes": accepts})

    def _exclusions(self) -> None:
        for trainer, record in trainers(self._host.committed):
            if not record.excluded or trainer in self._excluded:
                continue
            self._excluded.add(trainer)
            log.warning("trainer %s excluded: trust %.3f is under the threshold %.3f after "
                        "%d rejected and %d accepted updates", trainer.hex()[:HASH_PREFIX],
                        record.trust_micro / MICRO, self._threshold / MICRO, record.rejected,
                        record.accepted,
                        extra={"event": "trainer_excluded", "trainer": trainer.hex(),
                               "trust": record.trust_micro / MICRO,
                               "threshold": self._threshold / MICRO,
                               "rejected": record.rejected, "accepted": record.accepted})

    def _closed(self, before: Meta, meta: Meta, height: int) -> None:
        """``before.round`` closed in this block and ``meta.round`` opened."""
        state = self._host.committed
        statuses = [u.status for _, u in round_updates(state, before.round)]
        record = read_model(state, meta.version)
        assert record is not None, "every version has its record"
        model_hash = record.hash.hex()
        seconds = (meta.round_opened_ms - before.round_opened_ms) / 1000
        self._round_closed(seconds)
        log.info("round %d closed: version %d, %d accepted, %d rejected, %d undecided, "
                 "model %s, %.1f s, height %d", before.round, meta.version,
                 statuses.count(ACCEPTED), statuses.count(REJECTED), statuses.count(PENDING),
                 model_hash[:HASH_PREFIX], seconds, height,
                 extra={"event": "round_closed", "round": before.round,
                        "version": meta.version, "accepted": statuses.count(ACCEPTED),
                        "rejected": statuses.count(REJECTED),
                        "undecided": statuses.count(PENDING), "model_hash": model_hash,
                        "seconds": seconds, "height": height})
        if not record.updates:
            empty = rounds_without_update(state, meta.version)
            log.warning("round %d closed with no update in the model (%d in a row): %d "
                        "submitted, %d accepted", before.round, empty, len(statuses),
                        statuses.count(ACCEPTED),
                        extra={"event": "round_closed_empty", "round": before.round,
                               "rounds_without_update": empty,
                               "submitted": len(statuses)})
