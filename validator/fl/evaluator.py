"""Evaluating updates off-chain, in a long-lived worker process that alone holds TensorFlow.

TensorFlow is slow to import, large, and has no place in the validator's main process,
where consensus runs: the worker imports it once, builds the model, loads this
validator's share of the hold-out data and the test split, then answers one request at
a time: a validation rule's verdicts on a round's updates on the hold-out shard (for
votes: the rule's own ``judge``, the code an experiment runs too), or a committed
model's score on the test split (for reporting only: no vote depends on it).

A round's blobs are sent once each and named by hash afterwards: ``put`` stores a blob
in the worker's bounded cache (keyed by the SHA-256 the worker computes itself), and
``judge`` names the rule (its genesis table), the base, the candidates and the updates
to vote on by hash; the worker answers ``missing`` with the hashes it does not hold, and
the parent puts those and asks again. So no message is larger than one blob, however
many updates a round has.

It is started with the ``spawn`` context (no forked copy of the node's event loop,
sockets or LevelDB handles), gets its settings and every request as msgpack bytes over a
Pipe, and never unpickles a message. If it dies or hangs, the next request starts a new
one (with an empty cache); if the node dies, the worker dies with it.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from flobc import codec
from flobc.crypto import HASH_SIZE, PUBLIC_KEY_SIZE, sha256
from flobc.errors import ValidatorError
from flobc.protocol.validation import VALIDATION_RULES, Evaluation, ValidationRule, Verdict

log = logging.getLogger("flobc.evaluator")

READY_TIMEOUT_S = 600.0
"""Importing TensorFlow and building the model: seconds alone, minutes on a busy host."""
REQUEST_TIMEOUT_S = 300.0
STOP_GRACE_S = 5.0
MAX_REPLY_BYTES = 64 * 1024
SETTINGS_BYTES = 64 * 1024
"""Bound of the settings message, and of everything but the blob in a request."""
MAX_CANDIDATES = 256
"""Updates one ``judge`` may name: its request and reply stay within SETTINGS_BYTES and
MAX_REPLY_BYTES."""
MAX_METRICS = 16
MAX_METRIC_NAME = 32
"""A score has at most this many metrics, each name at most this long."""
CACHE_BYTES = 256 * 1024 * 1024
"""Blobs the worker keeps (least recently used dropped first), and at least three of the
largest (a base, an older base and an update: one update alone can always be judged);
a round whose blobs do not fit cannot be judged, and the error says so."""


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
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """The dataset's options in genesis (``[app.dataset]``)."""


@dataclass(frozen=True)
class Score:
    """One model's scores on the test split: its loss and its task's metrics by name
    (``accuracy`` for classification, ``mae`` and ``rmse`` for regression)."""

    items: tuple[tuple[str, float], ...]
    """(name, value) pairs, sorted by name: hashable, so scores compare as values."""

    @classmethod
    def of(cls, metrics: dict[str, float]) -> Score:
        return cls(tuple(sorted(metrics.items())))

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.items)

    @property
    def loss(self) -> float:
        return self.metrics["loss"]

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")


@dataclass(frozen=True)
class CandidateRef:
    """An update of the round, by hash: its trainer, its delta blob, the samples it
    claims and the weights it was trained on (the worker rebases it to the judged base
    when they differ)."""

    trainer: bytes
    blob: bytes
    samples: int
    base: bytes


BlobSource = Callable[[bytes], "bytes | None"]
"""The blob with a given hash, or None if it is not stored."""


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

    def judge(self, rule: ValidationRule, base: bytes, candidates: Sequence[CandidateRef],
              todo: Sequence[bytes], blobs: BlobSource) -> dict[bytes, Verdict]:
        """``rule.judge`` in the worker: a verdict for each trainer in ``todo`` (all among
        ``candidates``), judged on the weights with hash ``base``. ``blobs`` gives the
        blobs the worker asks for."""
        if len(candidates) > MAX_CANDIDATES:
            raise EvaluatorError(f"{len(candidates)} updates to judge at once; the limit "
                                 f"is {MAX_CANDIDATES}")
        request = ["judge", rule.table(), base,
                   [[c.trainer, c.blob, c.samples, c.base] for c in candidates], list(todo)]
        named = {base, *(c.blob for c in candidates), *(c.base for c in candidates)}
        with self._lock:
            reply = self._exchange(request)
            if reply[0] == "missing":
                for digest in _missing(reply[1], named):
                    self._put(digest, blobs)
                reply = self._exchange(request)
            if reply[0] == "missing":
                raise EvaluatorError(f"the round's blobs do not fit in the worker's cache "
                                     f"of {cache_bytes(self.settings)} bytes")
        return _verdicts(_ok(reply), todo)

    def score(self, weights: bytes) -> Score:
        """Score the encoded weights of a model on the test split."""
        with self._lock:
            reply = _ok(self._exchange(["score", weights]))
        if not (isinstance(reply, dict) and "loss" in reply and len(reply) <= MAX_METRICS
                and all(isinstance(k, str) and len(k) <= MAX_METRIC_NAME
                        and isinstance(v, int | float) for k, v in reply.items())):
            raise EvaluatorError(f"malformed score {reply!r:.80}")
        return Score.of({k: float(v) for k, v in reply.items()})

    def _put(self, digest: bytes, blobs: BlobSource) -> None:
        blob = blobs(digest)
        if blob is None:
            raise EvaluatorError(f"blob {digest.hex()} is not stored")
        if _ok(self._exchange(["put", blob])) != digest:
            raise EvaluatorError(f"the worker stored blob {digest.hex()} under another hash")

    def _exchange(self, request: list[Any]) -> list[Any]:
        """Send ``request`` (the lock held); a lost worker is replaced and the request
        tried once more before giving up."""
        try:
            return self._request(request)
        except _WorkerLost as exc:
            self._replace(exc)
            try:
                return self._request(request)
            except _WorkerLost as again:
                self._discard()
                raise EvaluatorError(f"the evaluator worker failed twice: {again}") from again

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


