"""Evaluating updates off-chain, in a long-lived worker process that alone holds TensorFlow.

TensorFlow is slow to import, large, and has no place in the validator's main process,
where consensus runs: the worker imports it once, builds the model, loads this
validator's share of the hold-out data and the test split, then answers one request at
a time: an update's evaluation on the hold-out shard (for votes), or a committed model's
score on the test split (for reporting only: no vote depends on it). It is started with
the ``spawn`` context (no forked copy of the node's event loop, sockets or LevelDB
handles), gets its settings and every request as msgpack bytes over a Pipe, and never
unpickles a message. If it dies or hangs, the next request starts a new one; if the
node dies, the worker dies with it.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from flobc import codec
from flobc.errors import ValidatorError
from flobc.protocol.validation import Evaluation

log = logging.getLogger("flobc.evaluator")

READY_TIMEOUT_S = 600.0
"""Importing TensorFlow and building the model: seconds alone, minutes on a busy host."""
REQUEST_TIMEOUT_S = 300.0
STOP_GRACE_S = 5.0
MAX_REPLY_BYTES = 64 * 1024
SETTINGS_BYTES = 64 * 1024


class EvaluatorError(ValidatorError, RuntimeError):
    """An evaluation that could not be done (the worker failed or refused the input)."""


@dataclass(frozen=True)
class EvaluatorSettings:
    """What the worker builds: the genesis model and this validator's hold-out shard."""

    model: str
    seed: int
    dataset: str
    shard_index: int
    shard_count: int
    max_blob_bytes: int
    dataset_file: str | None = None
    """The node's copy of the dataset when genesis names ``dataset = "file"``."""


@dataclass(frozen=True)
class Score:
    """Loss and accuracy of one model on the test split."""

    loss: float
    accuracy: float


class _WorkerLost(Exception):
    """The worker exited, closed the pipe or did not answer in time."""


class Evaluator:
    """The parent's handle on the worker. ``evaluate`` blocks, so call it from a thread;
    calls are serialised, and ``stop`` may be called from any thread."""

    def __init__(self, settings: EvaluatorSettings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._stopping = False
        self.starts = 0

    def start(self) -> None:
        """Spawn the worker without waiting for it: it warms up while the node runs."""
        with self._lock:
            self._spawn()

    def evaluate(self, base: bytes, delta: bytes) -> Evaluation:
        """Evaluate the encoded base weights and base + delta on the hold-out shard."""
        return Evaluation(*self._call(["evaluate", base, delta]))

    def score(self, weights: bytes) -> Score:
        """Score the encoded weights of a model on the test split."""
        return Score(*self._call(["score", weights]))

    def _call(self, request: list[Any]) -> list[float]:
        """Send ``request``; a lost worker is replaced and the request tried once more
        before giving up."""
        with self._lock:
            try:
                reply = self._request(request)
            except _WorkerLost as exc:
                self._replace(exc)
                try:
                    reply = self._request(request)
                except _WorkerLost as again:
                    self._discard()
                    raise EvaluatorError(f"the evaluator worker failed twice: {again}") from again
        if reply[0] != "ok":
            raise EvaluatorError(str(reply[1]))
        return [float(v) for v in reply[1]]

    def wait_ready(self) -> None:
        """Block until the worker has TensorFlow, the model and the data loaded."""
        with self._lock:
            try:
                self._ensure_ready()
            except _WorkerLost as exc:
                self._discard()
                why = "the evaluator is stopping" if self._stopping else exc
                raise EvaluatorError(f"the evaluator worker did not start: {why}") from exc

    def stop(self) -> None:
        """End the worker; an evaluation in progress fails with EvaluatorError."""
        self._stopping = True
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()  # unblocks a request waiting on the pipe
        with self._lock:
            self._discard()

    @property
    def pid(self) -> int | None:
        """The worker's process id while one runs."""
        return self._process.pid if self._process is not None else None

    # --- under the lock ---------------------------------------------------------------

    def _spawn(self) -> None:
        if self._stopping:
            raise _WorkerLost("stopping")
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_worker_main, args=(theirs, os.getpid()),
                                        name="flobc-evaluator", daemon=True)
        process.start()
        theirs.close()
        ours.send_bytes(codec.pack(asdict(self.settings)))
        self._process, self._conn, self._ready = process, ours, False
        self.starts += 1

    def _ensure_ready(self) -> None:
        if self._process is None:
            self._spawn()
        if not self._ready:
            reply = self._receive(READY_TIMEOUT_S)
            if reply[0] != "ready":
                raise _WorkerLost(f"worker failed to start: {reply[1]}")
            self._ready = True
            log.info("evaluator worker %d ready: %s", self.pid, reply[1])

    def _request(self, request: list[Any]) -> list[Any]:
        self._ensure_ready()
        assert self._conn is not None
        try:
            self._conn.send_bytes(codec.pack(request))
        except OSError as exc:
            raise _WorkerLost(f"cannot send to the worker: {exc}") from exc
        return self._receive(REQUEST_TIMEOUT_S)

    def _receive(self, timeout: float) -> list[Any]:
        assert self._conn is not None
        try:
            if not self._conn.poll(timeout):
                raise _WorkerLost(f"no answer within {timeout:g} s")
            reply = codec.unpack(self._conn.recv_bytes(MAX_REPLY_BYTES), MAX_REPLY_BYTES)
        except (EOFError, OSError, codec.DecodeError) as exc:
            raise _WorkerLost(f"the worker exited or sent garbage ({exc!r})") from exc
        if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], str)):
            raise _WorkerLost(f"malformed reply {reply!r:.80}")
        return reply

    def _replace(self, cause: _WorkerLost) -> None:
        self._discard()
        if self._stopping:
            raise EvaluatorError("the evaluator is stopping") from cause
        log.warning("evaluator worker lost (%s); starting a new one", cause)

    def _discard(self) -> None:
        """Forget the current worker, ending it if it still runs (it may hang in TF)."""
        process, conn = self._process, self._conn
        self._process, self._conn, self._ready = None, None, False
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.terminate()
                process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
            process.join()
            process.close()


