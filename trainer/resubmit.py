"""Seeing an accepted update through to the chain.

A 202 only means one validator holds the update in its mempool. If that validator dies
before it gossips the transaction, nobody else has it and the trainer would sit the
round out. So while the round is open the trainer asks the validators what they know
of its transaction; once the validator that accepted it no longer knows it (or does not
answer) and no validator has it committed or pending for ``RESUBMIT_AFTER_S``, the SAME
signed transaction and blob go to another validator. A second, different update is never
signed: the transaction hash stays the same, so the chain can take it at most once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from flobc.trainer.client import ClientError, Stopped, ValidatorClient, ValidatorRefused

log = logging.getLogger("flobc.trainer")

RESUBMIT_AFTER_S = 4.0
"""How long an accepted update may be unknown to its validator and absent everywhere else
before it is resubmitted: a few block intervals, so that re-gossip has had its chance and
a validator that is merely slow to answer is not taken for lost."""
CHECK_S = 0.5
"""Between two rounds of asking the validators about the transaction."""


def see_committed(client: ValidatorClient, tx: bytes, blob: bytes, tx_hash: str,
                  accepted_by: str, round_open: Callable[[], bool],
                  stop: threading.Event, rng: random.Random, *,
                  resubmit_after_s: float = RESUBMIT_AFTER_S) -> bool:
    """Wait until ``tx_hash`` is committed (True) or its round closes (False), resending
    the same ``tx`` and ``blob`` elsewhere whenever the validator holding it lost it."""
    lost_since: float | None = None
    while True:
        holder_says = client.tx_status_at(accepted_by, tx_hash)
        if holder_says == "committed":
            return True
        others = [client.tx_status_at(url, tx_hash) for url in client.urls
                  if url != accepted_by] if holder_says != "pending" else []
        if "committed" in others:
            return True
        if holder_says == "pending" or "pending" in others:
            lost_since = None
        elif lost_since is None:
            lost_since = time.monotonic()
        elif time.monotonic() - lost_since >= resubmit_after_s:
            if not round_open():
                return False
            accepted_by = _resubmit(client, tx, blob, tx_hash, accepted_by, resubmit_after_s)
            lost_since = None
        if not round_open():
            return False
        if stop.wait(rng.uniform(CHECK_S / 2, CHECK_S)):
            raise Stopped("stopping")


def _resubmit(client: ValidatorClient, tx: bytes, blob: bytes, tx_hash: str,
              lost_by: str, waited_s: float) -> str:
    """Send the same signed update to another validator; the one that now holds it."""
    try:
        again = client.submit_update_elsewhere(tx, blob, avoid=lost_by)
    except Stopped:
        raise
    except ValidatorRefused as exc:
        log.warning("update tx %s: resubmission refused by %s: %s", tx_hash, exc.url,
                    exc.detail)
        return lost_by
    except ClientError as exc:
        log.warning("update tx %s: resubmission failed: %s", tx_hash, exc)
        return lost_by
    if again != tx_hash:
        log.warning("update tx %s: %s answered hash %s for the same bytes", tx_hash,
                    client.current, again)
    log.info("update tx %s unknown to %s and committed nowhere after %.0f s: resubmitted "
             "the same signed update to %s", tx_hash, lost_by, waited_s,
             client.current)
    return client.current
