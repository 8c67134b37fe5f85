"""End to end: a learning testnet keeps learning through crashes and departures.

Every testnet is written by ``flobc testnet init --app fl`` (``init_testnet``) and runs
4 validators and 3 trainers as real processes on loopback (``LocalNet``, ``Trainers``);
a crash is SIGKILL. The crash scenarios share one BSP testnet and run in order, each
from wherever the chain has got to:

- a validator (a backup, then the primary named by ``/status``) is killed in the middle
  of a round: the round completes and the next one commits on the three survivors, and
  the restarted validator catches up to the very same models (records and weights
  bytes, version by version);
- every validator and trainer is killed at once, mid-round, and started again on the
  same homes: no version, round or record goes back or changes, trainers that had sent
  their update for the open round do not send another, and new rounds commit with
  every trainer back.

Then BSP, SSP and BAP, on a testnet each, side by side: one trainer is killed as soon
as a round has closed with learning (round 1, normally), and versions keep coming, each
within a round deadline (plus the time it takes to close a round) of the one before.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cluster import ClusterError, wait_until

from flobc.config import load_key
from flobc.crypto import sha256
from flobc.launch.cluster import ClusterOptions, Trainers, agreement, init_testnet
from flobc.launch.localnet import LocalNet

pytestmark = pytest.mark.slow

T = TypeVar("T")

VALIDATORS = 4
TRAINERS = 3
LEAVER = TRAINERS - 1
SCHEMES = ("bsp", "ssp", "bap")
DEADLINE_MS = 8_000
"""Where a trainer leaves: short, so that each round waiting for it costs little."""
CRASH_DEADLINE_MS = 30_000
"""Where everything restarts: restarted trainers load TensorFlow for about 15 s, and
the round open at the crash must still be open when they are back, or nothing would
show whether they send a second update for it. Rounds with every trainer present end
long before (in 2-3 s), so only a round that lost an update waits this long."""
CLOSE_SLACK_S = 10.0
"""From a round's deadline to the block that closes it: the first close is sent 1 s
after the deadline, each further validator's turn 1 s later; plus consensus and, on a
loaded 2-core machine, the remaining trainers' training and the votes."""
STARTUP_S = 300.0
"""From starting the processes to round 1's close. TensorFlow loads in 7 processes per
testnet, and the trainer-departure tests start three testnets at once (33 processes on
2 cores: evaluator workers have been seen to take 130 to 150 s to be ready)."""
VIEW_CHANGE_S = 20.0
HTTP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 12
SUBMITTED = re.compile(r"round (\d+): \d+ samples on version \d+, .* update tx [0-9a-f]{64}")
REFUSED = re.compile(r"round (\d+): update refused by (.*)")
LATE = re.compile(r"update is for round \d+, but round \d+ is open$")
RESTART_MARK = "--- test: every process killed; starting again ---"