def cache_bytes(settings: EvaluatorSettings) -> int:
    """How many bytes of blobs the worker keeps (see CACHE_BYTES)."""
    return max(CACHE_BYTES, 3 * settings.max_blob_bytes)


def _ok(reply: list[Any]) -> Any:
    if reply[0] != "ok":
        raise EvaluatorError(str(reply[1]))
    return reply[1]


def _missing(digests: Any, named: set[bytes]) -> list[bytes]:
    """The hashes a ``missing`` reply lists, each one the request named."""
    if not (isinstance(digests, list) and all(d in named for d in digests)):
        raise EvaluatorError(f"the worker asked for blobs it was not given: {digests!r:.80}")
    return digests


def _verdicts(judged: Any, todo: Sequence[bytes]) -> dict[bytes, Verdict]:
    """The worker's ``judge`` answer, checked: one verdict per trainer of ``todo``."""
    verdicts = {}
    try:
        for trainer, accept, score, scores in judged:
            evaluation = None if scores is None else Evaluation(*map(float, scores))
            verdicts[trainer] = Verdict(bool(accept), int(score), evaluation)
    except (TypeError, ValueError) as exc:
        raise EvaluatorError(f"malformed verdicts {judged!r:.80}") from exc
    if sorted(verdicts) != sorted(todo):
        raise EvaluatorError("the worker judged other updates than it was asked to")
    return verdicts


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
            data = conn.recv_bytes(settings.max_blob_bytes + SETTINGS_BYTES)
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
    """The TensorFlow side: a learner on the genesis model, the hold-out shard, the test
    split and the cache of blobs put by the parent."""

    def __init__(self, settings: EvaluatorSettings) -> None:
        from flobc.ml.data import load_dataset, split, validator_shard
        from flobc.ml.learner import ShardScorer, learner_for
        from flobc.ml.weights import spec

        self.settings = settings
        dataset = load_dataset(settings.dataset, settings.dataset_file,
                               **settings.dataset_options)
        self.learner = learner_for(settings.model, settings.seed, task=dataset.spec,
                                   single_thread=True)
        self.spec = spec(self.learner.get_weights())
        parts = split(dataset, seed=settings.seed)
        self.data = validator_shard(parts.validator_holdout, settings.shard_index,
                                    settings.shard_count)
        self.shard_score = ShardScorer(self.learner, self.data)
        self.test_score = ShardScorer(self.learner, parts.test)
        self.blobs: OrderedDict[bytes, bytes] = OrderedDict()
        self.cached_bytes = 0
        self.kept_base: tuple[bytes, Any] | None = None
        """The last judged base's hash and its scores: a round's votes share one base."""

    def describe(self) -> str:
        s = self.settings
        return (f"{s.model} on {len(self.data)} samples (shard {s.shard_index} of "
                f"{s.shard_count} of the {s.dataset} validator hold-out)")

    def handle(self, data: bytes) -> list[Any]:
        """One request -> ``["ok", result]``, ``["missing", hashes]`` or ``["error", why]``."""
        try:
            request = codec.unpack(data, len(data))
            if not isinstance(request, list) or not request:
                return ["error", "unknown request"]
            if len(request) == 2 and request[0] == "put" and isinstance(request[1], bytes):
                return ["ok", self.put(request[1])]
            if len(request) == 5 and request[0] == "judge":
                return self.judge(*request[1:])
            if len(request) == 2 and request[0] == "score":
                return ["ok", self.score(request[1])]
            return ["error", "unknown request"]
        except Exception as exc:  # one bad input must not end the worker
            return ["error", f"{type(exc).__name__}: {exc}"]

    def put(self, blob: bytes) -> bytes:
        """Keep ``blob`` (dropping the least recently used ones over CACHE_BYTES)."""
        if len(blob) > self.settings.max_blob_bytes:
            raise ValueError(f"blob of {len(blob)} bytes is over max_blob_bytes "
                             f"{self.settings.max_blob_bytes}")
        digest = sha256(blob)
        if digest not in self.blobs:
            self.blobs[digest] = blob
            self.cached_bytes += len(blob)
        self.blobs.move_to_end(digest)
        while self.cached_bytes > cache_bytes(self.settings):
            self.cached_bytes -= len(self.blobs.popitem(last=False)[1])
        return digest

    def judge(self, table: Any, base_hash: Any, refs: Any, todo: Any) -> list[Any]:
        """The rule's verdicts, or the hashes of the blobs it needs and lacks."""
        from flobc.protocol.aggregation import rebase
        from flobc.protocol.validation import Candidate

        rule = _rule(table)
        candidates = [_candidate_ref(r) for r in _bounded_list(refs, "candidates")]
        trainers = [c.trainer for c in candidates]
        if len(set(trainers)) != len(trainers):
            raise ValueError("a trainer is named twice among the candidates")
        if not (isinstance(todo, list) and set(todo) <= set(trainers)
                and len(set(todo)) == len(todo)):
            raise ValueError("todo must list distinct trainers among the candidates")
        _check_hash(base_hash, "base")
        missing = sorted({base_hash, *(c.blob for c in candidates),
                          *(c.base for c in candidates)} - set(self.blobs))
        if missing:
            return ["missing", missing]
        base = self._weights(base_hash)
        bases = {base_hash: base}
        judged = []
        for c in candidates:
            delta = self._weights(c.blob)
            if c.base != base_hash:  # trained on another version: as a step from base
                if c.base not in bases:
                    bases[c.base] = self._weights(c.base)
                delta = rebase(base, bases[c.base], delta)
            judged.append(Candidate(c.trainer, delta, c.samples))
        verdicts = rule.judge(base, judged, todo, self._scorer(base_hash, base))
        return ["ok", [[t, v.accept, v.score_milli,
                        None if v.evaluation is None else list(asdict(v.evaluation).values())]
                       for t, v in verdicts.items()]]

    def score(self, weights_blob: bytes) -> dict[str, float]:
        """The loss and the task's metrics of a model on the test split."""
        return {k: float(v) for k, v in self.test_score(self._decode(weights_blob)).items()}

    def _scorer(self, base_hash: bytes, base: list[Any]) -> _BaseKept:
        return _BaseKept(self, base_hash, base)

    def _weights(self, digest: bytes) -> list[Any]:
        self.blobs.move_to_end(digest)
        return self._decode(self.blobs[digest])

    def _decode(self, blob: bytes) -> list[Any]:
        from flobc.ml.weights import decode_weights

        return decode_weights(blob, max_bytes=self.settings.max_blob_bytes,
                              max_tensors=len(self.spec), expected=self.spec)


