"""Canonical msgpack encoding.

What is signed is the exact bytes that are hashed, so encoding must be canonical:
maps are written with their keys sorted, integers in their shortest form, bytes as
msgpack bin and text as str. Decoding is bounded so that a hostile frame cannot make
us allocate more than its own size allows.
"""

from __future__ import annotations

from typing import Any

import msgpack

from flobc.errors import InputError

MAX_DEPTH = 32


class DecodeError(InputError):
    """Raised when bytes are not a valid canonical-codec value."""


_CONTAINERS = (dict, list, tuple)


def _canonical(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply to encode")
    if isinstance(value, dict):
        return {k: _canonical(value[k], depth + 1) for k in sorted(value)}
    if isinstance(value, list | tuple):
        if not any(isinstance(v, _CONTAINERS) for v in value):
            return value  # flat: nothing to reorder (msgpack writes tuples as arrays)
        return [_canonical(v, depth + 1) for v in value]
    return value


def pack(value: Any) -> bytes:
    """Encode ``value`` canonically (sorted map keys, tuples as arrays)."""
    return msgpack.packb(_canonical(value), use_bin_type=True)


def unpack(data: bytes, max_size: int = 16 * 1024 * 1024) -> Any:
    """Decode one value, refusing oversized input, trailing bytes and non-str map keys."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise DecodeError(f"encoded value is {len(data)} bytes, limit is {max_size}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_size,
            max_str_len=max_size,
            max_array_len=max_size,
            max_map_len=max_size,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from exc
