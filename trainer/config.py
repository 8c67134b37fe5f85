"""A trainer's settings: ``trainer.toml`` in its home, overridden by command-line flags.

``flobc testnet init --app fl`` writes the file; a user only edits it to point at other
validators or another share of the data. Parsing is strict (an unknown or misspelt
setting is an error, not a silent default) and every error names the file and the
setting, so a trainer never starts half-configured.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx

from flobc.config import ConfigError
from flobc.ml.data import DATASETS
from flobc.ml.partition import PARTITIONERS, make_partitioner
from flobc.protocol.genesis import GENESIS_MODEL
from flobc.trainer.byzantine import BEHAVIOURS

CONFIG_FILE = "trainer.toml"
KEY_FILE = "trainer_key.json"
GENESIS_FILE = "genesis.toml"
MAX_VALIDATORS = 1000
MAX_SCALE = 1e6


@dataclass(frozen=True)
class TrainerConfig:
    home: Path
    validators: tuple[str, ...]
    """Validator API base URLs, tried in order (with failover)."""
    partition_index: int
    partitions: int
    partitioner: str = "iid"
    partitioner_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist_5k"
    """Must be the dataset genesis names (``app.dataset``): validators vote on its split."""
    dataset_path: str | None = None
    """The .npz file for ``dataset = "file"``, relative to the home."""
    local_epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    """Fixes partitioning, shuffling and Byzantine noise, so every run is reproducible."""
    model: str | None = None
    """The model the user expects; None means whatever genesis names."""
    behaviour: str = "honest"
    behaviour_scale: float | None = None
    """Strength of a Byzantine behaviour; None means its default."""
    rounds: int | None = None
    """Leave after submitting updates in this many rounds; None means run until stopped."""

    def __post_init__(self) -> None:
        if not self.validators:
            raise ConfigError(f"{self._where}: validators must list at least one API URL")
        if len(self.validators) > MAX_VALIDATORS:
            raise ConfigError(f"{self._where}: validators lists more than {MAX_VALIDATORS}")
        for url in self.validators:
            _check_url(url, self._where)
        _check_int(self.partitions, "partitions", 1, self._where)
        if not 0 <= self.partition_index < self.partitions:
            raise ConfigError(f"{self._where}: partition_index must be in "
                              f"0..{self.partitions - 1}, got {self.partition_index}")
        _check_choice(self.partitioner, "partitioner", PARTITIONERS.names(), self._where)
        try:
            make_partitioner(self.partitioner, **self.partitioner_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self._where}: partitioner_options: {exc}") from None
        _check_choice(self.dataset, "dataset", DATASETS.names(), self._where)
        if self.dataset_path is not None and not isinstance(self.dataset_path, str):
            raise ConfigError(f"{self._where}: dataset_path must be a file name")
        if DATASETS.get(self.dataset).needs_file != (self.dataset_path is not None):
            raise ConfigError(f"{self._where}: dataset_path is needed with a dataset read "
                              f"from a file ({self.dataset!r} is "
                              f"{'' if DATASETS.get(self.dataset).needs_file else 'not '}"
                              "one), and only with it")
        _check_int(self.local_epochs, "local_epochs", 1, self._where)
        _check_int(self.batch_size, "batch_size", 1, self._where)
        _check_int(self.seed, "seed", 0, self._where)
        _check_choice(self.behaviour, "behaviour", BEHAVIOURS.names(), self._where)
        if self.behaviour_scale is not None:
            if self.behaviour == "honest":
                raise ConfigError(f"{self._where}: behaviour_scale is only used with a "
                                  "Byzantine behaviour")
            if not (type(self.behaviour_scale) in (int, float)
                    and 0 < self.behaviour_scale < MAX_SCALE):
                raise ConfigError(f"{self._where}: behaviour_scale must be a number in "
                                  f"(0, {MAX_SCALE:g})")
        if self.rounds is not None:
            _check_int(self.rounds, "rounds", 1, self._where)

    @property
    def _where(self) -> str:
        return str(self.home / CONFIG_FILE)

    @property
    def key_path(self) -> Path:
        return self.home / KEY_FILE

    @property
    def genesis_path(self) -> Path:
        return self.home / GENESIS_FILE

    @property
    def genesis_model_path(self) -> Path:
        return self.home / GENESIS_MODEL

    @property
    def dataset_file(self) -> Path | None:
        return None if self.dataset_path is None else self.home / self.dataset_path

    @classmethod
    def load(cls, home: str | Path, **overrides: Any) -> TrainerConfig:
        """``home/trainer.toml`` with ``overrides`` (flags left unset are None) on top."""
        home = Path(home)
        path = home / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        known = {f.name for f in fields(cls)} - {"home"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown setting {unknown[0]!r}; known settings: "
                              f"{', '.join(sorted(known))}")
        for name in ("validators", "partition_index", "partitions"):
            if name not in data:
                raise ConfigError(f"{path}: missing setting {name!r}")
        if not isinstance(data["validators"], list):
            raise ConfigError(f"{path}: validators must be a list of API URLs")
        data["validators"] = tuple(data["validators"])
        if not isinstance(data.get("partitioner_options", {}), dict):
            raise ConfigError(f"{path}: partitioner_options must be a table")
        config = cls(home=home, **data)
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(f"unknown override {unknown[0]!r}")
        return replace(config, **given)


def _check_url(url: Any, where: str) -> None:
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"{where}: validators: {url!r} is not an http(s) URL")


def _check_int(value: Any, name: str, low: int, where: str) -> None:
    if type(value) is not int or value < low:
        raise ConfigError(f"{where}: {name} must be an integer of at least {low}, "
                          f"got {value!r}")


def _check_choice(value: Any, name: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {name} must be one of {', '.join(choices)}; "
                          f"got {value!r}")
