"""The trainer's validator client against real HTTP servers on loopback: failover past
dead, failing, slow, oversized and malformed validators; 4xx surfaced, not retried."""

from __future__ import annotations

import threading
import time

import pytest
from loopback_http import (
    Reply,
    Request,
    bytes_reply,
    dead_url,
    json_reply,
)

from flobc import codec
from flobc.trainer.client import (
    FLStatus,
    Stopped,
    ValidatorClient,
    ValidatorRefused,
    ValidatorUnavailable,
)

TRAINER = bytes(range(32))
MODEL_HASH = bytes(range(32, 64))
STATUS = {"round": 3, "version": 2, "sync": "bsp", "deadline_ms": 1_700_000_060_000,
          "expected": [TRAINER.hex()], "model_hash": MODEL_HASH.hex()}
TX_HASH = "ab" * 32


def good(request: Request) -> Reply:
    """A validator that answers as the contract says."""
    if request.path == "/fl/status":
        return json_reply(200, STATUS)
    if request.path in ("/txs", "/fl/updates"):
        return json_reply(202, {"tx_hash": TX_HASH})
    if request.path == "/fl/rounds/3":
        return json_reply(200, {"round": 3, "open": True, "updates": [
            {"trainer": TRAINER.hex(), "blob": MODEL_HASH.hex(), "status": "pending"}]})
    if request.path == "/fl/trainers":
        return json_reply(200, {"trainers": [
            {"trainer": TRAINER.hex(), "trust_micro": 550_000, "share_micro": 1_000_000,
             "registered_round": 1, "accepted": 1, "rejected": 0, "excluded": False}]})
    return json_reply(404, {"detail": f"no {request.path}"})


def failing(_: Request) -> Reply:
    return json_reply(500, {"detail": "internal trouble"})


def client(*urls: str, **kw: object) -> ValidatorClient:
    options = {"passes": 1, "backoff_s": 0.01, "timeout_s": 5.0, **kw}
    return ValidatorClient(list(urls), **options)  # type: ignore[arg-type]


def test_fails_over_past_dead_and_failing_validators_and_sticks_to_the_good_one(serve):
    bad, ok = serve(failing), serve(good)
    with client(dead_url(), bad.url, ok.url) as c:
        status = c.status()
        assert status == FLStatus(3, 2, "bsp", 1_700_000_060_000, (TRAINER,), MODEL_HASH)
        assert c.current == ok.url
        assert c.trainers()[TRAINER].trust_micro == 550_000
    assert bad.paths() == ["/fl/status"]
    assert ok.paths() == ["/fl/status", "/fl/trainers"]


def test_a_4xx_is_surfaced_with_its_detail_and_not_retried(serve):
    refusing = serve(lambda _: json_reply(400, {"detail": "round 3 is closed"}))
    ok = serve(good)
    with client(refusing.url, ok.url, passes=3) as c, \
            pytest.raises(ValidatorRefused) as info:
        c.submit_tx(b"a register transaction")
    assert info.value.status == 400
    assert info.value.detail == "round 3 is closed"
    assert info.value.url == refusing.url
    assert len(refusing.requests) == 1
    assert ok.requests == []


def test_every_validator_failing_raises_after_bounded_passes_with_back_off(serve):
    bad, dead = serve(failing), dead_url()
    start = time.monotonic()
    with client(dead, bad.url, passes=3, backoff_s=0.1) as c, \
            pytest.raises(ValidatorUnavailable) as info:
        c.status()
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "in 3 passes" in message
    assert dead in message and f"{bad.url}: HTTP 500: internal trouble" in message
    assert len(bad.requests) == 3
    assert elapsed >= 0.05 + 0.1  # two back-offs, each at least half its delay


def test_a_stop_interrupts_the_back_off(serve):
    stop = threading.Event()
    stop.set()
    with client(dead_url(), passes=5, backoff_s=30.0, stop=stop) as c, \
            pytest.raises(Stopped):
        c.status()


def test_update_goes_as_canonical_msgpack_of_tx_and_blob(serve):
    ok = serve(good)
    with client(ok.url) as c:
        assert c.submit_update(b"tx-bytes", b"\x00blob") == TX_HASH
    assert ok.requests[0].method == "POST"
    assert ok.requests[0].body == codec.pack([b"tx-bytes", b"\x00blob"])


def test_404_means_absent_where_absence_is_an_answer(serve):
    ok = serve(good)
    with client(ok.url) as c:
        assert c.model_proof(9) is None
        assert c.weights(9) is None
        assert c.round(3).updates[TRAINER].status == "pending"


@pytest.mark.parametrize("declared", [None, -1], ids=["content-length", "close-delimited"])
def test_answers_are_bounded_in_size(serve, declared):
    limit = 1000
    exact = serve(lambda _: bytes_reply(b"x" * limit, declared=declared))
    over = serve(lambda _: bytes_reply(b"x" * (limit + 1), declared=declared))
    with client(exact.url, max_blob_bytes=limit) as c:
        assert c.weights(1) == b"x" * limit
    with client(over.url, max_blob_bytes=limit) as c, \
            pytest.raises(ValidatorUnavailable, match="exceeds the limit of 1000"):
        c.weights(1)


def test_a_huge_declared_answer_is_refused_before_reading_it_and_failed_over(serve):
    huge = serve(lambda _: bytes_reply(b"x" * 10, declared=10**12))
    ok = serve(lambda _: bytes_reply(b"weights"))
    with client(huge.url, ok.url) as c:
        assert c.weights(1) == b"weights"
        assert c.current == ok.url


def test_a_validator_that_does_not_answer_in_time_is_failed_over(serve):
    def hang(_: Request) -> Reply:
        hung.release.wait(30)
        return json_reply(200, STATUS)
    hung = serve(hang)
    ok = serve(good)
    start = time.monotonic()
    with client(hung.url, ok.url, timeout_s=0.3) as c:
        assert c.status().round == 3
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("answer", [
    (200, {"Content-Length": "7"}, b"not js!"),
    json_reply(200, {**STATUS, "round": -1}),
    json_reply(200, {**STATUS, "round": True}),
    json_reply(200, {**STATUS, "model_hash": "zz"}),
    json_reply(200, {**STATUS, "expected": ["00" * 31]}),
    json_reply(200, [STATUS]),
    json_reply(302, {}),
], ids=["not-json", "negative", "bool", "bad-hex", "short-key", "not-object", "redirect"])
def test_a_malformed_answer_is_failed_over(serve, answer):
    broken = serve(lambda _: answer)
    ok = serve(good)
    with client(broken.url, ok.url) as c:
        assert c.status().round == 3
    assert len(broken.requests) == 1


def test_a_malformed_answer_from_the_only_validator_says_what_is_wrong(serve):
    broken = serve(lambda _: json_reply(200, {**STATUS, "model_hash": "zz"}))
    with client(broken.url) as c, \
            pytest.raises(ValidatorUnavailable, match="'model_hash' in the answer is not hex"):
        c.status()


def test_a_compressed_answer_is_refused(serve):
    gz = serve(lambda _: (200, {"Content-Encoding": "gzip", "Content-Length": "3"}, b"abc"))
    with client(gz.url) as c, pytest.raises(ValidatorUnavailable, match="compressed"):
        c.weights(1)
