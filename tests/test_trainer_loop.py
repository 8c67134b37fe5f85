"""Trainers joining a real 4-validator learning testnet on loopback, as a user runs them:
``flobc testnet init --app fl``, ``flobc validator start`` and ``flobc trainer join``,
each its own process. Updates are submitted, voted in and aggregated, the version
advances, and a trainer killed with SIGKILL after submitting never submits again for
that round, whether it remembers (its journal) or has to ask the chain."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import (
    Cluster,
    ClusterError,
    Validator,
    _pdeathsig_kill,
    failure_report_plugin,
    flobc_command,
    run_flobc,
)

from flobc.launch.localnet import free_port_range

pytestmark = pytest.mark.slow

VALIDATORS = 4
TRAINERS = 2
ROUND_TIMEOUT_S = 180.0
SUBMITTED = re.compile(r"round (\d+): \d+ samples on version \d+, .* update tx ([0-9a-f]{64}) "
                       r"via http://")


class Trainers:
    """The trainer homes of a testnet and their ``flobc trainer join`` processes."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def home(self, i: int) -> Path:
        return self.out / f"trainer-{i}"

    def log_path(self, i: int) -> Path:
        return self.out / f"trainer-{i}.log"

    def start(self, i: int, *flags: object) -> None:
        if i in self.procs and self.procs[i].poll() is None:
            raise ClusterError(f"trainer {i} is already running")
        with open(self.log_path(i), "ab") as log:
            log.write(f"--- test: start trainer {i} {flags} ---\n".encode())
            log.flush()
            self.procs[i] = subprocess.Popen(
                flobc_command("trainer", "join", "--home", self.home(i), *flags),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_pdeathsig_kill if sys.platform == "linux" else None)

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(self.log_path(i), "ab") as log:
            log.write(f"--- test: SIGKILL trainer {i} ---\n".encode())

    def wait_exit(self, i: int, timeout: float = ROUND_TIMEOUT_S) -> int:
        try:
            return self.procs.pop(i).wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"trainer {i} still running after {timeout:g} s; log tail:\n"
                               f"{self.log_tail(i)}") from None

    def log(self, i: int) -> str:
        return self.log_path(i).read_text(errors="replace")

    def log_tail(self, i: int, lines: int = 25) -> str:
        return "\n".join(self.log(i).splitlines()[-lines:])

    def submitted(self, i: int, since: str = "") -> dict[int, list[str]]:
        """Round -> tx hashes of the updates trainer ``i`` logged as submitted, counting
        only log lines after the last occurrence of ``since``."""
        text = self.log(i).rsplit(since, 1)[-1] if since else self.log(i)
        found: dict[int, list[str]] = {}
        for round_, tx in SUBMITTED.findall(text):
            found.setdefault(int(round_), []).append(tx)
        return found

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.kill(i)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory,
        pytestconfig: pytest.Config) -> Iterator[tuple[Cluster, Trainers]]:
    out = tmp_path_factory.mktemp("fl") / "net"
    base = free_port_range(2 * VALIDATORS)
    init = run_flobc("testnet", "init", "--app", "fl", "--validators", VALIDATORS,
                     "--trainers", TRAINERS, "--out", out, "--base-port", base,
                     "--round-deadline-ms", 120_000)
    assert init.returncode == 0, init.stderr
    cluster = Cluster(out, [Validator(i, out / f"validator-{i}",
                                      f"http://127.0.0.1:{base + 2 * i + 1}",
                                      out / f"validator-{i}.log") for i in range(VALIDATORS)])
    trainers = Trainers(out)
    plugin = failure_report_plugin(cluster, "net")
    pytestconfig.pluginmanager.register(plugin)
    try:
        cluster.start_all()
        yield cluster, trainers
    finally:
        pytestconfig.pluginmanager.unregister(plugin)
        trainers.stop_all()
        cluster.close()


def fl(cluster: Cluster, path: str, index: int = 0) -> Any:
    response = cluster.get(index, path)
    return None if response.status_code == 404 else response.raise_for_status().json()


def round_updates(cluster: Cluster, round_: int, index: int = 0) -> dict[str, dict[str, Any]]:
    """Trainer (hex) -> its update in ``round_``, as validator ``index`` has it committed."""
    found = fl(cluster, f"/fl/rounds/{round_}", index)
    return {} if found is None else {u["trainer"]: u for u in found["updates"]}


def trainer_key(trainers: Trainers, i: int) -> str:
    return json.loads((trainers.home(i) / "trainer_key.json").read_text())["public_key"]


def wait_version(cluster: Cluster, version: int) -> dict[str, Any]:
    """Wait until every validator has model ``version``; validator 0's /fl/status."""
    def reached() -> dict[str, Any] | None:
        statuses = [fl(cluster, "/fl/status", i) for i in range(VALIDATORS)]
        if all(st is not None and st["version"] >= version for st in statuses):
            return statuses[0]
        return None
    return cluster.wait_until(reached, f"model version {version} on every validator",
                              ROUND_TIMEOUT_S)


