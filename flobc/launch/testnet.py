"""Writing testnets: keys, a genesis and one home per validator, and for a learning chain
its version-0 weights, the ``[app]`` section and one home per trainer.

Version 0 is computed here, from the model name and seed (which imports TensorFlow: fine
in the command that writes a testnet, never in a validator).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flobc.config import (
    ConfigError,
    ConsensusParams,
    Genesis,
    NodeConfig,
    Peer,
    ValidatorInfo,
    save_key,
)
from flobc.crypto import PrivateKey, sha256
from flobc.errors import LaunchError
from flobc.ml.dataset import Task
from flobc.ml.partition import parse_partition
from flobc.protocol.genesis import GENESIS_MODEL
from flobc.protocol.settings import FLConfig
from flobc.protocol.validation import VALIDATION_RULES

DEFAULT_BASE_PORT = 26600
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
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """The dataset source's options, written to genesis as ``[app.dataset]``."""
    sync: str = "bsp"
    aggregator: str = "fedavg"
    validation: str = VALIDATION_RULES.name_of(type(FLConfig.validation))
    """The validation rule, by name, with its default settings."""
    admission: str = "allowlist"
    round_deadline_ms: int = 60_000
    max_blob_bytes: int = FLConfig.max_blob_bytes
    """The largest update blob the chain takes: at least the model's encoded weights."""
    partition: str = "iid"
    """How the dataset is split among the trainers, ``NAME[:VALUE]`` as
    :func:`flobc.ml.partition.parse_partition` reads it (e.g. ``dirichlet:0.1``)."""
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
    try:
        parse_partition(options.partition)
    except ValueError as exc:
        raise ConfigError(f"--partition: {exc}") from None
    keys = tuple(PrivateKey.generate() for _ in range(options.trainers))
    # Settings are checked before the slow part (building the model imports TensorFlow).
    settings = dict(model=options.model, seed=options.seed, dataset=options.dataset,
                    dataset_options=dict(options.dataset_options),
                    sync=options.sync, aggregator=options.aggregator,
                    validation=VALIDATION_RULES.get(options.validation)(),
                    admission=options.admission, round_deadline_ms=options.round_deadline_ms,
                    max_blob_bytes=options.max_blob_bytes,
                    trainers=tuple(k.public_key for k in keys)
                    if options.admission == "allowlist" else ())
    FLConfig(model_v0_hash=bytes(32), **settings)
    dataset_file, task = _checked_dataset(options)
    options = dataclasses.replace(options, dataset_file=dataset_file)
    try:
        model_v0 = encode_weights(initial_weights(options.model, options.seed, task))
    except ModelError as exc:
        raise ConfigError(str(exc)) from exc
    if len(model_v0) > options.max_blob_bytes:
        raise ConfigError(f"model {options.model}: its weights, and so every update blob, are "
                          f"{len(model_v0)} bytes, over app.max_blob_bytes "
                          f"{options.max_blob_bytes}; raise it with --max-blob-bytes")
    config = FLConfig(model_v0_hash=sha256(model_v0), **settings)
    return FLGenesis({"name": "fl", **config.to_app_dict()}, model_v0, keys, options)


