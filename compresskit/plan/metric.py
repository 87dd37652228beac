"""Cost measures a target can name: ``"params"``, ``"macs"``, ``"latency"`` and any ``register_metric``.

A :class:`CostMeasure` carries both halves of a measure: ``cost(model, graph, example_inputs, **options)``
builds the :class:`~compresskit.plan.cost.CostModel` the planner predicts with (any widths, before
surgery), and ``measure(model, example_inputs, **options)`` measures a real model (the planner's
verification and the report). ``options`` are ``cache_dir`` (a folder the cost model may cache
measurements in) and ``repeats`` (timed runs); a function takes the ones it needs and ``**_`` for the rest.

``tolerance`` is the relative error the verification accepts (measured latency varies from run to run;
counts are exact), ``aliases`` are other words a target string may use (``"4x flops"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compresskit._registry import Registry
from compresskit.measure.counts import count_params
from compresskit.measure.macs import count_macs

__all__ = ["CostMeasure", "METRICS", "register_metric", "get_metric", "metric_name", "BUILTIN_METRICS"]


@dataclass(frozen=True)
class CostMeasure:
    """One cost measure: its cost model (planning) and its measurement (verification, report)."""

    name: str
    cost: Callable[..., Any]  # (model, graph, example_inputs, **options) -> CostModel
    measure: Callable[..., float]  # (model, example_inputs, **options) -> float
    aliases: tuple[str, ...] = ()
    unit: str = ""
    tolerance: float = 0.0

    def fingerprint(self) -> dict[str, Any]:
        from compresskit._registry import describe

        return {"name": self.name, "cost": describe(self.cost), "measure": describe(self.measure),
                "tolerance": self.tolerance}


#: name -> CostMeasure (aliases are looked up through :func:`metric_name`)
METRICS: Registry[CostMeasure] = Registry("metric")
_ALIASES: dict[str, str] = {}


def register_metric(name: str, *, cost: Callable[..., Any], measure: Callable[..., float],
                    aliases: tuple[str, ...] | list[str] = (), unit: str = "", tolerance: float = 0.0,
                    replace: bool = False) -> CostMeasure:
    """Register a cost measure under ``name`` (lower case); ``target="3x <name>"`` can then name it.

    ``cost(model, graph, example_inputs, **options) -> CostModel`` (a callable ``cost(widths)`` with
    ``full()``, and ``metric`` = ``name``), ``measure(model, example_inputs, **options) -> float``.
    """
    if not isinstance(name, str) or not name.isalpha() or name != name.lower():
        raise ValueError(f"register_metric: name must be a lower-case word (letters only, it is read from "
                         f"target strings such as '3x {name}'), got {name!r}")
    if not callable(cost) or not callable(measure):
        raise TypeError(f"register_metric({name!r}): cost and measure must be callables, got "
                        f"{type(cost).__name__} and {type(measure).__name__}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"register_metric({name!r}): tolerance must be in [0, 1), got {tolerance!r}")
    for alias in aliases:
        owner = _ALIASES.get(alias)
        taken = (owner is not None and owner != name) or (alias in METRICS._items and alias != name)
        if taken and not replace:
            raise ValueError(f"register_metric({name!r}): alias {alias!r} already names metric "
                             f"{owner or alias!r}; choose another or pass replace=True")
    entry = METRICS.register(name, CostMeasure(name, cost, measure, tuple(aliases), unit, float(tolerance)),
                             replace=replace)
    for alias in aliases:
        _ALIASES[alias] = name
    return entry


def metric_name(word: str) -> str | None:
    """The metric a word of a target string names (``"flops"`` → ``"macs"``), or None."""
    word = word.lower()
    for _ in range(2):  # the built-ins first; the plugins' names only when the word is not one of those
        if word in METRICS._items:
            return word
        if word in _ALIASES and _ALIASES[word] in METRICS._items:
            return _ALIASES[word]
        METRICS._discover()
    return None


def get_metric(name: str) -> CostMeasure:
    """The registered metric ``name`` (or alias); KeyError listing the registered ones otherwise."""
    resolved = metric_name(name) if isinstance(name, str) else None
    return METRICS.get(resolved if resolved is not None else name)


# ------------------------------------------------------------------------------------------ built-ins
def _params_cost(model: Any, graph: Any, example_inputs: Any, **_: Any) -> Any:
    from compresskit.plan.cost import params_cost

    return params_cost(model, graph)


def _macs_cost(model: Any, graph: Any, example_inputs: Any, **_: Any) -> Any:
    from compresskit.plan.cost import macs_cost

    return macs_cost(model, graph, example_inputs)


def _latency_cost(model: Any, graph: Any, example_inputs: Any, **options: Any) -> Any:
    from compresskit.plan.latency import latency_cost

    return latency_cost(model, graph, example_inputs, **options)  # cache_dir and the table's own options


def _count_params(model: Any, example_inputs: Any = None, **_: Any) -> float:
    return float(count_params(model))


def _count_macs(model: Any, example_inputs: Any, **_: Any) -> float:
    return float(count_macs(model, example_inputs))


def _time(model: Any, example_inputs: Any, *, repeats: int = 5, layout: str = "eager", **_: Any) -> float:
    """Milliseconds on the one clock (:class:`compresskit.measure.clock.Clock`); ``layout``: ``"eager"``
    (NCHW) or ``"channels_last"`` (``compresskit.deploy.runtime``), the layout a latency target plans in."""
    from compresskit.deploy.runtime import measure_runtimes

    times = measure_runtimes(model, example_inputs, [layout], repeats=repeats)
    if layout not in times.ms:
        raise RuntimeError(f"latency: the model does not run in layout {layout!r} "
                           f"({times.errors.get(layout)}); measure it in 'eager'")
    return float(times.ms[layout])


register_metric("params", cost=_params_cost, measure=_count_params,
                aliases=("param", "parameters", "parameter", "weights"), unit="parameters")
register_metric("macs", cost=_macs_cost, measure=_count_macs, aliases=("mac", "flops", "flop"), unit="MACs")
register_metric("latency", cost=_latency_cost, measure=_time, aliases=("time", "ms"), unit="ms",
                tolerance=0.05)

BUILTIN_METRICS = ("params", "macs", "latency")
