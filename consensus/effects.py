"""What the sans-IO replica asks its host to do, and the events the host feeds back.

The replica never touches a socket, a clock or a disk. It returns a list of effects
that the host carries out in order; in particular a :class:`Persist` always comes
before the :class:`Send` of anything it signed, so a crash between the two can only
lose a message, never make the replica sign something conflicting after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from flobc.consensus.messages import Block, CommitCertificate, Message


@dataclass(frozen=True)
class Send:
    """Send ``message`` to replica ``to``, or to every other replica when ``to`` is None."""

    message: Message
    to: int | None = None


@dataclass(frozen=True)
class Persist:
    """Durably write (synced) consensus records before anything after it happens."""

    puts: tuple[tuple[bytes, bytes], ...] = ()
    deletes: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Execute:
    """Execute a committed block and store it with its certificate in one atomic batch.

    The host answers with :meth:`Replica.on_executed` (height and new state root).
    """

    block: Block
    certificate: CommitCertificate


@dataclass(frozen=True)
class SetTimer:
    """Arm (or re-arm) the timer ``name`` to fire after ``delay_ms``."""

    name: str
    delay_ms: int


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class StableCheckpoint:
    """A checkpoint became stable; the host stores its certificate and may prune."""

    seq: int
    certificate_bytes: bytes


Effect = Send | Persist | Execute | SetTimer | CancelTimer | StableCheckpoint
