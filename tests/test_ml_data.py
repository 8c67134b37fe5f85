"""Datasets, the role split and the partitioners, on the embedded MNIST sample."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from flobc.ml.data import (
    Dataset,
    DatasetError,
    Splits,
    load_dataset,
    split,
    split_indices,
    validator_shard,
)
from flobc.ml.partition import (
    IID,
    Dirichlet,
    LabelShards,
    Quantity,
    parse_partition,
    partition,
    partition_help,
)


@cache
def mnist_5k() -> Dataset:
    return load_dataset()


@cache
def default_splits() -> Splits:
    return split(mnist_5k(), seed=0)


def _image_keys(ds: Dataset) -> set[bytes]:
    return {image.tobytes() for image in ds.x}


def test_embedded_sample_is_balanced_mnist() -> None:
    ds = mnist_5k()
    assert ds.x.shape == (5000, 28, 28, 1) and ds.x.dtype == np.float32
    assert ds.y.shape == (5000,) and ds.y.dtype == np.int64
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert np.bincount(ds.y).tolist() == [500] * 10
    assert len(_image_keys(ds)) == 5000  # no duplicate images
    # Digits are dark backgrounds with a few bright strokes.
    assert 0.1 < ds.x.mean() < 0.15 and (ds.x > 0.5).mean() < 0.15


def test_default_split_sizes_and_strata() -> None:
    parts = default_splits()
    for ds, per_class in [(parts.train, 400), (parts.validator_holdout, 50), (parts.test, 50)]:
        assert np.bincount(ds.y).tolist() == [per_class] * 10


def test_split_parts_are_disjoint_and_cover_the_data() -> None:
    train, holdout, test = split_indices(mnist_5k().y, test_fraction=0.1,
                                         validator_fraction=0.1, seed=0)
    assert np.array_equal(np.sort(np.concatenate([train, holdout, test])), np.arange(5000))
    parts = default_splits()
    keys = [_image_keys(ds) for ds in (parts.train, parts.validator_holdout, parts.test)]
    assert sum(map(len, keys)) == len(set().union(*keys)) == 5000  # no image in two parts
    assert np.array_equal(parts.test.x, mnist_5k().subset(test).x)


def test_split_is_fixed_by_the_seed() -> None:
    y = mnist_5k().y
    first = split_indices(y, test_fraction=0.1, validator_fraction=0.1, seed=7)
    again = split_indices(y, test_fraction=0.1, validator_fraction=0.1, seed=7)
    other = split_indices(y, test_fraction=0.1, validator_fraction=0.1, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[2], other[2])


def test_split_fractions() -> None:
    parts = split(mnist_5k(), test_fraction=0.2, validator_fraction=0.0, seed=1)
    assert (len(parts.train), len(parts.validator_holdout), len(parts.test)) == (4000, 0, 1000)
    for bad in [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5)]:
        with pytest.raises(ValueError, match="fraction"):
            split(mnist_5k(), test_fraction=bad[0], validator_fraction=bad[1], seed=0)


def test_validator_shards_are_disjoint_covering_and_stratified() -> None:
    holdout = default_splits().validator_holdout
    shards = [validator_shard(holdout, i, 4) for i in range(4)]
    assert sorted(len(s) for s in shards) == [125] * 4
    keys = [_image_keys(s) for s in shards]
    assert set().union(*keys) == _image_keys(holdout) and sum(map(len, keys)) == 500
    counts = np.array([np.bincount(s.y, minlength=10) for s in shards])
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(validator_shard(holdout, 2, 4).x, shards[2].x)
    with pytest.raises(ValueError, match=r"validator index must be in 0..3, got 4"):
        validator_shard(holdout, 4, 4)


def test_load_local_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 9, 9, 3], dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x=images, y=labels)
    ds = load_dataset("file", str(tmp_path / "u8.npz"))
    assert ds.x.shape == (6, 28, 28, 1) and ds.y.tolist() == labels.tolist()
    assert np.array_equal(ds.x[..., 0] * 255, images.astype(np.float32))
    floats = images[..., np.newaxis] / 255.0
    np.savez(tmp_path / "f64.npz", x=floats, y=labels.astype(np.int32))
    assert np.array_equal(load_dataset("file", str(tmp_path / "f64.npz")).x, ds.x)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((2, 28, 28), np.uint8)}, "needs arrays 'x' and 'y'"),
    ({"x": np.zeros(2, np.uint8), "y": np.zeros(2, np.int64)}, "at least one more, got"),
    ({"x": np.zeros((2, 28, 28), np.uint8), "y": np.zeros(3, np.int64)},
     "2 samples but 3 targets"),
    ({"x": np.zeros((0, 28, 28), np.uint8), "y": np.zeros(0, np.int64)}, "no samples"),
    ({"x": np.zeros((1, 4), np.uint8), "y": np.array([-1])}, "labels must be at least 0"),
    ({"x": np.zeros((1, 4), np.uint8), "y": np.array([20_000])}, "too many classes (20001"),
    ({"x": np.zeros((1, 4), np.uint8), "y": np.array([[1, 2]])}, "one per sample"),
    ({"x": np.full((1, 4), np.nan), "y": np.array([1])}, "features must be finite"),
    ({"x": np.full((1, 4), 1e39), "y": np.array([1])}, "features must be finite"),
    ({"x": np.zeros((1, 4)), "y": np.array([np.inf])}, "targets must be finite"),
    ({"x": np.zeros((1, 4), np.complex64), "y": np.array([1])}, "must be numbers"),
    ({"x": np.zeros((1, 4)), "y": np.array(["a"])},
     "targets must be numbers, got <U1 (integer class labels"),
    ({"x": np.array([None] * 784).reshape(1, 28, 28), "y": np.array([1])}, "pickle"),
])
def test_bad_npz_files_are_refused_naming_the_problem(
        tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError) as info:
        load_dataset("file", str(tmp_path / "bad.npz"))
    assert message in str(info.value) and "bad.npz" in str(info.value)


@pytest.mark.parametrize(("text", "options", "message"), [
    ("", {}, "empty file"),
    ("a,b\n1,2\n", {}, "no target column 'target'; columns: a, b"),
    ("a,target\n1,2\n", {"features": ("a", "c")}, "no feature column 'c'"),
    ("a,a,target\n1,1,2\n", {}, "names a column twice"),
    ("target\n1\n", {}, "no feature columns besides 'target'"),
    ("a,target\n1,2,3\n", {}, "line 2 has 3 fields, the header 2"),
    ("a,target\n1,x\n", {}, "line 2, column 'target': 'x' is not a number"),
    ("a,target\n1,2\ninf,1\n", {}, "line 3, column 'a' is NaN or infinite ('inf')"),
    ("a,target\n1,0.5\n", {"task": "classification"}, "non-integer value"),
    ("a,target\n1,2\n", {"task": "ranking"}, "task must be classification"),
])
def test_bad_csv_files_are_refused_naming_the_problem(
        tmp_path: Path, text: str, options: dict, message: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DatasetError) as info:
        load_dataset("csv", str(tmp_path / "bad.csv"), **options)
    assert message in str(info.value)


def test_files_that_are_not_npz_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for name, message in [("plain.npy", "not an .npz archive"), ("junk.npz", "not a readable"),
                          ("missing.npz", "not a readable")]:
        with pytest.raises(DatasetError, match=message):
            load_dataset("file", str(tmp_path / name))


def test_dataset_names_paths_and_options() -> None:
    with pytest.raises(DatasetError, match="known datasets: .*mnist_5k, file, csv, digits"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="a path is needed with dataset 'file'"):
        load_dataset("file")
    with pytest.raises(DatasetError, match=r"only with a dataset read from a file \(file, csv\)"):
        load_dataset("mnist_5k", "somewhere.npz")
    with pytest.raises(DatasetError, match="'digits' has no option 'target'; its options: none"):
        load_dataset("digits", target="y")


def test_dataset_checks_its_arrays() -> None:
    with pytest.raises(DatasetError, match="features must be float32"):
        Dataset(np.zeros((1, 28, 28, 1), np.float64), np.zeros(1, np.int64), classes=10)
    with pytest.raises(DatasetError, match=r"classification targets must be int64 \(2,\)"):
        Dataset(np.zeros((2, 28, 28, 1), np.float32), np.zeros(1, np.int64), classes=10)
    with pytest.raises(DatasetError, match="classes must be in 1..10000, got 0"):
        Dataset(np.zeros((1, 3), np.float32), np.zeros(1, np.int64))
    with pytest.raises(DatasetError, match="regression targets must be float32"):
        Dataset(np.zeros((1, 3), np.float32), np.zeros(1, np.int64), "regression")
    with pytest.raises(DatasetError, match="task must be one of"):
        Dataset(np.zeros((1, 3), np.float32), np.zeros(1, np.int64), "ranking", 2)


# Partitioners, on the labels of the default training split.

def train_labels() -> np.ndarray:
    return default_splits().train.y


def _label_distance(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each part's label mix and the whole's."""
    whole = np.bincount(labels, minlength=10) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p)
                                       - whole).sum() for p in parts]))


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    assert all(len(p) > 0 and np.array_equal(p, np.sort(p)) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


PARTITIONS = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.1}),
    ("dirichlet", {"alpha": 100.0}),
    ("shards", {"shards_per_part": 2}),
    ("shards", {"shards_per_part": 3}),
    ("quantity", {"alpha": 0.5}),
    ("quantity", {"alpha": 0.05}),
]


