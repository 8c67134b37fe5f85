"""The learning chain as a validator runs it: the application and its services.

Besides the state machine that consensus executes (``FLApp``), a learning validator has
off-chain duties and extras: the voter with its evaluator worker, the ``/fl`` routes,
the learning metrics and event lines, and the dashboard's learning panel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from flobc.config import ConfigError, Genesis, NodeConfig
from flobc.ml.data import DATASETS, DatasetError, dataset_source
from flobc.ml.models import ModelError, check_importable
from flobc.protocol.genesis import load_genesis_model
from flobc.protocol.settings import FLConfig
from flobc.storage.ledger import Ledger
from flobc.validator.fl.api import fl_router
from flobc.validator.fl.app import FLApp
from flobc.validator.fl.dashboard import LearningPanel
from flobc.validator.fl.evaluator import Evaluator, EvaluatorSettings
from flobc.validator.fl.metrics import LearningEvents, register_learning_metrics
from flobc.validator.fl.voter import Voter
from flobc.validator.services import AppServices, NodeParts

NAME = "fl"


@dataclass
class FLServices:
    """A learning validator's voter, routes, metrics and dashboard panel."""

    node: NodeParts
    app: FLApp
    name: str = field(default=NAME, init=False)

    def __post_init__(self) -> None:
        config, node = self.app.config, self.node
        settings = EvaluatorSettings(
            model=config.model, seed=config.seed, dataset=config.dataset,
            shard_index=node.config.index, shard_count=len(node.genesis.validators),
            max_blob_bytes=config.max_blob_bytes,
            dataset_file=node_dataset_file(node.config, config),
            dataset_options=config.dataset_options)
        self.voter = Voter(node.host, node.key, node.genesis.chain_id, Evaluator(settings),
                           config)
        self.panel = LearningPanel(node, self.app)
        self.events: LearningEvents | None = None

    def routers(self) -> list[APIRouter]:
        return [fl_router(self.node, self.app, self.voter)]

    def register_metrics(self, registry: CollectorRegistry) -> None:
        self.events = register_learning_metrics(registry, self.node.host, self.app,
                                                self.voter)

    async def dashboard_state(self) -> dict[str, Any]:
        return {"learning": await self.panel.state()}

    def start(self) -> None:
        self.voter.start()

    async def stop(self) -> None:
        await self.voter.stop()


@dataclass(frozen=True)
class LoadedFL:
    application: FLApp

    def services(self, node: NodeParts) -> AppServices:
        return FLServices(node, self.application)


def load_fl(config: NodeConfig, genesis: Genesis, ledger: Ledger) -> LoadedFL:
    """The learning application of ``genesis``. Its version-0 weights are checked against
    genesis and stored before consensus starts, so the first block can refer to them."""
    model_v0 = load_genesis_model(config.genesis_path)
    app = FLApp.from_genesis(genesis, model_v0)
    try:  # the evaluator builds the model and loads the data; a validator that cannot
        check_importable(app.config.model)  # would never vote
        dataset_source(app.config.dataset, app.config.dataset_options).check_importable()
    except (ModelError, DatasetError) as exc:
        raise ConfigError(str(exc)) from exc
    node_dataset_file(config, app.config)
    ledger.put_blob(model_v0)
    return LoadedFL(app)


def node_dataset_file(config: NodeConfig, fl: FLConfig) -> str | None:
    """The dataset file this validator evaluates on: its config's ``dataset_file`` when
    genesis names a dataset read from a file (``file``, ``csv``), else None; ConfigError
    when the two disagree or the file is not there."""
    where = config.home / "config.toml"
    path = config.dataset_path
    if not DATASETS.get(fl.dataset).needs_file:
        if path is not None:
            raise ConfigError(f"{where}: dataset_file is only used when genesis names "
                              f"a dataset read from a file (it names {fl.dataset!r})")
        return None
    if path is None:
        raise ConfigError(f'{where}: genesis names app.dataset = "{fl.dataset}"; set '
                          "dataset_file to this node's copy of the dataset")
    if not path.is_file():
        raise ConfigError(f"{where}: dataset_file {str(path)!r} is not a file")
    return str(path)