class FLNet:
    """A learning testnet: its validator and trainer processes and an API client."""

    def __init__(self, workdir: Path, options: ClusterOptions) -> None:
        init_testnet(workdir, options)
        self.options = options
        self.net = LocalNet.open(workdir)
        self.trainers = Trainers(workdir, options)
        self.client = httpx.Client(timeout=HTTP_TIMEOUT_S)
        self.keys = [load_key(home / "trainer_key.json").public_key.hex()
                     for home in self.trainers.homes]
        self.validators = list(range(len(self.net.urls)))

    @property
    def round_s(self) -> float:
        """Longest a round may take: it ends at its deadline at the latest."""
        return self.options.round_deadline_ms / 1000 + CLOSE_SLACK_S

    def start(self, *, wait: bool = True) -> None:
        """Start every validator and trainer together; by default wait for the APIs."""
        for i in self.validators:
            self.net.start(i)
        self.trainers.start_all()
        if wait:
            self.net.wait_serving()

    def revive(self) -> None:
        """Start every validator and trainer that is not running (after a failed test)."""
        stopped = [i for i in self.validators if not self.net.running(i)]
        for i in stopped:
            self.net.start(i)
        self.net.wait_serving(stopped)
        for i in range(len(self.trainers.homes)):
            if not self.trainers.running(i):
                self.trainers.start(i)

    def close(self) -> None:
        try:
            self.trainers.stop_all()
        finally:
            self.net.stop_all()
            self.client.close()

    # --- the API ------------------------------------------------------------------------

    def get(self, index: int, path: str) -> Any | None:
        """Validator ``index``'s JSON answer, or None if it has none (404) or is silent."""
        try:
            response = self.client.get(self.net.urls[index] + path)
        except httpx.TransportError:
            return None
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def must_get(self, index: int, path: str) -> Any:
        """Validator ``index``'s JSON answer; anything else fails the test."""
        answer = self.get(index, path)
        if answer is None:
            raise ClusterError(f"validator {index} has no answer to GET {path}\n"
                               f"{self.describe()}")
        return answer

    def model(self, index: int, version: int) -> dict[str, Any]:
        return self.must_get(index, f"/fl/models/{version}")

    def weights(self, index: int, version: int) -> bytes:
        response = self.client.get(f"{self.net.urls[index]}/fl/models/{version}/weights")
        assert response.status_code == 200, (index, version, response.text[:300])
        return response.content

    def versions(self, indices: list[int]) -> dict[int, int | None]:
        """Each validator's latest model version (None while it does not answer)."""
        found = {}
        for i in indices:
            status = self.get(i, "/fl/status")
            found[i] = None if status is None else status["version"]
        return found

    def updates(self, index: int, round_: int) -> list[dict[str, Any]]:
        return self.must_get(index, f"/fl/rounds/{round_}")["updates"]

    # --- waiting ------------------------------------------------------------------------

    def check_alive(self) -> None:
        """Fail at once if a process this test started has exited by itself."""
        for i, proc in enumerate(self.net.procs):
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"validator {i} exited by itself ({proc.returncode}):\n"
                                   f"{self.net.log_tail(i, 30)}")
        for i, proc in enumerate(self.trainers.procs):
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"trainer {i} exited by itself ({proc.returncode}):\n"
                                   f"{self.trainer_log_tail(i, 30)}")

    def wait(self, pred: Callable[[], T], what: str, timeout: float) -> T:
        """Poll ``pred`` until truthy; on timeout fail with statuses and log tails."""
        def checked() -> T:
            self.check_alive()
            return pred()
        return wait_until(checked, timeout, what, self.describe)

    def wait_version(self, version: int, on: list[int], timeout: float) -> dict[int, int]:
        """Wait until every validator in ``on`` has model ``version``; their versions."""
        def reached() -> dict[int, int] | None:
            found = self.versions(on)
            return found if all(v is not None and v >= version for v in found.values()) \
                else None
        return self.wait(reached, f"model version {version} on validators {on}", timeout)

    def wait_mid_round(self, index: int, timeout: float) -> tuple[int, int]:
        """Wait until the open round (seen by validator ``index``) has an update but has
        not closed; its number and the version it trains."""
        def mid_round() -> tuple[int, int] | None:
            status = self.get(index, "/fl/status")
            found = status and self.get(index, f"/fl/rounds/{status['round']}")
            if found and found["open"] and found["updates"]:
                return found["round"], found["version"]
            return None
        return self.wait(mid_round, "an update in an open round", timeout)

    def learned(self, index: int) -> dict[str, Any] | None:
        """Validator ``index``'s ``/fl/status`` once a round has closed after adding an
        accepted update to the model (usually round 1; under load, an early round can
        close at its deadline with the votes on its updates still to come)."""
        status = self.get(index, "/fl/status")
        if status is None or status["round"] < 2:
            return None
        version = status["version"]
        while version > 0 and (record := self.get(index, f"/fl/models/{version}")) \
                and record["round"] >= status["round"] - 1:
            if record["round"] == status["round"] - 1 and record["updates"]:
                return status
            version -= 1
        return None

    def primary(self, on: list[int]) -> tuple[int, int]:
        """(primary, view) as the validators in ``on`` agree, outside a view change."""
        def agreed() -> tuple[int, int] | None:
            seen = {(st["primary"], st["view"]) for i in on
                    if (st := self.get(i, "/status")) and not st["in_view_change"]}
            return seen.pop() if len(seen) == 1 else None
        return self.wait(agreed, f"validators {on} to agree on a primary", VIEW_CHANGE_S)

    # --- reporting ----------------------------------------------------------------------

    def trainer_log(self, index: int) -> str:
        try:
            return (self.trainers.homes[index] / "trainer.log").read_text(errors="replace")
        except OSError:
            return ""

    def trainer_log_tail(self, index: int, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.trainer_log(index).splitlines()[-lines:]) or "(no log)"

    def describe(self) -> str:
        """Every process's state, what each validator reports, and the logs' tails."""
        lines = []
        for i in self.validators:
            if not self.net.running(i):
                lines.append(f"  validator {i}: not running")
                continue
            st, fl = self.get(i, "/status"), self.get(i, "/fl/status")
            lines.append(f"  validator {i}: " + (
                "no /status" if st is None else
                f"height={st['height']} view={st['view']} primary={st['primary']} "
                f"in_view_change={st['in_view_change']} peers={st['peers_connected']}") +
                ("; no /fl/status" if fl is None else
                 f"; round={fl['round']} version={fl['version']} "
                 f"expected={len(fl['expected'])}"))
        for i in range(len(self.trainers.homes)):
            state = "running" if self.trainers.running(i) else "not running"
            lines.append(f"  trainer {i}: {state}")
        for i in self.validators:
            lines.append(f"--- validator {i} log ---\n{self.net.log_tail(i, LOG_TAIL_LINES)}")
        for i in range(len(self.trainers.homes)):
            lines.append(f"--- trainer {i} log ---\n{self.trainer_log_tail(i)}")
        return "\n".join(lines)


