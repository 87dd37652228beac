"""What the user asks compression for: a :class:`Target` (fewer parameters, fewer MACs, lower latency...).

String forms (case and spaces do not matter)::

    "4x params"                 4 times fewer parameters         (ratio 4)
    "50% macs"                  keep 50 % of the MACs            (ratio 2)
    "2x latency"                half the latency measured on the device the model runs on
    "3× flops"                  FLOPs are 2·MACs, so the same as "3x macs"
    "5x params & 2x latency"    every part must hold (also "and" or ",")

``ratio`` is always *full / compressed* (> 1). A measure is any registered metric
(:func:`compresskit.register_metric`; built in: params, macs, latency). With no target,
:func:`compresskit.compress` uses :data:`DEFAULT_TARGET` (half the MACs). Whether a target is *reachable*
depends on the model (frozen channel groups, parameters forward never reads and layers without prunable
channels cannot shrink); the planner checks that for every part and says by how much it falls short.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

__all__ = ["Target", "DEFAULT_TARGET", "METRICS", "as_target"]

#: the built-in measures (``compresskit.plan.metric.METRICS`` is the registry of all of them)
METRICS = ("params", "macs", "latency")
_FORM = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(x|×|%)\s*"
                   r"(?:fewer\s+|less\s+|of\s+)?([a-z]+)\s*$")
_SPLIT = re.compile(r"\s*(?:&|,|\band\b)\s*")
_EXPECTED = ("expected '<N>x <metric>' (N > 1 times fewer, e.g. '4x params') or '<P>% <metric>' "
             "(keep P percent, 0 < P < 100, e.g. '50% macs'), several joined by '&' ('5x params & 2x "
             "latency'), metric one of {}")


def _metric_names() -> str:
    from compresskit.plan.metric import METRICS as REGISTRY

    return ", ".join(REGISTRY.names())


class Target(BaseModel):
    """A compression target: ``metric`` (``"params"``, ``"macs"``, ``"latency"`` or a registered
    measure) and ``ratio`` > 1, the factor by which it must fall (``Target(metric="params", ratio=4)`` is
    ``"4x params"``); ``also``: more such parts that must hold too (``"5x params & 2x latency"``).

    ``Target.parse(text)`` reads the short string form; a pydantic field typed ``Target`` accepts the
    string too. ``str(target)`` gives it back; ``target.terms`` lists the parts, the first one first.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(..., description="what must fall: a registered measure (params, macs, latency, ...)")
    ratio: float = Field(..., gt=1, description="full / compressed, e.g. 4.0 = 4x fewer")
    also: tuple[Target, ...] = Field((), description="further parts that must hold too")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _parse_all(data)
        return data

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        from compresskit.plan.metric import metric_name

        name = metric_name(value) if isinstance(value, str) else None
        if name is None:
            raise ValueError(f"target: unknown metric {value!r}; expected one of {_metric_names()} "
                             "(ck.register_metric adds one)")
        return name

    @model_validator(mode="after")
    def _check(self) -> Target:
        if not math.isfinite(self.ratio):
            raise ValueError(f"target: ratio must be finite, got {self.ratio}")
        seen = [self.metric]
        for part in self.also:
            if part.also:
                raise ValueError("target: a part of `also` must be a single measure (no `also` of its own)")
            if part.metric in seen:
                raise ValueError(f"target: {part.metric} is named twice in {self}; give each measure once")
            seen.append(part.metric)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        data = handler(self)
        if not self.also and isinstance(data, dict):
            data.pop("also", None)  # a single target dumps as before: {"metric", "ratio"}
        return data

    @classmethod
    def parse(cls, text: str | Target) -> Target:
        """``"4x params"`` → ``Target(metric="params", ratio=4.0)``; a Target is returned as is.

        Raises ValueError naming ``target`` and the accepted forms for anything else.
        """
        if isinstance(text, Target):
            return text
        if not isinstance(text, str):
            raise TypeError(f"target: expected a string such as '4x params' or a ck.Target, "
                            f"got {type(text).__name__}")
        return cls(**_parse_all(text))

    @property
    def terms(self) -> tuple[Target, ...]:
        """The single-measure parts, the first one first (``(self,)`` for a single target)."""
        if not self.also:
            return (self,)
        return (Target(metric=self.metric, ratio=self.ratio), *self.also)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The measures named, in order."""
        return tuple(t.metric for t in self.terms)

    @property
    def keep(self) -> float:
        """The fraction of the (first) metric that remains: ``1 / ratio``."""
        return 1.0 / self.ratio

    def budget(self, full: float) -> float:
        """The largest allowed cost of the first metric for a model whose full cost is ``full``."""
        return float(full) / self.ratio

    def __str__(self) -> str:
        return " & ".join(f"{t.ratio:g}x {t.metric}" for t in self.terms)


def _parse(text: str) -> dict[str, Any]:
    from compresskit.plan.metric import metric_name

    m = _FORM.match(text.lower())
    if m is None:
        raise ValueError(f"target: cannot read {text!r}; {_EXPECTED.format(_metric_names())}")
    number, kind, unit = float(m.group(1)), m.group(2), m.group(3)
    metric = metric_name(unit)
    if metric is None:
        raise ValueError(f"target: unknown metric {unit!r} in {text!r}; expected one of {_metric_names()} "
                         "(aliases: parameters, flops, time; ck.register_metric adds one)")
    if kind == "%":
        if not 0 < number < 100:
            raise ValueError(f"target: {text!r} keeps {number:g}% of the {metric}; expected a percentage "
                             "strictly between 0 and 100 (the part that remains)")
        ratio = 100.0 / number
    else:
        if not number > 1:
            raise ValueError(f"target: {text!r} asks for {number:g}x fewer {metric}; expected a factor > 1 "
                             "(e.g. '2x macs'; 1x would compress nothing)")
        ratio = number
    return {"metric": metric, "ratio": ratio}


def _parse_all(text: str) -> dict[str, Any]:
    parts = [p for p in _SPLIT.split(text.strip().lower())]
    if len(parts) > 1 and not all(parts):
        raise ValueError(f"target: cannot read {text!r}: an empty part around '&'; "
                         f"{_EXPECTED.format(_metric_names())}")
    first, *rest = [_parse(p) for p in parts]
    return {**first, "also": tuple(rest)} if rest else first


#: The target of ``compress(model, loader)`` without one: half the multiply-accumulates.
DEFAULT_TARGET = Target(metric="macs", ratio=2.0)


def as_target(value: str | Target | dict | None, default: Target | None = DEFAULT_TARGET) -> Target | None:
    """A :class:`Target` from a string, a Target, a mapping of its fields, or None (→ ``default``)."""
    if value is None:
        return default
    if isinstance(value, Target):
        return value
    if isinstance(value, str):
        return Target.parse(value)
    if isinstance(value, dict):
        return Target.model_validate(value)
    raise TypeError(f"target: expected a string such as '4x params', a ck.Target or None, "
                    f"got {type(value).__name__}")
