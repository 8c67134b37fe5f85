"""A project of the user's own: the ``python`` dataset source (a loader function the
user writes, imported on each node), and the folder ``flobc new`` writes with its
settings file, read back as ``cluster up --project`` and ``testnet init --project`` read
it. The run of a project through a cluster is in test_project_cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from flobc.config import ConfigError
from flobc.errors import LaunchError
from flobc.launch.cli import main
from flobc.launch.project import SETTINGS_FILE, load_project, new_project
from flobc.ml.data import Dataset, DatasetError, dataset_source, load_dataset

LOADERS = '''
import numpy as np
from flobc.ml.data import Dataset

def pairs():
    return np.arange(12, dtype=np.float32).reshape(6, 2), np.array([0, 1, 2, 0, 1, 2])

def values():
    return np.ones((4, 3)), np.linspace(0, 1, 4)

def dataset():
    return Dataset(np.zeros((2, 1), np.float32), np.array([0, 1]), "classification", 2)

def broken():
    raise RuntimeError("the share is not mounted")

def one_array():
    return np.zeros((3, 2))

def with_nan():
    return np.array([[0.0], [np.nan]]), np.array([0, 1])

def short():
    return np.zeros((3, 2)), np.array([0, 1])

not_a_function = 3
'''
NEEDS_A_PACKAGE = "import flobc_test_not_installed\n\ndef load():\n    return None\n"


@pytest.fixture
def loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of loader functions on the import path; its name."""
    (tmp_path / "flobc_test_loaders.py").write_text(LOADERS)
    (tmp_path / "flobc_test_needs.py").write_text(NEEDS_A_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flobc_test_loaders", raising=False)
    return "flobc_test_loaders"


def test_a_loader_returns_arrays_or_a_dataset(loaders: str) -> None:
    data = load_dataset("python", loader=f"{loaders}:pairs")
    assert (data.task, data.classes, data.x.shape) == ("classification", 3, (6, 2))
    assert load_dataset("python", loader=f"{loaders}:pairs", classes=5).classes == 5
    regression = load_dataset("python", loader=f"{loaders}:values")
    assert regression.task == "regression" and regression.y.dtype == np.float32
    assert isinstance(load_dataset("python", loader=f"{loaders}:dataset"), Dataset)
    as_labels = load_dataset("python", loader=f"{loaders}:pairs", task="regression")
    assert as_labels.task == "regression"


@pytest.mark.parametrize(("function", "reason"), [
    ("broken", "dataset loader 'flobc_test_loaders:broken' failed: RuntimeError: the share "
               "is not mounted"),
    ("one_array", "returned ndarray; it must return a pair of arrays \\(x, y\\) or a flobc "
                  "Dataset"),
    ("with_nan", "flobc_test_loaders:with_nan'?: features must be finite"),
    ("short", "3 samples but 2 targets"),
    ("nope", "module 'flobc_test_loaders' has no function 'nope'"),
    ("not_a_function", "flobc_test_loaders.not_a_function is int, not a function"),
])
def test_a_bad_loader_is_named(loaders: str, function: str, reason: str) -> None:
    with pytest.raises(DatasetError, match=reason):
        load_dataset("python", loader=f"{loaders}:{function}")


@pytest.mark.parametrize(("options", "reason"), [
    ({}, "dataset 'python': loader must name a function as package.module:function"),
    ({"loader": "flobc_test_absent:load"}, "cannot import module 'flobc_test_absent'.*"
                                           "needs it on its path"),
    ({"loader": "x:y", "shape": 3}, "dataset 'python' has no option 'shape'"),
])
def test_a_loader_that_names_nothing_is_refused(options: dict, reason: str) -> None:
    with pytest.raises(DatasetError, match=reason):
        load_dataset("python", **options)


def test_a_loader_whose_own_imports_are_missing_says_which(loaders: str) -> None:
    with pytest.raises(DatasetError, match="dataset loader 'flobc_test_needs:load': importing "
                                           "module 'flobc_test_needs' failed: it imports "
                                           "'flobc_test_not_installed', which is not "
                                           "installed"):
        load_dataset("python", loader="flobc_test_needs:load")


def test_a_validator_finds_the_loader_before_it_starts(loaders: str) -> None:
    dataset_source("python", {"loader": f"{loaders}:pairs"}).check_importable()
    assert "flobc_test_loaders" not in sys.modules, "found, not run"
    with pytest.raises(DatasetError, match="dataset loader 'flobc_test_absent:load': cannot "
                                           "import module 'flobc_test_absent'"):
        dataset_source("python", {"loader": "flobc_test_absent:load"}).check_importable()


@pytest.mark.parametrize("framework", ["keras", "pytorch"])
def test_a_new_project_names_its_own_model_and_loader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, framework: str) -> None:
    folder, package = f"{framework.title()}-Digits", f"{framework}_digits"
    written = new_project(tmp_path / folder, framework)
    assert {p.relative_to(tmp_path / folder).as_posix() for p in written} == {
        SETTINGS_FILE, f"{package}/__init__.py", f"{package}/model.py", f"{package}/data.py"}
    project = load_project(tmp_path / folder)
    assert project.folder == (tmp_path / folder).resolve()
    assert (project.model, project.dataset, project.dataset_options) == (
        f"{package}.model:build", "python", {"loader": f"{package}.data:load"})
    assert (project.trainers, project.rounds, project.epochs) == (4, 5, 1)
    imports = "import torch" if framework == "pytorch" else "import keras"
    assert imports in (tmp_path / folder / package / "model.py").read_text()
    monkeypatch.syspath_prepend(str(project.folder))
    try:
        data = load_dataset(project.dataset, **project.dataset_options)
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == package]:
            del sys.modules[name]
    assert (data.task, data.classes, data.sample_shape) == ("classification", 10, (64,))


