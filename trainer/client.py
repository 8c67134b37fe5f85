"""The trainer's view of the validators: typed calls to the FL API, with failover.

A trainer knows several validators and trusts none of them. A request goes to the
validator that last answered; a connection error, a timeout, a 5xx, an answer over its
size bound or an answer that does not parse moves it to the next one, and after every
validator failed once it backs off exponentially (with jitter, so that many trainers
do not retry in step) and tries them all again, a bounded number of times. A 4xx is
the validator's verdict on the request itself, so it is raised with its ``detail``
instead of being retried elsewhere. Answers are parsed strictly but not believed:
models are checked against certificates in ``flobc.trainer.verify``.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from flobc import codec
from flobc.crypto import HASH_SIZE, PUBLIC_KEY_SIZE
from flobc.errors import TrainerError

log = logging.getLogger("flobc.trainer.client")

T = TypeVar("T")

MAX_JSON_BYTES = 1024 * 1024
REQUEST_SLACK_BYTES = 64 * 1024
MAX_WARNINGS = 8
MAX_WARNING_CHARS = 300
"""A validator's warnings are shown to the user: a few, of bounded length."""
"""What an update's body may add to its blob (the contract's bound: blob + 64 KiB)."""


class ClientError(TrainerError):
    """Base of what talking to validators can raise."""


class ValidatorUnavailable(ClientError):
    """No validator gave a usable answer, after every retry."""


