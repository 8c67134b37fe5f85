"""The sync schemes: which bases an update may build on, and when a round ends.

A scheme is one class in ``SYNC_SCHEMES``, named by genesis (``app.sync``, or the
``name`` of an ``[app.sync]`` table with the scheme's settings). BSP trains every round
on the latest version and waits for every expected trainer; SSP(s) accepts bases up to
s versions old and waits for a fraction of them; BAP also accepts stale bases, merges
each accepted update at once (see ``rounds``) and uses its rounds only to pace
trainers. Every scheme ends a round at its deadline in block time, so a trainer that
left can delay a round by at most that.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from flobc.protocol.reputation import MICRO
from flobc.protocol.state import Meta
from flobc.registry import Registry


class SyncSettings(Protocol):
    """The genesis settings a scheme reads (``FLConfig`` has them)."""

    @property
    def sync(self) -> str: ...
    @property
    def staleness(self) -> int: ...
    @property
    def ssp_min_fraction_micro(self) -> int: ...


class SyncScheme:
    """One sync scheme. The defaults: bases up to ``staleness`` versions old, a round
    closing once every expected update is decided, no extension, and accepted updates
    aggregated when the round closes."""

    genesis_keys: ClassVar[dict[str, str]] = {"staleness": "staleness"}
    """Setting in ``[app.sync]`` -> the flat ``[app]`` setting that holds it."""
    merges_on_accept: ClassVar[bool] = False
    """Whether an accepted update is merged into the model at once (not at the close)."""

    def base_problem(self, config: SyncSettings, version: int, base: int) -> str | None:
        """Why an update may not build on version ``base`` while ``version`` is the latest."""
        if base > version:
            return f"base version {base} does not exist yet (the latest is {version})"
        if version - base > config.staleness:
            return (f"base version {base} is {version - base} versions behind the latest "
                    f"{version}; the limit is {config.staleness} ({config.sync})")
        return None

    def enough_decided(self, config: SyncSettings, expected: int, decided: int) -> bool:
        """Whether a round may close before its deadline. A round that expects no one
        waits for its deadline."""
        return expected > 0 and decided >= expected

    def extends_at_deadline(self, config: SyncSettings, meta: Meta, arrived: int) -> bool:
        """Whether a round whose deadline passed gets one more deadline."""
        return False


SYNC_SCHEMES: Registry[type[SyncScheme]] = Registry("sync scheme")


@SYNC_SCHEMES.register("bsp")
class BSP(SyncScheme):
    """Bulk synchronous: every update on the latest version."""

    genesis_keys: ClassVar[dict[str, str]] = {}

    def base_problem(self, config: SyncSettings, version: int, base: int) -> str | None:
        if base <= version and base != version:
            return f"base version {base} is not the latest version {version} (bsp)"
        return super().base_problem(config, version, base)


@SYNC_SCHEMES.register("ssp")
class SSP(SyncScheme):
    """Stale synchronous: closes once ``min_fraction`` of the expected updates are
    decided (rounded up), and extends a round once if fewer than half arrived."""

    genesis_keys: ClassVar[dict[str, str]] = {"staleness": "staleness",
                                              "min_fraction": "ssp_min_fraction"}

    def enough_decided(self, config: SyncSettings, expected: int, decided: int) -> bool:
        needed = -(-config.ssp_min_fraction_micro * expected // MICRO)
        return expected > 0 and decided >= max(needed, 1)

    def extends_at_deadline(self, config: SyncSettings, meta: Meta, arrived: int) -> bool:
        return not meta.extended and 2 * arrived < len(meta.expected)


@SYNC_SCHEMES.register("bap")
class BAP(SyncScheme):
    """Barrierless asynchronous: each accepted update merged at once, discounted by
    ``alpha`` per version of staleness."""

    genesis_keys: ClassVar[dict[str, str]] = {"staleness": "staleness", "alpha": "bap_alpha"}
    merges_on_accept: ClassVar[bool] = True
