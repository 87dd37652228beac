"""What the user asks compression for: a :class:`Target` (fewer parameters, fewer MACs, lower latency).

String forms (case and spaces do not matter)::

    "4x params"     4 times fewer parameters         (ratio 4)
    "50% macs"      keep 50 % of the MACs            (ratio 2)
    "2x latency"    half the latency measured on the device the model runs on
    "3× flops"      FLOPs are 2·MACs, so the same as "3x macs"

``ratio`` is always *full / compressed* (> 1). With no target, :func:`compresskit.compress` uses
:data:`DEFAULT_TARGET` (half the MACs). Whether a target is *reachable* depends on the model (frozen
channel groups and layers without prunable channels cannot shrink); the planner checks that and says
by how much it falls short.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Target", "DEFAULT_TARGET", "METRICS", "as_target"]

METRICS = ("params", "macs", "latency")
_ALIASES = {
    "params": "params", "param": "params", "parameters": "params", "parameter": "params", "weights": "params",
    "macs": "macs", "mac": "macs", "flops": "macs", "flop": "macs",
    "latency": "latency", "time": "latency", "ms": "latency",
}
_FORM = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(x|×|%)\s*"
                   r"(?:fewer\s+|less\s+|of\s+)?([a-z]+)\s*$")
_EXPECTED = ("expected '<N>x <metric>' (N > 1 times fewer, e.g. '4x params') or '<P>% <metric>' "
             "(keep P percent, 0 < P < 100, e.g. '50% macs'), metric one of params, macs, latency")


class Target(BaseModel):
    """A compression target: ``metric`` (``"params"``, ``"macs"`` or ``"latency"``) and ``ratio`` > 1,
    the factor by which it must fall (``Target(metric="params", ratio=4)`` is ``"4x params"``).

    ``Target.parse(text)`` reads the short string form; a pydantic field typed ``Target`` accepts the
    string too. ``str(target)`` gives it back.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["params", "macs", "latency"] = Field(..., description="what must fall")
    ratio: float = Field(..., gt=1, description="full / compressed, e.g. 4.0 = 4x fewer")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _parse(data)
        return data

    @model_validator(mode="after")
    def _finite(self) -> Target:
        if not math.isfinite(self.ratio):
            raise ValueError(f"target: ratio must be finite, got {self.ratio}")
        return self

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
        return cls(**_parse(text))

    @property
    def keep(self) -> float:
        """The fraction of the metric that remains: ``1 / ratio``."""
        return 1.0 / self.ratio

    def budget(self, full: float) -> float:
        """The largest allowed cost for a model whose full cost is ``full``: ``full / ratio``."""
        return float(full) / self.ratio

    def __str__(self) -> str:
        return f"{self.ratio:g}x {self.metric}"


def _parse(text: str) -> dict[str, Any]:
    m = _FORM.match(text.lower())
    if m is None:
        raise ValueError(f"target: cannot read {text!r}; {_EXPECTED}")
    number, kind, unit = float(m.group(1)), m.group(2), m.group(3)
    metric = _ALIASES.get(unit)
    if metric is None:
        raise ValueError(f"target: unknown metric {unit!r} in {text!r}; expected one of params, macs, "
                         "latency (aliases: parameters, flops, time)")
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
