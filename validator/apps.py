"""The applications a validator can run, by their genesis name (``[app] name``)."""

from __future__ import annotations

from collections.abc import Callable

from flobc.config import ConfigError, Genesis, NodeConfig
from flobc.registry import Registry, UnknownChoice
from flobc.storage.ledger import Ledger
from flobc.validator.fl.services import NAME as FL
from flobc.validator.fl.services import load_fl
from flobc.validator.kv import NAME as KV
from flobc.validator.kv import load_kv
from flobc.validator.services import LoadedApp

Loader = Callable[[NodeConfig, Genesis, Ledger], LoadedApp]
APPLICATIONS: Registry[Loader] = Registry("application")
APPLICATIONS.add(KV, load_kv)
APPLICATIONS.add(FL, load_fl)
DEFAULT_APPLICATION = KV


def load_application(config: NodeConfig, genesis: Genesis, ledger: Ledger) -> LoadedApp:
    """The application genesis names (the key-value store by default), loaded with the
    rest of ``[app]`` as its settings."""
    name = genesis.app.get("name", DEFAULT_APPLICATION)
    try:
        loader = APPLICATIONS.get(name)
    except UnknownChoice as exc:
        raise ConfigError(f"genesis app.name: {exc}") from None
    return loader(config, genesis, ledger)
