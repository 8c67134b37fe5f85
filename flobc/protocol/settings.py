"""The learning protocol's settings: the genesis ``[app]`` section, parsed and checked.

Every validator executes blocks under these settings, so they live in genesis, not in
a node's own config. Parsing is strict (an unknown or misspelt setting is an error, not
a silent default) and every error names the setting. Fractions are written as decimals
for people and used as integer millionths in execution, so that no decision depends on
floating-point rounding.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from flobc.config import ConfigError, Genesis
from flobc.crypto import HASH_SIZE, PUBLIC_KEY_SIZE
from flobc.ml.data import DATASETS, Dataset, DatasetError, dataset_source, load_dataset
from flobc.ml.models import MODELS, is_model_name
from flobc.protocol.aggregation import AGGREGATORS, Aggregator
from flobc.protocol.reputation import MICRO
from flobc.protocol.sync import SYNC_SCHEMES, SyncScheme
from flobc.protocol.validation import VALIDATION_RULES, Influence, ValidationRule
from flobc.registry import Registry, UnknownChoice

ADMISSIONS = ("allowlist", "open")
MAX_DEADLINE_MS = 7 * 24 * 3600 * 1000
MAX_STALENESS = 1000
MAX_BLOB_BYTES = 256 * 1024 * 1024
MAX_MODEL_NAME = 128
APP_NAME_KEY = "name"
APP_NAME = "fl"


@dataclass(frozen=True)
class FLConfig:
    model_v0_hash: bytes
    """SHA-256 of the encoded version-0 weights (``genesis-model.bin``)."""
    model: str = "mnist_cnn"
    """A model of the zoo, or a builder ``package.module:function`` (flobc.ml.models)."""
    seed: int = 0
    dataset: str = "mnist_5k"
    """The dataset whose fixed split trainers train on and validators vote on: every
    node must use the same one. ``file``: each node's own copy of one .npz file."""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """The dataset source's options (``[app.dataset]``: its ``name`` and these)."""
    admission: str = "allowlist"
    trainers: tuple[bytes, ...] = ()
    """Public keys admitted under ``admission = "allowlist"``."""
    sync: str = "bsp"
    staleness: int = 2
    """SSP and BAP: how many versions behind the latest an update's base may be."""
    ssp_min_fraction: float = 0.75
    bap_alpha: float = 0.5
    round_deadline_ms: int = 60_000
    aggregator: str = "fedavg"
    trim_fraction: float = 0.1
    """trimmed_mean: the fraction of values dropped at each end, per coordinate."""
    krum_f: int = 1
    """krum: how many Byzantine updates to tolerate."""
    krum_m: int = 0
    """krum: how many updates to average; 0 means all but ``krum_f``."""
    trust_initial: int = 500_000
    trust_reward: int = 100_000
    trust_penalty: int = 500_000
    trust_threshold: int = 100_000
    max_update_norm: float = 1000.0
    max_blob_bytes: int = 4 * 1024 * 1024
    validation: ValidationRule = Influence()
    """How validators judge an update; ``[app.validation]`` in genesis."""

    def __post_init__(self) -> None:
        _check_hash(self.model_v0_hash)
        _check(is_model_name(self.model) and len(self.model) <= MAX_MODEL_NAME, "model",
               f"must be a model of the zoo ({', '.join(sorted(MODELS))}) or a builder "
               f"named package.module:function (at most {MAX_MODEL_NAME} characters), "
               f"got {self.model!r}")
        _check_int(self.seed, "seed", 0, 2**63 - 1)
        _check(self.dataset in DATASETS, "dataset", f"must be one of {DATASETS.names()}, "
               f"got {self.dataset!r}")
        _check(isinstance(self.dataset_options, dict), "dataset",
               "options must be a table of the dataset's settings")
        try:
            dataset_source(self.dataset, self.dataset_options)
        except DatasetError as exc:
            raise ConfigError(f"app.dataset: {exc}") from None
        _check(self.admission in ADMISSIONS, "admission", f"must be one of {ADMISSIONS}")
        self._check_trainers()
        _check(self.sync in SYNC_SCHEMES, "sync", f"must be one of {SYNC_SCHEMES.names()}")
        _check_int(self.staleness, "staleness", 0, MAX_STALENESS)
        _check_fraction(self.ssp_min_fraction, "ssp_min_fraction", low_open=True)
        _check_fraction(self.bap_alpha, "bap_alpha", low_open=True)
        _check_int(self.round_deadline_ms, "round_deadline_ms", 1, MAX_DEADLINE_MS)
        _check(self.aggregator in AGGREGATORS, "aggregator",
               f"must be one of {AGGREGATORS.names()}")
        _check_fraction(self.trim_fraction, "trim_fraction", low_open=False)
        _check(self.trim_fraction < 0.5, "trim_fraction", "must be below 0.5")
        _check_int(self.krum_f, "krum_f", 0, 1000)
        _check_int(self.krum_m, "krum_m", 0, 1000)
        for name in ("trust_initial", "trust_reward", "trust_penalty", "trust_threshold"):
            _check_int(getattr(self, name), name, 0, MICRO)
        _check(self.trust_threshold <= self.trust_initial, "trust_threshold",
               "must not exceed app.trust_initial (newcomers would start excluded)")
        _check(_is_number(self.max_update_norm) and 0 < self.max_update_norm < math.inf,
               "max_update_norm", "must be a positive finite number")
        _check_int(self.max_blob_bytes, "max_blob_bytes", 1, MAX_BLOB_BYTES)
        _check(isinstance(self.validation, ValidationRule), "validation",
               "must be a validation rule")

    def _check_trainers(self) -> None:
        _check(isinstance(self.trainers, tuple), "trainers", "must be a tuple of public keys")
        for i, key in enumerate(self.trainers):
            _check(isinstance(key, bytes) and len(key) == PUBLIC_KEY_SIZE, f"trainers[{i}]",
                   f"must be a {PUBLIC_KEY_SIZE}-byte public key")
        _check(len(set(self.trainers)) == len(self.trainers), "trainers", "lists a key twice")
        if self.admission == "allowlist":
            _check(bool(self.trainers), "trainers",
                   'must list at least one public key with admission = "allowlist"')
        else:
            _check(not self.trainers, "trainers",
                   'is only used with admission = "allowlist"; remove it for "open"')

    def load_dataset(self, path: str | None = None) -> Dataset:
        """The dataset with its options; ``path``: the node's copy of a file dataset.
        DatasetError naming the problem."""
        return load_dataset(self.dataset, path, **self.dataset_options)

    @property
    def ssp_min_fraction_micro(self) -> int:
        return round(self.ssp_min_fraction * MICRO)

    @property
    def bap_alpha_micro(self) -> int:
        return round(self.bap_alpha * MICRO)

    @property
    def scheme(self) -> SyncScheme:
        """The sync scheme's rules."""
        return SYNC_SCHEMES.get(self.sync)()

    def make_aggregator(self) -> Aggregator:
        """The aggregation rule with its settings."""
        rule = AGGREGATORS.get(self.aggregator)
        return rule(**{name: getattr(self, key) for name, key in rule.genesis_keys.items()})

    @classmethod
    def from_genesis(cls, genesis: Genesis, source: str | os.PathLike = "genesis") -> FLConfig:
        """The settings of a learning chain's genesis; ConfigError naming ``source``
        (the genesis file) when its ``[app] name`` is not ``"fl"``."""
        if genesis.app.get(APP_NAME_KEY) != APP_NAME:
            raise ConfigError(f"{source} is not a learning chain's genesis "
                              f'([app] name = "{APP_NAME}")')
        return cls.from_app(genesis.app)

    @classmethod
    def from_app(cls, app: dict[str, Any]) -> FLConfig:
        """The settings in a genesis ``[app]`` section, or ConfigError naming the problem.
        ``name`` (which application the chain runs) is the node's business, not a setting."""
        known = {f.name for f in fields(cls)} - {"dataset_options"}
        unknown = sorted(set(app) - known - {APP_NAME_KEY})
        if unknown:
            raise ConfigError(f"app: unknown setting {unknown[0]!r}; known settings: "
                              f"{', '.join(sorted(known))}")
        if "model_v0_hash" not in app:
            raise ConfigError("app.model_v0_hash is missing (SHA-256 of genesis-model.bin)")
        values = {k: v for k, v in app.items() if k != APP_NAME_KEY}
        if isinstance(values.get("aggregator"), dict):
            values.update(_rule_table("aggregator", AGGREGATORS, values.pop("aggregator"),
                                      values))
        if isinstance(values.get("sync"), dict):
            values.update(_rule_table("sync", SYNC_SCHEMES, values.pop("sync"), values))
        if "validation" in values:
            values["validation"] = _validation_table(values["validation"])
        if isinstance(values.get("dataset"), dict):
            values["dataset"], values["dataset_options"] = _dataset_table(values["dataset"])
        values["model_v0_hash"] = _hex(values["model_v0_hash"], "model_v0_hash", HASH_SIZE)
        trainers = values.get("trainers", [])
        if not isinstance(trainers, list):
            raise ConfigError("app.trainers must be a list of hex public keys")
        values["trainers"] = tuple(_hex(t, f"trainers[{i}]", PUBLIC_KEY_SIZE)
                                   for i, t in enumerate(trainers))
        return cls(**values)

    def to_app_dict(self) -> dict[str, Any]:
        """The settings as a genesis ``[app]`` section (bytes as hex)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["model_v0_hash"] = self.model_v0_hash.hex()
        out["trainers"] = [t.hex() for t in self.trainers]
        out["validation"] = self.validation.table()
        options = out.pop("dataset_options")
        if options:
            out["dataset"] = {"name": self.dataset, **options}
        return out


def _named_choice(key: str, registry: Registry[Any], table: dict[str, Any]
                  ) -> tuple[str, Any]:
    """The ``name`` of an ``[app.<key>]`` table and the registry's choice by that name."""
    name = table.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"app.{key}.name is missing (one of {', '.join(registry.names())})")
    try:
        return name, registry.get(name)
    except UnknownChoice as e:
        raise ConfigError(f"app.{key}.name: {e}") from None


