"""Dataset sources beyond the embedded sample: tables, scikit-learn's bundled datasets,
tasks other than 10-class images, and the download loaders, which are run against a
real HTTP server on loopback serving small files in each dataset's own format."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flobc.ml.data import Dataset, DatasetError, load_dataset, split, validator_shard
from flobc.ml.downloads import fetch
from flobc.ml.partition import partition
from tests.loopback_http import LoopbackServer, Reply, Request, bytes_reply


def test_a_csv_table_loads_its_named_columns(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("age,weight,ignored,label\n30,70.5,9,1\n41,80,9,0\n"
                                    "52,65.25,9,2\n")
    ds = load_dataset("csv", str(tmp_path / "t.csv"), target="label",
                      features=("age", "weight"))
    assert ds.task == "classification" and ds.classes == 3
    assert ds.x.tolist() == [[30, 70.5], [41, 80], [52, 65.25]] and ds.y.tolist() == [1, 0, 2]
    reg = load_dataset("csv", str(tmp_path / "t.csv"), target="weight")
    assert reg.task == "regression" and reg.sample_shape == (3,)
    assert reg.y.dtype == np.float32 and reg.y.tolist() == [70.5, 80, 65.25]


@pytest.mark.parametrize(("name", "task", "shape", "classes", "n"), [
    ("digits", "classification", (64,), 10, 1797),
    ("breast_cancer", "classification", (30,), 2, 569),
    ("diabetes", "regression", (10,), 0, 442),
])
def test_scikit_learns_bundled_datasets_load_offline(name: str, task: str,
                                                      shape: tuple, classes: int,
                                                      n: int) -> None:
    ds = load_dataset(name)
    assert (ds.task, ds.sample_shape, ds.classes, len(ds)) == (task, shape, classes, n)
    assert np.isfinite(ds.x).all()
    if name == "digits":
        assert ds.x.min() == 0 and ds.x.max() == 1
    else:  # standardised
        assert np.allclose(ds.x.mean(axis=0), 0, atol=1e-5)
        assert np.allclose(ds.x.std(axis=0), 1, atol=1e-4)


def test_a_regression_dataset_splits_and_partitions_by_target_quantiles() -> None:
    ds = load_dataset("diabetes")
    strata = ds.strata
    assert strata.min() == 0 and strata.max() == 9
    assert np.bincount(strata).min() >= len(ds) // 10 - 2  # about equal bins
    parts = split(ds, seed=0)
    assert len(parts.train) + len(parts.validator_holdout) + len(parts.test) == len(ds)
    # Every part spans the whole target range (stratified), not a slice of it.
    for part in (parts.validator_holdout, parts.test):
        assert np.unique(part.strata).size == 10
    shards = [validator_shard(parts.validator_holdout, i, 4) for i in range(4)]
    assert sum(len(s) for s in shards) == len(parts.validator_holdout)
    skewed = partition("shards", parts.train.strata, 4, seed=0, shards_per_part=1)
    for indices in skewed:  # label skew over target quantiles: a few bins per trainer
        assert np.unique(parts.train.strata[indices]).size <= 4


def test_a_multilabel_dataset_keeps_its_indicators(tmp_path: Path) -> None:
    y = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=np.uint8)
    np.savez(tmp_path / "m.npz", x=np.ones((3, 2)), y=y)
    ds = load_dataset("file", str(tmp_path / "m.npz"), task="multilabel")
    assert ds.classes == 3 and ds.y.dtype == np.float32
    assert ds.strata.tolist() == [0, 3, 1]  # the first label set; none: its own group
    np.savez(tmp_path / "bad.npz", x=np.ones((1, 2)), y=np.array([[2, 0]]))
    with pytest.raises(DatasetError, match="multi-label targets must be 0 or 1"):
        load_dataset("file", str(tmp_path / "bad.npz"), task="multilabel")


def test_a_subset_keeps_the_task_and_the_number_of_classes() -> None:
    ds = Dataset(np.zeros((4, 2), np.float32), np.array([0, 1, 2, 3]), classes=5)
    part = ds.subset(np.array([0, 1]))
    assert (part.task, part.classes, part.y.tolist()) == ("classification", 5, [0, 1])


# --- downloads, from a server on loopback --------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _cifar_archive(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10's binary archive layout: five data batches and a test batch."""
    records = np.concatenate([labels[:, None].astype(np.uint8),
                              images.transpose(0, 3, 1, 2).reshape(len(images), -1)], axis=1)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for i, name in enumerate([*(f"data_batch_{b}.bin" for b in range(1, 6)),
                                  "test_batch.bin"]):
            data = records[i::6].tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def files() -> dict[str, bytes]:
    return {}


