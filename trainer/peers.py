"""The other trainers' deltas of the open round as a trainer on a live chain can read
them: the updates already committed in the round, fetched from a validator.

A copying behaviour asks for them (``Behaviour.copies_submitted``). What a validator
serves is checked like any network input: the blob must hash to what the round's
record names and decode to the model's shapes and dtypes, or it is left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from flobc.crypto import sha256
from flobc.ml.weights import Spec, WeightsError, decode_weights
from flobc.trainer.client import ClientError, RoundUpdate, Stopped, ValidatorClient

log = logging.getLogger("flobc.trainer")

DEADLINE_MARGIN_S = 5.0
"""A trainer waiting for others' updates gives up this long before the round's deadline,
leaving time to submit its own."""
UNBOUNDED_WAIT_S = 60.0
"""How long it waits when the round has no deadline."""


def wait_until(deadline_ms: int, now_s: float) -> float:
    """The wall-clock time (s) to stop waiting for other updates of a round closing at
    ``deadline_ms`` (0: no deadline)."""
    if deadline_ms <= 0:
        return now_s + UNBOUNDED_WAIT_S
    return deadline_ms / 1000 - DEADLINE_MARGIN_S


def submitted_deltas(client: ValidatorClient, me: bytes, round_: int, spec: Spec,
                     max_bytes: int, until_s: float, wait: Callable[[], None]
                     ) -> list[list[np.ndarray]]:
    """The deltas other trainers committed in ``round_``, polling (``wait`` between
    polls) until at least one is there or the wall clock passes ``until_s``; empty if
    none came in time."""
    while True:
        try:
            info = client.round(round_)
        except Stopped:
            raise
        except ClientError as exc:
            log.warning("round %d: cannot read the round's updates: %s", round_, exc)
            info = None
        others = {} if info is None else {t: u for t, u in info.updates.items() if t != me}
        if others:
            found = [d for t, u in sorted(others.items())
                     if (d := _fetched(client, round_, t, u, spec, max_bytes)) is not None]
            if found:
                return found
        if time.time() >= until_s:
            log.info("round %d: no other update to read before the deadline", round_)
            return []
        wait()


def _fetched(client: ValidatorClient, round_: int, trainer: bytes, update: RoundUpdate,
             spec: Spec, max_bytes: int) -> list[np.ndarray] | None:
    try:
        blob = client.update_blob(round_, trainer)
    except Stopped:
        raise
    except ClientError as exc:
        log.warning("round %d: cannot read trainer %s's blob: %s", round_,
                    trainer.hex()[:16], exc)
        return None
    if blob is None or sha256(blob) != update.blob_hash:
        return None
    try:
        return decode_weights(blob, max_bytes=max_bytes, max_tensors=len(spec), expected=spec)
    except WeightsError as exc:
        log.warning("round %d: trainer %s's blob does not decode: %s", round_,
                    trainer.hex()[:16], exc)
        return None
