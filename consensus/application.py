"""The interface through which consensus drives an application (like ABCI).

Consensus orders opaque transactions; the application gives them meaning. It must be
deterministic: the same blocks on the same state give the same writes on every
validator, so every validator computes the same state root.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from flobc.crypto import sha256


class KeyReader(Protocol):
    """Read access to single keys of application state (a dict will do)."""

    def get(self, key: bytes) -> bytes | None: ...


class StateReader(KeyReader, Protocol):
    """Read access to application state."""

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


class StateWriter(StateReader, Protocol):
    """State as seen while executing a block: reads see this block's own writes."""

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


class BlobReader(Protocol):
    def blob(self, digest: bytes) -> bytes | None: ...


class CommittedState:
    """Committed state and stored blobs, read-only: what ``check_tx`` and queries see."""

    def __init__(self, ledger: Any, extra_blobs: dict[bytes, bytes] | None = None) -> None:
        self._ledger = ledger
        self._extra = extra_blobs or {}

    def get(self, key: bytes) -> bytes | None:
        return self._ledger.state.get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._ledger.state.items(prefix)

    def blob(self, digest: bytes) -> bytes | None:
        """A stored blob, or one that arrived with the transaction being checked."""
        return self._extra.get(digest) or self._ledger.blob(digest)


class BlockState(CommittedState):
    """What a block's execution sees and writes.

    State writes go to ``overlay``; new blobs (say, an aggregated model) are kept here
    and stored in the same atomic batch as the block. ``request_checkpoint`` asks
    consensus to certify the state root at this height (a new model version, say).
    """

    def __init__(self, ledger: Any, overlay: Any) -> None:
        super().__init__(ledger)
        self._overlay = overlay
        self.new_blobs: dict[bytes, bytes] = {}
        self.checkpoint_requested = False

    def get(self, key: bytes) -> bytes | None:
        return self._overlay.get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._overlay.items(prefix)

    def put(self, key: bytes, value: bytes) -> None:
        self._overlay.put(key, value)

    def delete(self, key: bytes) -> None:
        self._overlay.delete(key)

    def blob(self, digest: bytes) -> bytes | None:
        return self.new_blobs.get(digest) or self._ledger.blob(digest)

    def put_blob(self, data: bytes) -> bytes:
        digest = sha256(data)
        self.new_blobs[digest] = data
        return digest

    def request_checkpoint(self) -> None:
        self.checkpoint_requested = True


class Application(Protocol):
    """What a replicated application implements."""

    @property
    def max_blob_bytes(self) -> int:
        """The largest blob a transaction may refer to: what a validator accepts from its
        peers when a blob travels in chunks (0 when no transaction ever refers to one)."""
        ...

    def required_blobs(self, tx: bytes) -> list[bytes]:
        """Hashes of the blobs ``tx`` refers to: a validator holds them before it votes for
        a block carrying ``tx`` (data availability), and before it executes one."""
        ...

    def check_tx(self, tx: bytes, state: CommittedState) -> str | None:
        """Return why ``tx`` may not enter the mempool, or None when it may.

        Called before a transaction is gossiped or proposed; cheap checks only
        (size, decoding, signature, replay against committed state).
        """
        ...

    def execute_block(self, height: int, time_ms: int, txs: Sequence[bytes],
                      state: BlockState) -> list[str | None]:
        """Apply a committed block; return, per transaction, None or why it was skipped.

        ``time_ms`` is block time: monotone, the same on every validator. A transaction
        that is invalid at execution time is skipped, never raises.
        """
        ...

    def query(self, path: str, params: dict[str, str], state: CommittedState) -> Any:
        """Answer a read-only query about committed state (JSON-serialisable)."""
        ...
