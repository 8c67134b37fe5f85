"""The one base of the errors flobc raises on purpose, and a base per floor of the house.

Catch ``FlobcError`` to handle any failure the project reports (a bad configuration, bad
input from the network, a refused transaction); anything else escaping is a bug. Each
floor subclasses its own base for its specific errors, so a caller can also catch just
the floor it talks to.
"""

from __future__ import annotations


class FlobcError(Exception):
    """Base of every error flobc raises on purpose."""


class LaunchError(FlobcError):
    """A command or local launcher that cannot go on: reported to the user as one line."""
