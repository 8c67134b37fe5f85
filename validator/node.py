"""The validator node: one event loop running consensus, the peer transport and the API.

Consensus (the :class:`ReplicaHost`) is single-threaded, so everything that calls it
(peer frames, timers, HTTP requests) runs on the same loop. If the host itself fails,
the node stops rather than carry on in an unknown state: the ledger is written in
atomic batches, so a restart recovers from the last committed block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from flobc.admission import Admission
from flobc.config import ConfigError, Genesis, NodeConfig, load_key, split_address
from flobc.consensus.host import ReplicaHost
from flobc.consensus.transport import Transport
from flobc.consensus.validators import ValidatorSet
from flobc.crypto import PrivateKey
from flobc.errors import ValidatorError
from flobc.storage.ledger import Ledger
from flobc.validator.api import create_api
from flobc.validator.apps import load_application
from flobc.validator.http_guard import Deadlines, guarded_protocol
from flobc.validator.logs import LOG_FORMATS, configure_logging
from flobc.validator.metrics import NodeMetrics
from flobc.validator.services import NodeParts

log = logging.getLogger("flobc.node")

LINK_QUEUE_BYTES = 64 * 1024 * 1024
LINK_QUEUE_BLOBS = 4
"""Each peer's outgoing queue holds at least this many of the largest blobs, so that the
chunks of a few blobs gossiped at once are not dropped before they are sent."""
API_SHUTDOWN_GRACE_S = 5
RESOLVE_TIMEOUT_S = 2.0


class NodeFailure(ValidatorError, RuntimeError):
    """Consensus raised while handling an event; the node stopped to stay safe."""


class LoopTimers:
    """Named one-shot timers on the event loop; arming a name again replaces it."""

    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def set(self, name: str, delay_ms: int) -> None:
        self.cancel(name)
        loop = asyncio.get_running_loop()
        self._handles[name] = loop.call_later(max(delay_ms, 0) / 1000, self._expire, name)

    def cancel(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        for name in list(self._handles):
            self.cancel(name)

    def _expire(self, name: str) -> None:
        del self._handles[name]
        self._fire(name)


class Node:
    """A validator's parts wired together; the API reads what it serves from here."""

    def __init__(self, config: NodeConfig, genesis: Genesis, key: PrivateKey,
                 ledger: Ledger) -> None:
        self.config = config
        self.genesis = genesis
        self.ledger = ledger
        loaded = load_application(config, genesis, ledger)
        self.app = loaded.application
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.timers = LoopTimers(self._guarded(lambda name: self.host.on_timer(name)))
        self.transport = Transport(
            validators=ValidatorSet(genesis.chain_id, genesis.public_keys),
            index=config.index, key=key, listen=split_address(config.peer_listen),
            peers={p.index: split_address(p.peer_address) for p in config.peers},
            on_frame=self._guarded(lambda sender, frame: self.host.on_frame(sender, frame)),
            max_pending_handshakes=config.peer_max_pending_handshakes,
            max_pending_per_address=config.peer_max_pending_per_address,
            reserved_handshakes=config.peer_reserved_handshakes,
            queue_bytes=max(LINK_QUEUE_BYTES, LINK_QUEUE_BLOBS * self.app.max_blob_bytes))
        self.host = ReplicaHost(
            chain_id=genesis.chain_id, public_keys=genesis.public_keys, index=config.index,
            key=key, params=genesis.consensus, ledger=ledger, app=self.app,
            send=self.transport.send, set_timer=self.timers.set,
            cancel_timer=self.timers.cancel, now_ms=lambda: time.time_ns() // 1_000_000,
            mempool_max_txs=config.mempool_max_txs, gossip_txs=config.gossip_txs)
        self.metrics = NodeMetrics(self.host, self.transport)
        self.services = loaded.services(NodeParts(config, genesis, ledger, self.host,
                                                  self.transport, key))
        """The application's off-chain duties, routes, metrics and dashboard panel."""
        self.services.register_metrics(self.metrics.registry)

    def _guarded(self, call: Callable[..., None]) -> Callable[..., None]:
        """Run ``call`` unless the host already failed; a failure stops the node."""
        def guarded(*args: object) -> None:
            if self.failure is not None:
                return
            try:
                call(*args)
            except Exception as exc:
                self.failure = exc
                self.failed.set()
                log.critical("consensus failed, stopping the validator: %r", exc, exc_info=exc)
        return guarded

    def start_host(self) -> None:
        self._guarded(self.host.start)()


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the node owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(address: str) -> socket.socket:
    """Bind the API socket before anything starts, so a busy port fails fast."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen for the API on {address}: {exc.strerror}") from exc
    # Its proto is 0, so asyncio does not set TCP_NODELAY on accepted connections (it
    # checks for IPPROTO_TCP); they inherit it from here instead. Without it every HTTP
    # response stalls ~40 ms on Nagle's algorithm against the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def load_node_files(home: Path) -> tuple[NodeConfig, Genesis, PrivateKey]:
    config = NodeConfig.load(home)
    genesis = Genesis.load(config.genesis_path)
    key = load_key(config.key_path)
    if not 0 <= config.index < len(genesis.validators):
        raise ConfigError(f"index {config.index} is not a validator of {genesis.chain_id}")
    if key.public_key != genesis.public_keys[config.index]:
        raise ConfigError(f"{config.key_path} is not validator {config.index}'s key in genesis")
    return config, genesis, key


async def run_node(home: Path, stop: asyncio.Event | None = None) -> None:
    """Run the validator in ``home`` until ``stop`` is set; raises if it cannot run."""
    stop = stop or asyncio.Event()
    config, genesis, key = load_node_files(home)
    api_socket = _bind(config.api_listen)
    try:
        with Ledger(config.data_path) as ledger:
            node = Node(config, genesis, key, ledger)
            await _serve(node, api_socket, stop)
    finally:
        api_socket.close()
    if node.failure is not None:
        raise NodeFailure(f"consensus failed: {node.failure!r}") from node.failure


async def known_api_clients(config: NodeConfig) -> set[str]:
    """The addresses given the API's reserved share: api_known_addresses and every
    peer's hosts, names resolved now (a name that does not resolve yet is left out)."""
    names = {*config.api_known_addresses,
             *(split_address(a)[0] for p in config.peers
               for a in (p.peer_address, p.api_address))}
    loop = asyncio.get_running_loop()
    known: set[str] = set()
    for name in sorted(names):
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot resolve known API client %r (%s); it gets no reserved share",
                        name, exc)
            continue
        known.update(str(info[4][0]) for info in infos)
    return known


