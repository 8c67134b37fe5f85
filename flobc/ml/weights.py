"""Model weights as bytes, and the checks a validator runs before trusting them.

Weights are a ``list[np.ndarray]``, the one format every model framework can get
and set. On the wire and on the chain they are canonical msgpack (flobc.codec):
``[[dtype, [shape...], raw little-endian bytes], ...]``. Decoding treats its input
as hostile: it is bounded, checked field by field before any array is allocated,
and accepted only in its canonical form, so that the digest of decoded weights is
always the hash of the bytes that arrived. Never pickle.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence

import msgpack
import numpy as np

from flobc import codec
from flobc.errors import InputError

ALLOWED_DTYPES = ("float32", "float64", "int32", "int64")
DEFAULT_MAX_TENSORS = 1024
MAX_NDIM = 8

Spec = list[tuple[str, tuple[int, ...]]]


class WeightsError(InputError):
    """Raised when weights cannot be encoded or bytes are not acceptable weights."""


def _wire_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


def encode_weights(ws: Sequence[np.ndarray]) -> bytes:
    """Canonical bytes of ``ws``: same arrays, same bytes, on every machine."""
    entries = []
    for i, w in enumerate(ws):
        if not isinstance(w, np.ndarray):
            raise WeightsError(f"tensor {i}: expected a numpy array, got {type(w).__name__}")
        if w.dtype.name not in ALLOWED_DTYPES:
            raise WeightsError(f"tensor {i}: dtype {w.dtype} is not one of {ALLOWED_DTYPES}")
        if w.ndim > MAX_NDIM:
            raise WeightsError(f"tensor {i}: {w.ndim} dimensions, limit is {MAX_NDIM}")
        raw = np.ascontiguousarray(w, dtype=_wire_dtype(w.dtype.name)).tobytes()
        entries.append([w.dtype.name, [int(d) for d in w.shape], raw])
    return codec.pack(entries)


def _count_tensors(data: bytes) -> int:
    """The length of the outer list, read from its header alone."""
    try:
        return msgpack.Unpacker(io.BytesIO(data), read_size=16).read_array_header()
    except msgpack.OutOfData as exc:
        raise WeightsError("weights are not decodable: no data") from exc
    except (ValueError, msgpack.UnpackException) as exc:
        raise WeightsError("weights must be a list of tensors") from exc


def _unpack(data: bytes, n_tensors: int) -> list:
    """Decode with this schema's limits, tighter than the general codec's: an empty
    list costs ~70 bytes of memory for 1 byte of input, so lists are counted too."""
    lists = 0

    def count(items: list) -> list:
        nonlocal lists
        lists += 1
        if lists > 1 + 2 * n_tensors:  # the outer list, then [dtype, shape, data] and shape
            raise WeightsError(f"weights hold more lists than {n_tensors} tensors need")
        return items

    try:
        return msgpack.unpackb(
            data, raw=False, list_hook=count, strict_map_key=True,
            max_array_len=max(n_tensors, MAX_NDIM, 3), max_map_len=0, max_ext_len=0,
            max_str_len=max(map(len, ALLOWED_DTYPES)), max_bin_len=len(data))
    except WeightsError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WeightsError(f"weights are not decodable: {exc}") from exc


def _check_shape(i: int, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise WeightsError(f"tensor {i}: shape must be a list of at most {MAX_NDIM} sizes")
    for d in shape:
        # bool is an int in Python; msgpack true/false are not sizes.
        if type(d) is not int or d < 0:
            raise WeightsError(f"tensor {i}: shape {shape!r} has a size that is not an int >= 0")
    return tuple(shape)


def _check_entry(i: int, entry: object) -> tuple[str, tuple[int, ...], bytes]:
    if not isinstance(entry, list) or len(entry) != 3:
        raise WeightsError(f"tensor {i}: expected [dtype, shape, data]")
    dtype, shape, raw = entry
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise WeightsError(f"tensor {i}: dtype {dtype!r} is not one of {ALLOWED_DTYPES}")
    dims = _check_shape(i, shape)
    if not isinstance(raw, bytes):
        raise WeightsError(f"tensor {i}: data must be bytes")
    want = math.prod(dims) * np.dtype(dtype).itemsize
    if want != len(raw):
        raise WeightsError(
            f"tensor {i}: shape {dims} of {dtype} needs {want} bytes, got {len(raw)}")
    return dtype, dims, raw


def decode_weights(
    data: bytes,
    *,
    max_bytes: int,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    expected: Spec | None = None,
) -> list[np.ndarray]:
    """Weights from untrusted bytes, or ``WeightsError`` naming what is wrong.

    ``max_bytes`` bounds the input and so every allocation; ``expected`` (the model's
    ``spec``) makes any dtype or shape other than the model's an error.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WeightsError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise WeightsError(f"weights are {len(data)} bytes, limit is {max_bytes}")
    n_tensors = _count_tensors(data)
    if n_tensors > max_tensors:
        raise WeightsError(f"{n_tensors} tensors, limit is {max_tensors}")
    entries = _unpack(data, n_tensors)
    checked = [_check_entry(i, e) for i, e in enumerate(entries)]
    if expected is not None:
        _check_expected([(dtype, dims) for dtype, dims, _ in checked], expected)
    if codec.pack(entries) != data:
        raise WeightsError("weights are not canonically encoded")
    return [np.frombuffer(raw, dtype=_wire_dtype(dtype)).astype(dtype).reshape(dims)
            for dtype, dims, raw in checked]


def _check_expected(got: Spec, expected: Spec) -> None:
    if len(got) != len(expected):
        raise WeightsError(f"{len(got)} tensors, the model has {len(expected)}")
    for i, ((dtype, dims), (want_dtype, want_dims)) in enumerate(zip(got, expected, strict=True)):
        if dtype != want_dtype:
            raise WeightsError(f"tensor {i}: dtype {dtype} does not match the model's {want_dtype}")
        if dims != tuple(want_dims):
            raise WeightsError(
                f"tensor {i}: shape {dims} does not match the model's {tuple(want_dims)}")


def weights_digest(ws: Sequence[np.ndarray]) -> bytes:
    """SHA-256 of the canonical encoding: the identity of a model on the chain."""
    return hashlib.sha256(encode_weights(ws)).digest()


def spec(ws: Sequence[np.ndarray]) -> Spec:
    """(dtype, shape) per tensor: what ``decode_weights(expected=...)`` checks against."""
    return [(w.dtype.name, tuple(int(d) for d in w.shape)) for w in ws]


def all_finite(ws: Sequence[np.ndarray]) -> bool:
    """False if any value is NaN or infinite: such an update must never be aggregated."""
    return all(bool(np.isfinite(w).all()) for w in ws)


def l2_norm(ws: Sequence[np.ndarray]) -> float:
    """Euclidean norm of all values together, accumulated in float64."""
    total = math.fsum(float(np.square(w, dtype=np.float64).sum()) for w in ws)
    return math.sqrt(total)
