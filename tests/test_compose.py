"""``docker-compose up``: the learning cluster in containers, on a real Docker engine.

Builds the image, starts the compose project (init, 4 validators, 4 trainers) under a
project name and a validator-0 API port of its own, and through that API checks that
rounds commit with every trainer taking part and test accuracy rising, that rounds go
on after one validator's container is killed, that ``down`` + ``up`` resumes the same
chain (the volumes keep it) with every validator, the killed one included, holding the
same model, and that ``down -v`` deletes it.

Needs Docker and Compose (v1 ``docker-compose`` or v2 ``docker compose``); skipped
otherwise, unless FLOBC_REQUIRE_DOCKER=1, which makes a missing engine a failure (CI
runs it that way). Run it with ``pytest -m compose tests/test_compose.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from flobc.config import Genesis

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parent.parent
VALIDATORS = 4
TRAINERS = 4
BUILD_TIMEOUT_S = 1200      # the first build downloads TensorFlow; later ones are cached
COMPOSE_TIMEOUT_S = 300     # one up/down, including waiting for healthy validators
FIRST_ROUNDS_TIMEOUT_S = 240
ROUNDS_TIMEOUT_S = 180
POLL_S = 1.0
ROUNDS_BEFORE_CRASH = 4
ROUNDS_AFTER_CRASH = 2

T = TypeVar("T")


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    return None


def _docker_problem() -> str | None:
    """Why Docker cannot be used here, or None."""
    if not shutil.which("docker"):
        return "no docker command"
    if _compose_command() is None:
        return "neither docker-compose nor docker compose is installed"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 60 s"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        return f"no Docker engine: {reason}"
    return None


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    problem = _docker_problem()
    if problem is not None:
        if os.environ.get("FLOBC_REQUIRE_DOCKER") == "1":
            pytest.fail(f"FLOBC_REQUIRE_DOCKER=1 but Docker is unusable: {problem}")
        pytest.skip(f"needs a Docker engine and Compose ({problem}); CI runs it through "
                    "shared/tools/with-docker")
    command = _compose_command()
    assert command is not None
    return command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Project:
    """One compose project made from the repository's docker-compose.yml."""

    def __init__(self, compose_cmd: list[str]) -> None:
        self.name = f"flobctest{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = [*compose_cmd, "-p", self.name, "-f", str(ROOT / "docker-compose.yml")]
        self.env = {**os.environ, "FLOBC_API_PORT": str(self.port)}

    def run(self, *args: str, timeout: float = COMPOSE_TIMEOUT_S,
            check: bool = True) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run([*self.base, *args], cwd=ROOT, env=self.env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"compose {' '.join(args)} did not finish within "
                                 f"{timeout:g} s\n{self.logs()}") from exc
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}\n{self.logs()}")
        return done

    def logs(self, service: str | None = None, tail: int = 40) -> str:
        args = ["logs", "--no-color", "--tail", str(tail), *([service] if service else [])]
        try:
            done = subprocess.run([*self.base, *args], cwd=ROOT, env=self.env,
                                  capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "(compose logs timed out)"
        return done.stdout + done.stderr

    def container(self, service: str) -> str:
        ids = self.run("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def validator_get(self, index: int, path: str) -> Any:
        """GET ``path`` from validator ``index``'s API inside its container (only
        validator 0's is published); None while it cannot answer."""
        fetch = ("import sys, urllib.request; "
                 "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
        done = self.run("exec", "-T", f"validator{index}", "python", "-c", fetch,
                        f"http://127.0.0.1:{26601 + 2 * index}{path}", check=False, timeout=60)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def volumes(self) -> list[str]:
        done = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter",
             f"label=com.docker.compose.project={self.name}"],
            capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.split()


@pytest.fixture(scope="module")
def project(compose_cmd: list[str]) -> Iterator[Project]:
    project = Project(compose_cmd)
    project.run("build", timeout=BUILD_TIMEOUT_S)
    try:
        yield project
    finally:
        project.run("down", "-v", "--remove-orphans", check=False)
        # Earlier builds of the image, untagged by this one, would pile up in the engine.
        subprocess.run(["docker", "image", "prune", "-f", "--filter",
                        "label=org.opencontainers.image.title=flobc"],
                       capture_output=True, timeout=120)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float,
             explain: Callable[[], str] = lambda: "") -> T:
    """Poll ``probe`` until it returns something other than None (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n"
                                 f"{explain()}")
        time.sleep(POLL_S)


def get_json(url: str) -> Any:
    """The JSON answer, or None while the validator cannot answer it (yet)."""
    try:
        response = httpx.get(url, timeout=10)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


class Rounds:
    """Committed model versions as they appear, each with its test accuracy."""

    def __init__(self, project: Project, genesis: Genesis) -> None:
        from flobc.launch.cluster import Monitor

        self.project = project
        self.monitor = Monitor(genesis, project.url)
        self.rows: list[dict[str, Any]] = []

    def genesis_accuracy(self) -> float:
        """Accuracy of version 0 (the monitor's model holds it before any round)."""
        test = self.monitor.test
        return float(self.monitor.learner.evaluate(test.x, test.y)["accuracy"])

    def poll(self) -> None:
        try:
            for row in self.monitor.new_rows():
                self.rows.append(row)
        except httpx.TransportError:
            # The API is (re)starting: fetch the version that failed again next time.
            self.monitor.version = self.rows[-1]["version"] if self.rows else 0

    def wait_for_version(self, version: int, timeout: float) -> list[dict[str, Any]]:
        def reached() -> list[dict[str, Any]] | None:
            self.poll()
            return self.rows if self.rows and self.rows[-1]["version"] >= version else None
        return wait_for(f"model version {version}", reached, timeout, self.explain)

    def explain(self) -> str:
        status = get_json(f"{self.project.url}/fl/status")
        table = "\n".join(f"  version {r['version']} round {r['round']}: accepted "
                          f"{r['accepted']}, rejected {r['rejected']}, accuracy "
                          f"{r['accuracy']:.4f}" for r in self.rows)
        return (f"rounds so far:\n{table or '  none'}\nfl/status: {status}\n"
                f"{self.project.logs(tail=15)}")


def test_compose_cluster_learns_survives_a_crash_and_keeps_its_chain(project: Project):
    project.run("up", "-d")
    assert "wrote the testnet" in project.logs("init")
    for i in range(VALIDATORS):
        health = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}",
             project.container(f"validator{i}")], capture_output=True, text=True, timeout=30)
        assert health.stdout.strip() == "healthy", (i, health)

    genesis_text = project.run("exec", "-T", "validator0", "cat",
                               "/net/testnet/genesis.toml").stdout
    genesis = Genesis.from_toml(genesis_text)
    assert (genesis.app["model"], genesis.app["sync"], genesis.app["aggregator"]) == \
        ("mnist_cnn", "bsp", "fedavg")
    assert len(genesis.validators) == VALIDATORS
    assert len(genesis.app["trainers"]) == TRAINERS

    # Rounds commit, every trainer (reaching the validators by hostname) takes part in
    # each of them and is accepted in some, and the model learns.
    rounds = Rounds(project, genesis)
    baseline = rounds.genesis_accuracy()
    rows = rounds.wait_for_version(ROUNDS_BEFORE_CRASH, FIRST_ROUNDS_TIMEOUT_S)
    assert [r["version"] for r in rows] == list(range(1, len(rows) + 1))
    for row in rows[:ROUNDS_BEFORE_CRASH]:
        assert len(row["updates"]) == TRAINERS and row["accepted"] >= 1, rounds.explain()
    accepted = {t for r in rows for t, status in r["updates"].items() if status == "accepted"}
    assert len(accepted) == TRAINERS, rounds.explain()
    accuracies = [baseline] + [r["accuracy"] for r in rows]
    assert rows[0]["accuracy"] > baseline + 0.2, accuracies
    assert rows[-1]["accuracy"] > rows[0]["accuracy"], accuracies
    assert rows[-1]["accuracy"] > 0.8, accuracies

    # Every validator is connected to every other one through its hostname.
    status = get_json(f"{project.url}/status")
    assert sorted(status["peers_connected"]) == list(range(1, VALIDATORS)), status

    # Kill a validator (not 0, whose API the test reads): f = 1 of 4, rounds go on.
    killed = project.container("validator2")
    subprocess.run(["docker", "kill", killed], check=True, capture_output=True, timeout=60)
    wait_for("validator 0 to notice validator 2 is gone",
             lambda: True if 2 not in (get_json(f"{project.url}/status") or {}).get(
                 "peers_connected", [2]) else None, 60)
    at_crash = rows[-1]["version"]
    rows = rounds.wait_for_version(at_crash + ROUNDS_AFTER_CRASH, ROUNDS_TIMEOUT_S)
    assert rows[-1]["accuracy"] > 0.8, [r["accuracy"] for r in rows]

    # down (volumes kept) + up: the same chain resumes where it was and goes on.
    before = get_json(f"{project.url}/status")
    last = rows[-1]
    project.run("down")
    assert sorted(project.volumes()) == sorted(
        f"{project.name}_{v}" for v in
        ["testnet", *(f"validator{i}-data" for i in range(VALIDATORS))])
    project.run("up", "-d")
    assert "keeping the testnet" in project.logs("init")
    assert project.run("exec", "-T", "validator0", "cat",
                       "/net/testnet/genesis.toml").stdout == genesis_text
    after = wait_for("validator 0 to serve again", lambda: get_json(f"{project.url}/status"),
                     60)
    assert after["chain_id"] == before["chain_id"]
    assert after["height"] >= before["height"], (before, after)
    record = get_json(f"{project.url}/fl/models/{last['version']}")
    assert record is not None and record["hash"] == last["model_hash"], record
    rows = rounds.wait_for_version(last["version"] + 1, ROUNDS_TIMEOUT_S)
    wait_for("the restarted validator 2 to rejoin",
             lambda: True if 2 in (get_json(f"{project.url}/status") or {}).get(
                 "peers_connected", []) else None, 60)

    # Every validator, validator 2 included (it missed rounds while dead and caught up),
    # holds the model validator 0 committed.
    newest = rows[-1]
    for i in range(1, VALIDATORS):
        record = wait_for(
            f"validator {i} to hold model version {newest['version']}",
            lambda i=i: project.validator_get(i, f"/fl/models/{newest['version']}"),
            ROUNDS_TIMEOUT_S, lambda i=i: project.logs(f"validator{i}", tail=20))
        assert record["hash"] == newest["model_hash"], (i, record, newest)

    # down -v deletes the chain with its volumes.
    project.run("down", "-v")
    assert project.volumes() == []
