"""A validator's off-chain duties on a learning chain: vote on updates, close late rounds.

After each committed block the voter looks for pending updates of the open round that
this validator has not voted on, evaluates them one at a time (sorted by trainer key)
in the evaluator worker, and submits a signed vote. Evaluation runs in a thread and a
separate process, never inside block execution and never on the event loop, so
consensus keeps going while a model is being scored. When no update waits, it scores
each committed model version on the test split, for the dashboard and metrics; votes
never depend on those scores.

The decision is genesis's validation rule (flobc.protocol.validation): it compares the
trainer's model, base + delta, with the base model on this validator's hold-out shard.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flobc.consensus.host import ReplicaHost
from flobc.consensus.mempool import FULL
from flobc.crypto import PrivateKey
from flobc.protocol.state import PENDING, read_meta, read_model, round_updates
from flobc.protocol.txs import make_close, make_vote
from flobc.protocol.validation import Evaluation, ValidationRule
from flobc.validator.fl.evaluator import Evaluator, EvaluatorError, Score

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
    round: int
    trainer: bytes
    blob: bytes
    base: int


class Voter:
    """Runs beside consensus on the node's event loop; see the module docstring."""

    def __init__(self, host: ReplicaHost, key: PrivateKey, chain_id: str,
                 evaluator: Evaluator, rule: ValidationRule) -> None:
        self._host = host
        self._key = key
        self._chain_id = chain_id
        self._evaluator = evaluator
        self._rule = rule
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="flobc-evaluate")
        self._vote_wake = asyncio.Event()
        self._close_wake = asyncio.Event()
        self._evaluations: dict[_Job, Evaluation] = {}
        """Evaluated, vote not yet admitted (the mempool was full): no re-evaluation."""
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
            await self._vote_wake.wait()
            self._vote_wake.clear()
            while (job := self._next_job()) is not None:
                evaluation = self._evaluations.get(job) or await self._evaluate(job)
                if evaluation is not None and not self._submit_vote(job, evaluation):
                    break  # the mempool is full: try again after the next block
            while self._next_job() is None and (version := self._next_unscored()) is not None:
                await self._score(version)

    def test_scores(self) -> list[tuple[int, Score]]:
        """(version, score on the test split) of the scored versions, oldest first."""
        return sorted(self._scores.items())

    def _next_job(self) -> _Job | None:
        """The first update of the open round (by trainer key) still waiting for us."""
        state = self._host.committed
        meta = read_meta(state)
        if meta is None:
            return None
        self._forget_before(meta.round)
        me = self._key.public_key
        for trainer, update in round_updates(state, meta.round):
            job = _Job(meta.round, trainer, update.blob, update.base)
            if update.status == PENDING and me not in update.votes and job not in self._done:
                return job
        return None

    def _forget_before(self, round_: int) -> None:
        self._done = {j for j in self._done if j.round >= round_}
        self._evaluations = {j: e for j, e in self._evaluations.items() if j.round >= round_}
        self._closes = {c for c in self._closes if c[0] >= round_}

    async def _evaluate(self, job: _Job) -> Evaluation | None:
        """Score ``job`` in the worker, off the event loop; None if that failed."""
        state = self._host.committed
        record = read_model(state, job.base)
        base = state.blob(record.hash) if record is not None else None
        delta = state.blob(job.blob)
        if base is None or delta is None:
            log.error("cannot evaluate trainer %s round %d: %s blob is not stored",
                      job.trainer.hex()[:16], job.round, "base" if base is None else "update",
                      extra={"event": "evaluation_failed", "round": job.round})
            self.evaluation_failures += 1
            self._done.add(job)
            return None
        try:
            evaluation = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._evaluator.evaluate, base, delta)
        except EvaluatorError as exc:
            log.error("no vote on trainer %s round %d: evaluation failed: %s",
                      job.trainer.hex()[:16], job.round, exc,
                      extra={"event": "evaluation_failed", "round": job.round})
            self.evaluation_failures += 1
            self._done.add(job)
            return None
        self._evaluations[job] = evaluation
        return evaluation

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

    def _submit_vote(self, job: _Job, e: Evaluation) -> bool:
        """Sign and submit the vote; False if it must wait (the mempool is full)."""
        accept, score = self._rule.decide(e)
        tx = make_vote(self._key, self._chain_id, job.round, job.trainer, job.blob, accept,
                       score)
        _, reason = self._host.submit_tx(tx)
        if reason == FULL:
            return False  # kept in _evaluations, so it is not evaluated again
        self._evaluations.pop(job, None)
        self._done.add(job)
        verdict = "accept" if accept else "reject"
        if reason is not None:  # usually: the others decided it first
            log.info("vote %s on trainer %s round %d not admitted: %s", verdict,
                     job.trainer.hex()[:16], job.round, reason)
        else:
            self.votes_cast[verdict] += 1
            log.log(logging.INFO if accept else logging.WARNING,
                    "voted %s on trainer %s round %d: acc %.3f vs base %.3f, loss %.4f vs "
                    "base %.4f", verdict, job.trainer.hex()[:16], job.round, e.new_accuracy,
                    e.base_accuracy, e.new_loss, e.base_loss,
                    extra={"event": "vote_cast", "vote": verdict, "trainer": job.trainer.hex(),
                           "round": job.round, "accuracy": e.new_accuracy,
                           "base_accuracy": e.base_accuracy, "loss": e.new_loss,
                           "base_loss": e.base_loss, "score_milli": score})
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

def _report_failure(task: asyncio.Task[None]) -> None:
    """A loop that ends other than by ``stop`` is a bug: say so loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("%s stopped: %r", task.get_name(), task.exception(),
                     exc_info=task.exception())
