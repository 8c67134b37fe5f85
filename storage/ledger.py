"""The node's whole store: blocks with their certificates, the transaction index, the
application state, consensus records, checkpoint certificates and blobs.

A transaction has one index entry, for the block where it took effect (its first
inclusion). A later block that includes it again (a new primary re-proposing it, say)
is recorded under ``duplicates`` and never rewrites that entry.

A block and everything it causes (meta, transaction index, state writes, Merkle nodes)
go to disk in one synced atomic batch, so after a crash the ledger holds either the
whole block or none of it. Heights and sequence numbers are stored as 8-byte
big-endian keys so that iteration order is numeric order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from flobc import codec
from flobc.crypto import HASH_SIZE, sha256
from flobc.storage.db import Database, Table
from flobc.storage.state import AppState, StateOverlay

ZERO_HASH = bytes(HASH_SIZE)


def _u64(value: int, name: str) -> bytes:
    if type(value) is not int or not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
    return value.to_bytes(8, "big")


def _get(table: Table, number: int) -> bytes | None:
    """Look up by height or sequence number; None for a number that cannot exist."""
    if type(number) is not int or not 0 <= number < 2**64:
        return None
    return table.get(number.to_bytes(8, "big"))


@dataclass(frozen=True)
class BlockMeta:
    """What a block committed to, kept apart from the block bytes for cheap lookups."""

    height: int
    block_hash: bytes
    prev_hash: bytes
    state_root: bytes
    time_ms: int
    tx_count: int


@dataclass(frozen=True)
class TxLocation:
    """Where a committed transaction landed and what executing it returned."""

    height: int
    index: int
    result: bytes


class Ledger:
    """All of one node's durable data, in one LevelDB directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.db = Database(path)
        self.state = AppState(self.db)
        self._blocks = self.db.table("blocks")
        self._certificates = self.db.table("certificates")
        self._meta = self.db.table("meta")
        self._txs = self.db.table("txs")
        self._duplicates = self.db.table("duplicates")
        self._records = self.db.table("records")
        self._checkpoints = self.db.table("checkpoints")
        self._blobs = self.db.table("blobs")
        last = next(self._meta.items(reverse=True), None)
        self._height = 0 if last is None else int.from_bytes(last[0], "big")

    @property
    def height(self) -> int:
        """Last committed height; 0 before the first block."""
        return self._height

    # --- blocks ---------------------------------------------------------------------

    def commit_block(self, height: int, block: bytes, certificate: bytes, block_hash: bytes,
                     time_ms: int, tx_hashes: list[bytes], results: list[bytes],
                     overlay: StateOverlay, blobs: dict[bytes, bytes] | None = None) -> bytes:
        """Store block ``height`` and its effects in one synced batch; return the new root.

        ``blobs`` (digest -> data) are blobs the block created, stored in the same batch.

        Refuses, writing nothing, anything but the next height or mismatched lists.
        """
        if height != self._height + 1:
            raise ValueError(f"cannot commit height {height}: next height is {self._height + 1}")
        if len(block_hash) != HASH_SIZE:
            raise ValueError(f"block_hash must be {HASH_SIZE} bytes, got {len(block_hash)}")
        if len(tx_hashes) != len(results):
            raise ValueError(f"{len(tx_hashes)} tx hashes but {len(results)} results")
        if type(time_ms) is not int or time_ms < 0:
            raise ValueError(f"time_ms must be a non-negative integer, got {time_ms!r}")
        key = _u64(height, "height")
        previous = self.meta(height - 1)
        prev_hash = ZERO_HASH if previous is None else previous.block_hash
        batch = self.db.batch()
        seen: set[bytes] = set()
        for index, (tx_hash, result) in enumerate(zip(tx_hashes, results, strict=True)):
            location = codec.pack([height, index, result])
            if tx_hash in seen or tx_hash in self._txs:
                batch.put(self._duplicates, tx_hash + key + index.to_bytes(4, "big"), location)
            else:
                batch.put(self._txs, tx_hash, location)
            seen.add(tx_hash)
        for digest, data in (blobs or {}).items():
            if sha256(data) != digest:
                raise ValueError("blob does not match its digest")
            batch.put(self._blobs, digest, data)
        root, apply = self.state.stage(overlay, batch)
        batch.put(self._blocks, key, block)
        batch.put(self._certificates, key, certificate)
        batch.put(self._meta, key,
                  codec.pack([block_hash, prev_hash, root, time_ms, len(tx_hashes)]))
        self.db.write(batch, sync=True)
        apply()
        self._height = height
        return root

    def block(self, height: int) -> bytes | None:
        return _get(self._blocks, height)

    def certificate(self, height: int) -> bytes | None:
        return _get(self._certificates, height)

    def meta(self, height: int) -> BlockMeta | None:
        raw = _get(self._meta, height)
        if raw is None:
            return None
        block_hash, prev_hash, state_root, time_ms, tx_count = codec.unpack(raw)
        return BlockMeta(height, block_hash, prev_hash, state_root, time_ms, tx_count)

    def tx(self, tx_hash: bytes) -> TxLocation | None:
        """Where the transaction took effect: its first inclusion in a committed block."""
        raw = self._txs.get(tx_hash)
        if raw is None:
            return None
        return TxLocation(*codec.unpack(raw))

    def tx_duplicates(self, tx_hash: bytes) -> list[TxLocation]:
        """Later inclusions of an already-committed transaction, in height order; each
        was skipped at execution."""
        if len(tx_hash) != HASH_SIZE:
            return []
        return [TxLocation(*codec.unpack(raw)) for _, raw in self._duplicates.items(tx_hash)]

    # --- consensus records, opaque to storage ---------------------------------------

    def write_records(self, puts: Iterable[tuple[bytes, bytes]], deletes: Iterable[bytes]
                      ) -> None:
        """Apply ``deletes`` then ``puts`` in one synced batch, so a crash never leaves half
        an update (a key in both ends up put)."""
        batch = self.db.batch()
        for key in deletes:
            batch.delete(self._records, key)
        for key, value in puts:
            batch.put(self._records, key, value)
        self.db.write(batch, sync=True)

    def records(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._records.items(prefix)

    def record(self, key: bytes) -> bytes | None:
        return self._records.get(key)

    # --- checkpoint certificates ----------------------------------------------------

    def put_checkpoint(self, seq: int, certificate: bytes) -> None:
        self._checkpoints.put(_u64(seq, "seq"), certificate, sync=True)

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        last = next(self._checkpoints.items(reverse=True), None)
        if last is None:
            return None
        return int.from_bytes(last[0], "big"), last[1]

    def checkpoint(self, seq: int) -> bytes | None:
        return _get(self._checkpoints, seq)

    # --- content-addressed blobs ----------------------------------------------------

    def put_blob(self, data: bytes) -> bytes:
        """Store ``data`` under its SHA-256 and return it; storing it again is a no-op."""
        digest = sha256(data)
        if digest not in self._blobs:
            self._blobs.put(digest, data, sync=True)
        return digest

    def blob(self, digest: bytes) -> bytes | None:
        return self._blobs.get(digest)

    def has_blob(self, digest: bytes) -> bool:
        return digest in self._blobs

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
