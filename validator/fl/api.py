"""The learning endpoints of the wire API (docs/fl-protocol.md, Wire API), under ``/fl``.

Like the rest of the API, every handler is ``async def`` and so runs on the node's event
loop between blocks: reads see committed state only, and submitting an update goes
through the same admission as any transaction. A trainer's update arrives as one body,
``[update_tx, blob]``, bounded before it is read and checked before anything is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

from flobc import codec
from flobc.consensus import mempool
from flobc.consensus.host import ReplicaHost
from flobc.crypto import sha256
from flobc.protocol.reputation import MICRO
from flobc.protocol.state import model_key, read_meta, read_model
from flobc.protocol.txs import Update, decode_tx
from flobc.validator.fl.app import FLApp
from flobc.validator.fl.health import learning_health
from flobc.validator.fl.queries import MAX_NUMBER, NotFound, QueryError, number_param
from flobc.validator.fl.voter import SCORES_KEPT, Voter
from flobc.validator.http import binary_body, read_body, state_proof
from flobc.validator.services import NodeParts

ENVELOPE_BYTES = 64 * 1024
"""Room for the transaction and the framing around the blob."""
DEFAULT_EVALUATIONS = 100
MAX_STATUS_WAIT_MS = 5000
"""The longest a ``/fl/status?after_round=`` request is held, well inside the trainers'
10 s request timeout."""


class CommitSignal:
    """Wakes the requests that wait for the chain to move, on each committed block."""

    def __init__(self, host: ReplicaHost) -> None:
        self._event = asyncio.Event()
        host.on_commit(self._committed)

    def _committed(self, _height: int) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        """Until the next commit, or ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)


