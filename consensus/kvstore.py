"""A signed key-value store: the smallest real application consensus can run.

It exists to test and benchmark consensus without the learning side. A transaction is
the canonical msgpack array ``[public_key, nonce, key, value, signature]`` where the
signature covers ``pack(["kv", public_key, nonce, key, value])``. Each (public key,
nonce) pair can be used once, in any order, so that a replayed transaction is refused
while independent clients (or one client submitting concurrently) never wait on each
other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flobc import codec
from flobc.consensus.application import StateReader, StateWriter
from flobc.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PrivateKey, verify

MAX_KEY = 256
MAX_VALUE = 4096
MAX_NONCE = 2**64 - 1
MAX_TX_BYTES = 4608
"""Above the largest well-formed transaction (about 4.5 KiB), so size is checked first."""

KV_PREFIX = b"kv/"
NONCE_PREFIX = b"kv-nonce/"


@dataclass(frozen=True)
class KVTx:
    public_key: bytes
    nonce: int
    key: bytes
    value: bytes
    signature: bytes


def signing_bytes(public_key: bytes, nonce: int, key: bytes, value: bytes) -> bytes:
    return codec.pack(["kv", public_key, nonce, key, value])


def make_tx(key: PrivateKey, nonce: int, k: bytes, v: bytes) -> bytes:
    """A signed transaction setting ``k`` to ``v``, as a client would build it."""
    signature = key.sign(signing_bytes(key.public_key, nonce, k, v))
    return codec.pack([key.public_key, nonce, k, v, signature])


def decode_tx(tx: bytes) -> KVTx | str:
    """The transaction, or why it is malformed (size, encoding, shape or signature)."""
    if len(tx) > MAX_TX_BYTES:
        return f"tx is {len(tx)} bytes, limit is {MAX_TX_BYTES}"
    try:
        raw = codec.unpack(tx, MAX_TX_BYTES)
    except codec.DecodeError as exc:
        return f"tx is not valid msgpack: {exc}"
    if not isinstance(raw, list) or len(raw) != 5:
        return "tx must be an array [public_key, nonce, key, value, signature]"
    public_key, nonce, key, value, signature = raw
    problem = _field_problem(public_key, nonce, key, value, signature)
    if problem:
        return problem
    if codec.pack(raw) != tx:
        return "tx is not canonically encoded"
    if not verify(public_key, signing_bytes(public_key, nonce, key, value), signature):
        return "bad signature"
    return KVTx(public_key, nonce, key, value, signature)


def _field_problem(public_key: Any, nonce: Any, key: Any, value: Any,
                   signature: Any) -> str | None:
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        return f"public_key must be {PUBLIC_KEY_SIZE} bytes"
    if type(nonce) is not int or not 0 <= nonce <= MAX_NONCE:
        return "nonce must be an integer in 0..2**64-1"
    if not isinstance(key, bytes):
        return "key must be bytes"
    if not 0 < len(key) <= MAX_KEY:
        return f"key is {len(key)} bytes, must be 1..{MAX_KEY}"
    if not isinstance(value, bytes):
        return "value must be bytes"
    if len(value) > MAX_VALUE:
        return f"value is {len(value)} bytes, limit is {MAX_VALUE}"
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        return f"signature must be {SIGNATURE_SIZE} bytes"
    return None


def _nonce_key(tx: KVTx) -> bytes:
    return NONCE_PREFIX + tx.public_key + tx.nonce.to_bytes(8, "big")


class KVStore:
    """The key-value application (implements consensus.application.Application)."""

    max_blob_bytes = 0

    def required_blobs(self, tx: bytes) -> list[bytes]:
        return []

    def check_tx(self, tx: bytes, state: StateReader) -> str | None:
        parsed = decode_tx(tx)
        if isinstance(parsed, str):
            return parsed
        return _replay_problem(parsed, state)

    def execute_block(self, height: int, time_ms: int, txs: Sequence[bytes],
                      state: StateWriter) -> list[str | None]:
        results: list[str | None] = []
        for tx in txs:
            parsed = decode_tx(tx)
            if isinstance(parsed, str):
                results.append(parsed)
                continue
            problem = _replay_problem(parsed, state)
            if problem is None:
                state.put(_nonce_key(parsed), b"")
                state.put(KV_PREFIX + parsed.key, parsed.value)
            results.append(problem)
        return results

    def query(self, path: str, params: dict[str, str], state: StateReader) -> Any:
        """``kv`` with ``{"key": text}``: the value (hex) stored under the UTF-8 key."""
        if path != "kv":
            raise ValueError(f"unknown query {path[:40]!r}; the kv store answers 'kv'")
        if "key" not in params:
            raise ValueError("query 'kv' needs a 'key' parameter")
        try:
            key = params["key"].encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("key is not valid UTF-8 text") from exc
        if not 0 < len(key) <= MAX_KEY:
            raise ValueError(f"key is {len(key)} bytes, must be 1..{MAX_KEY}")
        value = state.get(KV_PREFIX + key)
        return {"key": params["key"], "value": None if value is None else value.hex()}


def _replay_problem(tx: KVTx, state: StateReader) -> str | None:
    if state.get(_nonce_key(tx)) is not None:
        return f"nonce {tx.nonce} already used by this public key (replayed tx)"
    return None
