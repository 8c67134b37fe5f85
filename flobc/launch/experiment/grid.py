"""An experiment's grid: partitions x attacks x attacker counts x defences, and the
settings every cell shares, from command-line flags and/or a TOML grid file.

Everything is checked before any training starts, and every error names what is wrong
(the flag or the file and the key), since a grid can take an hour to run. Choices come
from the registries (partitioners, behaviours, validation rules, aggregators, sync
schemes), so a newly registered attack or rule is usable here at once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flobc.config import ConfigError
from flobc.errors import LaunchError
from flobc.launch.testnet import FLOptions
from flobc.ml.data import DATASETS
from flobc.ml.partition import parse_partition
from flobc.protocol.aggregation import AGGREGATORS
from flobc.protocol.settings import FLConfig
from flobc.protocol.sync import SYNC_SCHEMES
from flobc.protocol.validation import VALIDATION_RULES
from flobc.trainer.byzantine import BEHAVIOURS

NO_VOTE = "none"
"""The defence's vote when there is none: every validator votes accept on every update,
so the chain still counts votes, moves trust and aggregates, but rejects nothing."""
DEFAULT_VOTE = FLOptions.validation
"""The genesis default rule: with ``none``, the defences of a grid that names none."""
CLEAN = "none"
"""The attack of the clean run: every trainer honest."""
VALIDATORS = 4
"""n = 3f + 1 with f = 1, as a default testnet has."""


class GridError(LaunchError):
    """A grid that cannot be run as written; the message names the setting."""


@dataclass(frozen=True)
class Defence:
    """How the chain defends itself in one cell: the validators' vote (a genesis
    ``[app.validation]`` table, or None for no vote) and the genesis aggregator table."""

    name: str
    validation: Mapping[str, Any] | None
    aggregator: Mapping[str, Any]


@dataclass(frozen=True)
class Attack:
    """A registered behaviour by name, at its default strength unless ``scale`` is set;
    ``CLEAN`` for no attacker."""

    name: str
    scale: float | None = None

    @property
    def label(self) -> str:
        return self.name if self.scale is None else f"{self.name}:{self.scale:g}"


@dataclass(frozen=True)
class Cell:
    """One run of the grid: the last ``attackers`` trainers run ``attack``."""

    partition: str
    attack: Attack
    attackers: int
    defence: Defence

    @property
    def label(self) -> str:
        return (f"{self.partition} | {self.attack.label} x{self.attackers} | "
                f"{self.defence.name}")


@dataclass(frozen=True)
class Grid:
    """What to run. Settings shared by every cell, then the grid's four axes."""

    model: str = "mnist_mlp"
    trainers: int = 10
    rounds: int = 15
    seed: int = 0
    dataset: str = "mnist_5k"
    sync: str = "bsp"
    epochs: int = 1
    batch_size: int = 32
    partitions: tuple[str, ...] = ("iid",)
    attacks: tuple[Attack, ...] = (Attack(CLEAN),)
    attackers: tuple[int, ...] = (3,)
    defences: tuple[Defence, ...] = ()
    app: Mapping[str, Any] = field(default_factory=dict)
    """Further genesis ``[app]`` settings for every cell (trust, norms...)."""

    def cells(self) -> list[Cell]:
        """Every cell, grouped by partition, then attack, then count (cells next to
        each other share the most work). A clean attack is one cell per partition and
        defence, whatever the attacker counts."""
        out = []
        for partition in self.partitions:
            for attack in self.attacks:
                counts = (0,) if attack.name == CLEAN else self.attackers
                for count in counts:
                    out += [Cell(partition, attack, count, d) for d in self.defences]
        return out