# --- the worker process ------------------------------------------------------------------


def _worker_main(conn: Connection, parent_pid: int) -> None:
    """Entry point of the worker: build, announce readiness, serve until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the node, which stops us
    _die_with_parent(parent_pid)
    try:
        settings = EvaluatorSettings(**codec.unpack(conn.recv_bytes(SETTINGS_BYTES)))
        started = time.monotonic()
        worker = _Worker(settings)
        conn.send_bytes(codec.pack(["ready", f"{worker.describe()} in "
                                             f"{time.monotonic() - started:.1f} s"]))
    except Exception as exc:  # report why we cannot start; the parent logs it
        conn.send_bytes(codec.pack(["error", f"{type(exc).__name__}: {exc}"]))
        return
    while True:
        try:
            data = conn.recv_bytes(2 * settings.max_blob_bytes + SETTINGS_BYTES)
        except (EOFError, OSError):
            return  # the node closed the pipe or died
        conn.send_bytes(codec.pack(worker.handle(data)))


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel kill the worker when the node dies (even by SIGKILL),
    instead of leaving it to notice the closed pipe, which it cannot while loading."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the node died before the request took effect
        os._exit(1)


class _Worker:
    """The TensorFlow side: a learner on the genesis model and the hold-out shard."""

    def __init__(self, settings: EvaluatorSettings) -> None:
        from flobc.ml.data import load_dataset, split, validator_shard
        from flobc.ml.learner import learner_for
        from flobc.ml.weights import spec

        self.settings = settings
        self.learner = learner_for(settings.model, settings.seed, single_thread=True)
        self.spec = spec(self.learner.get_weights())
        parts = split(load_dataset(settings.dataset, settings.dataset_file), seed=settings.seed)
        self.data = validator_shard(parts.validator_holdout, settings.shard_index,
                                    settings.shard_count)
        self.test = parts.test
        self._base: tuple[bytes, tuple[float, float]] | None = None

    def describe(self) -> str:
        s = self.settings
        return (f"{s.model} on {len(self.data)} samples (shard {s.shard_index} of "
                f"{s.shard_count} of the {s.dataset} validator hold-out)")

    def handle(self, data: bytes) -> list[Any]:
        """One request -> ``["ok", result]`` or ``["error", why]``."""
        try:
            request = codec.unpack(data, len(data))
            if not isinstance(request, list):
                return ["error", "unknown request"]
            if len(request) == 3 and request[0] == "evaluate":
                return ["ok", self.evaluate(request[1], request[2])]
            if len(request) == 2 and request[0] == "score":
                return ["ok", self.score(request[1])]
            return ["error", "unknown request"]
        except Exception as exc:  # one bad input must not end the worker
            return ["error", f"{type(exc).__name__}: {exc}"]

    def evaluate(self, base_blob: bytes, delta_blob: bytes) -> list[float]:
        """[base_loss, base_acc, new_loss, new_acc]; the base's scores are kept for the
        next call, since every update of a round shares one base."""
        import numpy as np

        base = self._decode(base_blob)
        delta = self._decode(delta_blob)
        if self._base is None or self._base[0] != base_blob:
            self._base = (base_blob, self._score(base, self.data))
        new = [(b.astype(np.float64) + d).astype(b.dtype) for b, d in zip(base, delta,
                                                                           strict=True)]
        return [*self._base[1], *self._score(new, self.data)]

    def score(self, weights_blob: bytes) -> list[float]:
        """[loss, accuracy] of a model on the test split."""
        return list(self._score(self._decode(weights_blob), self.test))

    def _decode(self, blob: bytes) -> list[Any]:
        from flobc.ml.weights import decode_weights

        return decode_weights(blob, max_bytes=self.settings.max_blob_bytes,
                              max_tensors=len(self.spec), expected=self.spec)

    def _score(self, weights: list[Any], data: Any) -> tuple[float, float]:
        self.learner.set_weights(weights)
        result = self.learner.evaluate(data.x, data.y)
        loss = result["loss"]
        return (loss if math.isfinite(loss) else math.inf), result["accuracy"]