class ValidatorRefused(ClientError):
    """A validator answered 4xx: the request itself is wrong (not retried elsewhere)."""

    def __init__(self, url: str, status: int, detail: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {detail}")
        self.url = url
        self.status = status
        self.detail = detail


class Stopped(ClientError):
    """The trainer is stopping; raised instead of waiting out a back-off."""


class BadAnswer(TrainerError):
    """A validator's answer that is too large, malformed or not what was asked for."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


@dataclass(frozen=True)
class FLStatus:
    round: int
    version: int
    sync: str
    deadline_ms: int
    expected: tuple[bytes, ...]
    model_hash: bytes
    warnings: tuple[str, ...] = ()
    """What the validator sees stalling the chain (older validators send none)."""


@dataclass(frozen=True)
class ModelProof:
    """What ``/fl/models/{v}/proof`` served: unverified bytes for ``verify_state``."""

    key: bytes
    value: bytes
    proof: bytes
    checkpoint: bytes
    """The encoded checkpoint certificate."""


@dataclass(frozen=True)
class TrainerInfo:
    trust_micro: int
    accepted: int
    rejected: int
    excluded: bool


@dataclass(frozen=True)
class RoundUpdate:
    blob_hash: bytes
    status: str


@dataclass(frozen=True)
class RoundInfo:
    round: int
    updates: dict[bytes, RoundUpdate]
    """trainer public key -> its update in the round."""


class ValidatorClient:
    """Typed calls to the FL API of a list of validators, with failover and back-off."""

    def __init__(self, urls: list[str] | tuple[str, ...], *, timeout_s: float = 10.0,
                 passes: int = 3, backoff_s: float = 0.25, max_backoff_s: float = 4.0,
                 max_blob_bytes: int = 4 * 1024 * 1024, stop: threading.Event | None = None,
                 rng: random.Random | None = None) -> None:
        if not urls:
            raise ValueError("a validator client needs at least one URL")
        if passes < 1:
            raise ValueError("passes must be at least 1")
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.timeout_s = timeout_s
        self.passes = passes
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_blob_bytes = max_blob_bytes
        self._stop = stop or threading.Event()
        self._rng = rng or random.Random()
        self._current = 0
        self._http = httpx.Client(timeout=timeout_s)

    @property
    def current(self) -> str:
        """The validator the next request goes to (the last one that answered)."""
        return self.urls[self._current]

    def skip_current(self) -> None:
        """Move on to the next validator, e.g. after it served data that did not verify."""
        self._current = (self._current + 1) % len(self.urls)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ValidatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the FL API ---------------------------------------------------------------------

    def status(self, after_round: int | None = None, wait_ms: int = 0) -> FLStatus | None:
        """The open round and latest version; None before the chain's first block. With
        ``after_round``, the validator holds the answer up to ``wait_ms`` until a later
        round opens."""
        query = "" if after_round is None else f"?after_round={after_round}&wait_ms={wait_ms}"
        return self._call("GET", "/fl/status" + query, _status, allow_404=True)

    def trainers(self) -> dict[bytes, TrainerInfo]:
        return self._call("GET", "/fl/trainers", _trainers)

    def round(self, round_: int) -> RoundInfo | None:
        """Round ``round_`` with its updates; None if the validator has no such round."""
        return self._call("GET", f"/fl/rounds/{round_}", _round, allow_404=True)

    def model_proof(self, version: int) -> ModelProof | None:
        """The proof of version ``version``'s record; None until a checkpoint covers it."""
        return self._call("GET", f"/fl/models/{version}/proof", _proof, allow_404=True)

    def weights(self, version: int) -> bytes | None:
        """Version ``version``'s weights blob (unverified); None if the validator has none."""
        return self._call("GET", f"/fl/models/{version}/weights", _body, allow_404=True,
                          limit=self.max_blob_bytes)

    def update_blob(self, round_: int, trainer: bytes) -> bytes | None:
        """The delta blob (unverified) of ``trainer``'s committed update in ``round_``;
        None if the validator has none."""
        return self._call("GET", f"/fl/rounds/{round_}/updates/{trainer.hex()}/blob", _body,
                          allow_404=True, limit=self.max_blob_bytes)

    def submit_update(self, tx: bytes, blob: bytes) -> str:
        """POST an update transaction with its blob; the hex hash of the accepted tx."""
        return self._call("POST", "/fl/updates", _tx_hash, content=codec.pack([tx, blob]))

    def submit_update_elsewhere(self, tx: bytes, blob: bytes, avoid: str) -> str:
        """POST the same update to a validator other than ``avoid`` (the one that
        accepted it and then lost it), failing over among the others only."""
        others = [u for u in self.urls if u != avoid] or list(self.urls)
        return self._call("POST", "/fl/updates", _tx_hash, content=codec.pack([tx, blob]),
                          among=others)

    def tx_status_at(self, url: str, tx_hash: str) -> str | None:
        """What validator ``url`` says of ``tx_hash`` ("committed", "pending" or
        "unknown"), asked once and not failed over; None if it gives no usable answer."""
        try:
            answer = self._once(url, "GET", f"/txs/{tx_hash}", MAX_JSON_BYTES, None)
            return _tx_status(answer)
        except (httpx.TransportError, BadAnswer) as exc:
            log.debug("validator %s failed on GET /txs/%s: %s", url, tx_hash[:16],
                  str(exc) or type(exc).__name__)
            return None

    def submit_tx(self, tx: bytes) -> str:
        """POST a raw transaction (register); the hex hash of the accepted tx."""
        return self._call("POST", "/txs", _tx_hash, content=tx)

    # --- failover -----------------------------------------------------------------------

    def _call(self, method: str, path: str, parse: Callable[[Answer], T], *,
              allow_404: bool = False, limit: int = MAX_JSON_BYTES,
              content: bytes | None = None, among: list[str] | None = None) -> T:
        problems: dict[str, str] = {}
        delay = self.backoff_s
        for attempt in range(self.passes):
            for _ in self.urls:
                url = self.current
                if among is not None and url not in among:
                    self.skip_current()
                    continue
                try:
                    answer = self._once(url, method, path, limit, content)
                    if answer.status == 404 and allow_404:
                        return None  # type: ignore[return-value]
                    if 400 <= answer.status < 500:
                        raise ValidatorRefused(url, answer.status, _detail(answer))
                    if not 200 <= answer.status < 300:
                        raise BadAnswer(f"unexpected HTTP {answer.status}")
                    return parse(answer)
                except (httpx.TransportError, BadAnswer) as exc:
                    problems[url] = str(exc) or type(exc).__name__
                    log.warning("validator %s failed on %s %s: %s", url, method, path,
                                problems[url])
                    self.skip_current()
            if attempt + 1 < self.passes:
                self._sleep(self._rng.uniform(delay / 2, delay))
                delay = min(2 * delay, self.max_backoff_s)
        tried = "; ".join(f"{url}: {problem}" for url, problem in problems.items())
        raise ValidatorUnavailable(
            f"{method} {path}: no validator answered in {self.passes} passes ({tried})")

    def _once(self, url: str, method: str, path: str, limit: int,
              content: bytes | None) -> Answer:
        """One request to one validator; BadAnswer for what is worth failing over."""
        headers = {"accept-encoding": "identity"}
        if content is not None:
            headers["content-type"] = "application/octet-stream"
        deadline = time.monotonic() + self.timeout_s
        with self._http.stream(method, url + path, content=content,
                               headers=headers) as response:
            if response.headers.get("content-encoding", "identity") != "identity":
                raise BadAnswer("answer is compressed, which was not asked for")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise BadAnswer(f"answer of {declared} bytes exceeds the limit of {limit}")
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > limit:
                    raise BadAnswer(f"answer exceeds the limit of {limit} bytes")
                if time.monotonic() > deadline:
                    raise BadAnswer(f"answer took longer than {self.timeout_s:g} s")
        answer = Answer(response.status_code, bytes(body))
        if answer.status >= 500 or answer.status == 429:
            raise BadAnswer(f"HTTP {answer.status}: {_detail(answer)}")
        return answer

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopped("stopping")


# --- parsing untrusted answers ------------------------------------------------------------


def _detail(answer: Answer) -> str:
    try:
        data = json.loads(answer.body)
    except ValueError:
        return answer.body[:200].decode(errors="replace") or "(empty answer)"
    detail = data.get("detail", data) if isinstance(data, dict) else data
    return str(detail)[:500]


def _json(answer: Answer) -> Any:
    try:
        return json.loads(answer.body)
    except ValueError as exc:
        raise BadAnswer(f"answer is not JSON: {exc}") from exc


def _field(data: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(data, dict) or name not in data:
        raise BadAnswer(f"answer lacks {name!r}")
    value = data[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadAnswer(f"{name!r} in the answer has the wrong type")
    return value


def _nat(data: Any, name: str) -> int:
    value = _field(data, name, int)
    if value < 0:
        raise BadAnswer(f"{name!r} in the answer is not a non-negative integer")
    return value


def _hex(text: Any, name: str, size: int | None = None, *, limit: int = MAX_JSON_BYTES
         ) -> bytes:
    if not isinstance(text, str) or len(text) > 2 * limit:
        raise BadAnswer(f"{name!r} in the answer is not hex")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise BadAnswer(f"{name!r} in the answer is not hex") from exc
    if size is not None and len(raw) != size:
        raise BadAnswer(f"{name!r} in the answer must be {size} bytes")
    return raw


def _status(answer: Answer) -> FLStatus:
    data = _json(answer)
    expected = _field(data, "expected", list)
    return FLStatus(
        round=_nat(data, "round"), version=_nat(data, "version"),
        sync=_field(data, "sync", str), deadline_ms=_nat(data, "deadline_ms"),
        expected=tuple(_hex(k, "expected", PUBLIC_KEY_SIZE) for k in expected),
        model_hash=_hex(_field(data, "model_hash", str), "model_hash", HASH_SIZE),
        warnings=_warnings(data))


def _warnings(data: dict[str, Any]) -> tuple[str, ...]:
    said = data.get("warnings", [])
    if not isinstance(said, list) or not all(isinstance(w, str) for w in said):
        raise BadAnswer("'warnings' in the answer is not a list of strings")
    return tuple(w[:MAX_WARNING_CHARS] for w in said[:MAX_WARNINGS])


def _proof(answer: Answer) -> ModelProof:
    data = _json(answer)
    if not isinstance(data, dict) or data.get("value") is None or data.get("proof") is None:
        raise BadAnswer("the proof answer reports the model record absent")
    checkpoint = _field(data, "checkpoint", dict)
    return ModelProof(
        key=_hex(_field(data, "key", str), "key"),
        value=_hex(_field(data, "value", str), "value"),
        proof=_hex(_field(data, "proof", str), "proof"),
        checkpoint=_hex(_field(checkpoint, "certificate", str), "checkpoint.certificate"))


def _trainers(answer: Answer) -> dict[bytes, TrainerInfo]:
    listed = _field(_json(answer), "trainers", list)
    return {_hex(_field(t, "trainer", str), "trainer", PUBLIC_KEY_SIZE): TrainerInfo(
                _nat(t, "trust_micro"), _nat(t, "accepted"), _nat(t, "rejected"),
                _field(t, "excluded", bool))
            for t in listed}


def _round(answer: Answer) -> RoundInfo:
    data = _json(answer)
    updates = _field(data, "updates", list)
    return RoundInfo(_nat(data, "round"), {
        _hex(_field(u, "trainer", str), "trainer", PUBLIC_KEY_SIZE): RoundUpdate(
            _hex(_field(u, "blob", str), "blob", HASH_SIZE), _field(u, "status", str))
        for u in updates})


def _body(answer: Answer) -> bytes:
    return answer.body


TX_STATUSES = ("committed", "pending", "unknown")


def _tx_status(answer: Answer) -> str:
    if answer.status not in (200, 404):
        raise BadAnswer(f"unexpected HTTP {answer.status}")
    status = _field(_json(answer), "status", str)
    if status not in TX_STATUSES or (answer.status == 404) != (status == "unknown"):
        raise BadAnswer(f"transaction status {status[:40]!r} is not one of {TX_STATUSES}")
    return status


def _tx_hash(answer: Answer) -> str:
    tx_hash = _field(_json(answer), "tx_hash", str)
    _hex(tx_hash, "tx_hash", HASH_SIZE)
    return tx_hash
