"""Cost models: what a set of group widths costs (parameters, MACs, latency) before any surgery.

A :class:`CostModel` maps ``{group id: width in units}`` (a group left out keeps its full size) to a
number; the target planner (:func:`compresskit.plan.planner.plan_for_target`) removes units until that
number is at most ``full() / ratio``. Two exact models live here:

- :func:`params_cost`: every parameter tensor has, along each dimension, ``base + Σ_g ppu_g · w_g``
  positions, where ``w_g`` is the width of a prunable group indexing that dimension, ``ppu_g`` the
  positions each of its units holds there, and ``base`` the positions no prunable group indexes; its
  size is the product over dimensions. The total is what ``count_params`` counts after ``ck.shrink``.
- :func:`macs_cost`: a convolution, transposed convolution or linear map costs
  ``(its weight's size) × (output pixels per kernel)`` MACs (``count_macs``'s rule), so each call is
  the same polynomial scaled by a constant measured once on ``example_inputs``. Matrix products between
  activations, attention and custom ops are counted as a constant (the planner verifies by counting).

The latency model (``compresskit.plan.latency.LatencyTable``) satisfies the same protocol with
values measured on the device. A target names its measure; :mod:`compresskit.plan.metric` maps the
name to its cost model and its measurement (``ck.register_metric`` adds one). Optional extras a model
may have: ``fixed()`` (the cost no width can remove: frozen groups, un-prunable layers, ops outside the
model) and ``neighbours(gid)`` (groups whose marginal cost changes when ``gid``'s width changes), used by
the planner and the report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from compresskit._modes import eval_mode
from compresskit.measure.counts import as_inputs
from compresskit.measure.macs import WEIGHTED_CALLS, call_arg, macs_of

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.channels import ChannelGraph

__all__ = ["CostModel", "TensorCost", "params_cost", "macs_cost", "cost_model"]


@runtime_checkable
class CostModel(Protocol):
    """Predicted cost of a model whose channel groups have the given widths.

    ``metric`` is ``"params"``, ``"macs"`` or ``"latency"`` (milliseconds); ``cost(widths)`` takes
    ``{group id: kept units}`` (absent groups at full size); ``cost.full()`` is the unpruned cost.
    """

    metric: str

    def __call__(self, widths: Mapping[int, int]) -> float: ...

    def full(self) -> float: ...


@dataclass
class _Dim:
    base: float  # positions no prunable group indexes (frozen groups count here at full size)
    tied: list[tuple[int, float]]  # (group id, positions per unit)


@dataclass
class _Term:
    coef: float
    dims: list[_Dim]  # only the dimensions some prunable group indexes
    name: str = ""


@dataclass
class TensorCost:
    """``const + Σ_terms coef · Π_dims (base + Σ_g ppu_g · w_g)``: exact for parameters and conv/linear
    MACs. Built by :func:`params_cost` / :func:`macs_cost`."""

    metric: str
    terms: list[_Term]
    const: float
    sizes: dict[int, int]  # prunable groups' full sizes
    _by_group: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_group: dict[int, list[int]] = defaultdict(list)
        for i, term in enumerate(self.terms):
            for gid in {g for d in term.dims for g, _ in d.tied}:
                by_group[gid].append(i)
        self._by_group = dict(by_group)
        self._full = self._eval(self.sizes)

    def _term(self, term: _Term, widths: Mapping[int, float]) -> float:
        value = term.coef
        for d in term.dims:
            value *= d.base + sum(ppu * widths.get(g, self.sizes[g]) for g, ppu in d.tied)
        return value

    def _eval(self, widths: Mapping[int, float]) -> float:
        return self.const + sum(self._term(t, widths) for t in self.terms)

    def __call__(self, widths: Mapping[int, int]) -> float:
        return self._eval(widths)

    def full(self) -> float:
        return self._full

    def fixed(self) -> float:
        """The cost with every prunable group at width 0: what no plan can remove."""
        return self._eval(dict.fromkeys(self.sizes, 0))

    def delta(self, widths: Mapping[int, int], gid: int, new_width: int) -> float:
        """``cost(widths) − cost(widths with group gid at new_width)``, touching only its terms."""
        other = {**widths, gid: new_width}
        return sum(self._term(self.terms[i], widths) - self._term(self.terms[i], other)
                   for i in self._by_group.get(gid, ()))

    def neighbours(self, gid: int) -> set[int]:
        """Groups sharing a term with ``gid`` (their marginal cost moves when ``gid``'s width does)."""
        out: set[int] = set()
        for i in self._by_group.get(gid, ()):
            out.update(g for d in self.terms[i].dims for g, _ in d.tied)
        return out

    def share_of(self, gid: int) -> float:
        """Fraction of the full cost in terms that group ``gid`` indexes."""
        full = self._full or 1.0
        return sum(self._term(self.terms[i], self.sizes) for i in self._by_group.get(gid, ())) / full


# ------------------------------------------------------------------------------------------ structure
def _tensor_of(model: nn.Module, module: str, tensor: str) -> Any:
    mod = model.get_submodule(module) if module else model
    return getattr(mod, tensor, None)


def _param_dims(model: nn.Module, graph: ChannelGraph) -> dict[int, tuple[str, list[_Dim], float]]:
    """``{id(param): (name, dims with prunable ties, product of the untied dims)}`` for every parameter."""
    ties: dict[int, dict[int, dict[int, set[int]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(set)))
    for group in graph.groups:
        if not group.prunable or group.size == 0:
            continue
        for m in group.members:
            t = _tensor_of(model, m.module, m.tensor)
            if isinstance(t, nn.Parameter):
                ties[id(t)][m.dim][group.id].update(m.positions.tolist())
    out: dict[int, tuple[str, list[_Dim], float]] = {}
    for name, p in model.named_parameters():
        dims, untied = [], 1.0
        by_dim = ties.get(id(p), {})
        for d, length in enumerate(p.shape):
            groups = by_dim.get(d)
            if not groups:
                untied *= length
                continue
            tied = [(gid, len(pos) / graph.groups[gid].size) for gid, pos in sorted(groups.items())]
            dims.append(_Dim(float(length - sum(len(pos) for pos in groups.values())), tied))
        if p.dim() == 0:
            untied = 1.0
        out[id(p)] = (name, dims, untied)
    return out


def _sizes(graph: ChannelGraph) -> dict[int, int]:
    return {g.id: g.size for g in graph.groups if g.prunable}


def params_cost(model: nn.Module, graph: ChannelGraph) -> TensorCost:
    """Exact parameter count of ``ck.shrink(model, graph, ...)`` for any widths (shared parameters once)."""
    terms, const = [], 0.0
    for name, dims, untied in _param_dims(model, graph).values():
        if dims:
            terms.append(_Term(untied, dims, name))
        else:
            const += untied
    return TensorCost("params", terms, const, _sizes(graph))


class _CallRecorder(TorchFunctionMode):
    """Records ``(weight tensor, MACs)`` of every conv / linear call and the MACs of the other heavy ops."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, int]] = []
        self.other = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        macs = macs_of(func, args, kwargs, out)
        if macs:
            if func in WEIGHTED_CALLS:
                self.calls.append((call_arg(args, kwargs, 1, "weight"), macs))
            else:
                self.other += macs
        return out


def macs_cost(model: nn.Module, graph: ChannelGraph, example_inputs: Any) -> TensorCost:
    """MACs of one forward pass on ``example_inputs`` for any widths (``count_macs``'s rules).

    Each conv / linear call whose weight is a parameter becomes ``macs_per_weight · size(weight)``;
    everything else ``count_macs`` counts (matmuls of activations, attention, non-parameter weights) is
    a constant.
    """
    inputs = as_inputs(example_inputs)
    dims_of = _param_dims(model, graph)
    rec = _CallRecorder()
    with eval_mode(model), torch.no_grad(), rec:
        model(*inputs)
    terms, const = [], float(rec.other)
    for weight, macs in rec.calls:
        entry = dims_of.get(id(weight)) if isinstance(weight, nn.Parameter) else None
        if entry is None or not entry[1]:
            const += macs
            continue
        name, dims, untied = entry
        terms.append(_Term(macs / weight.numel() * untied, dims, name))
    return TensorCost("macs", terms, const, _sizes(graph))


def cost_model(metric: str, model: nn.Module, graph: ChannelGraph, example_inputs: Any,
               **options: Any) -> CostModel:
    """The cost model of a target metric: the registered measure's ``cost`` (``params_cost``,
    ``macs_cost``, the measured latency table, or one added with ``ck.register_metric``)."""
    from compresskit.plan.metric import get_metric, metric_name

    if not isinstance(metric, str) or metric_name(metric) is None:
        from compresskit.plan.metric import METRICS

        raise ValueError(f"metric: expected one of {', '.join(map(repr, METRICS.names()))}, got {metric!r}")
    return get_metric(metric).cost(model, graph, example_inputs, **options)
