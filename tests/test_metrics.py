"""``GET /metrics`` of real validator processes on loopback (a key-value testnet).

The exposition must parse as Prometheus text, follow the chain as it grows, count the
commit latency of each transaction a validator admitted, and count the view change
that replaces a killed primary. Two nodes in one process keep separate registries.
What a learning round does to the metrics is checked in test_event_logs.py, on the one
learning cluster those tests share (TensorFlow makes each one slow to start).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, failure_report_plugin
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from flobc.config import ConsensusParams, Genesis, load_key
from flobc.launch.cli import write_testnet
from flobc.launch.localnet import free_port_range
from flobc.storage.ledger import Ledger
from flobc.validator.node import Node

pytestmark = pytest.mark.slow

VALIDATORS = 4
TXS = 50
CONSENSUS_METRICS = {"flobc_chain_height", "flobc_consensus_view",
                     "flobc_consensus_view_changes", "flobc_mempool_transactions",
                     "flobc_peers_connected", "flobc_commit_latency_seconds"}
"""Family names as the parser reports them (a counter's without its ``_total``)."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    """The family names and every sample, keyed by (sample name, sorted labels)."""
    families = list(text_string_to_metric_families(text))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families for s in family.samples}
    return {f.name for f in families}, samples


def scrape(cluster: Cluster, index: int) -> tuple[set[str], Samples]:
    response = cluster.get(index, "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            pytestconfig: pytest.Config) -> Iterator[Cluster]:
    with Cluster.create(tmp_path_factory.mktemp("metrics") / "net", VALIDATORS) as net:
        plugin = failure_report_plugin(net, "cluster")
        pytestconfig.pluginmanager.register(plugin)
        try:
            net.start_all()
            yield net
        finally:
            pytestconfig.pluginmanager.unregister(plugin)


def test_metrics_parse_and_follow_the_chain(cluster: Cluster) -> None:
    running = cluster.running()
    cluster.wait_connected(running)
    target = running[0]
    before = {i: scrape(cluster, i) for i in running}
    for i, (names, samples) in before.items():
        assert names >= CONSENSUS_METRICS, CONSENSUS_METRICS - names
        assert value(samples, "flobc_peers_connected") == len(running) - 1
        assert value(samples, "flobc_mempool_transactions") >= 0
        assert value(samples, "flobc_consensus_view") == cluster.status(i)["view"]

    hashes = cluster.submit_kv({f"metrics-{n}": str(n) for n in range(TXS)}, to=[target])
    height = cluster.wait_committed(hashes)

    for i in running:
        _, samples = scrape(cluster, i)
        assert value(samples, "flobc_chain_height") >= height
        assert value(samples, "flobc_chain_height") > value(before[i][1], "flobc_chain_height")
    _, samples = scrape(cluster, target)
    admitted = (value(samples, "flobc_commit_latency_seconds_count")
                - value(before[target][1], "flobc_commit_latency_seconds_count"))
    assert admitted == TXS, "each transaction sent here is admitted here, and committed"
    assert value(samples, "flobc_commit_latency_seconds_sum") > 0
    assert value(samples, "flobc_commit_latency_seconds_bucket", le="+Inf") == \
        value(samples, "flobc_commit_latency_seconds_count")


def test_view_changes_counter_increases_when_the_primary_is_killed(cluster: Cluster) -> None:
    running = cluster.running()
    cluster.wait_connected(running)
    status = cluster.status(running[0])
    assert status is not None
    view, primary = status["view"], status["primary"]
    before = {i: value(scrape(cluster, i)[1], "flobc_consensus_view_changes_total")
              for i in running}

    cluster.kill(primary)
    survivors = cluster.running()
    # A transaction waiting for a block is what makes the backups suspect the primary.
    cluster.wait_committed(cluster.submit_kv({"after-view-change": "yes"}))
    cluster.wait_until(
        lambda: all(st["view"] > view and not st["in_view_change"]
                    for st in cluster.statuses(survivors).values()),
        f"validators {survivors} to settle in a view after {view}")

    for i in survivors:
        _, samples = scrape(cluster, i)
        assert value(samples, "flobc_consensus_view_changes_total") > before[i]
        assert value(samples, "flobc_consensus_view") == cluster.status(i)["view"] > view
        assert value(samples, "flobc_peers_connected") == len(survivors) - 1


def test_nodes_in_one_process_keep_their_own_registries(tmp_path: Path) -> None:
    configs = write_testnet(tmp_path, 2, chain_id="two-nodes", host="127.0.0.1",
                            base_port=free_port_range(4), params=ConsensusParams())
    genesis = Genesis.load(tmp_path / "genesis.toml")
    with Ledger(configs[0].data_path) as first, Ledger(configs[1].data_path) as second:
        nodes = [Node(config, genesis, load_key(config.key_path), ledger)
                 for config, ledger in zip(configs, (first, second), strict=True)]
        texts = [node.metrics.exposition(None)[0].decode() for node in nodes]
    assert nodes[0].metrics.registry is not nodes[1].metrics.registry
    for text in texts:
        names, samples = parse(text)
        assert names >= CONSENSUS_METRICS
        assert value(samples, "flobc_chain_height") == 0
    assert not any(f.name.startswith("flobc_") for f in REGISTRY.collect()), \
        "nothing is registered in the process-wide default registry"