def _rule_table(key: str, registry: Registry[Any], table: dict[str, Any],
                flat: dict[str, Any]) -> dict[str, Any]:
    """``[app.<key>]`` (``name`` and that choice's settings) as the flat settings."""
    name, rule = _named_choice(key, registry, table)
    out: dict[str, Any] = {key: name}
    for setting, value in table.items():
        if setting == "name":
            continue
        if setting not in rule.genesis_keys:
            raise ConfigError(f"app.{key}: unknown setting {setting!r} of {name}; its "
                              f"settings: {', '.join(rule.genesis_keys) or 'none'}")
        if rule.genesis_keys[setting] in flat:
            raise ConfigError(f"app.{key}.{setting} is also set as "
                              f"app.{rule.genesis_keys[setting]}; keep one")
        out[rule.genesis_keys[setting]] = value
    return out


def _dataset_table(table: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``[app.dataset]``: a source's ``name`` and its options (checked by the source)."""
    name, _ = _named_choice("dataset", DATASETS, table)
    return name, {k: v for k, v in table.items() if k != "name"}


def _validation_table(table: Any) -> ValidationRule:
    """``[app.validation]``: a rule's ``name`` and its settings (numbers, each one the
    rule has; the others keep the rule's defaults)."""
    if not isinstance(table, dict):
        raise ConfigError(f"app.validation must be a table with a name (one of "
                          f"{', '.join(VALIDATION_RULES.names())})")
    name, rule = _named_choice("validation", VALIDATION_RULES, table)
    settings = {f.name for f in fields(rule)}
    values = {k: v for k, v in table.items() if k != "name"}
    for key, value in values.items():
        if key not in settings:
            raise ConfigError(f"app.validation: unknown setting {key!r} of {name}; its "
                              f"settings: {', '.join(sorted(settings)) or 'none'}")
        _check(_is_number(value) and 0 <= value < math.inf, f"validation.{key}",
               "must be a finite number, at least 0")
    return rule(**values)


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"app.{name} {message}")


def _check_hash(value: Any) -> None:
    _check(isinstance(value, bytes) and len(value) == HASH_SIZE, "model_v0_hash",
           f"must be a {HASH_SIZE}-byte SHA-256 digest")


def _check_int(value: Any, name: str, low: int, high: int) -> None:
    _check(type(value) is int and low <= value <= high, name,
           f"must be an integer in {low}..{high}")


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _check_fraction(value: Any, name: str, *, low_open: bool) -> None:
    ok = _is_number(value) and (value > 0 if low_open else value >= 0) and value <= 1
    _check(ok, name,
           f"must be a number in {'(0' if low_open else '[0'}, 1]")


def _hex(value: Any, name: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise ConfigError(f"app.{name} must be {2 * size} hex digits")
    return raw
