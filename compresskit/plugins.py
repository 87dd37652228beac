"""Plugin discovery through the entry-point group ``compresskit.plugins`` (lazy, once).

A plugin's entry point names a callable ``register()`` that registers its models, channel rules, datasets
and losses (importing a plugin's modules registers nothing by itself). Discovery is lazy: the first lookup
in any registry, or the first :func:`compresskit.trace`, runs it (:func:`ensure_plugins`). A plugin that
fails to load is reported (warning + ``plugin_errors()``), never fatal.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

GROUP = "compresskit.plugins"

_loaded: dict[str, str] = {}  # plugin name -> "ok"
_errors: dict[str, str] = {}  # plugin name -> error message
_done = False


def load_plugins(force: bool = False) -> dict[str, str]:
    """Discover and register every installed plugin; returns {name: "ok" | error}."""
    global _done
    if _done and not force:
        return {**_loaded, **_errors}
    _done = True
    for ep in entry_points(group=GROUP):
        if ep.name in _loaded and not force:
            continue
        try:
            register = ep.load()
            if callable(register):
                register()
            _loaded[ep.name] = "ok"
            _errors.pop(ep.name, None)
        except Exception as e:  # a broken plugin must not break the core
            _errors[ep.name] = f"{type(e).__name__}: {e}"
            warnings.warn(f"compresskit plugin {ep.name!r} ({ep.value}) failed to load: {e}", stacklevel=2)
    return {**_loaded, **_errors}


def ensure_plugins() -> None:
    """Discover the installed plugins if that has not happened yet: the one place every registry lookup
    (models, losses, channel rules) and :func:`compresskit.trace` go through."""
    if not _done:
        load_plugins()


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to load, with their error."""
    return dict(_errors)
