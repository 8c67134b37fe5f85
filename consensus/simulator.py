"""A deterministic network simulator that runs the production :class:`ReplicaHost`.

Every replica is a real ReplicaHost over a real LevelDB :class:`Ledger` and the
key-value application; only the network, the clocks and process deaths are simulated.
Virtual time jumps from event to event (a heap ordered by time, then by insertion), and
one seed drives every choice, so a failing schedule replays exactly::

    .venv/bin/python -m flobc.consensus.simulator --seed 1234 --n 4

Frames cross the simulated network as bytes, so the wire codec runs as in production.
A schedule perturbs the network (delays with heavy tails, loss, duplicates, partitions
that heal), crashes and restarts replicas (closing and reopening their ledger), skews
their clocks and makes up to f of them faulty (Byzantine or crashed for good). Then the
network heals, and the run must converge: see :mod:`flobc.consensus.invariants`.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import logging
import os
import random
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from flobc.config import ConsensusParams
from flobc.consensus.byzantine import BEHAVIOURS, Behaviour, Identity
from flobc.consensus.host import ReplicaHost
from flobc.consensus.invariants import SignatureLog, checkpoint_violations, ledger_violations
from flobc.consensus.kvstore import KVStore, make_tx
from flobc.consensus.messages import (
    Blocks,
    Checkpoint,
    Commit,
    Message,
    MessageError,
    NewView,
    Prepare,
    Proposal,
    ViewChange,
    decode_message,
)
from flobc.consensus.validators import ValidatorSet
from flobc.crypto import PrivateKey, sha256
from flobc.storage.ledger import Ledger

CHAIN_ID = "flobc-sim"
GENESIS_MS = 1_700_000_000_000
PARAMS = ConsensusParams(checkpoint_interval=4, window=16, max_in_flight=6, batch_delay_ms=5,
                         view_change_timeout_ms=300, max_clock_skew_ms=1000,
                         empty_block_interval_ms=100)
"""Small checkpoint interval and window, short timeouts: so that checkpoints, garbage
collection, watermarks and view changes all happen within a short run."""
MAX_SKEW_MS = 150
"""Each clock is off by at most this, so two clocks by at most twice it, well within
``PARAMS.max_clock_skew_ms``."""
LIVENESS_MS = 20_000
"""Virtual time the healed network gets to converge (covers timer back-off)."""
PROBE_MS = 20
MAX_EVENTS = 3_000_000
CLIENTS = 4
REPLAY = "replay: .venv/bin/python -m flobc.consensus.simulator --seed {seed} --n {n}"


def validator_key(index: int) -> PrivateKey:
    return PrivateKey(sha256(b"flobc-sim validator %d" % index))


def client_key(index: int) -> PrivateKey:
    return PrivateKey(sha256(b"flobc-sim client %d" % index))


# --- schedules ------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """From ``start_ms`` until ``end_ms``, ``group`` and the rest cannot talk."""

    start_ms: int
    end_ms: int
    group: tuple[int, ...]


@dataclass(frozen=True)
class Crash:
    """Replica ``replica`` dies at ``at_ms`` and restarts at ``restart_ms`` (None: never).

    With ``lose_in_flight`` the frames it had sent but that were not yet delivered die
    with it, as if it crashed after persisting a vote but before the vote left.
    """

    replica: int
    at_ms: int
    restart_ms: int | None
    lose_in_flight: bool = False


@dataclass(frozen=True)
class Schedule:
    """Everything a run does, fixed up front. ``seed`` drives the per-frame choices."""

    seed: int
    n: int
    heal_ms: int = 1500
    """Until then the network misbehaves; from then on only plain delays remain."""
    delay_ms: tuple[int, int] = (1, 20)
    tail: float = 0.0
    """Share of frames delayed up to ``tail_ms`` before the heal."""
    tail_ms: int = 500
    loss: float = 0.0
    duplicate: float = 0.0
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()
    byzantine: tuple[tuple[int, str], ...] = ()
    skew_ms: tuple[int, ...] = ()
    txs: int = 30
    liveness_ms: int = LIVENESS_MS

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def faulty(self) -> frozenset[int]:
        """Byzantine replicas and replicas that crash for good. Restarted ones recover."""
        return frozenset([r for r, _ in self.byzantine]
                         + [c.replica for c in self.crashes if c.restart_ms is None])

    def check(self) -> None:
        """Refuse schedules the protocol is not meant to survive."""
        if len(self.faulty) > self.f:
            raise ValueError(f"{len(self.faulty)} faulty replicas, at most f={self.f}")
        if self.skew_ms and (len(self.skew_ms) != self.n
                             or max(map(abs, self.skew_ms)) > MAX_SKEW_MS):
            raise ValueError(f"need {self.n} clock skews within {MAX_SKEW_MS} ms")
        up_again: dict[int, int | None] = {}
        for c in sorted(self.crashes, key=lambda c: c.at_ms):
            if c.restart_ms is not None and not c.at_ms < c.restart_ms <= self.heal_ms:
                raise ValueError("a crashed replica must restart by the heal")
            if c.replica in dict(self.byzantine):
                raise ValueError("a Byzantine replica does not also crash")
            previous = up_again.get(c.replica, -1)
            if previous is None or previous >= c.at_ms:
                raise ValueError(f"replica {c.replica} crashes again before it restarted")
            up_again[c.replica] = c.restart_ms
        for name in dict(self.byzantine).values():
            if name not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {name!r}")

    def describe(self) -> str:
        parts = [f"n={self.n} heal@{self.heal_ms}ms delay={self.delay_ms[0]}-"
                 f"{self.delay_ms[1]}ms txs={self.txs}"]
        if self.tail:
            parts.append(f"tail={self.tail:.0%}<={self.tail_ms}ms")
        if self.loss:
            parts.append(f"loss={self.loss:.0%}")
        if self.duplicate:
            parts.append(f"dup={self.duplicate:.0%}")
        parts += [f"partition {list(p.group)}|rest {p.start_ms}-{p.end_ms}ms"
                  for p in self.partitions]
        parts += [f"crash r{c.replica}@{c.at_ms}ms" + (
            f" restart@{c.restart_ms}ms" if c.restart_ms is not None else " forever")
            + (" (in-flight lost)" if c.lose_in_flight else "") for c in self.crashes]
        parts += [f"byzantine r{r}:{name}" for r, name in self.byzantine]
        if any(self.skew_ms):
            parts.append(f"skew={list(self.skew_ms)}")
        return ", ".join(parts)


def random_schedule(seed: int, n: int) -> Schedule:
    """The schedule for ``seed``: perturbations and faults all drawn from it."""
    rng = random.Random(f"flobc-sim schedule {seed} {n}")
    f = (n - 1) // 3
    heal = rng.randint(600, 1500)
    faulty: list[int] = []
    byzantine: list[tuple[int, str]] = []
    crashes: list[Crash] = []
    for _ in range(rng.choice([0, 1, 1, f, f])):
        replica = _pick(rng, [r for r in range(n) if r not in faulty])
        faulty.append(replica)
        kind = rng.choice([*BEHAVIOURS, "silent"])
        if kind == "silent":
            crashes.append(Crash(replica, rng.randint(0, heal), None))
        else:
            byzantine.append((replica, kind))
    honest = [r for r in range(n) if r not in faulty]
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        replica = _pick(rng, honest)
        at = rng.randint(20, heal - 100)
        last = max((c.restart_ms or 0 for c in crashes if c.replica == replica), default=-1)
        if at <= last:
            continue
        crashes.append(Crash(replica, at, min(at + rng.randint(30, 800), heal),
                             rng.random() < 0.5))
    partitions = []
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        start = rng.randint(0, heal - 50)
        group = tuple(sorted(rng.sample(range(n), rng.randint(1, n // 2))))
        partitions.append(Partition(start, min(start + rng.randint(50, 1000), heal), group))
    schedule = Schedule(
        seed=seed, n=n, heal_ms=heal,
        delay_ms=(1, rng.choice([5, 10, 20, 50])),
        tail=rng.choice([0.0, 0.0, 0.01, 0.05]), tail_ms=rng.randint(100, 800),
        loss=rng.choice([0.0, 0.0, rng.uniform(0, 0.05), rng.uniform(0, 0.2)]),
        duplicate=rng.choice([0.0, 0.02, 0.1]),
        partitions=tuple(partitions), crashes=tuple(sorted(crashes, key=lambda c: c.at_ms)),
        byzantine=tuple(byzantine),
        skew_ms=tuple(rng.randint(-MAX_SKEW_MS, MAX_SKEW_MS) for _ in range(n)),
        txs=_tx_count(rng, n))
    schedule.check()
    return schedule


def _pick(rng: random.Random, candidates: list[int]) -> int:
    """One of ``candidates``, the first primary (0) twice as likely: a faulty primary
    is what forces view changes."""
    return rng.choice(candidates + [r for r in candidates if r == 0])


def _tx_count(rng: random.Random, n: int) -> int:
    """Mostly short runs (the cost grows with blocks x n^2), now and then a longer one
    that pushes the sequence numbers through several checkpoint windows."""
    if rng.random() < 0.1:
        return rng.randint(25, 45) if n <= 4 else rng.randint(15, 25)
    return rng.randint(5, 20) if n <= 4 else rng.randint(3, 12)


# --- results --------------------------------------------------------------------------


@dataclass
class Stats:
    """What a run exercised, so a suite can show it did not pass by doing nothing."""

    height: int = 0
    view: int = 0
    new_views: int = 0
    """NEW-VIEW messages honest primaries sent: completed view changes."""
    reproposed: int = 0
    """Prepared blocks carried into a new view by a NEW-VIEW (prepared certificates)."""
    stable_checkpoints: int = 0
    """Stable checkpoint certificates on honest ledgers (counted per replica)."""
    state_transfers: int = 0
    """Fetched-block answers that advanced an honest replica."""
    transferred_blocks: int = 0
    equivocated_slots: int = 0
    """(view, seq) for which honest replicas prepared different blocks: a faulty primary
    equivocated with valid signatures."""
    crashes: int = 0
    crashes_with_prepared: int = 0
    """Crashes of a replica holding durable prepared certificates."""
    txs_committed: int = 0
    converged_after_ms: int = -1
    """Virtual time from the heal until all honest replicas agreed (-1: never)."""
    events: int = 0

    def __add__(self, other: Stats) -> Stats:
        return Stats(**{f.name: (max if f.name in ("view", "converged_after_ms") else sum)(
            (getattr(self, f.name), getattr(other, f.name))) for f in fields(self)})


@dataclass
class Report:
    schedule: Schedule
    violations: list[str]
    stats: Stats
    fingerprint: str
    """Hash of every delivery (time, sender, receiver, bytes): equal runs, equal hash."""

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def replay(self) -> str:
        s = self.schedule
        if random_schedule(s.seed, s.n) == s:
            return REPLAY.format(seed=s.seed, n=s.n)
        return f"replay: run the test that built this schedule ({s.describe()})"

    def summary(self) -> str:
        s = self.stats
        head = (f"seed {self.schedule.seed} n={self.schedule.n}: "
                f"{'ok' if self.ok else 'FAILED'}, height {s.height}, view {s.view}, "
                f"{s.new_views} new views ({s.reproposed} prepared re-proposed), "
                f"{s.stable_checkpoints} stable checkpoints, {s.state_transfers} state "
                f"transfers ({s.transferred_blocks} blocks), {s.crashes} crashes "
                f"({s.crashes_with_prepared} holding prepared blocks), "
                f"{s.equivocated_slots} equivocated slots, {s.txs_committed} txs, "
                f"converged {s.converged_after_ms} ms after heal")
        return "\n".join([head, *("  " + v for v in self.violations)])


# --- the simulation -------------------------------------------------------------------


class Node:
    """One simulated validator process: its data directory, and its host while alive."""

    def __init__(self, index: int, path: str, skew_ms: int,
                 behaviour: Behaviour | None) -> None:
        self.index = index
        self.path = path
        self.skew_ms = skew_ms
        self.behaviour = behaviour
        self.host: ReplicaHost | None = None
        self.ledger: Ledger | None = None
        self.timers: dict[str, int] = {}
        self.incarnation = 0
        """Bumped when the process dies: frames addressed to it then are lost."""
        self.epoch = 0
        """Bumped when a crash also loses what it had in flight."""
        self.crashes: list[int] = []


@dataclass
class _Tx:
    tx: bytes
    holder: int
    at_ms: int


class Simulation:
    """One schedule, run once against real hosts and ledgers."""

    def __init__(self, schedule: Schedule, note: Callable[[str], None] | None = None,
                 trace: bool = False, root: str | None = None) -> None:
        """``root``: where the replicas' ledgers go, left in place for inspection; by
        default a temporary directory (in memory where /dev/shm exists), removed after."""
        schedule.check()
        self.schedule = schedule
        self.note = note
        self.trace = trace and note is not None
        self.n = schedule.n
        self.keys = [validator_key(i) for i in range(self.n)]
        self.vs = ValidatorSet(CHAIN_ID, [k.public_key for k in self.keys])
        self.honest = frozenset(range(self.n)) - schedule.faulty
        self.signed = SignatureLog(self.honest)
        self.stats = Stats()
        self.violations: list[str] = []
        self.now = 0
        self.healed = False
        self.done = False
        self.required: dict[bytes, _Tx] = {}
        self._queue: list[tuple[int, int, Callable[..., None], tuple]] = []
        self._counter = 0
        self._net = random.Random(f"flobc-sim network {schedule.seed} {schedule.n}")
        self._clients = random.Random(f"flobc-sim clients {schedule.seed} {schedule.n}")
        self._fingerprint = hashlib.sha256()
        self._new_views: set[int] = set()
        self.transferred = [0] * self.n
        """Blocks each replica got by state transfer."""
        self.rejoins: list[tuple[int, int | None]] = []
        """Per restart, in order: (replica, blocks the others committed from its restart
        until it could prove state at a stable checkpoint as recent as each other running
        honest replica's), None while (or if never) it got there."""
        self._rejoining: dict[int, tuple[int, int]] = {}
        self._keep = root is not None
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.root = root if root is not None else tempfile.mkdtemp(prefix="flobc-sim-",
                                                                     dir=shm)
        behaviours = dict(schedule.byzantine)
        self.nodes = [
            Node(i, os.path.join(self.root, f"r{i}"),
                 schedule.skew_ms[i] if schedule.skew_ms else 0,
                 BEHAVIOURS[behaviours[i]](
                     Identity(i, self.keys[i], CHAIN_ID, self.n),
                     random.Random(f"flobc-sim byzantine {schedule.seed} {schedule.n} {i}"))
                 if i in behaviours else None)
            for i in range(self.n)]

    # --- the event loop ---------------------------------------------------------------

    def _at(self, time_ms: int, action: Callable[..., None], *args: Any) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (time_ms, self._counter, action, args))

    def run(self) -> Report:
        """Run the schedule to convergence (or the liveness bound), then check it."""
        try:
            self._plan()
            while self._queue and not self.done:
                self.now, _, action, args = heapq.heappop(self._queue)
                action(*args)
                self.stats.events += 1
                if self.stats.events > MAX_EVENTS:
                    self._violation(f"LIVENESS: more than {MAX_EVENTS} events (message storm?)")
            self._check()
        finally:
            self._close()
        return Report(self.schedule, self.violations, self.stats,
                      self._fingerprint.hexdigest())

    def _plan(self) -> None:
        s = self.schedule
        for node in self.nodes:
            self._start(node)
        for c in s.crashes:
            self._at(c.at_ms, self._crash, c)
            if c.restart_ms is not None:
                self._at(c.restart_ms, self._restart, self.nodes[c.replica])
        for k in range(s.txs):
            self._at(self._clients.randrange(s.heal_ms), self._submit, k)
        self._at(s.heal_ms, self._heal)

    def _violation(self, text: str) -> None:
        self.violations.append(text)
        self.done = True
        self._say(text.splitlines()[0])

    def _say(self, text: str) -> None:
        if self.note is not None:
            self.note(f"{self.now:>7} ms  {text}")

    def _guard(self, node: Node, call: Callable[..., Any], *args: Any) -> Any:
        """Run a host call; an exception from production code fails the run."""
        try:
            return call(*args)
        except Exception:
            self._violation(f"CRASH: replica {node.index} raised at {self.now} ms:\n"
                            + traceback.format_exc())
            return None

    # --- processes ----------------------------------------------------------------------

    def _start(self, node: Node) -> None:
        node.ledger = Ledger(node.path)
        node.host = ReplicaHost(
            chain_id=CHAIN_ID, public_keys=self.vs.public_keys, index=node.index,
            key=self.keys[node.index], params=PARAMS, ledger=node.ledger, app=KVStore(),
            send=lambda to, frame: self._send(node, to, frame),
            set_timer=lambda name, delay: self._set_timer(node, name, delay),
            cancel_timer=lambda name: node.timers.pop(name, None),
            now_ms=lambda: GENESIS_MS + self.now + node.skew_ms)
        self._guard(node, node.host.start)

    def _crash(self, crash: Crash) -> None:
        node = self.nodes[crash.replica]
        assert node.ledger is not None
        if next(node.ledger.records(b"prep/"), None) is not None:
            self.stats.crashes_with_prepared += 1
        self.stats.crashes += 1
        node.ledger.close()
        node.host = node.ledger = None
        node.timers.clear()
        node.incarnation += 1
        node.epoch += crash.lose_in_flight
        node.crashes.append(self.now)
        self._rejoining.pop(node.index, None)
        self._say(f"r{node.index} crashed" + (" for good" if crash.restart_ms is None else ""))

    def _restart(self, node: Node) -> None:
        self._start(node)
        self._say(f"r{node.index} restarted at height {node.ledger.height}")  # type: ignore
        if node.index in self.honest:
            self._rejoining[node.index] = (self._top(), len(self.rejoins))
            self.rejoins.append((node.index, None))

    def _top(self) -> int:
        return max((n.ledger.height for n in self.nodes if n.ledger is not None), default=0)

    def _check_rejoin(self, node: Node) -> None:
        """Has restarted ``node`` caught up with the others' stable checkpoints, as proofs
        it serves show?"""
        others = [n.host.replica.stable_seq for n in self.nodes
                  if n.host is not None and n.index in self.honest and n is not node]
        proof = node.host.proof_snapshot()  # type: ignore[union-attr]
        if (proof[0] if proof else 0) >= min(others, default=0):
            since, slot = self._rejoining.pop(node.index)
            self.rejoins[slot] = (node.index, self._top() - since)

    def _set_timer(self, node: Node, name: str, delay_ms: int) -> None:
        self._counter += 1
        node.timers[name] = self._counter
        self._at(self.now + max(delay_ms, 0), self._fire, node, name, self._counter)

    def _fire(self, node: Node, name: str, token: int) -> None:
        if node.timers.get(name) != token:
            return  # re-armed, cancelled, or its process died
        del node.timers[name]
        self._guard(node, node.host.on_timer, name)  # type: ignore[union-attr]

    # --- the network --------------------------------------------------------------------

    def _send(self, node: Node, to: int | None, frame: bytes) -> None:
        if node.index in self.honest:
            self._observe_honest(node, frame)
        targets = [i for i in range(self.n) if i != node.index] if to is None else [to]
        for dest in targets:
            if not 0 <= dest < self.n:
                continue
            out = node.behaviour.outgoing(dest, frame) if node.behaviour else [frame]
            for f in out:
                self._transmit(node, self.nodes[dest], f)

    def _observe_honest(self, node: Node, frame: bytes) -> None:
        msg = decode_message(frame)
        self.signed.record(msg)
        if self.signed.violations:
            self.violations += self.signed.violations
            self.signed.violations = []
            self.done = True
        if isinstance(msg, NewView) and msg.view not in self._new_views:
            self._new_views.add(msg.view)
            self.stats.new_views += 1
            self.stats.reproposed += sum(not p.block.is_null for p in msg.proposals)
            self._say(f"r{node.index} NEW-VIEW {msg.view} re-proposing "
                      f"{[p.block.height for p in msg.proposals if not p.block.is_null]}")

    def _transmit(self, source: Node, dest: Node, frame: bytes) -> None:
        if dest.host is None:
            return
        s, rng = self.schedule, self._net
        if not self.healed and s.loss and rng.random() < s.loss:
            return
        copies = 2 if s.duplicate and rng.random() < s.duplicate else 1
        for _ in range(copies):
            delay = rng.randint(*s.delay_ms)
            if not self.healed and s.tail and rng.random() < s.tail:
                delay = rng.randint(s.delay_ms[1], s.tail_ms)
            self._at(self.now + delay, self._deliver, source, dest, frame, dest.incarnation,
                     source.epoch)

    def _cut(self, a: int, b: int) -> bool:
        return any(p.start_ms <= self.now < p.end_ms and (a in p.group) != (b in p.group)
                   for p in self.schedule.partitions)

    def _deliver(self, source: Node, dest: Node, frame: bytes, incarnation: int,
                 epoch: int) -> None:
        if (dest.host is None or dest.incarnation != incarnation or source.epoch != epoch
                or self._cut(source.index, dest.index)):
            return
        self._fingerprint.update(b"%d %d %d %d:" % (self.now, source.index, dest.index,
                                                   len(frame)) + frame)
        if self.trace:
            self._say(f"r{source.index} -> r{dest.index} {describe(frame)}")
        if dest.behaviour is not None:
            dest.behaviour.observe(frame)
        ledger = dest.ledger
        before = ledger.height  # type: ignore[union-attr]
        self._guard(dest, dest.host.on_frame, source.index, frame)
        if dest.index in self._rejoining and dest.host is not None:
            self._check_rejoin(dest)
        if dest.index in self.honest and dest.host is not None:
            after = ledger.height  # type: ignore[union-attr]
            if after > before and isinstance(decode_message(frame), Blocks):
                self.stats.state_transfers += 1
                self.stats.transferred_blocks += after - before
                self.transferred[dest.index] += after - before
                self._say(f"r{dest.index} state transfer from r{source.index}: "
                          f"{before} -> {after}")

    # --- clients and liveness -------------------------------------------------------------

    def _submit(self, k: int) -> None:
        rng = self._clients
        up = [node for node in self.nodes if node.host is not None]
        honest = [node for node in up if node.index in self.honest]
        if not up:
            return
        target = rng.choice(honest) if honest and rng.random() < 0.85 else rng.choice(up)
        tx = make_tx(client_key(k % CLIENTS), k, b"key-%d" % (k % 16), b"value-%d" % k)
        self._submit_to(target, tx)
        if rng.random() < 0.1:
            self._submit_to(rng.choice(up), tx)  # a client retrying elsewhere

    def _submit_to(self, node: Node, tx: bytes) -> None:
        result = self._guard(node, node.host.submit_tx, tx)  # type: ignore[union-attr]
        if result is not None and result[1] is None and node.index in self.honest:
            self.required.setdefault(result[0], _Tx(tx, node.index, self.now))

    def _heal(self) -> None:
        """The network heals. A client whose transaction died with a crashed replica's
        mempool (it was never gossiped on) resubmits it, as real clients do."""
        self.healed = True
        self._say("network healed")
        honest = [self.nodes[i] for i in sorted(self.honest)]
        for tx_hash, pending in self.required.items():
            lost = any(t >= pending.at_ms for t in self.nodes[pending.holder].crashes)
            if lost and not any(n.ledger.tx(tx_hash) for n in honest):  # type: ignore
                node = self._clients.choice(honest)
                self._guard(node, node.host.submit_tx, pending.tx)  # type: ignore
                pending.holder, pending.at_ms = node.index, self.now
        self._at(self.now, self._probe)

    def _probe(self) -> None:
        if self._converged():
            self.stats.converged_after_ms = self.now - self.schedule.heal_ms
            self.done = True
            self._say("converged")
        elif self.now - self.schedule.heal_ms >= self.schedule.liveness_ms:
            self._violation("LIVENESS: " + self._stuck())
        else:
            self._at(self.now + PROBE_MS, self._probe)

    def _converged(self) -> bool:
        ledgers = [self.nodes[i].ledger for i in sorted(self.honest)]
        if any(ledger is None for ledger in ledgers):
            return False
        if len({ledger.height for ledger in ledgers}) > 1:  # type: ignore[union-attr]
            return False
        if len({ledger.state.root for ledger in ledgers}) > 1:  # type: ignore[union-attr]
            return False
        return all(ledger.tx(h) is not None for h in self.required  # type: ignore
                   for ledger in ledgers)

    def _stuck(self) -> str:
        parts = []
        for i in sorted(self.honest):
            host = self.nodes[i].host
            st = host.replica.status() if host else {}
            parts.append(f"r{i} height {st.get('height')} view {st.get('view')}"
                         f"{' (in view change)' if st.get('in_view_change') else ''}")
        missing = [h for h in self.required if any(
            self.nodes[i].ledger.tx(h) is None for i in self.honest)]  # type: ignore
        return (f"not converged {self.schedule.liveness_ms} ms after the heal: "
                + "; ".join(parts) + f"; {len(missing)} of {len(self.required)} "
                "submitted txs not committed everywhere")

    # --- after the run -------------------------------------------------------------------

    def _check(self) -> None:
        ledgers = {i: self.nodes[i].ledger for i in sorted(self.honest)
                   if self.nodes[i].ledger is not None}
        self.violations += ledger_violations(self.vs, ledgers)  # type: ignore[arg-type]
        problems, found = checkpoint_violations(self.vs, ledgers,  # type: ignore[arg-type]
                                                PARAMS.checkpoint_interval, 2 * PARAMS.window)
        self.violations += problems
        self.stats.stable_checkpoints = found
        self.stats.height = max((ledger.height for ledger in ledgers.values()),  # type: ignore
                                default=0)
        self.stats.view = max((self.nodes[i].host.replica.view for i in ledgers  # type: ignore
                               if self.nodes[i].host), default=0)
        self.stats.equivocated_slots = self.signed.split_slots
        self.stats.txs_committed = sum(
            all(ledger.tx(h) is not None for ledger in ledgers.values())  # type: ignore
            for h in self.required)

    def _close(self) -> None:
        for node in self.nodes:
            if node.ledger is not None:
                node.ledger.close()
            node.host = node.ledger = None
        if not self._keep:
            shutil.rmtree(self.root, ignore_errors=True)


