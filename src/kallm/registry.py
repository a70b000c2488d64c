"""Name -> object registries for everything a user chooses by name (bases, variants, tasks)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kallm.errors import KallmError

T = TypeVar("T")


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """'unknown basis 'chebyshv2'; did you mean 'chebyshev2'? Valid: ...'"""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} Valid {kind} names: {', '.join(sorted(valid))}"


class Registry(Generic[T]):
    """A small named registry. Adding an entry is one decorator on the thing being registered."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def unregister(self, name: str) -> T:
        """Remove an entry and return it (tests and plugins that register something for a while)."""
        obj = self.get(name)
        del self._entries[name]
        return obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KallmError(unknown_name_message(self.kind, name, list(self._entries))) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
