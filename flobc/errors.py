"""The one base of the errors flobc raises on purpose, and a base per floor of the house.

Catch ``FlobcError`` to handle any failure the project reports (a bad configuration, bad
input from the network, a refused transaction); anything else escaping is a bug. Each
floor subclasses its own base for its specific errors, so a caller can also catch just
the floor it talks to; ``InputError`` marks input that is wrong (bytes, files, settings,
queries) whatever floor reads it, and is a ``ValueError`` as such errors always were.

Errors cross module boundaries as exceptions. Two kinds of strings are not errors and
stay strings: a transaction's check or execution result (the reason a transaction is
refused or failed is data, recorded on chain and answered to the submitter), and the
reason a certificate or message fails a consensus check (the replica logs it and drops
the message; nothing is wrong with the replica itself).
"""

from __future__ import annotations


class FlobcError(Exception):
    """Base of every error flobc raises on purpose."""


class InputError(FlobcError, ValueError):
    """Input that is malformed, oversized or inconsistent, named in the message."""


class StorageError(FlobcError):
    """The ledger or state database cannot do what was asked."""


class ConsensusError(FlobcError):
    """A consensus message, peer or served proof that breaks the protocol's rules."""


class ValidatorError(FlobcError):
    """A validator node, its evaluator or its query API that cannot go on as asked."""


class TrainerError(FlobcError):
    """A problem the trainer cannot get past by waiting: it stops and says why."""


class LaunchError(FlobcError):
    """A command or local launcher that cannot go on: reported to the user as one line."""
