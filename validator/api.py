"""The validator's HTTP API: submit transactions, read blocks, state proofs and status,
and the running application's own endpoints (``/kv`` or the learning ``/fl``).

Every endpoint is ``async def`` on purpose: they then run on the node's event loop,
the same thread as consensus, so they read the ledger between blocks and never race
the host. Every input is bounded and checked before use; bad input gets a 4xx whose
``detail`` names the problem, never a 500.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from flobc import codec
from flobc.config import Genesis, NodeConfig
from flobc.consensus import mempool
from flobc.consensus.application import Application
from flobc.consensus.host import ReplicaHost
from flobc.consensus.transport import Transport
from flobc.validator.fl.app import FLApp
from flobc.validator.fl.voter import Voter
from flobc.validator.metrics import NodeMetrics

MAX_BATCH_TXS = 2000
MAX_HEIGHT = 2**63 - 1
MAX_PROOF_KEY = 1024
_SLICE = 200
_HASH_HEX = re.compile(r"[0-9a-fA-F]{64}")


class ApiNode(Protocol):
    """What the API needs from a running node."""

    config: NodeConfig
    genesis: Genesis
    ledger: Any
    app: Application
    host: ReplicaHost
    transport: Transport
    voter: Voter | None
    """A learning chain's voter (None for other applications)."""
    metrics: NodeMetrics


def create_api(node: ApiNode) -> FastAPI:
    """The FastAPI application serving ``node``."""
    api = FastAPI(title="flobc validator", version="0.1.0")
    tx_limit = min(node.genesis.consensus.max_tx_bytes, node.config.max_request_bytes)
    batch_limit = node.config.max_request_bytes

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"},
                            status_code=422)

    @api.post("/txs", status_code=202, openapi_extra=binary_body("the raw transaction"))
    async def submit_tx(request: Request) -> dict[str, str]:
        """Submit one raw transaction (the request body)."""
        tx = await read_body(request, tx_limit)
        if not tx:
            raise HTTPException(400, "empty body: expected the raw transaction bytes")
        tx_hash, reason = node.host.submit_tx(tx)
        if reason is not None:
            raise HTTPException(503 if reason == mempool.FULL else 400, reason)
        return {"tx_hash": tx_hash.hex()}

    @api.post("/txs/batch", openapi_extra=binary_body("a msgpack array of raw transactions"))
    async def submit_batch(request: Request) -> dict[str, Any]:
        """Submit a msgpack array of raw transactions; one result per transaction."""
        txs = decode_batch(await read_body(request, batch_limit), batch_limit)
        results: list[dict[str, Any]] = []
        for start in range(0, len(txs), _SLICE):
            if start:
                await asyncio.sleep(0)  # let consensus run between slices of signature checks
            results += [{"tx_hash": h.hex(), "error": reason}
                        for h, reason in node.host.submit_txs(txs[start:start + _SLICE])]
        return {"accepted": sum(r["error"] is None for r in results), "results": results}

    @api.get("/txs/{hash_hex}")
    async def get_tx(hash_hex: str) -> dict[str, Any]:
        """Where a committed transaction landed and what executing it returned."""
        if not _HASH_HEX.fullmatch(hash_hex):
            raise HTTPException(400, "transaction hash must be 64 hex digits")
        location = node.ledger.tx(bytes.fromhex(hash_hex))
        if location is None:
            raise HTTPException(404, "transaction not committed (unknown or still pending)")
        result = codec.unpack(location.result) if location.result else None  # str | None
        return {"height": location.height, "index": location.index, "result": result}

    @api.get("/status")
    async def status() -> dict[str, Any]:
        return {**node.host.status(), "chain_id": node.genesis.chain_id,
                "index": node.config.index, "peers_connected": node.transport.connected_peers(),
                "outgoing_frames_dropped": node.transport.dropped_frames()}

    @api.get("/metrics", response_class=Response, responses={200: {"content": {
        "text/plain": {"schema": {"type": "string"}}}}})
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this validator (text exposition format, or OpenMetrics
        when the Accept header asks for it)."""
        body, content_type = node.metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @api.get("/blocks/{height}")
    async def get_block(height: str) -> dict[str, Any]:
        """A committed block with its commit certificate, both hex-encoded."""
        h = parse_height(height)
        meta = node.ledger.meta(h) if h <= node.ledger.height else None
        if meta is None:
            raise HTTPException(404, f"no block at height {h} (height is {node.ledger.height})")
        return {"height": meta.height, "block_hash": meta.block_hash.hex(),
                "prev_hash": meta.prev_hash.hex(), "state_root": meta.state_root.hex(),
                "time_ms": meta.time_ms, "tx_count": meta.tx_count,
                "block": node.ledger.block(h).hex(),
                "certificate": node.ledger.certificate(h).hex()}

    @api.get("/state/proof")
    async def get_state_proof(key: str) -> dict[str, Any]:
        """A key's value and Merkle proof under the latest stable checkpoint's state root."""
        return state_proof(node.host, parse_hex(key, "key", MAX_PROOF_KEY))

    if isinstance(node.app, FLApp):
        # Imported here because the learning endpoints build on this module's helpers.
        from flobc.validator.fl.api import fl_router

        api.include_router(fl_router(node, node.app, node.voter))
    else:
        api.include_router(_kv_router(node))
    from flobc.validator.dashboard_api import dashboard_router

    api.include_router(dashboard_router(node))
    return api


def _kv_router(node: ApiNode) -> APIRouter:
    router = APIRouter()

    @router.get("/kv/{key:path}")
    async def get_kv(key: str) -> dict[str, Any]:
        """The value (hex) stored under a UTF-8 key by the key-value application."""
        try:
            answer = node.app.query("kv", {"key": key}, node.host.committed)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        if answer["value"] is None:
            raise HTTPException(404, f"no value stored under key {key[:80]!r}")
        return answer

    return router


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
