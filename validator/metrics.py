"""What a validator tells its operator: Prometheus metrics of consensus.

Metrics are read when scraped, not counted as things happen: a collector asks the
consensus host for its status and the transport for its connections, so consensus knows
nothing about Prometheus. Only what cannot be read back later is recorded as it
happens: each transaction's commit latency (a callback of the host). Every node has its
own registry, never the global default one, so several nodes can run in one process;
the application adds its own metrics to it (``AppServices.register_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flobc.consensus.host import ReplicaHost
from flobc.consensus.transport import Transport

COMMIT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                          30.0, 60.0)


class NodeMetrics:
    """One validator's registry, served at ``GET /metrics``."""

    def __init__(self, host: ReplicaHost, transport: Transport) -> None:
        self.registry = CollectorRegistry()
        self._commit_latency = Histogram(
            "flobc_commit_latency_seconds",
            "Time from a transaction's admission into this validator's mempool (from a "
            "client or a peer's gossip) to the commit of its block on this validator; "
            "transactions first seen in a block are not counted.",
            buckets=COMMIT_LATENCY_BUCKETS, registry=self.registry)
        host.on_commit_latency(self._committed)
        self.registry.register(_ConsensusCollector(host, transport))

    def _committed(self, latencies_ms: list[int]) -> None:
        for ms in latencies_ms:
            self._commit_latency.observe(ms / 1000)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the ``Accept`` header asks for (Prometheus text by
        default, or OpenMetrics), with its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _ConsensusCollector(Collector):
    """Consensus status and peer connections, as the host and transport report them."""

    def __init__(self, host: ReplicaHost, transport: Transport) -> None:
        self._host = host
        self._transport = transport

    def collect(self) -> Iterator[Metric]:
        status = self._host.status()
        yield GaugeMetricFamily("flobc_chain_height",
                                "Height of the last block committed on this validator.",
                                status["height"])
        yield GaugeMetricFamily("flobc_consensus_view", "The PBFT view this validator is in.",
                                status["view"])
        yield CounterMetricFamily(
            "flobc_consensus_view_changes",
            "View changes this validator started or joined since it started (each move "
            "to a higher target view counts once).", status["view_changes"])
        yield GaugeMetricFamily("flobc_mempool_transactions",
                                "Transactions admitted and waiting for a block.",
                                status["mempool_size"])
        yield GaugeMetricFamily("flobc_peers_connected",
                                "Other validators this one has a live connection with.",
                                len(self._transport.connected_peers()))