class _BaseKept:
    """The shard's scorer, with the base's scores kept across requests (a round's
    votes share one base)."""

    def __init__(self, worker: _Worker, base_hash: bytes, base: list[Any]) -> None:
        self.worker, self.base_hash, self.base = worker, base_hash, base
        self.chance = worker.shard_score.chance

    def __call__(self, weights: Sequence[Any], /) -> Any:
        w = self.worker
        if weights is not self.base:
            return w.shard_score(weights)
        if w.kept_base is None or w.kept_base[0] != self.base_hash:
            w.kept_base = (self.base_hash, w.shard_score(self.base))
        return w.kept_base[1]


def _rule(table: Any) -> ValidationRule:
    """The rule a genesis ``[app.validation]`` table names, with its settings."""
    if not (isinstance(table, dict) and isinstance(table.get("name"), str)):
        raise ValueError("the rule must be a table with a name")
    settings = {k: v for k, v in table.items() if k != "name"}
    return VALIDATION_RULES.get(table["name"])(**settings)


def _bounded_list(value: Any, what: str) -> list[Any]:
    if not (isinstance(value, list) and len(value) <= MAX_CANDIDATES):
        raise ValueError(f"{what} must be a list of at most {MAX_CANDIDATES}")
    return value


def _check_hash(value: Any, what: str, size: int = HASH_SIZE) -> None:
    if not (isinstance(value, bytes) and len(value) == size):
        raise ValueError(f"{what} must be {size} bytes")


def _candidate_ref(value: Any) -> CandidateRef:
    if not (isinstance(value, list) and len(value) == 4):
        raise ValueError("a candidate is [trainer, blob, samples, base]")
    trainer, blob, samples, base = value
    _check_hash(trainer, "a candidate's trainer", PUBLIC_KEY_SIZE)
    _check_hash(blob, "a candidate's blob")
    _check_hash(base, "a candidate's base")
    if not (type(samples) is int and samples >= 1):
        raise ValueError("a candidate's samples must be a positive integer")
    return CandidateRef(trainer, blob, samples, base)