def simulate(seed: int, n: int) -> Report:
    """Run the random schedule of ``seed`` on ``n`` replicas."""
    return Simulation(random_schedule(seed, n)).run()


def describe(frame: bytes) -> str:
    """A one-line account of a frame, for traces."""
    try:
        msg: Message = decode_message(frame)
    except MessageError as exc:
        return f"malformed frame ({exc})"
    if isinstance(msg, Proposal):
        pp = msg.pre_prepare
        return (f"proposal v{pp.view} s{pp.seq} {pp.digest.hex()[:8]} "
                f"({len(msg.block.txs)} txs)")
    if isinstance(msg, Prepare | Commit):
        return f"{msg.TAG} v{msg.view} s{msg.seq} {msg.digest.hex()[:8]} by r{msg.replica}"
    if isinstance(msg, Checkpoint):
        return f"checkpoint s{msg.seq} {msg.state_root.hex()[:8]} by r{msg.replica}"
    if isinstance(msg, ViewChange):
        return (f"view-change to v{msg.view} stable {msg.stable_seq} prepared "
                f"{[p.proposal.pre_prepare.seq for p in msg.prepared]} by r{msg.replica}")
    if isinstance(msg, NewView):
        return f"new-view v{msg.view} with {len(msg.proposals)} proposals by r{msg.replica}"
    if isinstance(msg, Blocks):
        return f"blocks {[b.block.height for b in msg.blocks]} top {msg.top}"
    values = ", ".join(f"{f.name}={getattr(msg, f.name)!r}"[:40] for f in fields(msg))  # type: ignore
    return f"{msg.TAG} {values}"


class _VirtualTimeLog(logging.Handler):
    """Shows the hosts' own log lines in the timeline, at their virtual time."""

    def __init__(self, sim: Simulation) -> None:
        super().__init__(logging.INFO)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        self.sim._say(record.getMessage())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flobc.consensus.simulator",
        description="Run one seeded consensus schedule and check its invariants.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n", type=int, default=4, help="number of validators (default 4)")
    parser.add_argument("--trace", action="store_true", help="print every delivered frame")
    args = parser.parse_args(argv)
    schedule = random_schedule(args.seed, args.n)
    print(f"schedule: {schedule.describe()}")
    sim = Simulation(schedule, note=print, trace=args.trace)
    log, handler = logging.getLogger("flobc.consensus"), _VirtualTimeLog(sim)
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        report = sim.run()
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
    print(report.summary())
    print(f"fingerprint {report.fingerprint}")
    print("SAFETY, CERTIFICATES, CHECKPOINTS, EQUIVOCATION, LIVENESS: "
          + ("all hold" if report.ok else "VIOLATED"))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
