"""The dataset sources that download: full MNIST, Fashion-MNIST and CIFAR-10.

Each file is fetched once over HTTPS into a cache folder (``FLOBC_DATA``, by default
``~/.cache/flobc/datasets``), size-bounded, written in one step, and parsed with numpy
alone: nothing is unpickled (Keras' own CIFAR-10 loader unpickles, so CIFAR-10 is read
from its binary distribution instead). MNIST's file is checked against its published
SHA-256; the other formats are checked by their headers and sizes. ``url`` replaces
the default location (a mirror, or a local server): a file from elsewhere is the
user's to vouch for, so no hash is asked of it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from flobc.ml.dataset import DATASETS, Dataset, DatasetError, DatasetSource, from_arrays

MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20


def cache_dir() -> Path:
    """Where downloaded files are kept: ``FLOBC_DATA`` or ``~/.cache/flobc/datasets``."""
    return Path(os.environ.get("FLOBC_DATA") or Path.home() / ".cache" / "flobc" / "datasets")


def fetch(url: str, name: str, sha256: str | None = None) -> Path:
    """The cached copy of ``url`` (downloaded first if missing), as ``name`` in the
    cache; DatasetError when it cannot be had or its SHA-256 is not ``sha256``."""
    import httpx

    folder = cache_dir()
    target = folder / name
    if target.is_file() and (sha256 is None or _sha256(target) == sha256):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, httpx.stream("GET", url, timeout=TIMEOUT_S,
                                                      follow_redirects=True) as reply:
            if reply.status_code != 200:
                raise DatasetError(f"cannot download {url}: HTTP {reply.status_code}")
            size = 0
            for chunk in reply.iter_bytes(CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise DatasetError(f"{url} is larger than {MAX_DOWNLOAD_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DatasetError(f"{url}: SHA-256 {digest.hexdigest()} is not the published "
                               f"{sha256}; the download is corrupt or not the dataset")
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        raise DatasetError(f"cannot download {url} (a network is needed, or set the "
                           f"dataset's url to a mirror): {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Download(DatasetSource):
    """A dataset fetched from ``url`` (a folder holding the dataset's files)."""

    url: str = ""
    default_url: ClassVar[str]

    @property
    def base(self) -> str:
        return (self.url or self.default_url).rstrip("/") + "/"

    def _fetch(self, name: str, sha256: str | None = None) -> Path:
        return fetch(self.base + name, f"{DATASETS.name_of(type(self))}-{name}",
                     sha256 if not self.url else None)


@DATASETS.register("mnist")
@dataclass(frozen=True)
class Mnist(_Download):
    """All 70,000 MNIST digits (LeCun et al. 1998), Keras' ``mnist.npz``: training and
    test sets together, 10 classes."""

    default_url = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
    SHA256: ClassVar[str] = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

    def load(self, path: str | None) -> Dataset:
        file = self._fetch("mnist.npz", self.SHA256)
        try:
            with np.load(file, allow_pickle=False) as npz:
                x = np.concatenate([npz["x_train"], npz["x_test"]])
                y = np.concatenate([npz["y_train"], npz["y_test"]])
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"{file}: not Keras' mnist.npz: {exc}") from exc
        return from_arrays(x, y, "mnist", classes=10)


def read_idx(data: bytes, source: str, dims: int) -> np.ndarray:
    """An IDX array of unsigned bytes (the MNIST file format) with ``dims`` axes."""
    if len(data) < 4 + 4 * dims or data[:4] != bytes([0, 0, 8, dims]):
        raise DatasetError(f"{source}: not an IDX file of {dims}-axis unsigned bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = data[4 + 4 * dims:]
    if len(body) != int(np.prod(shape)):
        raise DatasetError(f"{source}: header says {shape}, but {len(body)} bytes follow")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(MAX_DOWNLOAD_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a gzip file: {exc}") from exc
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise DatasetError(f"{path}: unpacks to more than {MAX_DOWNLOAD_BYTES} bytes")
    return data


@DATASETS.register("fashion_mnist")
@dataclass(frozen=True)
class FashionMnist(_Download):
    """Fashion-MNIST (Xiao et al. 2017): 70,000 28x28 images of clothing, 10 classes,
    from the IDX files Keras downloads."""

    default_url = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
    FILES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))

    def load(self, path: str | None) -> Dataset:
        xs, ys = [], []
        for images, labels in self.FILES:
            x = read_idx(_gunzip(self._fetch(images)), images, 3)
            y = read_idx(_gunzip(self._fetch(labels)), labels, 1)
            if len(x) != len(y):
                raise DatasetError(f"{images} has {len(x)} images but {labels} "
                                   f"{len(y)} labels")
            xs.append(x)
            ys.append(y)
        return from_arrays(np.concatenate(xs), np.concatenate(ys).astype(np.int64),
                           "fashion_mnist", classes=10)


CIFAR_RECORD = 1 + 3 * 32 * 32
"""A CIFAR-10 binary record: the label byte, then 1,024 bytes per colour plane."""


@DATASETS.register("cifar10")
@dataclass(frozen=True)
class Cifar10(_Download):
    """CIFAR-10 (Krizhevsky 2009): 60,000 32x32 colour images, 10 classes, read from
    the binary distribution (``cifar-10-binary.tar.gz``) as (N, 32, 32, 3)."""

    default_url = "https://www.cs.toronto.edu/~kriz/"
    ARCHIVE: ClassVar[str] = "cifar-10-binary.tar.gz"
    BATCHES: ClassVar[tuple[str, ...]] = (
        *(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
        "cifar-10-batches-bin/test_batch.bin")

    def load(self, path: str | None) -> Dataset:
        archive = self._fetch(self.ARCHIVE)
        records = []
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in self.BATCHES:
                    member = tar.extractfile(name)
                    if member is None:
                        raise DatasetError(f"{archive}: {name} is not a file")
                    records.append(member.read(MAX_DOWNLOAD_BYTES))
        except KeyError as exc:
            raise DatasetError(f"{archive}: no {exc.args[0]}; not CIFAR-10's binary "
                               f"archive") from exc
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetError(f"{archive}: not a readable tar.gz: {exc}") from exc
        data = b"".join(records)
        if not data or len(data) % CIFAR_RECORD:
            raise DatasetError(f"{archive}: batches are not whole {CIFAR_RECORD}-byte "
                               f"records")
        table = np.frombuffer(io.BytesIO(data).getbuffer(), dtype=np.uint8).reshape(
            -1, CIFAR_RECORD)
        images = table[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return from_arrays(np.ascontiguousarray(images), table[:, 0].astype(np.int64),
                           "cifar10", classes=10)