def parse_defence(text: str) -> Defence:
    """``VOTE[+AGGREGATOR]``: a validation rule or ``none``, and an aggregator
    (default fedavg), each at its genesis defaults: ``chance_bound+median``."""
    vote, _, aggregator = text.partition("+")
    aggregator = aggregator or "fedavg"
    if vote != NO_VOTE and vote not in VALIDATION_RULES:
        raise GridError(f"defence {text!r}: unknown vote {vote!r}; known: {NO_VOTE}, "
                        f"{', '.join(VALIDATION_RULES.names())}")
    if aggregator not in AGGREGATORS:
        raise GridError(f"defence {text!r}: unknown aggregator {aggregator!r}; known: "
                        f"{', '.join(AGGREGATORS.names())}")
    return Defence(text, None if vote == NO_VOTE else {"name": vote}, {"name": aggregator})


def parse_attack(text: str) -> Attack:
    """``NAME[:SCALE]``: a registered behaviour, or ``none`` for the clean run."""
    name, sep, scale = text.partition(":")
    if name == CLEAN:
        if sep:
            raise GridError(f"attack {text!r}: the clean run takes no scale")
        return Attack(CLEAN)
    if name not in BEHAVIOURS or name == "honest":
        known = [n for n in BEHAVIOURS.names() if n != "honest"]
        raise GridError(f"unknown attack {name!r}; known: {CLEAN}, {', '.join(known)}")
    if not sep:
        return Attack(name)
    try:
        value = float(scale)
    except ValueError:
        raise GridError(f"attack {text!r}: scale {scale!r} is not a number") from None
    if not 0 < value < 1e6:
        raise GridError(f"attack {text!r}: scale must be in (0, 1e6)")
    return Attack(name, value)


def _defence_table(name: str, table: Any) -> Defence:
    """A ``[defences.NAME]`` table: ``validation`` (a genesis ``[app.validation]``
    table, or ``"none"``) and ``aggregator`` (a genesis ``[app.aggregator]`` table)."""
    where = f"defences.{name}"
    if not isinstance(table, dict):
        raise GridError(f"{where} must be a table with validation and aggregator")
    unknown = sorted(set(table) - {"validation", "aggregator"})
    if unknown:
        raise GridError(f"{where}: unknown key {unknown[0]!r}; keys: validation, aggregator")
    validation = table.get("validation", NO_VOTE)
    if validation == NO_VOTE:
        validation = None
    elif not isinstance(validation, dict):
        raise GridError(f"{where}.validation must be {NO_VOTE!r} or a table with a name")
    aggregator = table.get("aggregator", {"name": "fedavg"})
    if isinstance(aggregator, str):
        aggregator = {"name": aggregator}
    if not isinstance(aggregator, dict):
        raise GridError(f"{where}.aggregator must be a name or a table with a name")
    return Defence(name, validation, aggregator)


def genesis_app(grid: Grid, defence: Defence) -> dict[str, Any]:
    """The genesis ``[app]`` section of a cell (less the model hash and trainers, which
    the run fills in)."""
    app: dict[str, Any] = {**grid.app, "model": grid.model, "seed": grid.seed,
                           "dataset": grid.dataset, "sync": grid.sync,
                           "aggregator": dict(defence.aggregator)}
    if defence.validation is not None:
        app["validation"] = dict(defence.validation)
    return app