async def _serve(node: Node, api_socket: socket.socket, stop: asyncio.Event) -> None:
    """Start transport, consensus and API; on stop, shut them down in that reverse order."""
    config = node.config
    admission = Admission(config.api_max_connections, config.api_max_connections_per_address,
                          config.api_reserved_connections, await known_api_clients(config))
    deadlines = Deadlines(config.api_header_timeout_ms / 1000, config.api_body_timeout_ms / 1000)
    server = _ApiServer(uvicorn.Config(
        create_api(node), log_config=None, log_level="warning", access_log=False,
        lifespan="off", http=guarded_protocol(admission, deadlines),  # type: ignore[arg-type]
        ws="none", server_header=False, timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S))
    await node.transport.start()
    serving: asyncio.Task[None] | None = None
    try:
        node.start_host()
        node.services.start()
        serving = asyncio.create_task(server.serve(sockets=[api_socket]))
        host, port = api_socket.getsockname()[:2]
        log.info("validator %d of chain %r started at height %d: API on http://%s:%d",
                 node.config.index, node.genesis.chain_id, node.ledger.height, host, port)
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(node.failed.wait())]
        await asyncio.wait([*waits, serving], return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
    finally:
        if serving is not None:
            server.should_exit = True
            await serving
        await node.services.stop()
        await node.transport.close()
        node.timers.cancel_all()
        log.info("validator %d stopped at height %d", node.config.index, node.ledger.height)


def main_node(home: Path, log_format: str | None = None) -> int:
    """Run the validator until SIGINT or SIGTERM; 0 after a clean stop, 1 on an error.
    ``log_format`` (text or json) overrides the configuration's ``log_format``."""
    try:
        config = NodeConfig.load(home)
        log_format = log_format or config.log_format
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be 'text' or 'json', not {log_format!r}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    captured = configure_logging(log_format)
    try:
        asyncio.run(_run_until_signalled(home))
    except (ConfigError, NodeFailure, OSError) as exc:
        log.error("validator not running: %s", exc)
        return 1
    finally:
        if captured is not None:
            captured.close()
    return 0


async def _run_until_signalled(home: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_node(home, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
