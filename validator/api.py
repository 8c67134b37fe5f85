"""The validator's HTTP API: submit transactions, read blocks, state proofs and status,
the dashboard, and the running application's own endpoints (its ``AppServices``).

Every endpoint is ``async def`` on purpose: they then run on the node's event loop,
the same thread as consensus, so they read the ledger between blocks and never race
the host. Every input is bounded and checked before use; bad input gets a 4xx whose
``detail`` names the problem, never a 500.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from flobc import codec
from flobc.consensus import mempool
from flobc.validator.dashboard_api import dashboard_router
from flobc.validator.http import (
    binary_body,
    decode_batch,
    parse_height,
    parse_hex,
    read_body,
    state_proof,
)
from flobc.validator.services import ApiNode

MAX_PROOF_KEY = 1024
_SLICE = 200
_HASH_HEX = re.compile(r"[0-9a-fA-F]{64}")


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

    @api.get("/txs/{hash_hex}", response_model=None)
    async def get_tx(hash_hex: str) -> dict[str, Any] | JSONResponse:
        """Whether a transaction is committed, pending (in this validator's mempool) or
        unknown here, so a client whose accepted transaction is unknown can resubmit
        it; for a committed one, where it took effect, what executing it returned, and
        the later blocks that included it again (each skipping it as a duplicate)."""
        if not _HASH_HEX.fullmatch(hash_hex):
            raise HTTPException(400, "transaction hash must be 64 hex digits")
        tx_hash = bytes.fromhex(hash_hex)
        location = node.ledger.tx(tx_hash)
        if location is None:
            if tx_hash in node.host.replica.mempool:
                return {"status": "pending"}
            return JSONResponse({"status": "unknown", "detail": "transaction not committed "
                                 "and not pending here"}, status_code=404)
        result = codec.unpack(location.result) if location.result else None  # str | None
        again = [{"height": d.height, "index": d.index}
                 for d in node.ledger.tx_duplicates(tx_hash)]
        return {"status": "committed", "height": location.height, "index": location.index,
                "result": result, "included_again": again}

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

    for router in node.services.routers():
        api.include_router(router)
    api.include_router(dashboard_router(node))
    return api