def _checked_dataset(options: FLOptions) -> tuple[str | None, Task]:
    """The dataset, loaded once to check it: the absolute path of its file (None when
    it is not read from one) and the task the model must fit."""
    from flobc.ml.data import DATASETS, DatasetError, load_dataset

    if DATASETS.get(options.dataset).needs_file != (options.dataset_file is not None):
        raise ConfigError(f"--dataset-file is needed with --dataset "
                          f"{' or '.join(n for n in DATASETS if DATASETS.get(n).needs_file)},"
                          f" and only with them")
    path = None if options.dataset_file is None else str(Path(options.dataset_file).resolve())
    try:
        return path, load_dataset(options.dataset, path, **options.dataset_options).spec
    except DatasetError as exc:
        flag = "--dataset-file" if path is not None else f"--dataset {options.dataset}"
        raise ConfigError(f"{flag}: {exc}") from exc


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
    partitioner, partitioner_options = parse_partition(options.partition)
    settings: dict[str, Any] = {
        "validators": urls, "partition_index": index, "partitions": options.trainers,
        "partitioner": partitioner, "dataset": options.dataset,
        "local_epochs": options.local_epochs, "batch_size": options.batch_size,
        "seed": options.seed}
    if options.dataset_file is not None:
        settings["dataset_path"] = options.dataset_file
    lines = [f"{name} = {json.dumps(value)}\n" for name, value in settings.items()]
    if partitioner_options:
        lines.append("\n[partitioner_options]\n")
        lines += [f"{name} = {json.dumps(value)}\n"
                  for name, value in partitioner_options.items()]
    return "".join(lines)


def write_testnet(out: Path, validators: int, *, chain_id: str, host: str, base_port: int,
                  params: ConsensusParams, force: bool = False,
                  app: dict[str, Any] | None = None, hosts: Sequence[str] | None = None,
                  listen_host: str | None = None) -> list[NodeConfig]:
    """Write a genesis and one home folder per validator; return their configurations.

    Validator i listens for peers on ``base_port + 2i`` and serves its API on
    ``base_port + 2i + 1``; every validator lists all the others as peers. ``app`` is
    the genesis ``[app]`` section (none: the key-value store). Validator i is reached at
    ``hosts[i]`` (default: ``host`` for every validator) and listens on ``listen_host``
    (default: the address it is reached at), e.g. ``0.0.0.0`` in a container whose
    peers know it by its hostname.
    """
    if validators < 1:
        raise LaunchError(f"--validators must be at least 1, got {validators}")
    hosts = list(hosts) if hosts is not None else [host] * validators
    if len(hosts) != validators:
        raise LaunchError(f"{len(hosts)} host(s) given for {validators} validator(s)")
    last_port = base_port + 2 * validators - 1
    if base_port < 1 or last_port > 65535:
        raise LaunchError(f"ports {base_port}..{last_port} are outside 1..65535")
    _prepare_out_dir(out, force)
    keys = [PrivateKey.generate() for _ in range(validators)]
    genesis = Genesis(chain_id, int(time.time() * 1000),
                      tuple(ValidatorInfo(f"validator-{i}", k.public_key)
                            for i, k in enumerate(keys)),
                      params, app or {})
    genesis_text = genesis.to_toml()
    (out / "genesis.toml").write_text(genesis_text)
    peers = testnet_peers(hosts, base_port)
    listening = testnet_peers([listen_host] * validators, base_port) if listen_host else peers
    configs = []
    for i, key in enumerate(keys):
        home = out / f"validator-{i}"
        home.mkdir()
        config = NodeConfig(home=home, index=i, peer_listen=listening[i].peer_address,
                            api_listen=listening[i].api_address,
                            peers=tuple(p for p in peers if p.index != i))
        config.save()
        config.genesis_path.write_text(genesis_text)
        save_key(config.key_path, key)
        configs.append(config)
    return configs


def _prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LaunchError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise LaunchError(f"{out} is not empty; pass --force to replace the testnet in it")
        (out / "genesis.toml").unlink(missing_ok=True)
        (out / "genesis-model.bin").unlink(missing_ok=True)
        for home in [*out.glob("validator-*"), *out.glob("trainer-*")]:
            if home.is_dir():
                shutil.rmtree(home)
    out.mkdir(parents=True, exist_ok=True)


def testnet_peers(hosts: Sequence[str], base_port: int) -> list[Peer]:
    """Validator i's addresses: ``hosts[i]`` at ports ``base_port + 2i`` (peers) and
    ``base_port + 2i + 1`` (API)."""
    return [Peer(i, _address(h, base_port + 2 * i), _address(h, base_port + 2 * i + 1))
            for i, h in enumerate(hosts)]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
