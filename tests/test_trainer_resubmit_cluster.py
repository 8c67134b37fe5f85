"""A trainer's accepted update held by one validator only, which is then SIGKILLed, is
resubmitted (the same signed bytes) to another validator and committed in the same round,
once. Real processes: ``flobc testnet init --app fl``, four ``flobc validator start`` and
one ``flobc trainer join``. Validator 1 runs with ``gossip_txs = false``, so the update it
accepts is, deterministically, on no other validator when it dies."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from cluster import Cluster, Validator, failure_report_plugin, run_flobc
from test_trainer_loop import Trainers, fl, trainer_key

from flobc.config import Genesis, load_key
from flobc.launch.localnet import free_port_range
from flobc.protocol.txs import make_register

pytestmark = pytest.mark.slow

VALIDATORS = 4
HOLDER = 1
"""The validator that accepts the update, keeps it to itself and is killed (a backup)."""
ROUND_TIMEOUT_S = 180.0


@pytest.fixture()
def net(tmp_path, pytestconfig: pytest.Config) -> Iterator[tuple[Cluster, Trainers]]:
    out = tmp_path / "net"
    base = free_port_range(2 * VALIDATORS)
    init = run_flobc("testnet", "init", "--app", "fl", "--validators", VALIDATORS,
                     "--trainers", 1, "--out", out, "--base-port", base,
                     "--round-deadline-ms", 120_000)
    assert init.returncode == 0, init.stderr
    cluster = Cluster(out, [Validator(i, out / f"validator-{i}",
                                      f"http://127.0.0.1:{base + 2 * i + 1}",
                                      out / f"validator-{i}.log") for i in range(VALIDATORS)])
    config = out / f"validator-{HOLDER}" / "config.toml"
    config.write_text(config.read_text().replace("gossip_txs = true", "gossip_txs = false"))
    trainers = Trainers(out)
    toml = trainers.home(0) / "trainer.toml"
    urls = [cluster.urls[HOLDER]] + [u for i, u in enumerate(cluster.urls) if i != HOLDER]
    text, n = re.subn(r"(?m)^validators = .*$", f"validators = {json.dumps(urls)}",
                      toml.read_text())
    assert n == 1, toml.read_text()
    toml.write_text(text)
    plugin = failure_report_plugin(cluster, "net")
    pytestconfig.pluginmanager.register(plugin)
    try:
        cluster.start_all()
        yield cluster, trainers
    finally:
        pytestconfig.pluginmanager.unregister(plugin)
        trainers.stop_all()
        cluster.close()


def test_an_update_lost_with_its_only_validator_is_resubmitted_and_committed_once(net):
    cluster, trainers = net
    # Registered through validator 0 (validator 1 would keep the registration to itself).
    key = load_key(trainers.home(0) / "trainer_key.json")
    register = make_register(key, time.time_ns(), Genesis.load(cluster.genesis_path).chain_id)
    cluster.wait_committed(cluster.submit([register], to=[0]), timeout=ROUND_TIMEOUT_S)
    trainers.start(0, "--rounds", 1)
    sent = cluster.wait_until(lambda: trainers.submitted(0), "the trainer's update sent",
                              ROUND_TIMEOUT_S, detail=lambda: trainers.log_tail(0))
    ((round_, (tx,)),) = sent.items()
    assert f"update tx {tx} via {cluster.urls[HOLDER]}" in trainers.log(0)
    # Only the validator that accepted it holds it.
    assert cluster.get(HOLDER, f"/txs/{tx}").json()["status"] == "pending"
    for i in range(VALIDATORS):
        if i != HOLDER:
            assert cluster.get(i, f"/txs/{tx}").status_code == 404
    cluster.kill(HOLDER)

    others = [i for i in range(VALIDATORS) if i != HOLDER]
    cluster.wait_committed([tx], on=others, timeout=ROUND_TIMEOUT_S)
    assert trainers.wait_exit(0) == 0, trainers.log_tail(0)
    log = trainers.log(0)
    assert re.search(rf"update tx {tx} unknown to {re.escape(cluster.urls[HOLDER])} and "
                     r"committed nowhere after \d+ s: resubmitted the same signed update",
                     log), trainers.log_tail(0)
    assert trainers.submitted(0) == {round_: [tx]}  # one update signed for the round
    me = trainer_key(trainers, 0)
    for i in others:
        found = fl(cluster, f"/fl/rounds/{round_}", i)
        assert [u["trainer"] for u in found["updates"]].count(me) == 1, found
        assert cluster.get(i, f"/txs/{tx}").json()["included_again"] == []