def assert_same_models(fl: FLNet, on: list[int], upto: int, weights: list[int]) -> None:
    """Every validator in ``on`` holds the same record for versions 0..upto, and the same
    weights bytes (matching the record's hash) for the versions in ``weights``."""
    for version in range(upto + 1):
        records = {i: fl.model(i, version) for i in on}
        assert all(r == records[on[0]] for r in records.values()), \
            f"validators hold different records of version {version}: {records}"
    for version in weights:
        blobs = {i: fl.weights(i, version) for i in on}
        assert len(set(blobs.values())) == 1, \
            f"validators serve different weights for version {version}"
        assert sha256(blobs[on[0]]).hex() == fl.model(on[0], version)["hash"]


def versions_upto(fl: FLNet, index: int, upto: int) -> list[dict[str, Any]]:
    return [fl.model(index, v) for v in range(upto + 1)]


# --- crashes, on one BSP testnet -------------------------------------------------------


@pytest.fixture(scope="class")
def bsp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FLNet]:
    """The crash scenarios' testnet, running from version 1 on."""
    options = ClusterOptions(validators=VALIDATORS, trainers=TRAINERS,
                             round_deadline_ms=CRASH_DEADLINE_MS)
    fl = FLNet(tmp_path_factory.mktemp("crashes") / "net", options)
    try:
        fl.start()
        fl.wait_version(1, fl.validators, STARTUP_S)
        yield fl
    finally:
        fl.close()


