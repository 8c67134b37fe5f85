"""An accepted update that its validator lost is resubmitted, as the same signed bytes,
to another validator; one still held somewhere is never sent again. Validators are real
HTTP servers on loopback that answer ``GET /txs/{hash}`` as the API does."""

from __future__ import annotations

import random
import threading

from loopback_http import Reply, Request, dead_url, json_reply

from flobc import codec
from flobc.trainer.client import ValidatorClient
from flobc.trainer.resubmit import see_committed

TX, BLOB = b"signed update tx", b"\x00the delta blob"
TX_HASH = "cd" * 32
BODY = codec.pack([TX, BLOB])
FAST = 0.2
"""The resubmission wait in these tests (the trainer's is RESUBMIT_AFTER_S)."""


class Validator:
    """What one validator knows of the update: nothing, pending or committed; a POST of
    the update makes it pending, and ``commit_after`` status questions later committed."""

    def __init__(self, state: str = "unknown", commit_after: int | None = None) -> None:
        self.state = state
        self.commit_after = commit_after
        self.asked = 0

    def __call__(self, request: Request) -> Reply:
        if request.method == "POST" and request.path == "/fl/updates":
            self.state = "pending"
            return json_reply(202, {"tx_hash": TX_HASH})
        if request.path == f"/txs/{TX_HASH}":
            self.asked += 1
            if self.commit_after is not None and self.state == "pending":
                self.commit_after -= 1
                if self.commit_after <= 0:
                    self.state = "committed"
            if self.state == "unknown":
                return json_reply(404, {"status": "unknown", "detail": "not here"})
            return json_reply(200, {"status": self.state})
        return json_reply(404, {"detail": f"no {request.path}"})


def posts(server) -> list[bytes]:
    return [r.body for r in server.requests if r.method == "POST"]


def open_for(checks: int):
    """A round that closes after ``checks`` questions about it (the bound of each test)."""
    left = iter(range(checks))
    return lambda: next(left, None) is not None


def guard(client: ValidatorClient, accepted_by: str, round_open=None) -> bool:
    return see_committed(client, TX, BLOB, TX_HASH, accepted_by,
                         round_open or open_for(40), threading.Event(), random.Random(1),
                         resubmit_after_s=FAST)


def client(*urls: str) -> ValidatorClient:
    return ValidatorClient(list(urls), passes=1, backoff_s=0.01, timeout_s=5.0)


def test_an_update_lost_by_a_killed_validator_is_resent_once_as_the_same_bytes(serve):
    other = serve(Validator(commit_after=2))
    third = serve(Validator(commit_after=2))
    killed = dead_url()  # accepted the update, then died before gossiping it
    with client(killed, other.url, third.url) as c:
        assert guard(c, killed)
    sent = posts(other) + posts(third)
    assert sent == [BODY]  # the same tx and blob, to one validator, once


def test_an_update_its_restarted_validator_forgot_is_resent_elsewhere(serve):
    forgot = serve(Validator("unknown"))
    other = serve(Validator(commit_after=2))
    with client(forgot.url, other.url) as c:
        assert guard(c, forgot.url)
    assert posts(forgot) == []
    assert posts(other) == [BODY]


def test_an_update_still_pending_somewhere_is_not_sent_again(serve):
    holder = serve(Validator("pending", commit_after=5))
    other = serve(Validator("unknown"))
    with client(holder.url, other.url) as c:
        assert guard(c, holder.url)
    assert posts(holder) == posts(other) == []


def test_an_update_gossiped_before_its_validator_died_is_not_sent_again(serve):
    gossiped = serve(Validator("pending", commit_after=5))
    with client(dead_url(), gossiped.url) as c:
        assert guard(c, c.urls[0])
    assert posts(gossiped) == []


def test_nothing_is_resent_once_the_round_closed(serve):
    other = serve(Validator("unknown"))
    with client(dead_url(), other.url) as c:
        assert not guard(c, c.urls[0], round_open=lambda: False)
    assert posts(other) == []
