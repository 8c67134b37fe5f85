"""A backup restarted under load rejoins consensus for real (4 validator processes).

A restarted validator catches up its blocks by state transfer; it must also catch up
its stable checkpoint (so that it serves state proofs, as its status says) and stay in
the current view. Only then does the cluster tolerate a further fault: with the
restarted validator counted in every quorum, a second backup crash must cost no view
change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, failure_report_plugin

pytestmark = pytest.mark.slow

CHECKPOINT_INTERVAL = 4
WINDOW = 2 * CHECKPOINT_INTERVAL
"""The smallest window allowed, so that falling two windows behind takes few blocks."""
MAX_BLOCK_TXS = 10
CATCH_UP_BLOCKS = 3 * CHECKPOINT_INTERVAL
"""How many blocks may commit after the restarted validator has caught up the blocks
before it must have the others' stable checkpoint."""


@pytest.fixture
def cluster(tmp_path: Path, pytestconfig: pytest.Config) -> Iterator[Cluster]:
    cluster = Cluster.create(tmp_path / "net", 4, log_dir=tmp_path / "logs",
                             checkpoint_interval=CHECKPOINT_INTERVAL, window=WINDOW,
                             max_in_flight=CHECKPOINT_INTERVAL,
                             empty_block_interval_ms=100, max_block_txs=MAX_BLOCK_TXS)
    plugin = failure_report_plugin(cluster, "cluster")
    pytestconfig.pluginmanager.register(plugin)
    try:
        cluster.start_all()
        cluster.wait_connected()
        yield cluster
    finally:
        pytestconfig.pluginmanager.unregister(plugin)
        cluster.close()


def items(prefix: str, count: int) -> dict[str, str]:
    return {f"{prefix}-{i:04d}": f"value {i}" for i in range(count)}


def commit(cluster: Cluster, kv: dict[str, str], to: list[int], on: list[int]) -> int:
    """Submit ``kv`` round-robin to ``to``; the height at which ``on`` all committed it."""
    hashes = cluster.submit_kv(kv, to, batch=max(1, len(kv) // (2 * len(to))))
    return cluster.wait_committed(hashes, on)


def views(cluster: Cluster, indices: list[int]) -> set[tuple[int, int, int]]:
    """(view, primary, view changes started) as each of ``indices`` reports them."""
    return {(st["view"], st["primary"], st["view_changes"])
            for st in cluster.statuses(indices).values()}


def test_a_restarted_backup_rejoins_so_a_second_backup_kill_costs_no_view_change(
        cluster: Cluster) -> None:
    commit(cluster, items("warm-up", 20), [0, 1, 2, 3], [0, 1, 2, 3])
    st = cluster.statuses()
    primary = st[0]["primary"]
    first, second = (primary + 1) % 4, (primary + 2) % 4
    others = [i for i in range(4) if i != first]
    before = views(cluster, list(range(4)))
    assert len(before) == 1, before

    # Down while the others commit more than two windows of checkpoint votes past it.
    cluster.kill(first)
    left_at = max(s["height"] for s in st.values())
    behind = commit(cluster, items("while-down", (2 * WINDOW + 8) * MAX_BLOCK_TXS),
                    others, others)
    assert behind - left_at > 2 * WINDOW

    # Back under load: once it has caught up the blocks, it must reach the others'
    # stable checkpoint while they commit no more than CATCH_UP_BLOCKS blocks.
    cluster.start(first)
    target = min(s["stable_checkpoint"] for s in cluster.statuses(others).values())
    batch, caught_up_at = 0, None
    while True:
        top = commit(cluster, items(f"after-restart-{batch}", CHECKPOINT_INTERVAL * MAX_BLOCK_TXS),
                     [0, 1, 2, 3], [0, 1, 2, 3])
        batch += 1
        caught_up_at = caught_up_at or top
        if cluster.statuses([first])[first]["stable_checkpoint"] >= target:
            break
        assert top - caught_up_at <= CATCH_UP_BLOCKS, (
            f"validator {first} has the blocks since height {caught_up_at} but not the "
            f"others' stable checkpoint {target} at height {top}: "
            f"{cluster.statuses([first])[first]}")

    # Its status names a stable checkpoint, so it serves proofs against it.
    key = "while-down-0000"
    proof = cluster.get(first, "/state/proof", key=Cluster.state_key(key).hex())
    assert proof.status_code == 200, proof.text
    assert proof.json()["value"] == b"value 0".hex()
    assert views(cluster, list(range(4))) == before

    # A second backup dies: the restarted validator is needed in every quorum.
    cluster.kill(second)
    survivors = [i for i in range(4) if i != second]
    commit(cluster, items("second-kill", 60), survivors, survivors)
    assert views(cluster, survivors) == before
