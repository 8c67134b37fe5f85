"""The learning side's transactions: how they are built, signed and checked on arrival.

A transaction is canonical msgpack ``[kind, body, signer, signature]``; the signature is
``signer``'s Ed25519 signature of ``pack(["flobc-fl", chain_id, kind, body, signer])``,
so a transaction cannot be moved to another chain or reinterpreted as another kind.
Decoding treats its input as hostile: size first, then shape and bounds of every field,
then canonical form, then the signature, and says what is wrong instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flobc import codec
from flobc.crypto import HASH_SIZE, PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PrivateKey, verify

DOMAIN = "flobc-fl"
MAX_TX_BYTES = 512
"""Above the largest well-formed transaction (a vote, about 220 bytes)."""
MAX_U63 = 2**63 - 1
MAX_NONCE = 2**64 - 1
MAX_SAMPLES = 2**32 - 1
MAX_ACCURACY_MILLI = 1000
SCORE_RANGE = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Register:
    signer: bytes
    nonce: int


@dataclass(frozen=True)
class Update:
    signer: bytes
    round: int
    base_version: int
    blob_hash: bytes
    samples: int
    loss_milli: int
    accuracy_milli: int
    nonce: int


@dataclass(frozen=True)
class Vote:
    signer: bytes
    round: int
    trainer: bytes
    blob_hash: bytes
    accept: bool
    score_milli: int


@dataclass(frozen=True)
class Close:
    signer: bytes
    round: int
    deadline_ms: int


FLTx = Register | Update | Vote | Close


def signing_bytes(chain_id: str, kind: str, body: list[Any], signer: bytes) -> bytes:
    return codec.pack([DOMAIN, chain_id, kind, body, signer])


def _sign(key: PrivateKey, chain_id: str, kind: str, body: list[Any]) -> bytes:
    signature = key.sign(signing_bytes(chain_id, kind, body, key.public_key))
    return codec.pack([kind, body, key.public_key, signature])


def make_register(key: PrivateKey, nonce: int, chain_id: str) -> bytes:
    """A trainer's request to join (admission per genesis)."""
    return _sign(key, chain_id, "register", [nonce])


def make_update(key: PrivateKey, chain_id: str, round: int, base_version: int,
                blob_hash: bytes, samples: int, loss_milli: int, accuracy_milli: int,
                nonce: int) -> bytes:
    """A trainer's update for ``round``: the delta blob's hash and its local metrics."""
    body = [round, base_version, blob_hash, samples, loss_milli, accuracy_milli, nonce]
    return _sign(key, chain_id, "update", body)


def make_vote(key: PrivateKey, chain_id: str, round: int, trainer: bytes, blob_hash: bytes,
              accept: bool, score_milli: int) -> bytes:
    """A validator's verdict on ``trainer``'s update in ``round``."""
    return _sign(key, chain_id, "vote", [round, trainer, blob_hash, accept, score_milli])


def make_close(key: PrivateKey, chain_id: str, round: int, deadline_ms: int) -> bytes:
    """A validator's request to close ``round``, whose deadline is now ``deadline_ms``,
    once that has passed. Naming the deadline makes the close of an extended round a
    new transaction, not a replay of the close that extended it."""
    return _sign(key, chain_id, "close", [round, deadline_ms])


def _int(value: Any, name: str, low: int, high: int) -> str | None:
    # bool is an int in Python; msgpack true/false are not numbers.
    if type(value) is not int or not low <= value <= high:
        return f"{name} must be an integer in {low}..{high}"
    return None


def _key(value: Any, name: str, size: int) -> str | None:
    if not isinstance(value, bytes) or len(value) != size:
        return f"{name} must be {size} bytes"
    return None


def _body(kind: str, body: list[Any], signer: bytes) -> FLTx | str:
    """The typed transaction, or the first field that is out of shape or bounds."""
    if kind == "register":
        if len(body) != 1:
            return "register body must be [nonce]"
        return _int(body[0], "nonce", 0, MAX_NONCE) or Register(signer, body[0])
    if kind == "update":
        if len(body) != 7:
            return ("update body must be [round, base_version, blob_hash, samples, "
                    "loss_milli, accuracy_milli, nonce]")
        rnd, base, blob, samples, loss, acc, nonce = body
        problem = (_int(rnd, "round", 1, MAX_U63) or _int(base, "base_version", 0, MAX_U63)
                   or _key(blob, "blob_hash", HASH_SIZE)
                   or _int(samples, "samples", 1, MAX_SAMPLES)
                   or _int(loss, "loss_milli", 0, MAX_U63)
                   or _int(acc, "accuracy_milli", 0, MAX_ACCURACY_MILLI)
                   or _int(nonce, "nonce", 0, MAX_NONCE))
        return problem or Update(signer, rnd, base, blob, samples, loss, acc, nonce)
    if kind == "vote":
        if len(body) != 5:
            return "vote body must be [round, trainer, blob_hash, accept, score_milli]"
        rnd, trainer, blob, accept, score = body
        problem = (_int(rnd, "round", 1, MAX_U63) or _key(trainer, "trainer", PUBLIC_KEY_SIZE)
                   or _key(blob, "blob_hash", HASH_SIZE)
                   or (None if isinstance(accept, bool) else "accept must be true or false")
                   or _int(score, "score_milli", *SCORE_RANGE))
        return problem or Vote(signer, rnd, trainer, blob, accept, score)
    if kind == "close":
        if len(body) != 2:
            return "close body must be [round, deadline_ms]"
        rnd, deadline = body
        return (_int(rnd, "round", 1, MAX_U63) or _int(deadline, "deadline_ms", 0, MAX_U63)
                or Close(signer, rnd, deadline))
    return f"unknown transaction kind {kind[:20]!r}; kinds are register, update, vote, close"


def decode_tx(tx: bytes, chain_id: str) -> FLTx | str:
    """The transaction, or why it is malformed (size, encoding, fields or signature)."""
    if len(tx) > MAX_TX_BYTES:
        return f"tx is {len(tx)} bytes, limit is {MAX_TX_BYTES}"
    try:
        raw = codec.unpack(tx, MAX_TX_BYTES)
    except codec.DecodeError as exc:
        return f"tx is not valid msgpack: {exc}"
    if not isinstance(raw, list) or len(raw) != 4:
        return "tx must be an array [kind, body, signer, signature]"
    kind, body, signer, signature = raw
    if not isinstance(kind, str):
        return "kind must be a string"
    if not isinstance(body, list):
        return "body must be an array"
    problem = _key(signer, "signer", PUBLIC_KEY_SIZE) or _key(signature, "signature",
                                                              SIGNATURE_SIZE)
    if problem:
        return problem
    parsed = _body(kind, body, signer)
    if isinstance(parsed, str):
        return parsed
    if codec.pack(raw) != tx:
        return "tx is not canonically encoded"
    if not verify(signer, signing_bytes(chain_id, kind, body, signer), signature):
        return "bad signature (or a transaction for another chain)"
    return parsed
