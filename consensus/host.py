"""ReplicaHost: carries out a replica's effects against storage and an application.

The host is the one piece that both the asyncio node and the deterministic simulator
run, so that the code under simulation is the code in production. It is synchronous
and single-threaded: the caller feeds it frames, timer firings and client transactions,
and gives it three callbacks for I/O (send a frame, arm a timer, cancel a timer) and a
clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flobc.consensus.application import Application
from flobc.config import ConsensusParams
from flobc.crypto import PrivateKey

SendFn = Callable[[int | None, bytes], None]
"""send(to, frame): to a replica index, or to every other replica when to is None."""
TimerFn = Callable[[str, int], None]
"""set_timer(name, delay_ms): (re)arm a named timer; firing calls host.on_timer(name)."""
CancelFn = Callable[[str], None]
ClockFn = Callable[[], int]
"""now_ms(): wall-clock milliseconds (block time stamps and skew checks)."""


class ReplicaHost:
    """One validator's consensus core: replica + mempool + ledger + application."""

    def __init__(self, *, chain_id: str, public_keys: tuple[bytes, ...], index: int,
                 key: PrivateKey, params: ConsensusParams, ledger: Any, app: Application,
                 send: SendFn, set_timer: TimerFn, cancel_timer: CancelFn, now_ms: ClockFn,
                 mempool_max_txs: int = 100_000) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Recover from the ledger's consensus records and arm timers. Call once."""
        raise NotImplementedError

    def on_frame(self, sender: int, frame: bytes) -> None:
        """A frame from peer ``sender``. Malformed or unverifiable frames are dropped."""
        raise NotImplementedError

    def on_timer(self, name: str) -> None:
        raise NotImplementedError

    def submit_tx(self, tx: bytes) -> tuple[bytes, str | None]:
        """Admit a client transaction: returns (tx_hash, None) or (tx_hash, reason refused)."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """height, view, primary, state_root (hex), last_commit_time_ms, mempool_size,
        stable_checkpoint, in_view_change."""
        raise NotImplementedError
