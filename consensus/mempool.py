"""The mempool: admitted transactions waiting for a block, in arrival order.

Bounded in count and bytes; deduplicated by transaction hash. Admission checks
(signature, replay against committed state) happen before :meth:`Mempool.add`, in
the host, because they need the application.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

FULL = "mempool is full"
"""The refusal a client should retry later (the HTTP API answers it with 503)."""


class Mempool:
    def __init__(self, max_txs: int = 10_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self._txs: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    @property
    def full(self) -> bool:
        return len(self._txs) >= self.max_txs or self._bytes >= self.max_bytes

    def add(self, tx_hash: bytes, tx: bytes) -> str | None:
        """Add a transaction; returns why it was not added, or None."""
        if tx_hash in self._txs:
            return "transaction already in the mempool"
        if self.full or self._bytes + len(tx) > self.max_bytes:
            return FULL
        self._txs[tx_hash] = tx
        self._bytes += len(tx)
        return None

    def remove(self, tx_hashes: Iterable[bytes]) -> None:
        for h in tx_hashes:
            tx = self._txs.pop(h, None)
            if tx is not None:
                self._bytes -= len(tx)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(hash, tx) in arrival order."""
        return iter(self._txs.items())

    def batch(self, max_txs: int, max_bytes: int,
              skip: set[bytes] | frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
        """The oldest transactions not in ``skip``, within the count and byte bounds."""
        out: list[tuple[bytes, bytes]] = []
        size = 0
        for h, tx in self._txs.items():
            if h in skip:
                continue
            if len(out) >= max_txs or size + len(tx) > max_bytes:
                break
            out.append((h, tx))
            size += len(tx)
        return out
