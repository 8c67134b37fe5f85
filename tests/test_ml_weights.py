"""Weights <-> bytes: bit-exact round trips, determinism, and hostile input refused
with a WeightsError that names the problem."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flobc import codec
from flobc.ml.weights import (
    ALLOWED_DTYPES,
    WeightsError,
    all_finite,
    decode_weights,
    encode_weights,
    l2_norm,
    spec,
    weights_digest,
)

LIMIT = 1 << 20

tensors = hnp.arrays(
    dtype=st.sampled_from([np.dtype(name) for name in ALLOWED_DTYPES]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)
weight_lists = st.lists(tensors, max_size=6)


def _bits(ws: list[np.ndarray]) -> list[tuple[str, tuple[int, ...], bytes]]:
    return [(w.dtype.str, w.shape, w.tobytes()) for w in ws]


@given(weight_lists)
def test_round_trip_is_bit_exact(ws: list[np.ndarray]) -> None:
    data = encode_weights(ws)
    back = decode_weights(data, max_bytes=LIMIT, expected=spec(ws))
    assert _bits(back) == _bits(ws)  # NaN payloads and -0.0 included
    assert all(w.flags.c_contiguous and w.flags.writeable for w in back)
    assert weights_digest(back) == hashlib.sha256(data).digest()


@given(weight_lists)
def test_encoding_is_deterministic_and_layout_independent(ws: list[np.ndarray]) -> None:
    data = encode_weights(ws)
    assert encode_weights([w.copy() for w in ws]) == data
    # Fortran order and big-endian storage hold the same values, so the same bytes.
    assert encode_weights([np.array(w, order="F") for w in ws]) == data
    assert encode_weights([w.astype(w.dtype.newbyteorder(">")) for w in ws]) == data


def test_encoding_is_little_endian_msgpack() -> None:
    w = np.array([[1, 2, 3]], dtype=np.int32)
    assert codec.unpack(encode_weights([w])) == [
        ["int32", [1, 3], b"\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00"]]


@settings(max_examples=50)
@given(weight_lists.filter(len), st.data())
def test_truncated_input_is_refused(ws: list[np.ndarray], data: st.DataObject) -> None:
    encoded = encode_weights(ws)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(WeightsError):
        decode_weights(encoded[:cut], max_bytes=LIMIT)


@given(weight_lists, st.binary(min_size=1, max_size=64))
def test_extended_input_is_refused(ws: list[np.ndarray], extra: bytes) -> None:
    with pytest.raises(WeightsError):
        decode_weights(encode_weights(ws) + extra, max_bytes=LIMIT)


@settings(max_examples=500)
@given(st.binary(max_size=256))
def test_garbage_raises_only_weights_error(data: bytes) -> None:
    try:
        ws = decode_weights(data, max_bytes=LIMIT)
    except WeightsError:
        return
    assert encode_weights(ws) == data  # whatever is accepted is canonical weights


@given(st.lists(st.sampled_from([
    None, True, 1.5, "float32", b"x", -1, [], [1, 2], {"a": 1}, [True], [-1], [2**40],
]), min_size=3, max_size=3))
def test_malformed_entries_are_refused(entry: list[object]) -> None:
    with pytest.raises(WeightsError):
        decode_weights(codec.pack([entry]), max_bytes=LIMIT)


@pytest.mark.parametrize(("entries", "message"), [
    ({"w": 1}, "must be a list of tensors"),
    ([["float16", [1], b"\0\0"]], "tensor 0: dtype 'float16' is not one of"),
    ([["float32", [2, 2], b"\0" * 12]], "tensor 0: shape (2, 2) of float32 needs 16 bytes, got 12"),
    ([["int64", [1], b"\0" * 8], ["int32", [True], b"\0" * 4]], "tensor 1: shape [True]"),
    ([["int32", [-1], b""]], "tensor 0: shape [-1] has a size that is not an int >= 0"),
    ([["int32", [1] * 9, b"\0" * 4]], "not decodable: 9 exceeds max_array_len(8)"),
    ([["int32", [1] * 9, b"\0" * 4]] * 9, "tensor 0: shape must be a list of at most 8 sizes"),
    (b"\xdc\xff\xff" + b"\x90" * 65535, "65535 tensors, limit is 1024"),
    ([[[[[]]]]], "weights hold more lists than 1 tensors need"),
    ([["int32", [1], "abcd"]], "tensor 0: data must be bytes"),
    ([["int32", [1]]], "tensor 0: expected [dtype, shape, data]"),
    ([["int32", [2**62, 2**62], b""]], f"needs {2**126} bytes, got 0"),
])
def test_errors_name_the_problem(entries: object, message: str) -> None:
    data = entries if isinstance(entries, bytes) else codec.pack(entries)
    with pytest.raises(WeightsError) as info:
        decode_weights(data, max_bytes=LIMIT)
    assert message in str(info.value)


def test_bounds_are_checked_before_decoding() -> None:
    ws = [np.zeros(100, np.float32)] * 3
    data = encode_weights(ws)
    with pytest.raises(WeightsError, match=rf"weights are {len(data)} bytes, limit is 100"):
        decode_weights(data, max_bytes=100)
    with pytest.raises(WeightsError, match="3 tensors, limit is 2"):
        decode_weights(data, max_bytes=LIMIT, max_tensors=2)
    with pytest.raises(WeightsError, match="expected bytes, got str"):
        decode_weights("abc", max_bytes=LIMIT)  # type: ignore[arg-type]


def test_hostile_input_cannot_amplify_memory() -> None:
    # A million empty lists in 1 MB would take ~70 MB as Python objects.
    data = codec.pack([[[]] * 1000] * 1000)
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match="more lists than 1000 tensors need"):
            decode_weights(data, max_bytes=2 * len(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(data)


def test_non_canonical_encoding_is_refused() -> None:
    canonical = encode_weights([np.zeros(3, np.int32)])
    # The same value with the shape's 3 written as a uint16 instead of a fixint.
    padded = canonical.replace(b"\x91\x03", b"\x91\xcd\x00\x03")
    assert padded != canonical and codec.unpack(padded) == codec.unpack(canonical)
    with pytest.raises(WeightsError, match="not canonically encoded"):
        decode_weights(padded, max_bytes=LIMIT)


def test_expected_spec_must_match_exactly() -> None:
    model = [("float32", (10, 10)), ("float32", (10,))]
    good = [np.zeros((10, 10), np.float32), np.zeros(10, np.float32)]
    assert spec(decode_weights(encode_weights(good), max_bytes=LIMIT, expected=model)) == model
    cases = [
        ([good[0]], "1 tensors, the model has 2"),
        ([np.zeros((10, 5), np.float32), good[1]],
         "tensor 0: shape (10, 5) does not match the model's (10, 10)"),
        ([good[0], np.zeros(10, np.float64)],
         "tensor 1: dtype float64 does not match the model's float32"),
    ]
    for ws, message in cases:
        with pytest.raises(WeightsError) as info:
            decode_weights(encode_weights(ws), max_bytes=LIMIT, expected=model)
        assert message in str(info.value)


def test_encode_refuses_what_cannot_travel() -> None:
    with pytest.raises(WeightsError, match="tensor 1: dtype float16 is not one of"):
        encode_weights([np.zeros(1, np.float32), np.zeros(1, np.float16)])
    with pytest.raises(WeightsError, match="tensor 0: expected a numpy array, got list"):
        encode_weights([[1.0, 2.0]])  # type: ignore[list-item]


def test_digest_tells_models_apart() -> None:
    a = [np.zeros(4, np.float32)]
    assert weights_digest(a) == weights_digest([np.zeros(4, np.float32)])
    assert weights_digest(a) != weights_digest([np.zeros(4, np.float64)])
    assert weights_digest(a) != weights_digest([np.zeros((2, 2), np.float32)])
    assert weights_digest(a) != weights_digest([-np.zeros(4, np.float32)])


def test_all_finite() -> None:
    ok = [np.ones(3, np.float32), np.arange(3, dtype=np.int64)]
    assert all_finite(ok) and all_finite([])
    for bad in (np.nan, np.inf, -np.inf):
        assert not all_finite([*ok, np.array([0.0, bad], np.float64)])


def test_l2_norm_accumulates_in_float64() -> None:
    assert l2_norm([np.array([3.0], np.float32), np.array([[4]], np.int32)]) == 5.0
    # float32 squares of 1e20 overflow to inf; float64 accumulation does not.
    assert l2_norm([np.full(4, 1e20, np.float32)]) == pytest.approx(2e20, rel=1e-6)
    assert l2_norm([]) == 0.0