@pytest.fixture
def server(files: dict[str, bytes], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    monkeypatch.setenv("FLOBC_DATA", str(tmp_path / "cache"))

    def respond(request: Request) -> Reply:
        name = request.path.rsplit("/", 1)[-1]
        return bytes_reply(files[name]) if name in files else (404, {}, b"")

    served = LoopbackServer(respond)
    yield served
    served.close()


def test_fashion_mnist_downloads_parses_and_is_cached(server: LoopbackServer,
                                                      files: dict[str, bytes]) -> None:
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 256, (6, 28, 28))
    files.update({"train-images-idx3-ubyte.gz": _idx(train),
                  "train-labels-idx1-ubyte.gz": _idx(np.arange(12) % 10),
                  "t10k-images-idx3-ubyte.gz": _idx(test),
                  "t10k-labels-idx1-ubyte.gz": _idx(np.arange(6) % 10)})
    ds = load_dataset("fashion_mnist", url=server.url + "/fm/")
    assert ds.x.shape == (18, 28, 28, 1) and ds.classes == 10
    assert np.array_equal(ds.x[:12, ..., 0] * 255, train.astype(np.float32))
    assert ds.y.tolist() == [*(np.arange(12) % 10), *(np.arange(6) % 10)]
    asked = len(server.requests)
    load_dataset("fashion_mnist", url=server.url + "/fm/")
    assert len(server.requests) == asked == 4  # the second load is from the cache


def test_cifar10_reads_the_binary_archive_without_unpickling(
        server: LoopbackServer, files: dict[str, bytes]) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(12) % 10
    files["cifar-10-binary.tar.gz"] = _cifar_archive(images, labels)
    ds = load_dataset("cifar10", url=server.url)
    assert ds.x.shape == (12, 32, 32, 3) and ds.classes == 10
    order = [*range(0, 12, 6), *range(1, 12, 6), *range(2, 12, 6), *range(3, 12, 6),
             *range(4, 12, 6), *range(5, 12, 6)]  # batch by batch
    assert np.array_equal(ds.x * 255, images[order].astype(np.float32))
    assert ds.y.tolist() == labels[order].tolist()


def test_full_mnist_reads_keras_npz(server: LoopbackServer, files: dict[str, bytes]) -> None:
    out = io.BytesIO()
    np.savez(out, x_train=np.zeros((3, 28, 28), np.uint8), y_train=np.array([0, 1, 2]),
             x_test=np.ones((2, 28, 28), np.uint8), y_test=np.array([9, 9]))
    files["mnist.npz"] = out.getvalue()
    ds = load_dataset("mnist", url=server.url)
    assert ds.x.shape == (5, 28, 28, 1) and ds.y.tolist() == [0, 1, 2, 9, 9]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("fashion_mnist", b"not gzip", "not a gzip file"),
    ("fashion_mnist", gzip.compress(b"\0\0\x08\x02" + bytes(8)), "not an IDX file of 3-axis"),
    ("fashion_mnist", gzip.compress(b"\0\0\x08\x03" + (5).to_bytes(4, "big") * 3 + b"x"),
     "header says (5, 5, 5), but 1 bytes follow"),
    ("cifar10", b"not a tar", "not a readable tar.gz"),
    ("cifar10", gzip.compress(b""), "not a readable tar.gz"),
])
def test_bad_downloads_are_refused_naming_the_problem(
        server: LoopbackServer, files: dict[str, bytes], name: str, content: bytes,
        message: str) -> None:
    for file in ("train-images-idx3-ubyte.gz", "cifar-10-binary.tar.gz"):
        files[file] = content
    with pytest.raises(DatasetError) as info:
        load_dataset(name, url=server.url)
    assert message in str(info.value)


def test_a_download_is_checked_against_its_hash_and_not_kept_when_wrong(
        server: LoopbackServer, files: dict[str, bytes], tmp_path: Path) -> None:
    files["f.bin"] = b"payload"
    with pytest.raises(DatasetError, match="SHA-256 .* is not the published 00"):
        fetch(server.url + "/f.bin", "f.bin", sha256="00" * 32)
    assert not list((tmp_path / "cache").iterdir())  # nothing half-trusted left behind
    with pytest.raises(DatasetError, match="HTTP 404"):
        fetch(server.url + "/missing.bin", "missing.bin")
    path = fetch(server.url + "/f.bin", "f.bin")
    assert path.read_bytes() == b"payload"
