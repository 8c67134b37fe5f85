"""A validator's off-chain duties on a learning chain: vote on updates, close late rounds.

After each committed block the voter looks for pending updates of the open round that
this validator has not voted on, has the evaluator worker judge them by genesis's
validation rule (``ValidationRule.judge``, flobc.protocol.validation) on this
validator's hold-out shard, and submits a signed vote for each. Evaluation runs in a
thread and a separate process, never inside block execution and never on the event
loop, so consensus keeps going while a model is being scored. When no update waits, it
scores each committed model version on the test split, for the dashboard and metrics;
votes never depend on those scores.

A rule that judges each update alone (not ``round_wise``) gets one update at a time,
sorted by trainer key, on the version it was trained on. A ``round_wise`` rule compares
an update with the others of its round, so the voter first waits until every trainer the
round expects has an update in committed state (under SSP: enough of them to close the
round), or until the rule's ``vote_wait_fraction`` of ``round_deadline_ms`` has passed
since the round opened (local clock against the round's opening in block time; never
past its deadline), and then judges all its pending updates together, on the latest
version, against the round's candidates: its updates not rejected (accepted and
pending), each rebased to the latest version if it was trained on an older one (SSP,
BAP). Updates that arrive later are judged against the candidates as they then are.

Rounds end at a deadline in block time, but an idle chain makes no blocks; so once the
local clock is past the open round's deadline and no block has closed it, the voter
submits a ``close`` transaction for it. A close is ``[round, deadline_ms]``, so each
validator can close a round once per deadline (a second one would be a replay); the
validators take turns, one CLOSE_STAGGER_MS apart in an order that rotates with the
round. Usually the first one's close ends the round and the others never send theirs;
if it is down, or its close landed early, the next one's turn comes. When SSP extends
a round at its deadline, the new deadline starts the turns over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flobc.consensus.host import ReplicaHost
from flobc.consensus.mempool import FULL
from flobc.crypto import PrivateKey
from flobc.protocol.settings import FLConfig
from flobc.protocol.state import (
    PENDING,
    REJECTED,
    Meta,
    UpdateRecord,
    read_meta,
    read_model,
    round_updates,
)
from flobc.protocol.txs import make_close, make_vote
from flobc.protocol.validation import Verdict
from flobc.validator.fl.evaluator import CandidateRef, Evaluator, EvaluatorError, Score

log = logging.getLogger("flobc.voter")

CLOSE_MARGIN_MS = 1000
"""How far past a deadline (local clock) the first close is sent: block time is the
primary's clock, and a close that lands before the deadline is skipped."""
CLOSE_STAGGER_MS = 1000
"""How long each validator in turn waits for the one before it to close a round."""
SCORES_KEPT = 1000
"""Test-split scores are kept for this many latest model versions."""


@dataclass(frozen=True)
class _Job:
    """One update of a round."""

    round: int
    trainer: bytes
    blob: bytes
    base: int
    samples: int


@dataclass(frozen=True)
class _Batch:
    """Updates to judge together: ``todo``, on version ``base``, among ``candidates``."""

    base: int
    candidates: tuple[_Job, ...]
    todo: tuple[_Job, ...]


