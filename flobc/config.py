"""Genesis and node configuration: TOML files, dataclasses with defaults, validation.

``genesis.toml`` is shared by every node of a chain (chain id, consensus parameters,
the validator set); ``config.toml`` belongs to one node (its index, key file, listen
addresses and peers). Paths in ``config.toml`` are relative to the node's home folder.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from flobc.crypto import PrivateKey
from flobc.errors import InputError


class ConfigError(InputError):
    """A configuration file that is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ConsensusParams:
    checkpoint_interval: int = 16
    """K: blocks between checkpoints (the state root is certified at multiples of K)."""
    window: int = 64
    """Watermark window: sequence numbers beyond stable checkpoint + window wait."""
    max_in_flight: int = 4
    """Blocks the primary keeps proposed but not yet committed (pipelining depth)."""
    max_block_txs: int = 2000
    max_block_bytes: int = 4 * 1024 * 1024
    max_tx_bytes: int = 64 * 1024
    batch_delay_ms: int = 5
    """How long the primary waits to fill a block once a transaction is pending."""
    view_change_timeout_ms: int = 2000
    """Base timeout before suspecting the primary; doubles on each failed view change."""
    max_clock_skew_ms: int = 10_000
    empty_block_interval_ms: int = 1000
    """While idle, the primary proposes empty blocks up to the next checkpoint this often."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"consensus.{f.name} must be a positive integer")
        if self.window < 2 * self.checkpoint_interval:
            raise ConfigError("consensus.window must be at least 2 x checkpoint_interval")
        if self.max_in_flight > self.window:
            raise ConfigError("consensus.max_in_flight must not exceed consensus.window")


@dataclass(frozen=True)
class ValidatorInfo:
    name: str
    public_key: bytes


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    validators: tuple[ValidatorInfo, ...]
    consensus: ConsensusParams = field(default_factory=ConsensusParams)
    app: dict[str, Any] = field(default_factory=dict)
    """Application settings, passed through to the application unchanged."""

    @property
    def public_keys(self) -> tuple[bytes, ...]:
        return tuple(v.public_key for v in self.validators)

    def to_toml(self) -> str:
        lines = [f"chain_id = {json.dumps(self.chain_id)}",
                 f"genesis_time_ms = {self.genesis_time_ms}", "", "[consensus]"]
        lines += [f"{k} = {v}" for k, v in asdict(self.consensus).items()]
        if self.app:
            lines += ["", "[app]"] + [f"{k} = {_toml_value(v)}" for k, v in self.app.items()]
        for v in self.validators:
            lines += ["", "[[validators]]", f"name = {json.dumps(v.name)}",
                      f'public_key = "{v.public_key.hex()}"']
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> Genesis:
        data = _parse(text, "genesis")
        try:
            validators = tuple(
                ValidatorInfo(str(v["name"]), _hex_key(v["public_key"], f"validators[{i}]"))
                for i, v in enumerate(data["validators"]))
            return cls(str(data["chain_id"]), int(data["genesis_time_ms"]), validators,
                       ConsensusParams(**data.get("consensus", {})), dict(data.get("app", {})))
        except KeyError as exc:
            raise ConfigError(f"genesis: missing setting {exc}") from exc
        except TypeError as exc:
            raise ConfigError(f"genesis: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genesis:
        return cls.from_toml(_read(path))


@dataclass(frozen=True)
class Peer:
    index: int
    peer_address: str
    api_address: str


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    index: int
    peer_listen: str
    api_listen: str
    peers: tuple[Peer, ...]
    genesis_file: str = "genesis.toml"
    key_file: str = "validator_key.json"
    data_dir: str = "data"
    log_format: str = "text"
    max_request_bytes: int = 1024 * 1024
    mempool_max_txs: int = 10_000
    dataset_file: str | None = None
    """This node's copy of the dataset, when genesis names ``dataset = "file"``."""
    api_max_connections: int = 256
    api_max_connections_per_address: int = 32
    """Connections one unknown client address may hold open to the API."""
    api_reserved_connections: int = 64
    """API connections kept for known addresses: the peers' hosts and api_known_addresses."""
    api_header_timeout_ms: int = 10_000
    """A connection whose request headers are not complete this long after it opened
    (or after its previous response) is closed."""
    api_body_timeout_ms: int = 60_000
    """A request whose body is not complete this long after its headers is closed."""
    api_known_addresses: tuple[str, ...] = ()
    """Client addresses or host names (trainers, say) that may use the reserved share."""
    peer_max_pending_handshakes: int = 64
    peer_max_pending_per_address: int = 8
    peer_reserved_handshakes: int = 16
    """Pending peer handshakes kept for the validators' own addresses."""
    gossip_txs: bool = True
    """False: transactions accepted here are never sent to peers (neither on arrival nor
    re-gossiped later), so they reach the chain only in blocks this validator proposes.
    Off only to show what clients do when a validator dies before it gossips."""

    def __post_init__(self) -> None:
        where = self.home / "config.toml"
        if self.dataset_file is not None and not (isinstance(self.dataset_file, str)
                                                  and self.dataset_file):
            raise ConfigError(f"{where}: dataset_file must be a file name")
        _check_pool(where, "api_max_connections", self.api_max_connections,
                    "api_max_connections_per_address", self.api_max_connections_per_address,
                    "api_reserved_connections", self.api_reserved_connections)
        _check_pool(where, "peer_max_pending_handshakes", self.peer_max_pending_handshakes,
                    "peer_max_pending_per_address", self.peer_max_pending_per_address,
                    "peer_reserved_handshakes", self.peer_reserved_handshakes)
        for name in ("api_header_timeout_ms", "api_body_timeout_ms"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= 3_600_000:
                raise ConfigError(f"{where}: {name} must be an integer in 1..3600000, "
                                  f"not {value!r}")
        if type(self.gossip_txs) is not bool:
            raise ConfigError(f"{where}: gossip_txs must be true or false")
        known = self.api_known_addresses
        if not isinstance(known, tuple) or not all(isinstance(a, str) and a and len(a) <= 253
                                                   for a in known):
            raise ConfigError(f"{where}: api_known_addresses must be a list of addresses "
                              f"or host names")

    @property
    def genesis_path(self) -> Path:
        return self.home / self.genesis_file

    @property
    def key_path(self) -> Path:
        return self.home / self.key_file

    @property
    def data_path(self) -> Path:
        return self.home / self.data_dir

    @property
    def dataset_path(self) -> Path | None:
        return None if self.dataset_file is None else self.home / self.dataset_file

    def to_toml(self) -> str:
        lines = [f"index = {self.index}", f'peer_listen = "{self.peer_listen}"',
                 f'api_listen = "{self.api_listen}"', f'genesis_file = "{self.genesis_file}"',
                 f'key_file = "{self.key_file}"', f'data_dir = "{self.data_dir}"',
                 f'log_format = "{self.log_format}"',
                 f"max_request_bytes = {self.max_request_bytes}",
                 f"mempool_max_txs = {self.mempool_max_txs}",
                 f"gossip_txs = {'true' if self.gossip_txs else 'false'}"]
        lines += [f"{name} = {_toml_value(getattr(self, name))}" for name in LIMIT_SETTINGS]
        if self.dataset_file is not None:
            lines.append(f"dataset_file = {json.dumps(self.dataset_file)}")
        for p in self.peers:
            lines += ["", "[[peers]]", f"index = {p.index}",
                      f'peer_address = "{p.peer_address}"', f'api_address = "{p.api_address}"']
        return "\n".join(lines) + "\n"

    @classmethod
    def load(cls, home: str | os.PathLike) -> NodeConfig:
        home = Path(home)
        data = _parse(_read(home / "config.toml"), "config.toml")
        try:
            peers = tuple(Peer(int(p["index"]), str(p["peer_address"]), str(p["api_address"]))
                          for p in data.pop("peers", []))
            if isinstance(data.get("api_known_addresses"), list):
                data["api_known_addresses"] = tuple(data["api_known_addresses"])
            return cls(home=home, peers=peers, **data)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{home / 'config.toml'}: {exc}") from exc

    def save(self) -> None:
        (self.home / "config.toml").write_text(self.to_toml())


LIMIT_SETTINGS = ("api_max_connections", "api_max_connections_per_address",
                  "api_reserved_connections", "api_header_timeout_ms", "api_body_timeout_ms",
                  "api_known_addresses", "peer_max_pending_handshakes",
                  "peer_max_pending_per_address", "peer_reserved_handshakes")
"""The node's connection limits and timeouts, as config.toml writes them."""


def _check_pool(where: Path, total_name: str, total: Any, per_name: str, per: Any,
                reserved_name: str, reserved: Any) -> None:
    """A connection pool's settings: a size, a share per address within it, and a
    reserved share that leaves room for strangers."""
    for name, value, low in ((total_name, total, 1), (per_name, per, 1),
                             (reserved_name, reserved, 0)):
        if type(value) is not int or value < low:
            raise ConfigError(f"{where}: {name} must be an integer of at least {low}, "
                              f"not {value!r}")
    if per > total:
        raise ConfigError(f"{where}: {per_name} ({per}) must not exceed {total_name} ({total})")
    if reserved >= total:
        raise ConfigError(f"{where}: {reserved_name} ({reserved}) must be less than "
                          f"{total_name} ({total})")


def save_key(path: str | os.PathLike, key: PrivateKey) -> None:
    """Write a key file readable by its owner only."""
    path = Path(path)
    text = json.dumps({"public_key": key.public_key.hex(), "private_key": key.seed.hex()})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")


def load_key(path: str | os.PathLike) -> PrivateKey:
    try:
        data = json.loads(_read(path))
        return PrivateKey.from_hex(data["private_key"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a valid key file ({exc})") from exc


def split_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _hex_key(text: Any, where: str) -> bytes:
    try:
        key = bytes.fromhex(str(text))
    except ValueError as exc:
        raise ConfigError(f"genesis {where}: public_key is not hex") from exc
    if len(key) != 32:
        raise ConfigError(f"genesis {where}: public_key must be 32 bytes")
    return key


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _read(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _parse(text: str, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what}: {exc}") from exc