class TestCrashes:
    """Validators and trainers killed with SIGKILL, then started again on their homes."""

    @pytest.mark.parametrize("role", ["backup", "primary"])
    def test_a_validator_killed_mid_round_is_survived_and_catches_up(
            self, bsp: FLNet, role: str) -> None:
        bsp.revive()
        everyone = bsp.validators
        primary, view = bsp.primary(everyone)
        victim = primary if role == "primary" else (primary + 1) % len(everyone)
        survivors = [i for i in everyone if i != victim]
        round_, version = bsp.wait_mid_round(victim, 3 * bsp.round_s)
        bsp.net.kill(victim)

        # The round completes and the next one commits, on the three survivors alone.
        bsp.wait_version(version + 2, survivors, 2 * bsp.round_s + VIEW_CHANGE_S)
        for i in survivors:
            assert bsp.model(i, version + 1)["round"] == round_
        after = bsp.model(survivors[0], version + 2)
        assert after["round"] == round_ + 1
        assert after["updates"], f"round {round_ + 1} accepted no update without " \
                                 f"validator {victim}: {bsp.updates(survivors[0], round_ + 1)}"
        if role == "primary":
            new_primary, new_view = bsp.primary(survivors)
            assert new_view > view and new_primary != victim, (view, new_view, new_primary)

        # Restarted on its home, it catches up to the same models, bit for bit.
        top = max(v for v in bsp.versions(survivors).values() if v is not None)
        bsp.net.start(victim)
        bsp.net.wait_serving([victim])
        bsp.wait_version(top, [victim], 3 * bsp.round_s)
        assert_same_models(bsp, everyone, top, weights=[version + 1, top])
        assert agreement(bsp.net.urls) is None, agreement(bsp.net.urls)  # on /models/latest

    def test_a_full_restart_resumes_the_chain_without_double_updates(self, bsp: FLNet) -> None:
        bsp.revive()
        everyone = bsp.validators
        known = min(v for v in bsp.wait_version(1, everyone, bsp.round_s).values())
        models = {i: versions_upto(bsp, i, known) for i in everyone}
        # With one trainer away, a round cannot close on a full set of updates: it stays
        # open until its deadline, so the crash below surely lands inside it.
        absent = TRAINERS - 1
        bsp.trainers.kill(absent)

        def mid_round() -> tuple[int, dict[int, Any], dict[str, Any]] | None:
            """(round, every validator's /fl/status, updates on chain) while every
            validator has one round open, begun after the absent trainer left, and it has
            an update from a trainer still running."""
            statuses = {i: bsp.get(i, "/fl/status") for i in everyone}
            rounds = {st and st["round"] for st in statuses.values()}
            found = None if None in rounds or len(rounds) != 1 \
                else bsp.get(0, f"/fl/rounds/{rounds.pop()}")
            if not (found and found["open"]):
                return None
            sent = {u["trainer"]: u for u in found["updates"]}
            if not sent or bsp.keys[absent] in sent:
                return None
            return found["round"], statuses, sent
        round_, before, sent = bsp.wait(mid_round, "an update in a round open on every "
                                                   "validator", 3 * bsp.round_s)
        for i in everyone:  # the few versions since
            models[i] += [bsp.model(i, v) for v in range(known + 1, before[i]["version"] + 1)]
        for i in range(TRAINERS):
            if i != absent:
                bsp.trainers.kill(i)
        for i in everyone:
            bsp.net.kill(i)
        for home in bsp.trainers.homes:
            with open(home / "trainer.log", "a") as log:
                log.write(f"{RESTART_MARK}\n")
        bsp.start()

        # The validators come back where they were: nothing goes back or changes.
        for i in everyone:
            now = bsp.must_get(i, "/fl/status")
            assert now["version"] >= before[i]["version"], (i, before[i], now)
            assert now["round"] >= round_, (i, round_, now)
            assert versions_upto(bsp, i, before[i]["version"]) == models[i], \
                f"validator {i} changed a committed version across the restart"

        # New rounds commit, with every trainer back in them.
        def every_trainer_back() -> int | None:
            latest = bsp.get(0, "/fl/status")
            for v in range(known + 1, latest["version"] + 1 if latest else 0):
                record = bsp.model(0, v)
                if record["round"] > round_ and \
                        {u["trainer"] for u in record["updates"]} == set(bsp.keys):
                    return v
            return None
        back = bsp.wait(every_trainer_back, f"a round after {round_} with an update from "
                                            "every trainer", STARTUP_S + 2 * bsp.round_s)
        bsp.wait_version(back, everyone, bsp.round_s)
        assert_same_models(bsp, everyone, back, weights=[back])
        assert agreement(bsp.net.urls) is None, agreement(bsp.net.urls)

        # One update per trainer and round, on the chain and in what the trainers sent;
        # those that had sent theirs for the open round knew it when they came back.
        now = {u["trainer"]: u for u in bsp.updates(0, round_)}
        assert all(now.get(key, {}).get("blob") == u["blob"] for key, u in sent.items()), \
            f"round {round_}'s updates before the crash: {sent}; now: {now}"
        for r in range(1, bsp.must_get(0, "/fl/status")["round"] + 1):
            per_trainer = Counter(u["trainer"] for u in bsp.updates(0, r))
            assert max(per_trainer.values(), default=0) <= 1, (r, per_trainer)
        knew = []
        for i, key in enumerate(bsp.keys):
            log = bsp.trainer_log(i)
            sent_rounds = Counter(int(r) for r in SUBMITTED.findall(log))
            assert sent_rounds and max(sent_rounds.values()) == 1, \
                f"trainer {i} sent updates for rounds {sent_rounds}\n{bsp.trainer_log_tail(i)}"
            # The trainer that was away trains the open round only once it is back; if the
            # round reaches its deadline meanwhile, its late update is refused because
            # the round has moved on. That is not a second update.
            refused = [(r, why) for r, why in REFUSED.findall(log)
                       if not (i == absent and LATE.search(why))]
            assert not refused, f"trainer {i} had updates refused: {refused}"
            restarted = log.split(RESTART_MARK)[-1]
            assert SUBMITTED.search(restarted), \
                f"trainer {i} sent nothing after the restart\n{bsp.trainer_log_tail(i)}"
            if key in sent and (f"round {round_}: an update was already sent" in restarted or
                                f"round {round_}: this trainer's update is already on chain"
                                in restarted):
                knew.append(i)
        assert knew, f"no trainer that had sent its update for round {round_} before the " \
                     f"crash came back while the round was open, so a second update was " \
                     f"never in question\n{bsp.describe()}"


# --- a trainer leaves, under each sync scheme ---------------------------------------------