@pytest.mark.parametrize(("name", "options"), PARTITIONS)
@pytest.mark.parametrize("n_parts", [1, 4, 7])
def test_every_index_is_used_exactly_once(name: str, options: dict, n_parts: int) -> None:
    labels = train_labels()
    _assert_exact_cover(partition(name, labels, n_parts, 3, **options), len(labels))


@pytest.mark.parametrize(("name", "options"), PARTITIONS)
def test_partitions_are_fixed_by_the_seed(name: str, options: dict) -> None:
    labels = train_labels()
    first, again = (partition(name, labels, 5, 11, **options) for _ in range(2))
    other = partition(name, labels, 5, 12, **options)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_parts_are_even_and_unskewed() -> None:
    labels = train_labels()
    parts = IID().split(labels, 10, 0)
    assert {len(p) for p in parts} == {400}
    assert _label_distance(parts, labels) < 0.1


def test_dirichlet_alpha_sets_the_skew() -> None:
    labels = train_labels()
    for seed in range(3):
        assert _label_distance(Dirichlet(0.1).split(labels, 10, seed), labels) > 0.5
        assert _label_distance(Dirichlet(1000.0).split(labels, 10, seed), labels) < 0.1


def test_dirichlet_never_leaves_a_part_empty() -> None:
    labels = np.repeat(np.arange(10), 3)
    for seed in range(20):
        parts = Dirichlet(0.01).split(labels, 30, seed)
        _assert_exact_cover(parts, 30)
        assert [len(p) for p in parts] == [1] * 30


