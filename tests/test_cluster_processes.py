"""A 4-validator testnet as real processes on loopback: commits, crashes, restarts.

Validators are started with ``flobc validator start`` and crashed with SIGKILL. The
tests share one cluster; each starts from a healthy cluster (all four running,
connected, at one height and state root), so they do not depend on their order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, failure_report_plugin, run_flobc

from flobc.config import Genesis, ValidatorInfo
from flobc.consensus.replica import FETCH_BATCH
from flobc.crypto import PrivateKey

pytestmark = pytest.mark.slow

CHECKPOINT_INTERVAL = 4
MAX_BLOCK_TXS = 10
"""Small blocks, so that a few hundred transactions make many blocks."""


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory,
                   pytestconfig: pytest.Config) -> Iterator[Cluster]:
    """Four validators written by ``flobc testnet init`` and started with the CLI."""
    out = tmp_path_factory.mktemp("cluster")
    cluster = Cluster.create(out / "net", 4, log_dir=out / "logs",
                             checkpoint_interval=CHECKPOINT_INTERVAL,
                             empty_block_interval_ms=100, max_block_txs=MAX_BLOCK_TXS)
    plugin = failure_report_plugin(cluster, "cluster")
    pytestconfig.pluginmanager.register(plugin)
    try:
        cluster.start_all()
        yield cluster
    finally:
        pytestconfig.pluginmanager.unregister(plugin)
        cluster.close()


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    """The shared cluster, healthy: every validator running, connected to the others,
    and all at one height and state root."""
    shared_cluster.start_all()
    shared_cluster.wait_connected()
    shared_cluster.wait_agreement()
    return shared_cluster


def kv_items(prefix: str, count: int) -> dict[str, str]:
    return {f"{prefix}-{i:04d}": f"{prefix}-value-{i}" for i in range(count)}


def primary_and_view(cluster: Cluster, indices: list[int] | None = None) -> tuple[int, int]:
    """The primary and view that the given validators agree on (asserted)."""
    sts = cluster.statuses(indices)
    seen = {(st["primary"], st["view"]) for st in sts.values()}
    assert len(seen) == 1, f"validators disagree on primary and view: {seen}"
    return seen.pop()


def assert_same_block(cluster: Cluster, height: int, indices: list[int] | None = None) -> str:
    """Every given validator serves one block hash and state root at ``height``."""
    indices = cluster.running() if indices is None else indices
    blocks = {i: cluster.block(i, height) for i in indices}
    seen = {(b["block_hash"], b["state_root"]) for b in blocks.values()}
    assert len(seen) == 1, f"validators serve different blocks at height {height}: {blocks}"
    return seen.pop()[0]


def assert_kv(cluster: Cluster, items: dict[str, str], indices: list[int] | None = None) -> None:
    """Every given validator answers GET /kv/{key} with the value written."""
    for i in cluster.running() if indices is None else indices:
        got = {k: cluster.kv(i, k) for k in items}
        assert got == items, f"validator {i} serves other values: " \
            f"{ {k: v for k, v in got.items() if v != items[k]} }"


def commit_and_agree(cluster: Cluster, items: dict[str, str], to: list[int],
                     on: list[int] | None = None) -> int:
    """Submit ``items`` round-robin to ``to``, wait until ``on`` (default: every running
    validator) committed all of them and agree on a height; return that height."""
    on = cluster.running() if on is None else on
    hashes = cluster.submit_kv(items, to, batch=max(1, len(items) // (2 * len(to))))
    top = cluster.wait_committed(hashes, on)
    height, _ = cluster.wait_agreement(on, min_height=top)
    assert_same_block(cluster, height, on)
    return height


def test_four_validators_commit_and_agree(cluster: Cluster):
    items = kv_items("basic", 40)
    commit_and_agree(cluster, items, to=[0, 1, 2, 3])

    assert_kv(cluster, items)
    for i in range(4):
        assert cluster.kv(i, "basic-never-written") is None


def test_killed_backup_does_not_stop_the_others(cluster: Cluster):
    primary, view = primary_and_view(cluster)
    backup = (primary + 1) % 4
    cluster.kill(backup)
    assert cluster.status(backup) is None
    survivors = cluster.running()
    height_before = cluster.statuses()[survivors[0]]["height"]

    items = kv_items("no-backup", 60)
    height = commit_and_agree(cluster, items, to=survivors)

    assert height > height_before
    assert_kv(cluster, items)
    # The primary is alive and a quorum remains: no reason to replace it.
    assert primary_and_view(cluster) == (primary, view)


def test_killed_primary_is_replaced_by_a_view_change(cluster: Cluster):
    primary, view = primary_and_view(cluster)
    cluster.kill(primary)
    survivors = cluster.running()
    height_before = cluster.statuses()[survivors[0]]["height"]

    # Pending transactions are what make the backups suspect the silent primary.
    items = kv_items("no-primary", 40)
    height = commit_and_agree(cluster, items, to=survivors)

    new_primary, new_view = primary_and_view(cluster)
    assert new_view > view
    assert new_primary != primary and new_primary in survivors
    assert height > height_before
    assert_kv(cluster, items)


def test_killed_validators_restart_and_catch_up(cluster: Cluster):
    # Crash the primary and leave it behind by more blocks than one state-transfer
    # batch and than the watermark window.
    lag = max(FETCH_BATCH, Genesis.load(cluster.genesis_path).consensus.window)
    first, _ = primary_and_view(cluster)
    first_height = cluster.statuses([first])[first]["height"]
    cluster.kill(first)
    survivors = cluster.running()
    behind = kv_items("catch-up", (lag + 8) * MAX_BLOCK_TXS)
    height = commit_and_agree(cluster, behind, to=survivors)
    assert height - first_height > lag

    cluster.start(first)
    height, root = cluster.wait_agreement(min_height=height)
    assert_same_block(cluster, height)
    assert cluster.statuses()[first]["state_root"] == root
    assert_kv(cluster, dict(list(behind.items())[-20:]), [first])

    # Crash a backup: the three left need the restarted validator for their quorum,
    # so commits prove it takes full part again.
    primary, view = primary_and_view(cluster, survivors)
    second = next(i for i in survivors if i != primary)
    cluster.kill(second)
    without_second = cluster.running()
    assert first in without_second
    items = kv_items("after-restart", 30)
    commit_and_agree(cluster, items, to=[first])
    assert primary_and_view(cluster) == (primary, view)

    cluster.start(second)
    cluster.wait_connected()
    items = kv_items("all-four-again", 40)
    height = commit_and_agree(cluster, items, to=[0, 1, 2, 3])
    assert_kv(cluster, items)
    assert len({st["view"] for st in cluster.statuses().values()}) == 1


def test_whole_cluster_restart_resumes_the_chain(cluster: Cluster):
    items = kv_items("before-restart", 30)
    commit_and_agree(cluster, items, to=[0, 1, 2, 3])
    height, root = cluster.wait_agreement()
    hashes = cluster.block_hashes(0, 1, height)
    written = dict(cluster.written)

    cluster.kill_all()
    cluster.start_all()

    for i, st in cluster.statuses().items():
        assert st["height"] >= height, f"validator {i} restarted at {st['height']} < {height}"
        # Empty blocks may follow, but no transaction was committed since: same state.
        assert st["state_root"] == root
    for i in range(4):
        assert cluster.block_hashes(i, 1, height) == hashes, f"validator {i} lost blocks"
    sample = dict(sorted(written.items())[:: max(1, len(written) // 100)])
    assert_kv(cluster, {**sample, **items})

    cluster.wait_connected()
    after = kv_items("after-full-restart", 30)
    assert commit_and_agree(cluster, after, to=[0, 1, 2, 3]) > height
    assert_kv(cluster, after)


def test_light_client_verifies_state_against_genesis_keys(cluster: Cluster, tmp_path: Path):
    key = "light-client-key"
    value = f"checked by the light client {tmp_path.name}"
    height = commit_and_agree(cluster, {key: value}, to=[1])
    state_key = Cluster.state_key(key).hex()
    url = cluster.urls[2]

    def proof_holds_value() -> bool:
        served = cluster.get(2, "/state/proof", key=state_key)
        return served.status_code == 200 and served.json()["value"] == value.encode().hex()
    cluster.wait_until(proof_holds_value, "a stable checkpoint that holds the light-client key")

    verify = ("verify", "--validator", url, "--height", height, "--key", state_key)
    ok = run_flobc(*verify, "--genesis", cluster.genesis_path)
    assert ok.returncode == 0, ok.stderr
    assert f"block {height} verified" in ok.stdout
    assert f"state key {state_key} = {value.encode().hex()}" in ok.stdout

    genesis = Genesis.load(cluster.genesis_path)
    impostors = tuple(ValidatorInfo(v.name, PrivateKey.generate().public_key)
                      for v in genesis.validators)
    tampered = tmp_path / "tampered-genesis.toml"
    tampered.write_text(Genesis(genesis.chain_id, genesis.genesis_time_ms, impostors,
                                genesis.consensus, genesis.app).to_toml())
    bad = run_flobc(*verify, "--genesis", tampered)
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert "Traceback" not in bad.stderr
    assert "commit certificate" in bad.stderr and "invalid signature" in bad.stderr


def test_status_json_reports_height_view_and_peers(cluster: Cluster):
    height, _ = cluster.wait_agreement()
    primary, view = primary_and_view(cluster)

    result = run_flobc("status", "--validator", cluster.urls[3], "--json")

    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["index"] == 3
    assert status["chain_id"] == Genesis.load(cluster.genesis_path).chain_id
    assert status["height"] >= height
    assert (status["primary"], status["view"]) == (primary, view)
    assert sorted(status["peers_connected"]) == [0, 1, 2]