@dataclass
class Departure:
    """A testnet on which trainer LEAVER was killed once a round had closed with learning."""

    fl: FLNet
    round: int = 0
    """The round open when it left."""
    version: int = 0
    left_ms: float = 0.0
    problem: str | None = None
    """Why the testnet never got that far."""


@pytest.fixture(scope="class")
def departures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Departure]]:
    """A BSP, an SSP and a BAP testnet, started together; on each, trainer LEAVER is
    killed as soon as the model has learned in a round that closed (round 1, unless
    its updates were still being voted on at its deadline)."""
    made: dict[str, Future[FLNet]] = {}
    try:
        with ThreadPoolExecutor(len(SCHEMES)) as pool:
            for sync in SCHEMES:
                options = ClusterOptions(validators=VALIDATORS, trainers=TRAINERS,
                                         sync=sync, round_deadline_ms=DEADLINE_MS)
                made[sync] = pool.submit(FLNet, tmp_path_factory.mktemp(sync) / "net",
                                         options)
        departures = {sync: Departure(future.result()) for sync, future in made.items()}
        for d in departures.values():
            d.fl.start(wait=False)
        waiting = set(SCHEMES)

        def depart() -> bool:
            for sync in sorted(waiting):
                d = departures[sync]
                try:
                    d.fl.check_alive()
                except ClusterError as exc:
                    d.problem = str(exc)
                    waiting.discard(sync)
                    continue
                status = d.fl.learned(0)
                if status is not None:
                    d.fl.trainers.kill(LEAVER)
                    d.left_ms = time.time() * 1000
                    d.round, d.version = status["round"], status["version"]
                    waiting.discard(sync)
            return not waiting
        try:
            wait_until(depart, STARTUP_S, "a round with learning to close on every testnet")
        except ClusterError as exc:
            for sync in waiting:
                departures[sync].problem = f"{exc}\n{departures[sync].fl.describe()}"
        yield departures
    finally:
        nets = [future.result() for future in made.values() if future.exception() is None]
        with ThreadPoolExecutor(max(len(nets), 1)) as pool:  # each waits out a grace period
            list(pool.map(FLNet.close, nets))


class TestATrainerLeaves:
    """BSP, SSP and BAP, each on its own testnet, running side by side: after the
    departure most of each round is waiting for its deadline."""

    @pytest.mark.parametrize("sync", SCHEMES)
    def test_a_trainer_leaving_mid_run_does_not_stall(
            self, departures: dict[str, Departure], sync: str) -> None:
        d = departures[sync]
        if d.problem is not None:
            pytest.fail(d.problem)
        fl = d.fl

        # Versions keep coming: at least 3 in all, 2 after the departure, and a round
        # that the leaver certainly missed (the one after the round it left in) closed.
        target = max(3, d.version + 2)
        fl.wait(lambda: all((st := fl.get(i, "/fl/status")) and st["version"] >= target
                            and st["round"] >= d.round + 2 for i in fl.validators),
                f"version {target} and round {d.round + 2} on every validator after trainer "
                f"{LEAVER} left in round {d.round}", 4 * fl.round_s)
        latest = fl.must_get(0, "/fl/status")
        records = versions_upto(fl, 0, latest["version"])
        after = [(r, r["time_ms"] - p["time_ms"])
                 for p, r in zip(records, records[1:], strict=False) if r["time_ms"] > d.left_ms]
        gaps = [(r["version"], gap / 1000) for r, gap in after]
        assert len(after) >= 2 and all(gap <= fl.round_s for _, gap in gaps), \
            f"versions after trainer {LEAVER} left (version, seconds since the one " \
            f"before): {gaps}; each should come within {fl.round_s:g} s"
        assert any(r["updates"] for r, _ in after), "the remaining trainers' updates " \
            f"made none of the versions after the departure: {[r for r, _ in after]}"

        # The leaver is gone but still expected: the rounds went on at their deadline.
        gone = fl.keys[LEAVER]
        assert gone in latest["expected"], latest
        for r in range(d.round + 1, latest["round"]):
            assert gone not in {u["trainer"] for u in fl.updates(0, r)}, r
        if sync != "bap":  # a version per round: the round the leaver missed waited
            missed = next(r for r in records if r["round"] == d.round + 1)
            opened = records[missed["version"] - 1]["time_ms"]
            assert missed["time_ms"] - opened >= DEADLINE_MS, (missed, opened)
        assert agreement(fl.net.urls) is None, agreement(fl.net.urls)
