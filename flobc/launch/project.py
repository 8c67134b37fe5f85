"""A project folder, as ``flobc new`` writes it: the user's model builder, data loader
and settings file, run with ``flobc cluster up --project`` or ``testnet init --project``.

The folder is put on every node's import path (``PYTHONPATH`` of the processes started
from here), so the model and the loader are named in genesis as
``package.module:function`` like any builder. The settings file holds what genesis and
the local cluster need from the user: the model, the dataset (a name, or a table of a
source's ``name`` and options, as ``[app.dataset]``), the trainers, rounds and epochs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flobc.config import ConfigError
from flobc.errors import LaunchError
from flobc.ml.data import DatasetError, dataset_source
from flobc.ml.models import is_model_name

SETTINGS_FILE = "flobc.toml"
FRAMEWORKS = ("keras", "pytorch")
PROJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*", re.ASCII)


@dataclass(frozen=True)
class Project:
    """A project's settings file, read and checked."""

    folder: Path
    """Absolute: it goes on other processes' import path."""
    model: str
    dataset: str
    dataset_options: dict[str, Any] = field(default_factory=dict)
    trainers: int | None = None
    rounds: int | None = None
    epochs: int | None = None

    def activate(self) -> None:
        """Put the folder on this process's import path and on its children's."""
        if str(self.folder) not in sys.path:
            sys.path.insert(0, str(self.folder))
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(self.folder) + (os.pathsep + path if path else "")


def load_project(folder: str | os.PathLike[str]) -> Project:
    """The project in ``folder``, or ConfigError naming its settings file and the
    setting."""
    root = Path(folder).resolve()
    path = root / SETTINGS_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: no {SETTINGS_FILE} (a project folder is written by "
                          "flobc new NAME)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML file: {exc}") from exc
    known = {"model", "dataset", "trainers", "rounds", "epochs"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}; known settings: "
                          f"{', '.join(sorted(known))}")
    model = raw.get("model")
    if not is_model_name(model):
        raise ConfigError(f"{path}: model must be a model of the zoo or a builder "
                          f"package.module:function, got {model!r}")
    name, options = _dataset(raw.get("dataset"), path)
    counts = {key: _count(raw, key, path) for key in ("trainers", "rounds", "epochs")}
    return Project(root, model, name, options, **counts)


def _dataset(value: Any, path: Path) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ConfigError(f"{path}: dataset must be a dataset's name or a [dataset] table "
                          "with its name and options")
    options = {k: v for k, v in value.items() if k != "name"}
    try:
        dataset_source(value["name"], options)
    except DatasetError as exc:
        raise ConfigError(f"{path}: dataset: {exc}") from None
    return value["name"], options


def _count(raw: dict[str, Any], key: str, path: Path) -> int | None:
    value = raw.get(key)
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def new_project(folder: str | os.PathLike[str], framework: str = "keras") -> list[Path]:
    """Write a runnable project into ``folder`` (its last part names the package); the
    files written. LaunchError for a bad name or a folder that is not empty."""
    root = Path(folder)
    if framework not in FRAMEWORKS:
        raise LaunchError(f"--framework must be one of {', '.join(FRAMEWORKS)}, got "
                          f"{framework!r}")
    if PROJECT_NAME.fullmatch(root.name) is None:
        raise LaunchError(f"project name {root.name!r}: use letters, digits, - and _, "
                          "starting with a letter (it names the project's Python package)")
    package = root.name.lower().replace("-", "_")
    if importlib.util.find_spec(package) is not None:
        raise LaunchError(f"project name {root.name!r}: a Python module named {package!r} "
                          "exists already and the project's package would hide it; pick "
                          "another name")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise LaunchError(f"{root} exists and is not an empty folder")
    templates = resources.files(__package__).joinpath("templates")
    files = {Path(SETTINGS_FILE): "flobc.toml",
             Path(package, "__init__.py"): "package_init.py",
             Path(package, "model.py"): f"model_{framework}.py",
             Path(package, "data.py"): "data.py"}
    written = []
    for relative, template in files.items():
        text = templates.joinpath(template).read_text("utf-8")
        out = root / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text.replace("{package}", package).replace("{folder}", str(root)),
                       encoding="utf-8")
        written.append(out)
    return written
