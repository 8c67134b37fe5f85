"""What keeps a learning chain from making progress, in one place: the same figures go to
``/fl/status`` (which trainers print), to ``/metrics`` and, as they change, to the log.

A stall that can be refused up front is refused where it arises (an over-limit blob at
``testnet init`` or at submission); these are the ones that can only show later: rounds
that keep closing with no update, blobs that never arrive, evaluations that fail.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flobc.consensus.host import ReplicaHost
from flobc.protocol.state import read_meta, read_model
from flobc.validator.fl.voter import Voter


@dataclass(frozen=True)
class Health:
    """Zero everywhere when the chain learns as it should."""

    rounds_without_update: int
    """The latest rounds, in a row, that closed with no update in their model."""
    evaluation_failures: int
    """Updates and versions this validator could not evaluate since it started."""
    blobs_missing: int
    txs_waiting_for_blobs: int
    blocks_waiting_for_blobs: int
    txs_dropped_for_missing_blobs: int

    def warnings(self) -> list[str]:
        """One sentence per condition that holds, naming what to look at."""
        said = []
        if self.rounds_without_update:
            said.append(f"{self.rounds_without_update} round(s) in a row closed with no "
                        "update in the model: are trainers submitting, and are their "
                        "updates accepted?")
        if self.evaluation_failures:
            said.append(f"this validator could not evaluate {self.evaluation_failures} "
                        "update(s) or version(s); its log says why")
        if self.blocks_waiting_for_blobs:
            said.append(f"{self.blocks_waiting_for_blobs} committed block(s) wait here for "
                        f"{self.blobs_missing} missing blob(s)")
        if self.txs_dropped_for_missing_blobs:
            said.append(f"{self.txs_dropped_for_missing_blobs} update(s) were dropped here "
                        "because their blobs never arrived")
        return said

    def fields(self) -> dict[str, int]:
        return asdict(self)


IDLE_ROUNDS_COUNTED = 1000
"""How far back idle rounds are counted: enough to tell a stall, bounded per request."""


def rounds_without_update(state: Any, version: int) -> int:
    """Closed rounds in a row, up to ``version``, whose model took no update."""
    count = 0
    while version - count > 0 and count < IDLE_ROUNDS_COUNTED:
        record = read_model(state, version - count)
        if record is None or record.updates:
            break
        count += 1
    return count


def learning_health(host: ReplicaHost, voter: Voter) -> Health:
    """This validator's view of what stalls the learning chain now."""
    state = host.committed
    meta = read_meta(state)
    return Health(rounds_without_update=rounds_without_update(state, meta.version)
                  if meta is not None else 0,
                  evaluation_failures=voter.evaluation_failures,
                  **host.availability.stalls())
