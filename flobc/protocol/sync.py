"""The sync schemes' rules: which bases an update may build on, and when a round ends.

BSP trains every round on the latest version and waits for every expected trainer;
SSP(s) accepts bases up to s versions old and waits for a fraction of them; BAP also
accepts stale bases (each accepted update is merged at once, see ``rounds``) and uses
its rounds only to pace trainers. Every scheme ends a round at its deadline in block
time, so a trainer that left can delay a round by at most that.
"""

from __future__ import annotations

from flobc.protocol.settings import MICRO, FLConfig
from flobc.protocol.state import Meta


def base_problem(config: FLConfig, version: int, base: int) -> str | None:
    """Why an update may not build on version ``base`` while ``version`` is the latest."""
    if base > version:
        return f"base version {base} does not exist yet (the latest is {version})"
    if config.sync == "bsp" and base != version:
        return f"base version {base} is not the latest version {version} (bsp)"
    if version - base > config.staleness:
        return (f"base version {base} is {version - base} versions behind the latest "
                f"{version}; the limit is {config.staleness} ({config.sync})")
    return None


def enough_decided(config: FLConfig, expected: int, decided: int) -> bool:
    """Whether a round may close before its deadline: BSP and BAP once every expected
    update is decided, SSP once ``ssp_min_fraction`` of them are (rounded up). A round
    that expects no one waits for its deadline."""
    if expected == 0:
        return False
    if config.sync == "ssp":
        needed = -(-config.ssp_min_fraction_micro * expected // MICRO)
        return decided >= max(needed, 1)
    return decided >= expected


def extends_at_deadline(config: FLConfig, meta: Meta, arrived: int) -> bool:
    """SSP gives a round whose deadline passed with fewer than half of the expected
    updates arrived one more deadline, once."""
    return config.sync == "ssp" and not meta.extended and 2 * arrived < len(meta.expected)