def test_label_shards_give_each_part_few_labels() -> None:
    labels = train_labels()
    # 400 samples per class and shards of 200: every shard holds one label.
    parts = LabelShards(2).split(labels, 10, 0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert {len(p) for p in parts} == {400}
    uneven = LabelShards(3).split(labels, 7, 0)
    assert all(len(np.unique(labels[p])) <= 6 for p in uneven)


def test_partition_by_name() -> None:
    labels = train_labels()
    assert all(np.array_equal(a, b) for a, b in zip(
        partition("dirichlet", labels, 4, 1), Dirichlet(0.5).split(labels, 4, 1), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(
        partition("shards", labels, 4, 1), LabelShards(2).split(labels, 4, 1), strict=True))
    with pytest.raises(ValueError, match="unknown partitioner 'pathological'; "
                                         "known: iid, dirichlet, shards, quantity"):
        partition("pathological", labels, 4, 0)
    with pytest.raises(ValueError, match="'iid' has no option alpha; its options: none"):
        partition("iid", labels, 4, 0, alpha=1.0)
    with pytest.raises(ValueError, match="has no option shards; its options: alpha"):
        partition("dirichlet", labels, 4, 0, shards=1.0)


def test_partition_arguments_are_checked() -> None:
    labels = np.arange(10) % 3
    with pytest.raises(ValueError, match="10 samples cannot fill 11 parts"):
        IID().split(np.zeros(10, dtype=int), 11, 0)
    with pytest.raises(ValueError, match="need at least one part"):
        Dirichlet(1.0).split(labels, 0, 0)
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        Dirichlet(0.0).split(labels, 2, 0)
    with pytest.raises(ValueError, match="cannot fill 4 parts with 3 each"):
        LabelShards(3).split(labels, 4, 0)
    with pytest.raises(ValueError, match="labels must be a 1-D array of integers"):
        Dirichlet(1.0).split(labels.astype(float), 2, 0)


def test_quantity_skew_keeps_labels_and_skews_sizes() -> None:
    labels = train_labels()
    for seed in range(3):
        parts = Quantity(0.5).split(labels, 10, seed)
        sizes = sorted(len(p) for p in parts)
        assert sizes[-1] > 4 * sizes[0], sizes
        big = [p for p in parts if len(p) >= 200]
        assert _label_distance(big, labels) < 0.2
    assert _label_distance(Quantity(1000.0).split(labels, 10, 0), labels) < 0.1


def test_quantity_never_leaves_a_part_empty() -> None:
    for seed in range(20):
        parts = Quantity(0.01).split(np.zeros(30, dtype=int), 30, seed)
        _assert_exact_cover(parts, 30)
        assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize(("text", "expected"), [
    ("iid", ("iid", {})),
    ("dirichlet:0.1", ("dirichlet", {"alpha": 0.1})),
    ("shards:3", ("shards", {"shards_per_part": 3})),
    ("quantity:2", ("quantity", {"alpha": 2.0})),
    ("dirichlet", ("dirichlet", {})),
])
def test_partitions_parse_from_the_command_line_form(text: str, expected: tuple) -> None:
    assert parse_partition(text) == expected


@pytest.mark.parametrize(("text", "error"), [
    ("pathological:1", "unknown partitioner 'pathological'"),
    ("iid:3", "'iid' takes no value"),
    ("shards:two", "shards_per_part must be an integer"),
    ("shards:0", "shards_per_part must be at least 1"),
    ("dirichlet:-1", "alpha must be a positive number"),
    ("quantity:nan", "alpha must be a positive number"),
])
def test_bad_partitions_name_the_problem(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_partition(text)


def test_partition_help_comes_from_the_registry() -> None:
    from flobc.ml.partition import PARTITIONERS

    text = partition_help()
    assert all(name in text for name in PARTITIONERS)
    assert "dirichlet:alpha" in text and "shards:shards_per_part" in text
