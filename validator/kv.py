"""The key-value store as a validator runs it: the application and its ``/kv`` route."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException
from prometheus_client import CollectorRegistry

from flobc.config import Genesis, NodeConfig
from flobc.consensus.kvstore import KVStore
from flobc.storage.ledger import Ledger
from flobc.validator.services import AppServices, NodeParts

NAME = "kv"


@dataclass
class KVServices:
    """The key-value store's one extra: reading a value by key."""

    node: NodeParts
    app: KVStore
    name: str = field(default=NAME, init=False)

    def routers(self) -> list[APIRouter]:
        router = APIRouter()
        node, app = self.node, self.app

        @router.get("/kv/{key:path}")
        async def get_kv(key: str) -> dict[str, Any]:
            """The value (hex) stored under a UTF-8 key by the key-value application."""
            try:
                answer = app.query("kv", {"key": key}, node.host.committed)
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from exc
            if answer["value"] is None:
                raise HTTPException(404, f"no value stored under key {key[:80]!r}")
            return answer

        return [router]

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Consensus metrics say all there is to say about a key-value chain."""

    async def dashboard_state(self) -> dict[str, Any]:
        return {"learning": None}

    def start(self) -> None:
        """No off-chain duties."""

    async def stop(self) -> None:
        """No off-chain duties."""


@dataclass(frozen=True)
class LoadedKV:
    application: KVStore

    def services(self, node: NodeParts) -> AppServices:
        return KVServices(node, self.application)


def load_kv(config: NodeConfig, genesis: Genesis, ledger: Ledger) -> LoadedKV:
    """The key-value store takes no settings."""
    return LoadedKV(KVStore())
