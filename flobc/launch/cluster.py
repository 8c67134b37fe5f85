"""``flobc cluster up``: a whole learning cluster on this machine, with a live table.

It writes a learning testnet (``flobc testnet init --app fl``), starts the validators
and the trainers as processes on loopback, and watches the chain: for each new model
version it fetches the weights, checks them against the committed record, and measures
their accuracy on the test split that no trainer or validator ever uses. One table row
per round; the rows also go to ``--history`` as JSON. It stops cleanly on Ctrl-C, on
SIGTERM, or after ``--rounds``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flobc.config import Genesis
from flobc.crypto import sha256
from flobc.errors import LaunchError
from flobc.launch.localnet import LocalNet, free_port_range
from flobc.launch.processes import ProcessGroup
from flobc.launch.project import Project
from flobc.protocol.settings import FLConfig

POLL_S = 0.5
HEADLINE = {"classification": "accuracy", "multilabel": "accuracy", "regression": "rmse"}
"""The test metric a task's table shows; the history has all of them and the loss."""


def header(metric: str) -> str:
    return (f"{'round':>5}  {'accepted':>8}  {'rejected':>8}  {'test ' + metric[:4]:>9}  "
            f"{'round s':>7}  {'height':>6}  model")


@dataclass
class ClusterOptions:
    validators: int = 4
    trainers: int = 4
    rounds: int | None = None
    history: Path | None = None
    sync: str = "bsp"
    aggregator: str = "fedavg"
    validation: str | None = None
    """The validation rule by name (None: ``testnet init``'s default)."""
    round_deadline_ms: int = 60_000
    epochs: int = 1
    behaviours: dict[int, str] = field(default_factory=dict)
    """Trainer index -> a Byzantine behaviour (experiments), e.g. {3: "sign_flip"}."""
    workdir: Path | None = None
    """Keep the testnet here (default: a temporary folder, removed at the end)."""
    model: str | None = None
    dataset: str | None = None
    dataset_file: Path | None = None
    max_blob_bytes: int | None = None
    partition: str | None = None
    """Model, dataset, the dataset's file, the blob limit and the partition as ``testnet
    init`` takes them (None: its default)."""
    project: Project | None = None
    """A project folder whose settings name the model and the dataset; every process
    started here gets it on its import path."""


