"""The join loop: register once, then in every round train on the certified model and
submit a signed delta, until told to stop.

Each round the trainer reads ``/fl/status``, skips the round if it already sent an
update for it (its journal says so, or the chain shows one), fetches and verifies the
round's base version, trains on its own partition of the data with a seed derived from
the round (so retraining a round gives the same update, as far as TensorFlow allows),
and POSTs the delta beside its update transaction. It learns of the next round from a
status request that the validator holds until that round opens (long polling); other
waits poll with back-off. SIGINT or SIGTERM stops it between steps, never half-way
through writing a file.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from functools import partial
from typing import Any, TypeVar

import numpy as np

from flobc.config import ConfigError, Genesis, load_key
from flobc.consensus.light import VerificationError
from flobc.crypto import sha256
from flobc.errors import TrainerError
from flobc.ml.data import Dataset, DatasetError, load_dataset, split
from flobc.ml.learner import Learner, learner_for
from flobc.ml.models import ModelError
from flobc.ml.partition import partition
from flobc.ml.weights import all_finite, encode_weights, spec
from flobc.protocol.settings import FLConfig
from flobc.protocol.txs import MAX_ACCURACY_MILLI, MAX_U63, make_register, make_update
from flobc.trainer.byzantine import Behaviour, RoundView, make_behaviour
from flobc.trainer.client import (
    ClientError,
    FLStatus,
    Stopped,
    ValidatorClient,
    ValidatorRefused,
)
from flobc.trainer.config import CONFIG_FILE, TrainerConfig
from flobc.trainer.journal import ON_CHAIN, SENDING, SUBMITTED, Journal
from flobc.trainer.peers import submitted_deltas, wait_until
from flobc.trainer.resubmit import see_committed
from flobc.trainer.update import LocalUpdate
from flobc.trainer.verify import ModelStore, VerifiedModel, verify_genesis_model

log = logging.getLogger("flobc.trainer")

T = TypeVar("T")

POLL_S = 0.1
MAX_POLL_S = 2.0
ROUND_WAIT_MS = 4000
"""How long a validator may hold a status request that waits for the next round."""
REGISTER_RESEND_S = 30.0
"""A register not on chain by then is sent again (a crashed validator may have lost it)."""
ESTIMATE_DRAWS = 4
"""How many stand-in deltas a colluding trainer trains to estimate honest statistics."""


class Outcome(Enum):
    SUBMITTED = "submitted"
    SKIPPED = "skipped"
    """Nothing sent this round, and nothing will be (refused, or training diverged)."""
    NOT_READY = "not ready"
    """The base version is not certified yet."""


def round_seed(seed: int, partition_index: int, round_: int) -> int:
    """The training seed of one trainer in one round: reproducible, distinct per pair."""
    return int(np.random.SeedSequence([seed, partition_index, round_]).generate_state(1)[0])


def local_data(cfg: TrainerConfig, split_seed: int, behaviour: Behaviour | None = None,
               options: Mapping[str, Any] | None = None) -> Dataset:
    """This trainer's share of the training split (validators' hold-out never included),
    as its behaviour (by default ``cfg``'s) trains on it; ``options``: the dataset's, as
    genesis gives them (``[app.dataset]``)."""
    path = cfg.dataset_file
    try:
        dataset = load_dataset(cfg.dataset, None if path is None else str(path),
                               **(options or {}))
        train = split(dataset, seed=split_seed).train
        parts = partition(cfg.partitioner, train.y, cfg.partitions, cfg.seed,
                          **cfg.partitioner_options)
        own = train.subset(parts[cfg.partition_index])
        if behaviour is None:
            behaviour = make_behaviour(cfg.behaviour, cfg.behaviour_scale)
        return behaviour.data(own, np.random.default_rng([cfg.seed, cfg.partition_index]))
    except (DatasetError, ValueError, TypeError) as exc:
        raise TrainerError(f"cannot prepare the local data: {exc}") from exc


def trained_delta(learner: Learner, base: VerifiedModel, data: Dataset, cfg: TrainerConfig,
                  seed: int) -> tuple[list[np.ndarray], dict[str, float]]:
    """``base`` trained on ``data`` minus ``base``, in the model's dtypes, and the
    training metrics."""
    learner.set_weights(base.weights)
    metrics = learner.fit(data.x, data.y, cfg.local_epochs, cfg.batch_size, seed)
    return [np.subtract(t, b, dtype=b.dtype)
            for t, b in zip(learner.get_weights(), base.weights, strict=True)], metrics


def estimated_peers(learner: Learner, base: VerifiedModel, data: Dataset,
                    cfg: TrainerConfig, round_: int) -> list[list[np.ndarray]]:
    """Stand-ins for the other trainers' deltas of a round, from this trainer's data
    alone: ``ESTIMATE_DRAWS`` deltas trained from ``base`` on bootstrap samples of
    ``data`` (each as large as ``data``, so each takes as many steps as an honest
    trainer's). Colluders on a live chain estimate honest statistics from them."""
    rng = np.random.default_rng([cfg.seed, cfg.partition_index, round_, ESTIMATE_DRAWS])
    return [trained_delta(learner, base, data.subset(rng.integers(len(data), size=len(data))),
                          cfg, int(rng.integers(2**31)))[0]
            for _ in range(ESTIMATE_DRAWS)]


def train_round(learner: Learner, base: VerifiedModel, data: Dataset, cfg: TrainerConfig,
                round_: int, behaviour: Behaviour | None = None,
                view: RoundView | None = None) -> LocalUpdate:
    """Train ``base`` locally and apply ``behaviour`` (by default ``cfg``'s; a caller
    running several rounds passes one instance, which may remember earlier rounds).

    ``view`` is what the behaviour sees of the round; by default its peers are
    ``estimated_peers``, trained only if the behaviour asks for them.
    """
    seed = round_seed(cfg.seed, cfg.partition_index, round_)
    delta, metrics = trained_delta(learner, base, data, cfg, seed)
    if behaviour is None:
        behaviour = make_behaviour(cfg.behaviour, cfg.behaviour_scale)
    if view is None:
        view = RoundView(round_, peers=partial(estimated_peers, learner, base, data, cfg,
                                               round_))
    delta = behaviour.delta(delta, np.random.default_rng(seed), view)
    return behaviour.submit(LocalUpdate(delta, len(data), metrics["loss"],
                                        metrics.get("accuracy", 0.0)))


def milli(value: float, high: int) -> int:
    """A metric in thousandths, clamped to what an update transaction can carry."""
    return min(max(round(value * 1000), 0), high)


class Poller:
    """Exponential back-off with jitter between polls; reset when something changes."""

    def __init__(self, stop: threading.Event, rng: random.Random) -> None:
        self._stop = stop
        self._rng = rng
        self._delay = POLL_S

    def reset(self) -> None:
        self._delay = POLL_S

    def wait(self) -> None:
        if self._stop.wait(self._rng.uniform(self._delay / 2, self._delay)):
            raise Stopped("stopping")
        self._delay = min(2 * self._delay, MAX_POLL_S)


class Trainer:
    """One trainer home, joined to its chain."""

    def __init__(self, cfg: TrainerConfig, learner_factory: Callable[..., Learner],
                 stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.genesis = Genesis.load(cfg.genesis_path)
        self.fl = FLConfig.from_genesis(self.genesis, cfg.genesis_path)
        if cfg.model is not None and cfg.model != self.fl.model:
            raise ConfigError(f"model {cfg.model!r} does not match the chain's model "
                              f"{self.fl.model!r} in {cfg.genesis_path}")
        if cfg.dataset != self.fl.dataset:
            raise ConfigError(f"dataset {cfg.dataset!r} in {cfg.home / CONFIG_FILE} "
                              f"contradicts the chain's dataset {self.fl.dataset!r} in "
                              f"{cfg.genesis_path}: validators would vote on another one")
        self.key = load_key(cfg.key_path)
        try:
            blob = cfg.genesis_model_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {cfg.genesis_model_path}: {exc.strerror}") from exc
        genesis_model = verify_genesis_model(self.genesis, self.fl.model_v0_hash, blob,
                                             max_bytes=self.fl.max_blob_bytes)
        self.rng = random.Random()  # jitter: trainers must not retry in step
        self.client = ValidatorClient(cfg.validators, max_blob_bytes=self.fl.max_blob_bytes,
                                      stop=self.stop, rng=self.rng)
        self.models = ModelStore(self.genesis, genesis_model, self.client, cfg.home,
                                 max_bytes=self.fl.max_blob_bytes)
        self.journal = Journal(cfg.home)
        self.behaviour = make_behaviour(cfg.behaviour, cfg.behaviour_scale)
        """One instance for the whole run: a behaviour may remember earlier rounds."""
        self.data = local_data(cfg, self.fl.seed, self.behaviour,
                               self.fl.dataset_options)
        try:
            self.learner = learner_factory(self.fl.model, self.fl.seed, task=self.data.spec)
        except ModelError as exc:
            raise ConfigError(f"cannot build the chain's model: {exc}") from exc
        self._poller = Poller(self.stop, self.rng)
        self._warned: set[str] = set()
        """The validator's warnings last printed: each is printed once while it holds."""

    def close(self) -> None:
        self.client.close()

    def run(self) -> int:
        """Take part in rounds until stopped (or ``cfg.rounds`` submitted); return how
        many updates this run submitted."""
        submitted = 0
        try:
            self._retrying(self.register)
            while self.cfg.rounds is None or submitted < self.cfg.rounds:
                if self.stop.is_set():
                    raise Stopped("stopping")
                status = self._status()
                if not self._handled(status.round):
                    outcome = self._take_part(status)
                    if outcome is Outcome.NOT_READY:
                        self._poller.wait()
                        continue
                    submitted += outcome is Outcome.SUBMITTED
                if self.cfg.rounds is None or submitted < self.cfg.rounds:
                    self._wait_for_round_after(status.round)
        except Stopped:
            log.info("trainer stopped")
        return submitted

    # --- registration -------------------------------------------------------------------

    def register(self) -> None:
        """Send a register transaction unless the chain knows this trainer; wait for it."""
        me = self.key.public_key
        sent_at: float | None = None
        self._poller.reset()
        while (info := self.client.trainers().get(me)) is None:
            if sent_at is None or time.monotonic() - sent_at > REGISTER_RESEND_S:
                tx = make_register(self.key, time.time_ns(), self.genesis.chain_id)
                try:
                    tx_hash = self.client.submit_tx(tx)
                except ValidatorRefused as exc:
                    if me in self.client.trainers():
                        continue  # an earlier registration just committed
                    raise TrainerError(f"registration refused: {exc.detail}") from exc
                sent_at = time.monotonic()
                log.info("trainer %s: registration %s sent to %s", me.hex()[:16], tx_hash,
                         self.client.current)
            self._poller.wait()
        log.info("trainer %s registered (trust %.3f, %d accepted, %d rejected%s)",
                 me.hex()[:16], info.trust_micro / 1e6, info.accepted, info.rejected,
                 ", EXCLUDED" if info.excluded else "")

    # --- rounds -------------------------------------------------------------------------

    def _handled(self, round_: int) -> bool:
        """True if an update for ``round_`` was sent, by this run or an earlier one."""
        if (entry := self.journal.get(round_)) is not None:
            log.info("round %d: an update was already sent (journal: %s, tx %s)", round_,
                     *entry)
            return True
        info = self._retrying(lambda: self.client.round(round_))
        if info is not None and self.key.public_key in info.updates:
            self.journal.record(round_, ON_CHAIN, None)
            log.info("round %d: this trainer's update is already on chain", round_)
            return True
        return False

    def _take_part(self, status: FLStatus) -> Outcome:
        """Train on the round's base version and submit the update."""
        base = self._retrying(lambda: self.models.get(status.version))
        if base is None:
            return Outcome.NOT_READY
        self._poller.reset()
        update = train_round(self.learner, base, self.data, self.cfg, status.round,
                             self.behaviour, self._view(status, base))
        if self.stop.is_set():
            raise Stopped("stopping")
        if not (math.isfinite(update.loss) and all_finite(update.delta)):
            log.warning("round %d: local training diverged (loss %s); no update sent",
                        status.round, update.loss)
            return Outcome.SKIPPED
        blob = encode_weights(update.delta)
        tx = make_update(self.key, self.genesis.chain_id, status.round, base.version,
                         sha256(blob), update.samples, milli(update.loss, MAX_U63),
                         milli(update.accuracy, MAX_ACCURACY_MILLI), time.time_ns())
        self.journal.record(status.round, SENDING, sha256(tx).hex())
        try:
            tx_hash = self._retrying(lambda: self.client.submit_update(tx, blob),
                                     retry_refusals=False)
        except ValidatorRefused as exc:
            log.warning("round %d: update refused by %s: %s", status.round, exc.url,
                        exc.detail)
            return Outcome.SKIPPED
        self.journal.record(status.round, SUBMITTED, tx_hash)
        log.info("round %d: %d samples on version %d, local loss %.4f accuracy %.4f, "
                 "update tx %s via %s", status.round, update.samples, base.version,
                 update.loss, update.accuracy, tx_hash, self.client.current)
        if not see_committed(self.client, tx, blob, tx_hash, self.client.current,
                             lambda: self._status().round == status.round, self.stop,
                             self.rng):
            log.warning("round %d: closed before update tx %s was committed", status.round,
                        tx_hash)
        return Outcome.SUBMITTED

    def _view(self, status: FLStatus, base: VerifiedModel) -> RoundView:
        """What this trainer's behaviour may see of the round: the updates already
        committed in it if the behaviour copies them, else stand-ins trained on its own
        data (computed only if asked for)."""
        peers = (partial(submitted_deltas, self.client, self.key.public_key, status.round,
                         spec(base.weights), self.fl.max_blob_bytes,
                         wait_until(status.deadline_ms, time.time()),
                         Poller(self.stop, self.rng).wait)
                 if self.behaviour.copies_submitted else
                 partial(estimated_peers, self.learner, base, self.data, self.cfg,
                         status.round))
        return RoundView(status.round, peers=peers, trainers=len(status.expected))

    def _status(self, after_round: int | None = None) -> FLStatus:
        """The chain's status, once it has one (it has none before its first block);
        with ``after_round``, as soon as a later round opens or the validator's wait ends."""
        poller = Poller(self.stop, self.rng)
        while (status := self._retrying(
                lambda: self.client.status(after_round, ROUND_WAIT_MS))) is None:
            poller.wait()
        for warning in set(status.warnings) - self._warned:
            log.warning("validator %s: %s", self.client.current, warning)
        self._warned = set(status.warnings)
        return status

    def _wait_for_round_after(self, round_: int) -> None:
        self._poller.reset()
        while True:
            asked = time.monotonic()
            if self._status(after_round=round_).round > round_:
                return
            if time.monotonic() - asked < ROUND_WAIT_MS / 2000:
                self._poller.wait()  # answered early without a new round: do not spin

    def _retrying(self, call: Callable[[], T], *, retry_refusals: bool = True) -> T:
        """``call()``, again after a back-off for as long as no validator can answer it
        (or every one serves data that does not verify).

        A refused read means that validator is not answering as the protocol says, so
        the next try goes to another one; a refused submission is the caller's to judge
        (``retry_refusals=False``).
        """
        poller = Poller(self.stop, self.rng)
        while True:
            try:
                return call()
            except Stopped:
                raise
            except ValidatorRefused as exc:
                if not retry_refusals:
                    raise
                log.warning("%s; asking another validator", exc)
                self.client.skip_current()
            except (ClientError, VerificationError) as exc:
                log.warning("%s; retrying", exc)
            poller.wait()


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (instead of interrupting) while inside."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_trainer(cfg: TrainerConfig) -> int:
    """Run the trainer in the foreground until a signal or ``cfg.rounds``; exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request
    stop = threading.Event()
    with stop_on_signals(stop):
        trainer = Trainer(cfg, learner_for, stop)
        try:
            trainer.run()
        finally:
            trainer.close()
    return 0
