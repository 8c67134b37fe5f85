"""The API's connection guard: admission per client address and request deadlines.

uvicorn alone counts every open connection against one limit and never closes a
connection that has not sent a request, so idle or slow clients could hold the API shut.
Here each connection needs a slot from an :class:`Admission` (a share per address, room
kept for known addresses) and is closed with a 408 when its request headers, or its
body, do not arrive in time; a refused connection gets a 503 naming the limit.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from flobc.admission import Admission, Refused, Slot, host_of

log = logging.getLogger("flobc.api")


@dataclass(frozen=True)
class Deadlines:
    header_s: float
    """From connection (or the previous response) to complete request headers."""
    body_s: float
    """From complete headers to the end of the body."""


def guarded_protocol(admission: Admission, deadlines: Deadlines) -> Callable[..., H11Protocol]:
    """The protocol factory to give uvicorn as ``http``."""
    return functools.partial(GuardedH11Protocol, admission=admission, deadlines=deadlines)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol holding an admission slot and a request deadline."""

    def __init__(self, *args: Any, admission: Admission, deadlines: Deadlines,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admission = admission
        self._deadlines = deadlines
        self._slot: Slot | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        try:
            self._slot = self._admission.admit(host_of(transport.get_extra_info("peername")))
        except Refused as exc:
            log.debug("refused API connection from %s: %s", self.client, exc)
            self._close_with(503, f"server busy: {exc}")
            return
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._slot is not None:
            self._slot.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        """Arm the deadline for what the client owes now: headers, a body, or nothing."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is self._waiting_for:
            return
        self._cancel_deadline()
        self._waiting_for = state
        if state is h11.IDLE:
            self._deadline = self.loop.call_later(
                self._deadlines.header_s, self._expire,
                f"request headers not received within {self._deadlines.header_s * 1000:.0f} ms")
        elif state is h11.SEND_BODY:
            self._deadline = self.loop.call_later(
                self._deadlines.body_s, self._expire,
                f"request body not received within {self._deadlines.body_s * 1000:.0f} ms")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, reason: str) -> None:
        self._deadline = None
        log.debug("closing API connection from %s: %s", self.client, reason)
        if self.cycle is None or not self.cycle.response_started:
            self._close_with(408, reason)
        else:
            self.transport.close()

    def _close_with(self, status: int, detail: str) -> None:
        """Answer ``status`` outside h11 (no request may have been read) and close."""
        body = json.dumps({"detail": detail}).encode()
        phrase = {408: "Request Timeout", 503: "Service Unavailable"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, phrase.encode(), len(body), body))
        self.transport.close()
