"""A LevelDB database split into named tables, written through atomic batches.

Every component keeps its data in its own table, so a table is a key prefix:
``name`` followed by a NUL byte. Names may not contain NUL, which makes the set of
prefixes prefix-free: no key of one table can ever be read through another. Whatever
must change together (a block and its effects) goes into one :class:`Batch`, which
LevelDB applies all or nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import plyvel


def _prefix(name: str) -> bytes:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"table name must be a non-empty string without NUL, got {name!r}")
    try:
        return name.encode() + b"\x00"
    except UnicodeEncodeError:
        raise ValueError(f"table name must be encodable as UTF-8, got {name!r}") from None


def _successor(prefix: bytes) -> bytes:
    """The least key above every key that starts with ``prefix`` (a table prefix ends in
    NUL, so stripping trailing 0xff bytes never empties it)."""
    stem = prefix.rstrip(b"\xff")
    return stem[:-1] + bytes([stem[-1] + 1])


class ReadTable:
    """Read access to one table, in the live database or in a snapshot."""

    def __init__(self, reader: Any, name: str) -> None:
        self._reader = reader
        self.name = name
        self._prefix = _prefix(name)

    def get(self, key: bytes) -> bytes | None:
        return self._reader.get(self._prefix + key)

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def items(self, prefix: bytes = b"", reverse: bool = False
              ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs whose key starts with ``prefix``, in key order, table prefix removed."""
        start, cut = self._prefix + prefix, len(self._prefix)
        if reverse:
            # plyvel 1.5 drops a key equal to the prefix from reverse prefix scans, so
            # bound the scan above only and stop at the first key outside the prefix.
            iterator = self._reader.iterator(stop=_successor(start), reverse=True)
        else:
            iterator = self._reader.iterator(prefix=start)
        with iterator:
            for key, value in iterator:
                if not key.startswith(start):
                    return
                yield key[cut:], value


class Table(ReadTable):
    """A table of the live database. Single writes here; related writes go in a Batch."""

    def __init__(self, db: plyvel.DB, name: str) -> None:
        super().__init__(db, name)
        self._db = db
        self._view = db.prefixed_db(self._prefix)

    def items(self, prefix: bytes = b"", reverse: bool = False
              ) -> Iterator[tuple[bytes, bytes]]:
        # Forward scans go through a plyvel prefixed view, which strips the table prefix
        # in C: the Merkle tree scans hundreds of small buckets per block.
        if reverse:
            return super().items(prefix, reverse=True)
        return self._view.iterator(prefix=prefix)

    def put(self, key: bytes, value: bytes, sync: bool = True) -> None:
        self._db.put(self._prefix + key, value, sync=sync)

    def delete(self, key: bytes, sync: bool = True) -> None:
        self._db.delete(self._prefix + key, sync=sync)


class Batch:
    """Writes to any tables of one database, applied together by :meth:`Database.write`."""

    def __init__(self, db: plyvel.DB) -> None:
        self._db = db
        self._ops: list[tuple[bytes, bytes | None]] = []

    def _key(self, table: Table, key: bytes) -> bytes:
        if table._db is not self._db:
            raise ValueError(f"table {table.name!r} belongs to another database")
        return table._prefix + key

    def put(self, table: Table, key: bytes, value: bytes) -> None:
        self._ops.append((self._key(table, key), value))

    def delete(self, table: Table, key: bytes) -> None:
        self._ops.append((self._key(table, key), None))

    def __len__(self) -> int:
        return len(self._ops)


class Snapshot:
    """A frozen view of the whole database; release it when done (or use ``with``)."""

    def __init__(self, snapshot: Any) -> None:
        self._snapshot = snapshot

    def table(self, name: str) -> ReadTable:
        return ReadTable(self._snapshot, name)

    def release(self) -> None:
        self._snapshot.release()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class Database:
    """One LevelDB directory, created on first open."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = plyvel.DB(os.fspath(path), create_if_missing=True,
                             bloom_filter_bits=10, lru_cache_size=32 * 1024 * 1024,
                             write_buffer_size=64 * 1024 * 1024)

    def table(self, name: str) -> Table:
        return Table(self._db, name)

    def batch(self) -> Batch:
        return Batch(self._db)

    def write(self, batch: Batch, sync: bool = True) -> None:
        """Apply every operation of ``batch`` atomically: all of them or, on error, none."""
        if batch._db is not self._db:
            raise ValueError("batch belongs to another database")
        with self._db.write_batch(transaction=True, sync=sync) as wb:
            for key, value in batch._ops:
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)

    def snapshot(self) -> Snapshot:
        return Snapshot(self._db.snapshot())

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
