"""Application state: plain key/value pairs under a Merkle root, with proofs.

Three tables hold it. ``state`` maps key to value, so an application scans its own key
prefixes in key order. ``mbucket`` maps bucket (2 bytes) + key to the leaf hash, so a
bucket's leaves are one prefix scan away. ``mnode`` holds the root of every non-empty
bucket. The 16 levels of the top tree above the buckets live only in memory: they are
rebuilt from the bucket roots on open, so a block writes one node per dirty bucket
rather than its whole path. A snapshot keeps a copy of those levels, so it can produce
proofs for the root it saw while later blocks commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import itemgetter
from types import TracebackType

from flobc.storage.db import Batch, Database, Snapshot
from flobc.storage.merkle import (
    EMPTY_ROOT,
    EMPTY_SUBTREE,
    MAX_KEY_SIZE,
    TOP_DEPTH,
    MerkleProof,
    bucket_of,
    bucket_root,
    leaf_hash,
    make_proof,
    top_siblings,
    update_top,
)

VALUES, BUCKET_INDEX, NODES = "state", "mbucket", "mnode"
def _apply_updates(levels: list[dict[int, bytes]], updates: list[dict[int, bytes]]) -> None:
    """Write ``update_top``'s new node hashes into the in-memory levels."""
    for level, nodes in enumerate(updates):
        cached, empty = levels[level], EMPTY_SUBTREE[level]
        for index, h in nodes.items():
            if h == empty:
                cached.pop(index, None)
            else:
                cached[index] = h


def _bucket_prefix(bucket: int) -> bytes:
    return bucket.to_bytes(2, "big")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"state key must be bytes, got {type(key).__name__}")
    if not 0 < len(key) <= MAX_KEY_SIZE:
        raise ValueError(f"state key must be 1 to {MAX_KEY_SIZE} bytes, got {len(key)}")


class AppState:
    """The committed application state of one database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._values = db.table(VALUES)
        self._index = db.table(BUCKET_INDEX)
        self._node_table = db.table(NODES)
        self._levels: list[dict[int, bytes]] = [{} for _ in range(TOP_DEPTH + 1)]
        buckets = {int.from_bytes(k, "big"): h for k, h in self._node_table.items()}
        _apply_updates(self._levels, update_top(buckets, self._levels))

    @property
    def root(self) -> bytes:
        return self._levels[TOP_DEPTH].get(0, EMPTY_ROOT)

    def get(self, key: bytes) -> bytes | None:
        return self._values.get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._values.items(prefix)

    def overlay(self) -> StateOverlay:
        return StateOverlay(self)

    def stage(self, overlay: StateOverlay, batch: Batch) -> tuple[bytes, Callable[[], None]]:
        """Add ``overlay``'s writes and the Merkle updates they cause to ``batch``.

        Returns the new root and ``apply``, to call once the batch is written, which
        brings the in-memory tree up to date; until then nothing visible has changed.
        """
        if overlay._base is not self:
            raise ValueError("overlay was made from another state")
        changed: dict[int, dict[bytes, bytes | None]] = {}
        for key, value in overlay._writes.items():
            bucket = bucket_of(key)
            index_key = _bucket_prefix(bucket) + key
            leaf = None
            if value is None:
                batch.delete(self._values, key)
                batch.delete(self._index, index_key)
            else:
                leaf = leaf_hash(key, value)
                batch.put(self._values, key, value)
                batch.put(self._index, index_key, leaf)
            changed.setdefault(bucket, {})[index_key] = leaf
        roots = {bucket: self._bucket_root(bucket, leaves) for bucket, leaves in changed.items()}
        updates = update_top(roots, self._levels)
        for bucket, h in roots.items():
            if h == EMPTY_SUBTREE[0]:
                batch.delete(self._node_table, _bucket_prefix(bucket))
            else:
                batch.put(self._node_table, _bucket_prefix(bucket), h)
        base_root = self.root

        def apply() -> None:
            if self.root != base_root:
                raise RuntimeError("state changed after this block was staged")
            _apply_updates(self._levels, updates)

        return updates[TOP_DEPTH].get(0, base_root), apply

    def _bucket_root(self, bucket: int, changes: dict[bytes, bytes | None]) -> bytes:
        """Root of ``bucket`` once ``changes`` (index key -> leaf, None = gone) apply."""
        leaves: dict[bytes, bytes | None] = dict(self._index.items(_bucket_prefix(bucket)))
        leaves.update(changes)
        return bucket_root([leaf for _, leaf in sorted(leaves.items()) if leaf is not None])

    def snapshot(self) -> StateSnapshot:
        return StateSnapshot(self._db.snapshot(), [dict(level) for level in self._levels])

    def prove(self, key: bytes) -> MerkleProof | None:
        """Proof of ``key``'s current value against :attr:`root`; None when absent."""
        with self.snapshot() as snapshot:
            return snapshot.prove(key)


class StateSnapshot:
    """The state as it was when taken: reads and proofs stay valid for its root."""

    def __init__(self, snapshot: Snapshot, levels: list[dict[int, bytes]]) -> None:
        self._snapshot = snapshot
        self._values = snapshot.table(VALUES)
        self._index = snapshot.table(BUCKET_INDEX)
        self._levels = levels

    def _node(self, level: int, index: int) -> bytes:
        return self._levels[level].get(index, EMPTY_SUBTREE[level])

    @property
    def root(self) -> bytes:
        return self._node(TOP_DEPTH, 0)

    def get(self, key: bytes) -> bytes | None:
        return self._values.get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._values.items(prefix)

    def prove(self, key: bytes) -> MerkleProof | None:
        """Proof of ``key``'s value against :attr:`root`; None when absent."""
        bucket = bucket_of(key)
        leaves = [(k[2:], leaf) for k, leaf in self._index.items(_bucket_prefix(bucket))]
        return make_proof(key, leaves, top_siblings(bucket, self._node))

    def release(self) -> None:
        self._snapshot.release()

    def __enter__(self) -> StateSnapshot:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class StateOverlay:
    """The state as seen while executing one block: committed state plus pending writes."""

    def __init__(self, base: AppState) -> None:
        self._base = base
        self._writes: dict[bytes, bytes | None] = {}

    @property
    def writes(self) -> dict[bytes, bytes | None]:
        """Pending writes; None marks a delete."""
        return dict(self._writes)

    def get(self, key: bytes) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        return self._base.get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Committed and pending pairs merged, in key order, deletes left out."""
        pending = sorted(((k, v) for k, v in self._writes.items() if k.startswith(prefix)),
                         key=itemgetter(0))
        i = 0
        for key, value in self._base.items(prefix):
            while i < len(pending) and pending[i][0] < key:
                yield from _present(pending[i])
                i += 1
            if i < len(pending) and pending[i][0] == key:
                yield from _present(pending[i])
                i += 1
            else:
                yield key, value
        for pair in pending[i:]:
            yield from _present(pair)

    def put(self, key: bytes, value: bytes) -> None:
        _check_key(key)
        if not isinstance(value, bytes):
            raise TypeError(f"state value must be bytes, got {type(value).__name__}")
        self._writes[key] = value

    def delete(self, key: bytes) -> None:
        _check_key(key)
        self._writes[key] = None


def _present(pair: tuple[bytes, bytes | None]) -> Iterator[tuple[bytes, bytes]]:
    key, value = pair
    if value is not None:
        yield key, value