class Voter:
    """Runs beside consensus on the node's event loop; see the module docstring."""

    def __init__(self, host: ReplicaHost, key: PrivateKey, chain_id: str,
                 evaluator: Evaluator, config: FLConfig) -> None:
        self._host = host
        self._key = key
        self._chain_id = chain_id
        self._evaluator = evaluator
        self._config = config
        self._rule = config.validation
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="flobc-evaluate")
        self._vote_wake = asyncio.Event()
        self._close_wake = asyncio.Event()
        self._vote_at_ms: int | None = None
        """When a round-wise rule stops waiting for the round's updates (local clock)."""
        self._verdicts: dict[_Job, Verdict] = {}
        """Judged, vote not yet admitted (the mempool was full): no re-evaluation."""
        self._done: set[_Job] = set()
        """Voted on, or given up on: never evaluated again."""
        self._scores: dict[int, Score] = {}
        self._unscorable: set[int] = set()
        """Versions whose scoring failed: not tried again."""
        self._closes: set[tuple[int, int]] = set()
        """(round, deadline_ms) pairs this validator sent its one possible close for."""
        self._tasks: list[asyncio.Task[None]] = []
        self.votes_cast = {"accept": 0, "reject": 0}
        """Votes signed and admitted to the mempool since the start, by verdict."""
        self.evaluation_failures = 0
        self.updates_judged = 0
        self.judge_seconds = 0.0
        """Wall time the worker spent judging ``updates_judged`` updates (the vote's cost)."""
        """Updates and versions this validator could not evaluate since the start: each is
        a vote it never casts."""

    def start(self) -> None:
        """Start the evaluator and both loops; call on the running event loop."""
        self._evaluator.start()
        self._host.on_commit(self._committed)
        self._tasks = [asyncio.create_task(self._vote_loop(), name="flobc-voter"),
                       asyncio.create_task(self._close_loop(), name="flobc-closer")]
        for task in self._tasks:
            task.add_done_callback(_report_failure)
        self._committed(0)  # after a restart, catch up on what is already committed

    async def stop(self) -> None:
        """Cancel both loops and end the evaluator (an evaluation in flight fails)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.to_thread(self._evaluator.stop)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=True)

    def _committed(self, _height: int) -> None:
        """Runs inside the host's commit: just wake the loops."""
        self._vote_wake.set()
        self._close_wake.set()

    # --- votes -------------------------------------------------------------------------

    async def _vote_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:  # warm the worker up now, not when the first update is waiting
            await loop.run_in_executor(self._executor, self._evaluator.wait_ready)
        except EvaluatorError as exc:
            log.error("%s; evaluations will start a new worker", exc)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._vote_wake.wait(), self._wait_s())
            self._vote_wake.clear()
            while (batch := self._next_batch()) is not None:
                todo = [job for job in batch.todo if job not in self._verdicts]
                if todo:
                    await self._judge(batch, todo)
                if not self._submit_votes(batch.todo):
                    break  # the mempool is full: try again after the next block
            while self._next_batch() is None and (version := self._next_unscored()) is not None:
                await self._score(version)

    def _wait_s(self) -> float | None:
        """Seconds until a round-wise rule's wait ends; None when none is running."""
        if self._vote_at_ms is None:
            return None
        return max(self._vote_at_ms - self._host.now_ms(), 0) / 1000

    def test_scores(self) -> list[tuple[int, Score]]:
        """(version, score on the test split) of the scored versions, oldest first."""
        return sorted(self._scores.items())

    def _next_batch(self) -> _Batch | None:
        """The updates of the open round still waiting for our vote that are ready to be
        judged (see the module docstring)."""
        self._vote_at_ms = None
        state = self._host.committed
        meta = read_meta(state)
        if meta is None:
            return None
        self._forget_before(meta.round)
        me = self._key.public_key
        updates = list(round_updates(state, meta.round))
        jobs = {trainer: _job(meta.round, trainer, u) for trainer, u in updates}
        todo = tuple(jobs[t] for t, u in updates
                     if u.status == PENDING and me not in u.votes and jobs[t] not in self._done)
        if not todo:
            return None
        if not self._rule.round_wise:
            return _Batch(todo[0].base, todo[:1], todo[:1])
        if not self._round_ready(meta, {t for t, _ in updates}):
            return None
        candidates = tuple(jobs[t] for t, u in updates if u.status != REJECTED)
        return _Batch(meta.version, candidates, todo)

    def _round_ready(self, meta: Meta, arrived: set[bytes]) -> bool:
        """Whether a round-wise rule may judge now; if not, when it may (``_vote_at_ms``)."""
        at = judge_at(self._config, meta, arrived)
        if at is None or self._host.now_ms() >= at:
            return True
        self._vote_at_ms = at
        return False

    def _forget_before(self, round_: int) -> None:
        self._done = {j for j in self._done if j.round >= round_}
        self._verdicts = {j: v for j, v in self._verdicts.items() if j.round >= round_}
        self._closes = {c for c in self._closes if c[0] >= round_}

    async def _judge(self, batch: _Batch, todo: list[_Job]) -> None:
        """Have the worker judge ``todo``, off the event loop, into ``_verdicts``; an
        update it could not judge is given up on."""
        state = self._host.committed
        versions = {batch.base, *(job.base for job in batch.candidates)}
        hashes = {v: record.hash for v in versions
                  if (record := read_model(state, v)) is not None}
        try:
            if len(hashes) != len(versions):
                raise EvaluatorError(f"model versions {sorted(versions - set(hashes))} are "
                                     "not stored")
            refs = [CandidateRef(j.trainer, j.blob, j.samples, hashes[j.base])
                    for j in batch.candidates]
            blobs = {d: blob for d in {*hashes.values(), *(j.blob for j in batch.candidates)}
                     if (blob := state.blob(d)) is not None}
            started = time.perf_counter()
            verdicts = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._evaluator.judge, self._rule, hashes[batch.base], refs,
                [j.trainer for j in todo], blobs.get)
            self.judge_seconds += time.perf_counter() - started
            self.updates_judged += len(todo)
        except EvaluatorError as exc:
            for job in todo:
                log.error("no vote on trainer %s round %d: evaluation failed: %s",
                          job.trainer.hex()[:16], job.round, exc,
                          extra={"event": "evaluation_failed", "round": job.round})
            self.evaluation_failures += len(todo)
            self._done.update(todo)
            return
        for job in todo:
            self._verdicts[job] = verdicts[job.trainer]

    def _next_unscored(self) -> int | None:
        """The oldest of the latest SCORES_KEPT versions not scored yet."""
        meta = read_meta(self._host.committed)
        if meta is None:
            return None
        oldest = max(meta.version - SCORES_KEPT + 1, 0)
        self._scores = {v: s for v, s in self._scores.items() if v >= oldest}
        self._unscorable = {v for v in self._unscorable if v >= oldest}
        return next((v for v in range(oldest, meta.version + 1)
                     if v not in self._scores and v not in self._unscorable), None)

    async def _score(self, version: int) -> None:
        state = self._host.committed
        record = read_model(state, version)
        weights = state.blob(record.hash) if record is not None else None
        if weights is None:
            log.error("cannot score model version %d: its weights are not stored", version,
                      extra={"event": "evaluation_failed", "version": version})
            self.evaluation_failures += 1
            self._unscorable.add(version)
            return
        try:
            self._scores[version] = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._evaluator.score, weights)
        except EvaluatorError as exc:
            log.error("cannot score model version %d: %s", version, exc,
                      extra={"event": "evaluation_failed", "version": version})
            self.evaluation_failures += 1
            self._unscorable.add(version)

    def _submit_votes(self, jobs: tuple[_Job, ...]) -> bool:
        """Submit the votes judged for ``jobs``; False if they must wait (the mempool is
        full)."""
        return all(self._submit_vote(job, self._verdicts[job])
                   for job in jobs if job in self._verdicts)

    def _submit_vote(self, job: _Job, verdict: Verdict) -> bool:
        """Sign and submit the vote; False if it must wait (the mempool is full)."""
        tx = make_vote(self._key, self._chain_id, job.round, job.trainer, job.blob,
                       verdict.accept, verdict.score_milli)
        _, reason = self._host.submit_tx(tx)
        if reason == FULL:
            return False  # kept in _verdicts, so it is not judged again
        self._verdicts.pop(job, None)
        self._done.add(job)
        vote = "accept" if verdict.accept else "reject"
        if reason is not None:  # usually: the others decided it first
            log.info("vote %s on trainer %s round %d not admitted: %s", vote,
                     job.trainer.hex()[:16], job.round, reason)
            return True
        self.votes_cast[vote] += 1
        e = verdict.evaluation
        measured = ("" if e is None else f": acc {e.new_accuracy:.3f} vs base "
                    f"{e.base_accuracy:.3f}, loss {e.new_loss:.4f} vs base {e.base_loss:.4f}")
        log.log(logging.INFO if verdict.accept else logging.WARNING,
                "voted %s on trainer %s round %d, score %d%s", vote, job.trainer.hex()[:16],
                job.round, verdict.score_milli, measured,
                extra={"event": "vote_cast", "vote": vote, "trainer": job.trainer.hex(),
                       "round": job.round, "rule": self._rule.table()["name"],
                       "score_milli": verdict.score_milli,
                       "accuracy": None if e is None else e.new_accuracy,
                       "base_accuracy": None if e is None else e.base_accuracy,
                       "loss": None if e is None else e.new_loss,
                       "base_loss": None if e is None else e.base_loss})
        return True

    # --- closing late rounds ----------------------------------------------------------

    async def _close_loop(self) -> None:
        while True:
            self._close_wake.clear()
            meta = read_meta(self._host.committed)
            if meta is None or (meta.round, meta.deadline_ms) in self._closes:
                await self._close_wake.wait()
                continue
            wait_ms = self._close_time(meta.round, meta.deadline_ms) - self._host.now_ms()
            if wait_ms > 0:
                # Wake at our turn, or earlier when a block may have changed the round.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._close_wake.wait(), wait_ms / 1000)
                continue
            self._closes.add((meta.round, meta.deadline_ms))
            _, reason = self._host.submit_tx(make_close(self._key, self._chain_id, meta.round,
                                                        meta.deadline_ms))
            if reason is None:
                log.info("round %d passed its deadline with no block to close it: "
                         "submitted a close", meta.round)
            else:
                log.warning("close of round %d not admitted: %s", meta.round, reason)

    def _close_time(self, round_: int, deadline_ms: int) -> int:
        """When this validator's turn to close ``round_`` comes (local clock, ms)."""
        turn = (self._host.index - round_) % self._host.validators.n
        return deadline_ms + CLOSE_MARGIN_MS + turn * CLOSE_STAGGER_MS


def judge_at(config: FLConfig, meta: Meta, arrived: set[bytes]) -> int | None:
    """When a round-wise rule may judge the open round's updates: None (now) once every
    expected trainer's update is in, or under SSP enough of them to close the round, or
    when the round expects no one; otherwise the time its wait ends, the rule's
    ``vote_wait_fraction`` of ``round_deadline_ms`` after the round opened, never past
    the deadline."""
    expected = len(meta.expected)
    if expected == 0 or config.scheme.enough_decided(
            config, expected, len(arrived.intersection(meta.expected))):
        return None
    wait = round(config.validation.vote_wait_fraction() * config.round_deadline_ms)
    return min(meta.round_opened_ms + wait, meta.deadline_ms)


def _job(round_: int, trainer: bytes, update: UpdateRecord) -> _Job:
    return _Job(round_, trainer, update.blob, update.base, update.samples)


def _report_failure(task: asyncio.Task[None]) -> None:
    """A loop that ends other than by ``stop`` is a bug: say so loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("%s stopped: %r", task.get_name(), task.exception(),
                     exc_info=task.exception())
