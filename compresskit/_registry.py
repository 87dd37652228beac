"""One registry class for everything a user or plugin adds by name: models, losses, channel rules, resizers.

Every registry behaves the same way:

* ``register(key, obj, replace=False)``: a key taken by another object raises
  :class:`AlreadyRegisteredError` (always the same type and wording); registering the same object again is
  a no-op; ``replace=True`` replaces.
* ``get(key)`` / ``names()`` / ``key in registry`` discover the installed plugins first (once, through
  :func:`compresskit.plugins.ensure_plugins`), so a plugin's names are there without an explicit
  ``ck.load_plugins()``. ``get`` of an unknown key raises a ``KeyError`` listing the registered names
  and any plugin that failed to load.
* ``snapshot()`` is a context manager that puts the registry back as it was (tests use it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

from compresskit.plugins import ensure_plugins, plugin_errors

__all__ = ["Registry", "AlreadyRegisteredError"]

V = TypeVar("V")


class AlreadyRegisteredError(ValueError):
    """A key is already registered to another object (pass ``replace=True`` to replace it)."""


def describe(obj: Any) -> str:
    """``module.qualname`` of a registered object (what error messages name)."""
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', None) or repr(obj)}"


class Registry(Generic[V]):
    """A table ``key → object`` of one ``kind`` (``"model"``, ``"loss"``, ``"channel rule"``...).

    ``identity(obj)`` is what makes two registrations "the same object" (default: the object itself; the
    model registry compares factories). ``plugins=False`` makes reads skip plugin discovery.
    """

    def __init__(self, kind: str, *, identity: Callable[[V], Any] | None = None, plugins: bool = True):
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Registry: kind must be a non-empty string, got {kind!r}")
        self.kind = kind
        self._identity = identity or (lambda obj: obj)
        self._plugins = plugins
        self._items: dict[Hashable, V] = {}

    # -- writing -------------------------------------------------------------------------------------
    def register(self, key: Hashable, obj: V, *, replace: bool = False) -> V:
        """Store ``obj`` under ``key`` and return it; a key held by another object needs ``replace=True``."""
        try:
            old = self._items.get(key, _MISSING)
        except TypeError:
            raise TypeError(f"register {self.kind}: the key must be hashable, got {key!r}") from None
        if old is not _MISSING and not replace and self._identity(old) is not self._identity(obj):
            raise AlreadyRegisteredError(
                f"{self.kind} {_show(key)} is already registered ({describe(self._identity(old))}); "
                "pass replace=True to replace it"
            )
        self._items[key] = obj
        return obj

    def decorator(self, who: str, name: Any, expected: str, *, replace: bool = False) -> Callable[[Any], Any]:
        """What ``register_<kind>(name)`` returns: a decorator that checks ``name`` (a non-empty string)
        and that the decorated object is callable (else TypeError naming ``who`` and ``expected``), stores
        it under ``name`` and returns it unchanged."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{who}: name must be a non-empty string, got {name!r}")

        def register(obj: Any) -> Any:
            if not callable(obj):
                raise TypeError(f"{who}({name!r}): expected {expected}, got {type(obj).__name__}")
            self.register(name, obj, replace=replace)
            return obj

        return register

    def unregister(self, key: Hashable) -> V | None:
        """Remove ``key``; returns what it held (``None`` if nothing)."""
        return self._items.pop(key, None)

    def clear(self) -> None:
        """Remove every entry (inside :meth:`snapshot`, to test against an empty registry)."""
        self._items.clear()

    # -- reading -------------------------------------------------------------------------------------
    def _discover(self) -> None:
        if self._plugins:
            ensure_plugins()

    def get(self, key: Hashable) -> V:
        """The object registered as ``key``; ``KeyError`` naming the registered keys otherwise."""
        self._discover()
        try:
            return self._items[key]
        except (KeyError, TypeError):
            pass
        errors = plugin_errors() if self._plugins else {}
        hint = f"; plugins that failed to load: {errors}" if errors else ""
        shown = ", ".join(_show(k) for k in self.names()) or "none"
        raise KeyError(f"unknown {self.kind} {_show(key)}; registered: {shown}{hint}")

    def find(self, key: Hashable) -> V | None:
        """The object registered as ``key``, or ``None`` (also for an unhashable key)."""
        self._discover()
        try:
            return self._items.get(key)
        except TypeError:
            return None

    def find_type(self, cls: type) -> V | None:
        """The object registered for ``cls`` or its nearest base class (method resolution order)."""
        self._discover()
        for base in cls.__mro__:
            if base in self._items:
                return self._items[base]
        return None

    def names(self) -> list[Any]:
        """The registered keys, sorted (strings by value, other keys by their description)."""
        self._discover()
        return sorted(self._items, key=lambda k: (not isinstance(k, str), _show(k)))

    def items(self) -> list[tuple[Any, V]]:
        """``(key, object)`` pairs, in registration order."""
        self._discover()
        return list(self._items.items())

    def __contains__(self, key: object) -> bool:
        return self.find(key) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} entries)"

    # -- tests -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Registry[V]]:
        """Undo every registration made inside the ``with`` block (the registry is restored on exit).

        It does not discover plugins itself: call :func:`compresskit.load_plugins` before entering when
        the code inside may be the first to need them, or their registrations are undone too.
        """
        saved = dict(self._items)
        try:
            yield self
        finally:
            self._items.clear()
            self._items.update(saved)


_MISSING = object()


def _show(key: Any) -> str:
    if isinstance(key, str):
        return repr(key)
    if isinstance(key, type) or callable(key):
        name = getattr(key, "__qualname__", None) or getattr(key, "__name__", None)
        if name and not type(key).__name__.startswith("OpOverload"):
            return name
    return str(key)