def check(grid: Grid) -> Grid:
    """``grid`` if every cell can run; GridError naming the first problem."""
    if grid.trainers < 2:
        raise GridError(f"trainers must be at least 2, got {grid.trainers}")
    if grid.rounds < 1:
        raise GridError(f"rounds must be at least 1, got {grid.rounds}")
    for name in ("epochs", "batch_size"):
        if getattr(grid, name) < 1:
            raise GridError(f"{name} must be at least 1, got {getattr(grid, name)}")
    if grid.seed < 0:
        raise GridError(f"seed must be at least 0, got {grid.seed}")
    if grid.dataset not in DATASETS or grid.dataset == "file":
        raise GridError(f"dataset must be one of {', '.join(d for d in DATASETS if d != 'file')}"
                        f", got {grid.dataset!r}")
    if grid.sync not in SYNC_SCHEMES:
        raise GridError(f"unknown sync scheme {grid.sync!r}; known: "
                        f"{', '.join(SYNC_SCHEMES.names())}")
    for axis in ("partitions", "attacks", "defences"):
        if not getattr(grid, axis):
            raise GridError(f"{axis}: the grid needs at least one")
    for text in grid.partitions:
        try:
            parse_partition(text)
        except ValueError as exc:
            raise GridError(f"partition {text!r}: {exc}") from None
    if any(a.name != CLEAN for a in grid.attacks):
        if not grid.attackers:
            raise GridError("attackers: the grid has attacks but no attacker count")
        for count in grid.attackers:
            if not 1 <= count < grid.trainers:
                raise GridError(f"attackers: {count} is not in 1..{grid.trainers - 1} "
                                f"(of {grid.trainers} trainers, one must be honest)")
    names = [d.name for d in grid.defences]
    if len(set(names)) != len(names):
        raise GridError(f"defences: {sorted(n for n in names if names.count(n) > 1)[0]!r} "
                        "is listed twice")
    for defence in grid.defences:
        try:
            FLConfig.from_app({**genesis_app(grid, defence), "model_v0_hash": "00" * 32,
                               "admission": "open"})
        except ConfigError as exc:
            raise GridError(f"defence {defence.name!r}: {exc}") from None
    return grid


SCALARS = {"model": str, "trainers": int, "rounds": int, "seed": int, "dataset": str,
           "sync": str, "epochs": int, "batch_size": int}
LISTS = ("partitions", "attacks", "attackers", "defences")


def load_grid_file(path: Path) -> dict[str, Any]:
    """A grid file's settings as Grid fields (not yet checked as a whole)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise GridError(f"cannot read grid file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"grid file {path}: {exc}") from exc
    known = {*SCALARS, *LISTS, "app"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GridError(f"grid file {path}: unknown key {unknown[0]!r}; keys: "
                        f"{', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for key, kind in SCALARS.items():
        if key in data:
            if type(data[key]) is not kind:
                what = "an integer" if kind is int else "a string"
                raise GridError(f"grid file {path}: {key} must be {what}")
            values[key] = data[key]
    if "app" in data:
        if not isinstance(data["app"], dict):
            raise GridError(f"grid file {path}: app must be a table of genesis settings")
        values["app"] = data["app"]
    for key in LISTS:
        if key not in data:
            continue
        raw = data[key]
        if key == "defences" and isinstance(raw, dict):
            values[key] = tuple(_defence_table(n, t) for n, t in raw.items())
            continue
        kind = int if key == "attackers" else str
        if not (isinstance(raw, list) and all(type(v) is kind for v in raw)):
            raise GridError(f"grid file {path}: {key} must be a list of "
                            f"{'integers' if kind is int else 'strings'}")
        values[key] = _axis(key, raw)
    return values


def _axis(key: str, raw: Sequence[Any]) -> tuple[Any, ...]:
    if key == "attacks":
        return tuple(parse_attack(v) for v in raw)
    if key == "defences":
        return tuple(parse_defence(v) for v in raw)
    return tuple(raw)


def make_grid(file: Path | None = None, **flags: Any) -> Grid:
    """The grid of ``file`` (if any) with the flags that were given (None: not given)
    on top; axes given as flags are lists of strings or integers."""
    values = load_grid_file(file) if file is not None else {}
    for key, value in flags.items():
        if value is None:
            continue
        values[key] = _axis(key, value) if key in LISTS else value
    grid = Grid(**values)
    if not grid.defences:
        grid = replace(grid, defences=(parse_defence(NO_VOTE), parse_defence(DEFAULT_VOTE)))
    return check(grid)


def grid_settings(grid: Grid) -> dict[str, Any]:
    """The grid as JSON: its settings and axes, as they were run."""
    out: dict[str, Any] = {f.name: getattr(grid, f.name) for f in fields(grid)
                           if f.name in SCALARS}
    out.update(validators=VALIDATORS, partitions=list(grid.partitions),
               attacks=[a.label for a in grid.attacks], attackers=list(grid.attackers),
               defences={d.name: {"validation": d.validation, "aggregator": d.aggregator}
                         for d in grid.defences}, app=dict(grid.app))
    return out
