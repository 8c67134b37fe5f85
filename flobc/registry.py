"""Named choices for one variation point (an aggregator, a sync scheme, an attack...).

Each variation point keeps one ``Registry``; a new choice is one class registered under
its name, and everything that offers the choices (genesis parsing, the command line,
the docs) reads them from the registry, never from a list written by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from flobc.errors import FlobcError

T = TypeVar("T")


class UnknownChoice(FlobcError, KeyError):
    """A name that no choice of a registry has."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Choices by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        """What a choice is, for messages: ``"aggregator"``."""
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator registering what it decorates under ``name``."""
        return lambda item: self.add(name, item)

    def remove(self, name: str) -> None:
        """Forget a choice (a test's own, once the test is over)."""
        del self._items[name]

    def get(self, name: str) -> T:
        """The choice named ``name``; UnknownChoice lists the known names."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownChoice(f"unknown {self.kind} {name!r}; known: "
                                f"{', '.join(self._items)}") from None

    def name_of(self, item: object) -> str:
        """The name ``item`` is registered under."""
        return next(name for name, known in self._items.items() if known is item)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