def fl_router(node: NodeParts, app: FLApp, voter: Voter) -> APIRouter:
    """The ``/fl`` endpoints of a validator running the learning application ``app``;
    ``voter`` supplies its own test-split scores of the model versions."""
    router = APIRouter(prefix="/fl", tags=["federated learning"])
    config = app.config
    body_limit = config.max_blob_bytes + ENVELOPE_BYTES
    chain_id = node.genesis.chain_id
    commits = CommitSignal(node.host)

    def query(path: str, **params: str) -> Any:
        try:
            return app.query(path, params, node.host.committed)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from exc

    @router.post("/updates", status_code=202,
                 openapi_extra=binary_body("canonical msgpack [update_tx, blob]"))
    async def submit_update(request: Request) -> dict[str, str]:
        """Submit a trainer's update transaction with its delta blob."""
        tx, blob = decode_envelope(await read_body(request, body_limit), body_limit)
        if len(blob) > config.max_blob_bytes:
            raise HTTPException(413, f"the update blob is {len(blob)} bytes, over the chain's "
                                     f"app.max_blob_bytes {config.max_blob_bytes}")
        parsed = decode_tx(tx, chain_id)
        if isinstance(parsed, str):
            raise HTTPException(400, f"update_tx: {parsed}")
        if not isinstance(parsed, Update):
            raise HTTPException(400, f"update_tx is a {type(parsed).__name__.lower()} "
                                     "transaction: send it to POST /txs")
        if sha256(blob) != parsed.blob_hash:
            raise HTTPException(400, f"the blob's SHA-256 {sha256(blob).hex()} is not the "
                                     f"update's blob_hash {parsed.blob_hash.hex()}")
        [(tx_hash, reason)] = node.host.submit_txs([tx], [blob])
        if reason is not None:
            raise HTTPException(503 if reason == mempool.FULL else 400, reason)
        return {"tx_hash": tx_hash.hex()}

    @router.get("/status")
    async def status(after_round: str | None = None,
                     wait_ms: str | None = None) -> dict[str, Any]:
        """The open round, the latest version and its hash, and what stalls learning
        (``health``, with a sentence per condition in ``warnings``). With ``after_round`` (and
        ``wait_ms``), the answer waits up to ``wait_ms`` for a round later than that to
        open: a trainer learns of a new round as soon as it commits, without polling."""
        params = {name: value for name, value in (("after_round", after_round),
                                                   ("wait_ms", wait_ms)) if value is not None}
        try:
            after = number_param(params, "after_round", 0, MAX_NUMBER, -1)
            wait = number_param(params, "wait_ms", 0, MAX_STATUS_WAIT_MS, 0)
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from exc
        until = time.monotonic() + wait / 1000
        while ((meta := read_meta(node.host.committed)) is None or meta.round <= after) and (
                left := until - time.monotonic()) > 0:
            await commits.wait(left)
        state = node.host.committed
        meta = read_meta(state)
        model = read_model(state, meta.version) if meta is not None else None
        if meta is None or model is None:
            raise HTTPException(404, "the chain has not executed its first block yet")
        health = learning_health(node.host, voter)
        return {"round": meta.round, "version": meta.version, "sync": config.sync,
                "deadline_ms": meta.deadline_ms, "expected": [t.hex() for t in meta.expected],
                "model_hash": model.hash.hex(), "health": health.fields(),
                "warnings": health.warnings()}

    @router.get("/models/latest")
    async def latest_model() -> dict[str, Any]:
        """The latest version's record."""
        return query("model_latest")

    @router.get("/models/{version}")
    async def model(version: str) -> dict[str, Any]:
        """A version's record: its weights' hash, round, height and the updates in it."""
        return query("model", version=version)

    def stored_blob(digest: str, header: str, missing: str) -> Response:
        """The ledger's blob of hex SHA-256 ``digest``, its hash in ``header``; 404
        saying ``missing`` when this validator does not store it."""
        blob = node.ledger.blob(bytes.fromhex(digest))
        if blob is None:
            raise HTTPException(404, missing)
        return Response(blob, media_type="application/octet-stream",
                        headers={header: digest})

    @router.get("/models/{version}/weights", response_class=Response,
                responses={200: {"content": {"application/octet-stream": {}}}})
    async def weights(version: str) -> Response:
        """A version's encoded weights; ``X-Model-Hash`` is their SHA-256."""
        record = query("model", version=version)
        return stored_blob(record["hash"], "X-Model-Hash", f"the weights of version "
                           f"{record['version']} are not stored on this validator")

    @router.get("/models/{version}/proof")
    async def proof(version: str) -> dict[str, Any]:
        """A version's record with its Merkle proof under the latest stable checkpoint."""
        record = query("model", version=version)
        answer = state_proof(node.host, model_key(record["version"]))
        if answer["value"] is None:
            raise HTTPException(404, f"version {record['version']} is not yet covered by a "
                                     f"stable checkpoint (the latest is at height "
                                     f"{answer['checkpoint']['seq']})")
        return answer

    @router.get("/rounds")
    async def rounds(limit: str | None = None) -> dict[str, Any]:
        """The open round and those before it, newest first, with update counts."""
        return query("rounds", **({} if limit is None else {"limit": limit}))

    @router.get("/rounds/{round_}")
    async def round_detail(round_: str) -> dict[str, Any]:
        """A round's updates, their statuses and every validator's vote."""
        return query("round", round=round_)

    @router.get("/rounds/{round_}/updates/{trainer}/blob", response_class=Response,
                responses={200: {"content": {"application/octet-stream": {}}}})
    async def update_blob(round_: str, trainer: str) -> Response:
        """The delta blob of a trainer's committed update in a round (update blobs are as
        public as the chain that names them); ``X-Blob-Hash`` is its SHA-256."""
        record = query("round", round=round_)
        entry = next((u for u in record["updates"] if u["trainer"] == trainer.lower()), None)
        if entry is None:
            raise HTTPException(404, f"no update from trainer {trainer[:64]!r} in round "
                                     f"{record['round']}")
        return stored_blob(entry["blob"], "X-Blob-Hash",
                           f"the blob {entry['blob']} is not stored on this validator")

    @router.get("/trainers")
    async def trainers() -> dict[str, Any]:
        """Every registered trainer with its trust and its record."""
        answer = query("trainers")
        return {"trainers": [{"trust": t["trust_micro"] / MICRO, **t}
                             for t in answer["trainers"]]}

    @router.get("/evaluations")
    async def evaluations(limit: str | None = None) -> dict[str, Any]:
        """This validator's own scores of the latest model versions on the dataset's test
        split, oldest first (for reporting: votes never use the test split). The newest
        versions may be missing for a moment while they are being scored."""
        try:
            count = number_param({} if limit is None else {"limit": limit}, "limit", 1,
                                 SCORES_KEPT, DEFAULT_EVALUATIONS)
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from exc
        scores = voter.test_scores()[-count:]
        return {"split": "test", "versions": [
            {"version": v, **{name: value if math.isfinite(value) else None
                              for name, value in s.metrics.items()}} for v, s in scores]}

    return router


def decode_envelope(body: bytes, limit: int) -> tuple[bytes, bytes]:
    """``[update_tx, blob]`` from a request body, or a 4xx naming what is wrong."""
    if not body:
        raise HTTPException(400, "empty body: expected canonical msgpack [update_tx, blob]")
    try:
        value = codec.unpack(body, limit)
    except codec.DecodeError as exc:
        raise HTTPException(400, f"body is not valid msgpack: {exc}") from exc
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, bytes) and v for v in value)):
        raise HTTPException(400, "body must be a msgpack array [update_tx, blob] of two "
                                 "non-empty byte strings")
    if codec.pack(value) != body:
        raise HTTPException(400, "body is not canonically encoded msgpack")
    return value[0], value[1]
