"""Helpers shared by the node's HTTP routers: bounded bodies, parameters, state proofs.

Every input is bounded and checked before use; bad input gets a 4xx whose ``detail``
names the problem, never a 500.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect

from flobc import codec
from flobc.consensus.host import ReplicaHost

MAX_BATCH_TXS = 2000
MAX_HEIGHT = 2**63 - 1


def state_proof(host: ReplicaHost, key: bytes) -> dict[str, Any]:
    """``key``'s value and Merkle proof under the latest stable checkpoint's state root
    (value and proof None when the key is absent there); 404 before the first one."""
    found = host.proof_snapshot()
    if found is None:
        raise HTTPException(404, "no stable checkpoint yet")
    seq, certificate, snapshot = found
    value = snapshot.get(key)
    proof = snapshot.prove(key)
    return {"key": key.hex(), "value": None if value is None else value.hex(),
            "proof": None if proof is None else proof.encode().hex(),
            "checkpoint": {"seq": seq, "state_root": snapshot.root.hex(),
                           "certificate": certificate.hex()}}


def binary_body(description: str) -> dict[str, Any]:
    """OpenAPI for a raw body, which the endpoint reads itself to bound its size."""
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise HTTPException(400, "Content-Length is not a number")
        if len(declared) > 19 or int(declared) > limit:
            raise HTTPException(413, f"body of {declared[:20]} bytes exceeds the limit of "
                                     f"{limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
    except ClientDisconnect as exc:
        raise HTTPException(400, "client disconnected while sending the body") from exc
    return bytes(body)


def decode_batch(body: bytes, limit: int) -> list[bytes]:
    """A batch body: a msgpack array of at most MAX_BATCH_TXS byte strings."""
    try:
        txs = codec.unpack(body, limit)
    except codec.DecodeError as exc:
        raise HTTPException(400, f"batch is not valid msgpack: {exc}") from exc
    if not isinstance(txs, list) or not all(isinstance(tx, bytes) and tx for tx in txs):
        raise HTTPException(400, "batch must be a msgpack array of non-empty byte strings")
    if len(txs) > MAX_BATCH_TXS:
        raise HTTPException(413, f"batch of {len(txs)} transactions exceeds the limit of "
                                 f"{MAX_BATCH_TXS}")
    return txs


def parse_height(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or int(text) > MAX_HEIGHT:
        raise HTTPException(422, f"height must be an integer in 0..{MAX_HEIGHT}")
    return int(text)


def parse_hex(text: str, name: str, max_bytes: int) -> bytes:
    if len(text) > 2 * max_bytes:
        raise HTTPException(400, f"{name} exceeds {max_bytes} bytes")
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise HTTPException(400, f"{name} is not hex") from exc
    if not value:
        raise HTTPException(400, f"{name} must not be empty")
    return value
