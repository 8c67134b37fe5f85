"""``flobc tx send --wait`` resubmits a key-value transaction that the validator which
accepted it lost: four real validator processes, validator 1 with ``gossip_txs = false``
so that the transaction it accepts is on no other validator when it is SIGKILLed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cluster import Cluster, flobc_command, run_flobc

pytestmark = pytest.mark.slow

HOLDER = 1
WAIT_S = 120


def test_tx_send_resubmits_a_transaction_lost_with_its_only_validator(tmp_path: Path):
    cluster = Cluster.create(tmp_path / "net")
    config = cluster.validators[HOLDER].home / "config.toml"
    config.write_text(config.read_text().replace("gossip_txs = true", "gossip_txs = false"))
    key = tmp_path / "client.json"
    assert run_flobc("keys", "generate", "--out", key).returncode == 0
    with cluster:
        cluster.start_all()
        others = [u for i, u in enumerate(cluster.urls) if i != HOLDER]
        also = [arg for url in others for arg in ("--also", url)]
        with subprocess.Popen(
                flobc_command("tx", "send", "--validator", cluster.urls[HOLDER], *also,
                              "--key", key, "--set", "greeting=hello", "--wait", WAIT_S),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as send:
            assert send.stdout is not None
            accepted = send.stdout.readline()
            tx = re.match(r"accepted tx ([0-9a-f]{64})", accepted)
            assert tx is not None, accepted
            tx_hash = tx.group(1)
            assert cluster.get(HOLDER, f"/txs/{tx_hash}").json()["status"] == "pending"
            for i in range(cluster.n):
                if i != HOLDER:
                    assert cluster.get(i, f"/txs/{tx_hash}").status_code == 404
            cluster.kill(HOLDER)
            out, err = send.communicate(timeout=WAIT_S + 30)
        assert send.returncode == 0, err
        assert f"tx {tx_hash} unknown to {cluster.urls[HOLDER]} and committed nowhere: " \
               "resubmitted the same signed tx to" in out
        assert "committed at height" in out
        for i in range(cluster.n):
            if i != HOLDER:
                assert cluster.kv(i, "greeting") == "hello"
                assert cluster.get(i, f"/txs/{tx_hash}").json()["included_again"] == []
