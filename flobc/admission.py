"""Admission to a bounded pool of connections, so that strangers cannot starve known clients.

A flood of idle or slow connections must not keep trainers and validators out. Each
address may hold at most ``per_address`` slots, and strangers together at most
``capacity - reserved``: the reserved slots stay free for known addresses (validators,
trainers), which may use the whole capacity and are not limited per address, since
several of them may share one host. Pure bookkeeping: the callers own the sockets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from flobc.errors import FlobcError

_MAPPED_V4 = "::ffff:"


class Refused(FlobcError):
    """No slot for this address; the message says which limit was reached."""


def normalize(address: str) -> str:
    """An IPv4-mapped IPv6 address as plain IPv4, so that both spellings count as one."""
    return address[len(_MAPPED_V4):] if address.startswith(_MAPPED_V4) else address


def host_of(peername: object) -> str:
    """The address part of a socket's peer name (``unknown`` when the socket has none)."""
    return normalize(str(peername[0])) if isinstance(peername, tuple) and peername else "unknown"


class Slot:
    """One admitted connection; ``release`` gives its slot back (once)."""

    def __init__(self, admission: Admission, address: str, stranger: bool) -> None:
        self._admission = admission
        self.address = address
        self.stranger = stranger
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release(self)


class Admission:
    """Counts slots per address against a capacity with a share kept for known addresses."""

    def __init__(self, capacity: int, per_address: int, reserved: int,
                 known: Iterable[str] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if not 1 <= per_address <= capacity:
            raise ValueError(f"per-address limit must be in 1..{capacity}, not {per_address}")
        if not 0 <= reserved < capacity:
            raise ValueError(f"reserved share must be in 0..{capacity - 1}, not {reserved}")
        self.capacity = capacity
        self.per_address = per_address
        self.reserved = reserved
        self.known = {normalize(a) for a in known}
        self._per_address: Counter[str] = Counter()
        self._total = 0
        self._strangers = 0

    @property
    def in_use(self) -> int:
        return self._total

    def learn(self, address: str) -> None:
        """Count ``address`` as known from now on (slots it already holds stay as they were)."""
        self.known.add(normalize(address))

    def admit(self, address: str) -> Slot:
        """A slot for a connection from ``address``, or Refused naming the limit reached."""
        address = normalize(address)
        if self._total >= self.capacity:
            raise Refused(f"all {self.capacity} connections are in use")
        stranger = address not in self.known
        if stranger:
            if self._per_address[address] >= self.per_address:
                raise Refused(f"{address} already holds {self.per_address} connections, "
                              f"the limit per address")
            if self._strangers >= self.capacity - self.reserved:
                raise Refused(f"the {self.capacity - self.reserved} connections open to "
                              f"unknown addresses are in use")
            self._strangers += 1
        self._per_address[address] += 1
        self._total += 1
        return Slot(self, address, stranger)

    def _release(self, slot: Slot) -> None:
        self._total -= 1
        self._strangers -= slot.stranger
        self._per_address[slot.address] -= 1
        if not self._per_address[slot.address]:
            del self._per_address[slot.address]