def init_testnet(out: Path, options: ClusterOptions) -> None:
    """Write the learning testnet with the CLI, exactly as a user would."""
    command = [sys.executable, "-m", "flobc", "testnet", "init", "--app", "fl",
               "--validators", str(options.validators), "--trainers", str(options.trainers),
               "--out", str(out), "--base-port", str(free_port_range(2 * options.validators)),
               "--sync", options.sync, "--aggregator", options.aggregator,
               "--round-deadline-ms", str(options.round_deadline_ms)]
    for flag, value in (("--model", options.model), ("--dataset", options.dataset),
                        ("--dataset-file", options.dataset_file),
                        ("--max-blob-bytes", options.max_blob_bytes),
                        ("--partition", options.partition),
                        ("--validation", options.validation),
                        ("--project", options.project and options.project.folder)):
        if value is not None:
            command += [flag, str(value)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise LaunchError(f"testnet init failed: {done.stderr.strip() or done.stdout.strip()}")


class Trainers(ProcessGroup):
    """The trainer processes, each logging to ``<home>/trainer.log``."""

    def __init__(self, workdir: Path, options: ClusterOptions) -> None:
        self.homes = sorted(workdir.glob("trainer-*"), key=lambda p: int(p.name.split("-")[1]))
        self.options = options
        super().__init__("trainer", len(self.homes))

    def start(self, index: int) -> None:
        """Start trainer ``index`` (again, on its existing home and journal)."""
        command = [sys.executable, "-m", "flobc", "trainer", "join", "--home",
                   str(self.homes[index]), "--epochs", str(self.options.epochs)]
        if index in self.options.behaviours:
            command += ["--behaviour", self.options.behaviours[index]]
        self.launch(index, command, self.homes[index] / "trainer.log")

    def start_all(self) -> None:
        for i in range(len(self.homes)):
            self.start(i)


class Monitor:
    """Turns each new committed model version into a history row."""

    def __init__(self, genesis: Genesis, url: str, dataset_file: Path | None = None) -> None:
        """``dataset_file``: a copy of the dataset when genesis names ``dataset = "file"``."""
        from flobc.ml.data import split
        from flobc.ml.learner import learner_for

        fl = FLConfig.from_genesis(genesis)
        try:  # DatasetError and ModelError: the user's file or builder
            data = fl.load_dataset(None if dataset_file is None else str(dataset_file))
            self.learner = learner_for(fl.model, fl.seed, task=data.spec)
        except ValueError as exc:
            raise LaunchError(f"cannot measure test accuracy: {exc}") from exc
        self.test = split(data, seed=fl.seed).test
        self.metric = HEADLINE[data.task]
        self.url = url
        self.client = httpx.Client(timeout=30.0)
        self.version = 0
        self.last_time = time.monotonic()

    def new_rows(self) -> Iterator[dict[str, Any]]:
        latest = self._get("/fl/models/latest")
        while latest is not None and self.version < latest["version"]:
            self.version += 1
            yield self._row(self._get(f"/fl/models/{self.version}"))

    def _row(self, record: dict[str, Any]) -> dict[str, Any]:
        from flobc.ml.weights import decode_weights

        blob = self.client.get(f"{self.url}/fl/models/{record['version']}/weights").content
        if sha256(blob).hex() != record["hash"]:
            raise LaunchError(f"validator served weights that do not match version "
                           f"{record['version']}'s committed hash")
        self.learner.set_weights(decode_weights(blob, max_bytes=len(blob)))
        scores = self.learner.evaluate(self.test.x, self.test.y)
        round_info = self._get(f"/fl/rounds/{record['round']}") or {}
        updates = {u["trainer"]: u["status"] for u in round_info.get("updates", [])}
        statuses = list(updates.values())
        trainers = (self._get("/fl/trainers") or {}).get("trainers", [])
        now = time.monotonic()
        row = {"round": record["round"], "version": record["version"],
               "accepted": statuses.count("accepted"), "rejected": statuses.count("rejected"),
               **{name: round(float(v), 4) for name, v in scores.items()},
               "seconds": round(now - self.last_time, 2),
               "height": record["height"], "model_hash": record["hash"], "updates": updates,
               "trust": {t["trainer"]: t["trust"] for t in trainers},
               "excluded": sorted(t["trainer"] for t in trainers if t["excluded"])}
        self.last_time = now
        return row

    def _get(self, path: str) -> Any:
        """The JSON answer, or None while it does not exist yet (before the first block)."""
        response = self.client.get(self.url + path)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()


def agreement(urls: list[str]) -> str | None:
    """Why the validators disagree on the model, or None when they hold the same one."""
    with httpx.Client(timeout=10.0) as client:
        latest = [client.get(f"{u}/fl/models/latest").json() for u in urls]
        common = min(r["version"] for r in latest)
        hashes = {client.get(f"{u}/fl/models/{common}").json()["hash"] for u in urls}
    if len(hashes) != 1:
        return f"validators hold different models at version {common}: {sorted(hashes)}"
    return None


def format_row(row: dict[str, Any], metric: str) -> str:
    value = (f"{row[metric] * 100:>8.2f}%" if metric == "accuracy"
             else f"{row[metric]:>9.4f}")
    return (f"{row['round']:>5}  {row['accepted']:>8}  {row['rejected']:>8}  {value}  "
            f"{row['seconds']:>7.1f}  {row['height']:>6}  {row['model_hash'][:12]}")


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the history file atomically, so a reader never sees half of it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop


def run_cluster(options: ClusterOptions) -> int:
    """Run until ``options.rounds`` rounds are committed or the user stops it."""
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="flobc-cluster-"))
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    rows: list[dict[str, Any]] = []
    net = trainers = None
    if options.project is not None:
        options.project.activate()
    try:
        print(f"writing a learning testnet to {workdir}", flush=True)
        init_testnet(workdir, options)
        net = LocalNet.open(workdir)
        net.start_all()
        trainers = Trainers(workdir, options)
        trainers.start_all()
        print(f"{options.validators} validators and {len(trainers.homes)} trainers running; "
              f"API and dashboard at {net.urls[0]}/", flush=True)
        monitor = Monitor(net.genesis, net.urls[0], net.configs[0].dataset_path)
        print(header(monitor.metric), flush=True)
        while options.rounds is None or len(rows) < options.rounds:
            for row in monitor.new_rows():
                if options.rounds is not None and len(rows) == options.rounds:
                    break  # two versions committed between polls: stop at the last asked for
                rows.append(row)
                print(format_row(row, monitor.metric), flush=True)
                if options.history:
                    write_history(options.history, rows)
            time.sleep(POLL_S)
        problem = agreement(net.urls)
        print(problem or f"all {len(net.urls)} validators hold model {rows[-1]['model_hash']}"
              if rows else "no round completed", flush=True)
        return 0 if rows and problem is None else 1
    except _Stop:
        print("stopping", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if trainers is not None:
            trainers.stop_all()
        if net is not None:
            net.stop_all()
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
