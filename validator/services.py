"""What an application adds to the generic validator node, and what it may use of it.

The node runs consensus, the peer transport, the HTTP API and its generic endpoints for
any application. An application's extras (the learning chain's voter, its ``/fl``
routes, its metrics and its dashboard panel; the key-value store's ``/kv`` route) come
from its ``AppServices``, so the node never asks which application it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from flobc.config import Genesis, NodeConfig
from flobc.consensus.application import Application
from flobc.consensus.host import ReplicaHost
from flobc.consensus.transport import Transport
from flobc.crypto import PrivateKey
from flobc.storage.ledger import Ledger
from flobc.validator.metrics import NodeMetrics


@dataclass(frozen=True)
class NodeParts:
    """The running node as an application's services see it."""

    config: NodeConfig
    genesis: Genesis
    ledger: Ledger
    host: ReplicaHost
    transport: Transport
    key: PrivateKey


class AppServices(Protocol):
    """An application's contributions to the node; see the module docstring."""

    name: str
    """The application's genesis name (``[app] name``)."""

    def routers(self) -> list[APIRouter]:
        """The application's own HTTP endpoints."""
        ...

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add the application's collectors and metrics to the node's registry."""
        ...

    async def dashboard_state(self) -> dict[str, Any]:
        """The application's part of ``/dashboard/state`` (merged into the answer)."""
        ...

    def start(self) -> None:
        """Start off-chain duties; called on the running event loop after consensus."""
        ...

    async def stop(self) -> None:
        """Stop them; called before the transport closes."""
        ...


class ApiNode(Protocol):
    """The running node as its generic HTTP API sees it."""

    config: NodeConfig
    genesis: Genesis
    ledger: Ledger
    host: ReplicaHost
    transport: Transport
    metrics: NodeMetrics
    services: AppServices


class LoadedApp(Protocol):
    """A chain's application, before the node around it exists."""

    application: Application

    def services(self, node: NodeParts) -> AppServices:
        """The application's services, once the node's parts exist."""
        ...
