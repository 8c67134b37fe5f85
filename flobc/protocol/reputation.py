"""Trust scores in integer millionths: rewards, penalties, exclusion and shares.

Trust is an integer so that every validator computes the same score and writes the same
state bytes. A reward moves trust part of the way to 1, a penalty part of the way to 0
(rounded so that a positive penalty always lowers a positive trust). A trainer only
ever changes its own score: a newcomer starts at the initial trust and changes no one
else's.
"""

from __future__ import annotations

from collections.abc import Sequence

MICRO = 1_000_000


def rewarded(trust: int, reward: int) -> int:
    """``t + reward * (1 - t)``, rounded down; stays within 0..MICRO."""
    return trust + reward * (MICRO - trust) // MICRO


def penalised(trust: int, penalty: int) -> int:
    """``t - penalty * t``, the decrease rounded up; stays within 0..MICRO."""
    return trust - -(-penalty * trust // MICRO)


def is_excluded(trust: int, threshold: int) -> bool:
    return trust < threshold


def shares_micro(amounts: Sequence[int]) -> list[int] | None:
    """Each amount's share of the total in millionths (rounded down), or None when the
    total is zero: there is nothing to share, and never a division by zero."""
    total = sum(amounts)
    if total <= 0:
        return None
    return [a * MICRO // total for a in amounts]
