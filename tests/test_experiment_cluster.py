"""The experiment harness agrees with a real cluster on the same work: ``flobc cluster up``
(validator and trainer processes, PBFT on loopback) and ``flobc experiment`` on one
partition, attack and defence give the same accepted and rejected counts, honest and
attacker, round by round, and final accuracy (the mean of the last 3 rounds) within one point.

The two are not bit-identical: a live cluster's trainer keys are random (so FedAvg sums
in another order) and each trainer process runs its own TensorFlow. A trainer that
registers only after another one's round-1 update arrived is not expected in round 1,
so rounds that did not get every trainer's update are not compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flobc.config import load_key
from flobc.launch.experiment import make_grid
from flobc.launch.experiment.run import run_grid

pytestmark = pytest.mark.slow

TRAINERS, ROUNDS, ATTACKER = 4, 4, 3
MODEL = "mnist_mlp"


def _counts(statuses: dict[str, str], attackers: set[str]) -> dict[str, dict[str, int]]:
    out = {role: {"accepted": 0, "rejected": 0} for role in ("honest", "attacker")}
    for trainer, status in statuses.items():
        if status in ("accepted", "rejected"):
            out["attacker" if trainer in attackers else "honest"][status] += 1
    return out


def test_a_sign_flip_cell_agrees_with_the_cluster(tmp_path: Path) -> None:
    history, net = tmp_path / "history.json", tmp_path / "net"
    command = [sys.executable, "-m", "flobc", "cluster", "up", "--trainers", str(TRAINERS),
               "--rounds", str(ROUNDS), "--model", MODEL, "--partition", "iid",
               "--byzantine", f"{ATTACKER}:sign_flip", "--history", str(history),
               "--keep", str(net)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = json.loads(history.read_text())
    attacker = {load_key(net / f"trainer-{ATTACKER}" / "trainer_key.json").public_key.hex()}

    grid = make_grid(model=MODEL, trainers=TRAINERS, rounds=ROUNDS, partitions=["iid"],
                     attacks=["sign_flip"], attackers=[TRAINERS - ATTACKER],
                     defences=["chance_bound"])
    [cell] = run_grid(grid, progress=lambda line: None)

    full = [(row, ours) for row, ours in zip(rows, cell["rounds"], strict=True)
            if len(row["updates"]) == TRAINERS]
    assert len(full) >= ROUNDS - 1, [len(r["updates"]) for r in rows]
    for row, ours in full:
        expected = {role: {k: ours["updates"][role][k] for k in ("accepted", "rejected")}
                    for role in ("honest", "attacker")}
        assert _counts(row["updates"], attacker) == expected, row["round"]
    cluster_final = sum(r["accuracy"] for r in rows[-3:]) / 3
    assert abs(cluster_final - cell["final_accuracy"]) <= 0.01, (
        [r["accuracy"] for r in rows], [r["accuracy"] for r in cell["rounds"]])
