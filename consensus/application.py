"""The interface through which consensus drives an application (like ABCI).

Consensus orders opaque transactions; the application gives them meaning. It must be
deterministic: the same blocks on the same state give the same writes on every
validator, so every validator computes the same state root.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class StateReader(Protocol):
    """Read access to application state."""

    def get(self, key: bytes) -> bytes | None: ...

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


class StateWriter(StateReader, Protocol):
    """State as seen while executing a block: reads see this block's own writes."""

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


class Application(Protocol):
    """What a replicated application implements."""

    def check_tx(self, tx: bytes, state: StateReader) -> str | None:
        """Return why ``tx`` may not enter the mempool, or None when it may.

        Called before a transaction is gossiped or proposed; cheap checks only
        (size, decoding, signature, replay against committed state).
        """
        ...

    def execute_block(self, height: int, time_ms: int, txs: Sequence[bytes],
                      state: StateWriter) -> list[str | None]:
        """Apply a committed block; return, per transaction, None or why it was skipped.

        ``time_ms`` is block time: monotone, the same on every validator. A transaction
        that is invalid at execution time is skipped, never raises.
        """
        ...

    def query(self, path: str, params: dict[str, str], state: StateReader) -> Any:
        """Answer a read-only query about committed state (JSON-serialisable)."""
        ...
