"""The dashboard: a page at ``/`` and the one JSON answer it polls, ``/dashboard/state``.

The page is plain HTML, CSS and JavaScript shipped with the package (no build step, no
third-party script), so a validator needs nothing but itself to show it. Everything
it shows is what this validator can honestly know: its own view of consensus, and which
validators it has a live link to and which signed recent commit certificates. The
application adds its own panel's data (``AppServices.dashboard_state``; on a learning
chain the committed rounds, votes, trust and the certified model).

Like every endpoint of the API, the handlers are ``async def`` and run on the node's
event loop between blocks; each answer reads a bounded amount of state.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Response

from flobc.consensus.messages import CommitCertificate
from flobc.validator.services import ApiNode

SIGNER_WINDOW = 32
"""Recent blocks whose commit certificates tell when each validator last signed one."""
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # Nothing but this validator's own files and answers: no CDN, no inline script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def dashboard_router(node: ApiNode) -> APIRouter:
    """The page, its two assets and ``/dashboard/state`` for ``node``."""
    router = APIRouter(tags=["dashboard"])
    files = {name: (resources.files("flobc.validator") / "dashboard" / name).read_bytes()
             for name in ("index.html", *ASSETS)}

    @router.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(files["index.html"], media_type="text/html; charset=utf-8",
                        headers=PAGE_HEADERS)

    @router.get("/dashboard/app.js", include_in_schema=False)
    async def script() -> Response:
        return Response(files["app.js"], media_type=ASSETS["app.js"], headers=PAGE_HEADERS)

    @router.get("/dashboard/style.css", include_in_schema=False)
    async def style() -> Response:
        return Response(files["style.css"], media_type=ASSETS["style.css"],
                        headers=PAGE_HEADERS)

    @router.get("/dashboard/state")
    async def state() -> dict[str, Any]:
        """Everything the dashboard shows except test accuracy (``/fl/evaluations``):
        chain, validators' liveness as seen from here, and on a learning chain rounds,
        votes, trainers with their trust history and the certified model."""
        return {"now_ms": time.time_ns() // 1_000_000, **_chain(node),
                **await node.services.dashboard_state()}

    return router


def _chain(node: ApiNode) -> dict[str, Any]:
    """This validator's view of consensus and of the other validators."""
    status = node.host.status()
    validators = node.host.validators
    height = status["height"]
    connected = set(node.transport.connected_peers())
    last_signed: dict[int, int] = {}
    last_signers: list[int] = []
    for h in range(height, max(height - SIGNER_WINDOW, 0), -1):
        signers = _commit_signers(node.ledger.certificate(h))
        if h == height:
            last_signers = signers
        for replica in signers:
            last_signed.setdefault(replica, h)
    chain = {
        "chain_id": node.genesis.chain_id, "app": node.services.name,
        "index": node.config.index, "n": validators.n, "f": validators.f,
        "quorum": validators.quorum, "height": height, "view": status["view"],
        "primary": status["primary"], "in_view_change": status["in_view_change"],
        "view_changes": status["view_changes"], "stable_checkpoint": status["stable_checkpoint"],
        "mempool_size": status["mempool_size"],
        "last_block_time_ms": status["last_block_time_ms"],
        "last_commit_signers": last_signers}
    rows = [{"index": i, "name": info.name, "public_key": info.public_key.hex(),
             "self": i == node.config.index, "primary": i == status["primary"],
             "connected": i == node.config.index or i in connected,
             "in_last_commit": i in last_signers, "last_signed_height": last_signed.get(i)}
            for i, info in enumerate(node.genesis.validators)]
    return {"chain": chain, "validators": rows}


def _commit_signers(certificate: bytes | None) -> list[int]:
    """Validators whose COMMIT is in a stored certificate (checked when it was stored)."""
    if certificate is None:
        return []
    return sorted(replica for replica, _ in CommitCertificate.decode(certificate).signatures)


