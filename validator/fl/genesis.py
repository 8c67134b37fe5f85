"""A learning chain's genesis files: model version 0, the ``[app]`` section, trainer homes.

Version 0 is computed once, here, from the model name and seed, and shipped as bytes
(``genesis-model.bin``) whose SHA-256 genesis records: every validator and trainer then
starts from the same weights without ever initialising a model itself. Computing them
imports TensorFlow, which is fine in the command that writes a testnet and never
happens in a validator.
"""

from __future__ import annotations

import dataclasses
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
"""The default dataset validators evaluate on and trainers train on (the embedded sample)."""


@dataclass(frozen=True)
class FLOptions:
    """What ``flobc testnet init --app fl`` lets a user choose."""

    trainers: int = 4
    model: str = "mnist_cnn"
    seed: int = 0
    dataset: str = DATASET
    dataset_file: str | None = None
    """The .npz file of ``dataset = "file"``, written into every node's config as an
    absolute path (each host of a real deployment needs its copy there)."""
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
    from flobc.ml.models import ModelError, initial_weights
    from flobc.ml.weights import encode_weights

    if options.trainers < 1:
        raise ConfigError(f"--trainers must be at least 1, got {options.trainers}")
    keys = tuple(PrivateKey.generate() for _ in range(options.trainers))
    # Settings are checked before the slow part (building the model imports TensorFlow).
    settings = dict(model=options.model, seed=options.seed, dataset=options.dataset,
                    sync=options.sync, aggregator=options.aggregator,
                    admission=options.admission, round_deadline_ms=options.round_deadline_ms,
                    trainers=tuple(k.public_key for k in keys)
                    if options.admission == "allowlist" else ())
    FLConfig(model_v0_hash=bytes(32), **settings)
    options = dataclasses.replace(options, dataset_file=_checked_dataset_file(options))
    try:
        model_v0 = encode_weights(initial_weights(options.model, options.seed))
    except ModelError as exc:
        raise ConfigError(str(exc)) from exc
    config = FLConfig(model_v0_hash=sha256(model_v0), **settings)
    return FLGenesis({"name": "fl", **config.to_app_dict()}, model_v0, keys, options)


def _checked_dataset_file(options: FLOptions) -> str | None:
    """The absolute path of a ``file`` dataset, once it loads; None for the others."""
    from flobc.ml.data import DatasetError, load_dataset

    if (options.dataset == "file") != (options.dataset_file is not None):
        raise ConfigError("--dataset-file is needed with --dataset file, and only with it")
    if options.dataset_file is None:
        return None
    path = Path(options.dataset_file).resolve()
    try:
        load_dataset("file", str(path))
    except DatasetError as exc:
        raise ConfigError(f"--dataset-file: {exc}") from exc
    return str(path)


def node_dataset_file(config: NodeConfig, fl: FLConfig) -> str | None:
    """The dataset file this validator evaluates on: its config's ``dataset_file`` when
    genesis names ``dataset = "file"``, else None; ConfigError when the two disagree or
    the file is not there."""
    where = config.home / "config.toml"
    path = config.dataset_path
    if fl.dataset != "file":
        if path is not None:
            raise ConfigError(f"{where}: dataset_file is only used when genesis names "
                              f'app.dataset = "file" (it names {fl.dataset!r})')
        return None
    if path is None:
        raise ConfigError(f'{where}: genesis names app.dataset = "file"; set dataset_file '
                          "to this node's copy of the dataset (.npz)")
    if not path.is_file():
        raise ConfigError(f"{where}: dataset_file {str(path)!r} is not a file")
    return str(path)


def write_fl_genesis_files(out: Path, validators: Sequence[NodeConfig], fl: FLGenesis, *,
                           api_addresses: Sequence[str] | None = None) -> list[Path]:
    """Write ``genesis-model.bin`` beside every genesis file, a ``file`` dataset's path
    into every validator's config and one home per trainer; return the trainer homes.
    ``out`` already holds the testnet's genesis (with ``fl.app``) and the validator
    homes. Trainers reach validator i's API at ``api_addresses[i]`` (default: the
    address it listens on)."""
    if api_addresses is None:
        api_addresses = [c.api_listen for c in validators]
    if len(api_addresses) != len(validators):
        raise ValueError(f"{len(api_addresses)} API addresses for {len(validators)} validators")
    (out / GENESIS_MODEL).write_bytes(fl.model_v0)
    for config in validators:
        (config.genesis_path.parent / GENESIS_MODEL).write_bytes(fl.model_v0)
        if fl.options.dataset_file is not None:
            dataclasses.replace(config, dataset_file=fl.options.dataset_file).save()
    genesis_text = (out / "genesis.toml").read_text()
    urls = [f"http://{a}" for a in api_addresses]
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
        "partitioner": options.partitioner, "dataset": options.dataset,
        "local_epochs": options.local_epochs, "batch_size": options.batch_size,
        "seed": options.seed}
    if options.dataset_file is not None:
        settings["dataset_path"] = options.dataset_file
    return "".join(f"{name} = {json.dumps(value)}\n" for name, value in settings.items())


def load_genesis_model(genesis_path: Path) -> bytes:
    """The ``genesis-model.bin`` beside a genesis file (its hash is checked by FLApp)."""
    path = genesis_path.parent / GENESIS_MODEL
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the genesis model {path}: {exc.strerror}; it is "
                          "written by 'flobc testnet init --app fl'") from exc