def test_new_refuses_a_used_folder_a_bad_name_and_a_name_taken(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "empty").mkdir()
    assert new_project(tmp_path / "empty")  # an empty folder is fine
    for name, reason in [("used", "used exists and is not an empty folder"),
                         ("a-file", "a-file exists and is not an empty folder"),
                         ("9lives", "project name '9lives': use letters, digits"),
                         ("my.project", "project name 'my.project'"),
                         ("numpy", "a Python module named 'numpy' exists already")]:
        with pytest.raises(LaunchError, match=reason):
            new_project(tmp_path / name)
    with pytest.raises(LaunchError, match="--framework must be one of keras, pytorch"):
        new_project(tmp_path / "jax-project", "jax")
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("settings", "reason"), [
    (None, "no flobc.toml \\(a project folder is written by flobc new NAME\\)"),
    ("model = ", "not a readable TOML file"),
    ('model = "m:b"\ndataset = "digits"\ncolour = 1', "unknown setting 'colour'"),
    ('model = "m.b"\ndataset = "digits"', "model must be a model of the zoo or a builder"),
    ('model = "m:b"', "dataset must be a dataset's name or a \\[dataset\\] table"),
    ('model = "m:b"\ndataset = "imagenet"', "dataset: unknown dataset 'imagenet'"),
    ('model = "m:b"\n[dataset]\nname = "python"\nloader = 3',
     "dataset: dataset 'python': loader must name a function"),
    ('model = "m:b"\n[dataset]\nname = "csv"\nsheet = "A"', "dataset 'csv' has no option"),
    ('model = "m:b"\ndataset = "digits"\nrounds = 0', "rounds must be a positive integer"),
    ('model = "m:b"\ndataset = "digits"\ntrainers = "4"', "trainers must be a positive"),
])
def test_a_bad_settings_file_is_named(tmp_path: Path, settings: str | None,
                                      reason: str) -> None:
    if settings is not None:
        (tmp_path / SETTINGS_FILE).write_text(settings)
    with pytest.raises(ConfigError, match=reason):
        load_project(tmp_path)


def test_a_project_names_the_model_and_dataset_so_flags_for_them_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new_project(tmp_path / "proj")
    assert main(["testnet", "init", "--app", "fl", "--validators", "4", "--out",
                 str(tmp_path / "net"), "--project", str(tmp_path / "proj"),
                 "--model", "digits_mlp", "--dataset", "digits"]) == 1
    assert ("--model, --dataset and --project: the project's flobc.toml names the model and "
            "the dataset") in capsys.readouterr().err
    assert main(["testnet", "init", "--validators", "4", "--out", str(tmp_path / "kv"),
                 "--project", str(tmp_path / "proj")]) == 1
    assert "--project only apply with --app fl" in capsys.readouterr().err
