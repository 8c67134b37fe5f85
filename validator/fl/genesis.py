"""A learning chain's genesis files: model version 0, the ``[app]`` section, trainer homes.

Version 0 is computed once, here, from the model name and seed, and shipped as bytes
(``genesis-model.bin``) whose SHA-256 genesis records: every validator and trainer then
starts from the same weights without ever initialising a model itself. Computing them
imports TensorFlow, which is fine in the command that writes a testnet and never
happens in a validator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flobc.config import ConfigError, NodeConfig, save_key
from flobc.crypto import PrivateKey, sha256
from flobc.validator.fl.config import FLConfig

GENESIS_MODEL = "genesis-model.bin"
TRAINER_KEY = "trainer_key.json"
TRAINER_CONFIG = "trainer.toml"
DATASET = "mnist_5k"
"""The data set validators evaluate on and trainers train on (the embedded sample)."""


@dataclass(frozen=True)
class FLOptions:
    """What ``flobc testnet init --app fl`` lets a user choose."""

    trainers: int = 4
    model: str = "mnist_cnn"
    seed: int = 0
    sync: str = "bsp"
    aggregator: str = "fedavg"
    admission: str = "allowlist"
    round_deadline_ms: int = 60_000
    partitioner: str = "iid"
    local_epochs: int = 1
    batch_size: int = 32


@dataclass(frozen=True)
class FLGenesis:
    """Everything a learning testnet needs beyond the validators' own files."""

    app: dict[str, Any]
    """The genesis ``[app]`` section: ``name = "fl"`` and the FLConfig settings."""
    model_v0: bytes
    """The encoded version-0 weights, written as ``genesis-model.bin``."""
    trainer_keys: tuple[PrivateKey, ...]
    options: FLOptions


def make_fl_genesis(options: FLOptions) -> FLGenesis:
    """Trainer keys, version-0 weights and the settings that name them."""
    from flobc.ml.models import MODELS, initial_weights
    from flobc.ml.weights import encode_weights

    if options.model not in MODELS:
        raise ConfigError(f"unknown model {options.model!r}; known models: "
                          f"{', '.join(sorted(MODELS))}")
    if options.trainers < 1:
        raise ConfigError(f"--trainers must be at least 1, got {options.trainers}")
    keys = tuple(PrivateKey.generate() for _ in range(options.trainers))
    # Settings are checked before the slow part (building the model imports TensorFlow).
    settings = dict(model=options.model, seed=options.seed, sync=options.sync,
                    aggregator=options.aggregator, admission=options.admission,
                    round_deadline_ms=options.round_deadline_ms,
                    trainers=tuple(k.public_key for k in keys)
                    if options.admission == "allowlist" else ())
    FLConfig(model_v0_hash=bytes(32), **settings)
    model_v0 = encode_weights(initial_weights(options.model, options.seed))
    config = FLConfig(model_v0_hash=sha256(model_v0), **settings)
    return FLGenesis({"name": "fl", **config.to_app_dict()}, model_v0, keys, options)


def write_fl_genesis_files(out: Path, validators: Sequence[NodeConfig],
                           fl: FLGenesis) -> list[Path]:
    """Write ``genesis-model.bin`` beside every genesis file and one home per trainer;
    return the trainer homes. ``out`` already holds the testnet's genesis (with
    ``fl.app``) and the validator homes."""
    (out / GENESIS_MODEL).write_bytes(fl.model_v0)
    for config in validators:
        (config.genesis_path.parent / GENESIS_MODEL).write_bytes(fl.model_v0)
    genesis_text = (out / "genesis.toml").read_text()
    urls = [f"http://{c.api_listen}" for c in validators]
    homes = []
    for i, key in enumerate(fl.trainer_keys):
        home = out / f"trainer-{i}"
        home.mkdir()
        save_key(home / TRAINER_KEY, key)
        (home / "genesis.toml").write_text(genesis_text)
        (home / GENESIS_MODEL).write_bytes(fl.model_v0)
        (home / TRAINER_CONFIG).write_text(_trainer_toml(urls, i, fl.options))
        homes.append(home)
    return homes


def _trainer_toml(urls: list[str], index: int, options: FLOptions) -> str:
    settings: dict[str, Any] = {
        "validators": urls, "partition_index": index, "partitions": options.trainers,
        "partitioner": options.partitioner, "dataset": DATASET,
        "local_epochs": options.local_epochs, "batch_size": options.batch_size,
        "seed": options.seed}
    return "".join(f"{name} = {json.dumps(value)}\n" for name, value in settings.items())


def load_genesis_model(genesis_path: Path) -> bytes:
    """The ``genesis-model.bin`` beside a genesis file (its hash is checked by FLApp)."""
    path = genesis_path.parent / GENESIS_MODEL
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the genesis model {path}: {exc.strerror}; it is "
                          "written by 'flobc testnet init --app fl'") from exc