def wait_submitted(cluster: Cluster, trainers: Trainers, round_: int) -> None:
    """Wait until trainer 0 has logged its update for ``round_`` and it is on chain."""
    me = trainer_key(trainers, 0)
    cluster.wait_until(
        lambda: round_ in trainers.submitted(0) and me in round_updates(cluster, round_),
        f"trainer 0's update in round {round_}", ROUND_TIMEOUT_S,
        detail=lambda: trainers.log_tail(0))


def test_trainers_submit_accepted_updates_and_the_model_advances(net):
    cluster, trainers = net
    for i in range(TRAINERS):
        trainers.start(i, "--rounds", 2)
    for i in range(TRAINERS):
        assert trainers.wait_exit(i) == 0, trainers.log_tail(i)
    wait_version(cluster, 2)
    keys = [trainer_key(trainers, i) for i in range(TRAINERS)]
    for i in range(TRAINERS):
        submitted = trainers.submitted(i)
        assert sorted(submitted) == [1, 2], trainers.log_tail(i)
        for round_, (tx,) in submitted.items():
            committed = cluster.committed(0, tx)
            assert committed is not None and committed["result"] is None, (round_, committed)
    for round_ in (1, 2):
        updates = round_updates(cluster, round_, index=3)
        assert sorted(updates) == sorted(keys)
        assert {u["status"] for u in updates.values()} == {"accepted"}, updates
        model = fl(cluster, f"/fl/models/{round_}", index=2)
        assert model["parent"] == round_ - 1
        assert sorted(u["trainer"] for u in model["updates"]) == sorted(keys)
    # The trainer verified the model it trained on in round 2 and kept it.
    assert (trainers.home(0) / "models" / "v00000001.msgpack").is_file()


def test_a_trainer_killed_after_submitting_never_submits_again_for_that_round(net):
    cluster, trainers = net
    round_ = wait_version(cluster, 2)["round"]

    # Killed once its update is on the chain; restarted with its journal.
    trainers.start(0)
    wait_submitted(cluster, trainers, round_)
    (first_tx,) = trainers.submitted(0)[round_]
    trainers.kill(0)
    trainers.start(0, "--rounds", 1)
    trainers.start(1, "--rounds", 2)  # its updates close this round and the next
    assert trainers.wait_exit(0) == 0, trainers.log_tail(0)
    restarted = trainers.log(0).rsplit("SIGKILL trainer 0", 1)[1]
    assert f"round {round_}: an update was already sent (journal: submitted, tx {first_tx})" \
        in restarted
    assert sorted(trainers.submitted(0, since="SIGKILL trainer 0")) == [round_ + 1]
    assert trainers.wait_exit(1) == 0, trainers.log_tail(1)

    # Killed again, this time losing its journal: the chain tells it what it did.
    round_ = wait_version(cluster, round_ + 1)["round"]
    trainers.start(0)
    wait_submitted(cluster, trainers, round_)
    (second_tx,) = trainers.submitted(0)[round_]
    trainers.kill(0)
    (trainers.home(0) / "journal.json").unlink()
    trainers.start(0, "--rounds", 1)
    trainers.start(1, "--rounds", 1)
    assert trainers.wait_exit(0) == 0, trainers.log_tail(0)
    restarted = trainers.log(0).rsplit("SIGKILL trainer 0", 1)[1]
    assert f"round {round_}: this trainer's update is already on chain" in restarted
    assert sorted(trainers.submitted(0, since="SIGKILL trainer 0")) == [round_ + 1]
    assert trainers.wait_exit(1) == 0, trainers.log_tail(1)
    # What is on chain for those rounds are the updates sent before each kill.
    for tx in (first_tx, second_tx):
        assert cluster.committed(0, tx)["result"] is None


def test_a_model_other_than_genesis_names_is_a_one_line_error(net):
    _, trainers = net
    result = run_flobc("trainer", "join", "--home", trainers.home(1), "--model", "mnist_mlp")
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines() == [
        "flobc: error: model 'mnist_mlp' does not match the chain's model 'mnist_cnn' in "
        f"{trainers.home(1) / 'genesis.toml'}"]


def test_sigterm_stops_a_trainer_cleanly(net):
    cluster, trainers = net
    trainers.start(1)
    cluster.wait_until(lambda: "registered" in trainers.log(1).rsplit("--- test: start", 1)[1],
                       "trainer 1 to register", ROUND_TIMEOUT_S)
    trainers.procs[1].send_signal(signal.SIGTERM)
    assert trainers.wait_exit(1, timeout=60) == 0, trainers.log_tail(1)
    assert trainers.log(1).rstrip().endswith("INFO flobc.trainer: trainer stopped")
