"""The Hugging Face ``datasets`` source on small local files in the formats it reads
(csv and parquet through ``datasets.load_dataset``), offline: nothing is downloaded.
``datasets`` is an optional extra for users (``flobc[hf]``) and part of the test extra."""

from __future__ import annotations

import tomllib
from pathlib import Path

import datasets
import numpy as np
import pytest

from flobc.ml.data import DatasetError, load_dataset, split
from flobc.protocol.settings import FLConfig


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, and Hugging Face's cache in the test's own folder."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")


@pytest.fixture
def table(tmp_path: Path) -> str:
    """A csv of 40 rows: two numeric features, an ignored column and a 0/1 label."""
    rng = np.random.default_rng(0)
    rows = ["age,weight,id,label"] + [
        f"{rng.integers(20, 80)},{rng.normal(70, 10):.2f},{i},{i % 2}" for i in range(40)]
    path = tmp_path / "table.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_a_csv_through_datasets_loads_its_named_columns(table: str) -> None:
    ds = load_dataset("huggingface", repo="csv", data_files=(table,),
                      features=("age", "weight"))
    assert (ds.task, ds.sample_shape, ds.classes, len(ds)) == ("classification", (2,), 2, 40)
    assert ds.y.tolist() == [i % 2 for i in range(40)]
    assert len(split(ds, seed=0).test) > 0
    regression = load_dataset("huggingface", repo="csv", data_files=(table,), label="weight",
                              features=("age",))
    assert regression.task == "regression" and regression.y.dtype == np.float32


def test_a_parquet_of_images_keeps_their_shape_and_its_class_labels(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (12, 4, 4), dtype=np.uint8)
    features = datasets.Features({"image": datasets.Array2D((4, 4), "uint8"),
                                  "label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    datasets.Dataset.from_dict({"image": images.tolist(), "label": [i % 3 for i in range(12)]},
                               features=features).to_parquet(str(tmp_path / "images.parquet"))
    ds = load_dataset("huggingface", repo="parquet",
                      data_files=(str(tmp_path / "images.parquet"),))
    assert ds.sample_shape == (4, 4) and np.array_equal(ds.x, images.astype(np.float32))
    assert ds.classes == 4, "the ClassLabel's four names, though only three occur"


@pytest.mark.parametrize(("options", "message"), [
    ({}, "needs option repo"),
    ({"split": "test"}, "cannot load it: ValueError: Unknown split \"test\""),
    ({"label": "outcome"}, "no label column 'outcome'; columns: age, weight, id, label"),
    ({"features": ("age", "height")}, "no feature column 'height'"),
    ({"data_files": ("missing.csv",)}, "cannot load it: FileNotFoundError"),
    ({"repo": "someone/nothing", "data_files": ()}, "cannot load it"),
])
def test_bad_options_are_refused_naming_the_problem(table: str, options: dict,
                                                    message: str) -> None:
    given = {"repo": "csv", "data_files": (table,)} if options else {}
    with pytest.raises(DatasetError, match=message):
        load_dataset("huggingface", **{**given, **options})


def test_text_labels_are_refused_as_targets_that_are_not_numbers(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,label\n1,yes\n2,no\n")
    with pytest.raises(DatasetError, match="targets must be numbers, got <U3"):
        load_dataset("huggingface", repo="csv", data_files=(str(tmp_path / "t.csv"),))


def test_genesis_names_a_hugging_face_dataset_with_its_options(table: str,
                                                               tmp_path: Path) -> None:
    """``[app.dataset]`` in a real genesis file: what every node loads."""
    text = ('[app]\nmodel_v0_hash = "' + "00" * 32 + '"\nadmission = "open"\n'
            '[app.dataset]\nname = "huggingface"\nrepo = "csv"\n'
            f'data_files = ["{table}"]\nfeatures = ["age", "weight"]\n')
    config = FLConfig.from_app(tomllib.loads(text)["app"])
    assert config.dataset == "huggingface"
    ds = load_dataset(config.dataset, None, **config.dataset_options)
    direct = load_dataset("huggingface", repo="csv", data_files=(table,),
                          features=("age", "weight"))
    assert np.array_equal(ds.x, direct.x) and np.array_equal(ds.y, direct.y)
