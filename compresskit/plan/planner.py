"""Width planning: turn per-layer densities into one new width per channel group, back to front.

Rules (``d`` = a layer's weight density after sparsification, ``C`` = the group's original width):

- ``"linear"`` (ST-MFNet Mini paper): walking from the last layer to the first, a layer's *input* width
  becomes ``ceil(d · C_in)`` and the previous layer's output width follows it, so a group's width comes
  from the density of the layer(s) *consuming* it. A group nobody consumes through weights (e.g. a
  model's output channels when not frozen) falls back to its producers' densities.
- ``"sqrt"`` (CDFI code): ``floor(√d · C)`` for both the inputs and the outputs of a layer, so a group's
  width is proposed by its producers and its consumers alike.

A group with several proposals (residual adds, concats, shared heads, a layer read by many heads) takes
one width by ``coupling``: ``"max"`` (keep the most any layer wants; safest), ``"min"`` or ``"mean"``
(the mean of the proposals, rounded up). Then ``min_width`` bounds it from below and ``divisor`` rounds
it up to a multiple; never above the original size. Frozen groups keep their width.

Widths are counted in the group's *units* (``ChannelGroup.size``), the indices ``shrink(keep=...)``
takes: one channel for an ordinary group, ``channels_per_unit`` channels where a grouped convolution or
a GroupNorm ties channels together, so their divisibility is kept by construction (``ceil(d·C)``
channels rounded up to whole units is ``ceil(d·size)`` units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from compresskit.graph.channels import ChannelGraph

__all__ = ["WidthPlan", "GroupPlan", "Proposal", "plan_widths", "plan_for_target", "allowed_widths",
           "resolve_min_keep", "RULES", "COUPLINGS"]

RULES = ("linear", "sqrt")
COUPLINGS = ("max", "min", "mean")


@dataclass
class Proposal:
    """One layer's wish for a group's width: ``rule(density, size)``."""

    layer: str
    role: str  # "in" (the layer consumes the group) or "out" (it produces it)
    density: float
    width: int


@dataclass
class GroupPlan:
    """How one group's width was decided (for ``WidthPlan.explain``)."""

    id: int
    size: int
    channels_per_unit: int
    width: int
    prunable: bool
    proposals: list[Proposal] = field(default_factory=list)
    note: str = ""


@dataclass
class WidthPlan:
    """The planned width of every channel group: ``widths[group id]`` in units (``<= group.size``)."""

    widths: dict[int, int]
    sizes: dict[int, int]
    rule: str
    coupling: str
    min_width: int = 1
    divisor: int = 1
    groups: list[GroupPlan] = field(default_factory=list)  # in planning order (back to front)
    ignored: list[str] = field(default_factory=list)  # density names not in the graph (strict=False)
    # target plans (rule="target"): the target, the cost model's prediction, full cost and budget
    target: str | None = None
    predicted: float | None = None
    full_cost: float | None = None
    budget: float | None = None
    #: one ``{"target", "metric", "full", "budget", "predicted"}`` per part of the target (first = the above)
    terms: list[dict[str, Any]] = field(default_factory=list)
    #: target plans: the floor this plan obeyed, a fraction of each group's units (``plan_for_target``)
    min_keep: float = 0.0
    min_keep_why: str = ""
    #: the binding part's predicted cost over its goal (1 = exactly on the goal)
    tightness: float | None = None

    # -- summaries ---------------------------------------------------------------------------------

    def kept_fraction(self) -> float:
        """Planned units over original units, summed over all groups (frozen ones included)."""
        total = sum(self.sizes.values())
        return sum(self.widths.values()) / total if total else 1.0

    def explain(self) -> Table:
        """A rich table: one row per group with size, the densities involved, the rule and the width."""
        from rich.table import Table

        t = Table(title=f"width plan (rule={self.rule}, coupling={self.coupling}, min_width="
                        f"{self.min_width}, divisor={self.divisor}"
                        + (f", min_keep={self.min_keep:.3g}" if self.min_keep else "") + ")")
        for col in ("group", "size", "densities (layer: d → width)", "decision", "width"):
            t.add_column(col, overflow="fold", justify="right" if col in ("size", "width") else "left")
        for gp in self.groups:
            size = f"{gp.size}" + (f"×{gp.channels_per_unit}" if gp.channels_per_unit > 1 else "")
            props = "\n".join(f"{p.layer} ({p.role}): {p.density:.3f} → {p.width}" for p in gp.proposals)
            t.add_row(str(gp.id), size, props or "-", gp.note, str(gp.width))
        if self.ignored:
            t.caption = f"ignored densities (not in the traced graph): {', '.join(self.ignored)}"
        return t

    def explain_text(self) -> str:
        """The same as :meth:`explain`, as plain text (one line per group)."""
        lines = [f"width plan: rule={self.rule} coupling={self.coupling} min_width={self.min_width} "
                 f"divisor={self.divisor}" + (f" min_keep={self.min_keep:.3g}" if self.min_keep else "")]
        if self.ignored:
            lines.append(f"ignored densities (not in the traced graph): {', '.join(self.ignored)}")
        for gp in self.groups:
            props = ", ".join(f"{p.layer}({p.role}) d={p.density:.3f}->{p.width}" for p in gp.proposals)
            line = f"group {gp.id}: {gp.size} -> {gp.width}  [{gp.note}]"
            lines.append(line + (f"  {props}" if props else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain_text()

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (group ids as strings); :meth:`from_dict` restores the plan."""
        return {
            "rule": self.rule,
            "coupling": self.coupling,
            "min_width": self.min_width,
            "divisor": self.divisor,
            "widths": {str(k): v for k, v in self.widths.items()},
            "sizes": {str(k): v for k, v in self.sizes.items()},
            "groups": [asdict(g) for g in self.groups],
            "ignored": list(self.ignored),
            "target": self.target,
            "predicted": self.predicted,
            "full_cost": self.full_cost,
            "budget": self.budget,
            "terms": [dict(t) for t in self.terms],
            "min_keep": self.min_keep,
            "min_keep_why": self.min_keep_why,
            "tightness": self.tightness,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WidthPlan:
        try:
            widths = {int(k): int(v) for k, v in data["widths"].items()}
            sizes = {int(k): int(v) for k, v in data["sizes"].items()}
            groups = [
                GroupPlan(**{**g, "proposals": [Proposal(**p) for p in g.get("proposals", [])]})
                for g in data.get("groups", [])
            ]
            plan = cls(widths, sizes, str(data["rule"]), str(data["coupling"]), int(data.get("min_width", 1)),
                       int(data.get("divisor", 1)), groups, [str(n) for n in data.get("ignored", [])],
                       data.get("target"), data.get("predicted"), data.get("full_cost"), data.get("budget"),
                       [dict(t) for t in data.get("terms", [])], float(data.get("min_keep", 0.0)),
                       str(data.get("min_keep_why", "")), data.get("tightness"))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a WidthPlan dict ({type(err).__name__}: {err})") from err
        for gid, w in plan.widths.items():
            if gid not in plan.sizes or not 1 <= w <= plan.sizes[gid]:
                raise ValueError(f"WidthPlan dict: width {w} of group {gid} is not in [1, size]")
        return plan

    def check_graph(self, graph: ChannelGraph) -> None:
        """Raise ValueError if this plan was not made for ``graph`` (group ids or sizes differ)."""
        sizes = {g.id: g.size for g in graph.groups}
        for gid, size in self.sizes.items():
            if sizes.get(gid) != size:
                raise ValueError(
                    f"plan does not match the graph: group {gid} has size {sizes.get(gid)} in the graph "
                    f"but {size} in the plan (plan made for another model or trace?)"
                )


def _rule_width(rule: str, density: float, size: int) -> int:
    if rule == "linear":
        # a tiny tolerance so that e.g. d = 0.75 stored as 0.7500000000000001 does not add a unit
        return math.ceil(density * size - 1e-9)
    return math.floor(math.sqrt(density) * size + 1e-9)


def _combine(coupling: str, widths: list[int]) -> int:
    if coupling == "max":
        return max(widths)
    if coupling == "min":
        return min(widths)
    return math.ceil(sum(widths) / len(widths) - 1e-9)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def plan_widths(
    graph: ChannelGraph,
    densities: dict[str, float],
    rule: str = "linear",
    coupling: str = "max",
    min_width: int = 1,
    divisor: int = 1,
    *,
    strict: bool | None = None,
) -> WidthPlan:
    """Plan one width per channel group from per-layer densities (see the module docstring).

    Args:
        graph: ``ck.trace(model, example_inputs)``.
        densities: ``{module name: density in [0, 1]}``, e.g. ``ck.layer_densities(model)``; names must be
            modules of the traced graph. Layers not listed propose nothing.
        rule: ``"linear"`` (ceil(d·C), from consumers) or ``"sqrt"`` (floor(√d·C), producers and consumers).
        coupling: how a group with several proposals takes one width: ``"max"``, ``"min"`` or ``"mean"``.
        min_width: smallest width of any group, in units (a layer of density ~0 shrinks to this).
        divisor: round widths up to a multiple of this (in units), never above the group's size.
        strict: what to do with density names that are not modules of the traced graph. True: raise
            (typos, another model). False: ignore them (modules the example inputs never reach) and list
            them in ``plan.ignored``. None (default): False for the output of ``ck.layer_densities``
            (measured on the model, so such names are unreached modules), True for any other dict. If no
            name at all is in the graph, it always raises.

    Returns a :class:`WidthPlan`; ``plan.explain()`` tells how each width was decided.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    _check_int("min_width", min_width, 1)
    _check_int("divisor", divisor, 1)
    if not hasattr(graph, "groups") or not hasattr(graph, "layers"):
        raise TypeError(f"graph must be a ChannelGraph from ck.trace(...), got {type(graph).__name__}")
    if not isinstance(densities, dict):
        raise TypeError(f"densities must be a dict {{module name: density}}, got {type(densities).__name__}")
    known = {layer.name for layer in graph.layers} | {m.module for g in graph.groups for m in g.members}
    unknown = [n for n in densities if n not in known]
    if strict is None:
        from compresskit.measure.density import LayerDensities

        strict = not isinstance(densities, LayerDensities)
    if unknown and (strict or len(unknown) == len(densities)):
        raise ValueError(
            f"densities has module names that are not in the traced graph: {unknown[:8]}"
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
            + "; pass densities of the model that was traced (names as in model.named_modules()), or "
            "strict=False to ignore modules the traced forward never reaches"
        )
    densities = {n: d for n, d in densities.items() if n in known}
    for name, d in densities.items():
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= float(d) <= 1.0:
            raise ValueError(f"densities[{name!r}] must be a number in [0, 1], got {d!r}")

    # back to front: the order in which the walk reaches each group as some layer's input
    order: list[int] = []
    seen: set[int] = set()
    for layer in reversed(graph.layers):
        for gid in (*layer.in_groups, *layer.out_groups, *layer.param_groups):
            if gid not in seen:
                seen.add(gid)
                order.append(gid)
    order += [g.id for g in reversed(graph.groups) if g.id not in seen]

    widths: dict[int, int] = {}
    sizes: dict[int, int] = {}
    plans: list[GroupPlan] = []
    for gid in order:
        group = graph.group(gid)
        gp = GroupPlan(gid, group.size, group.channels_per_unit, group.size, group.prunable)
        sizes[gid] = group.size
        consumers = [(name, "in") for name in group.consumers if name in densities]
        producers = [(name, "out") for name in group.producers if name in densities]
        if rule == "linear":  # consumers decide; producers only where nothing consumes through weights
            voters = consumers if group.consumers else producers
        else:
            voters = producers + consumers
        gp.proposals = [
            Proposal(name, role, d, _rule_width(rule, d, group.size))
            for name, role in voters
            for d in [float(densities[name])]
        ]
        if not group.prunable:
            gp.note = "frozen: " + (group.reasons[0] if group.reasons else "not prunable")
        elif not gp.proposals:
            gp.note = "no density for the layers that decide it: kept"
        else:
            width = _combine(coupling, [p.width for p in gp.proposals])
            steps = [f"{coupling} of {len(gp.proposals)}" if len(gp.proposals) > 1 else rule]
            if rule == "linear" and not group.consumers:
                steps.append("from producers (no weighted consumer)")
            if width < min_width:
                width = min_width
                steps.append(f"min_width {min_width}")
            if width % divisor:
                width = divisor * math.ceil(width / divisor)
                steps.append(f"divisor {divisor}")
            if width > group.size:
                width = group.size
                steps.append("capped at size")
            gp.width = width
            gp.note = ", ".join(steps)
        widths[gid] = gp.width
        plans.append(gp)
    return WidthPlan(widths, sizes, rule, coupling, min_width, divisor, plans, ignored=unknown)


# ------------------------------------------------------------------------------------ target planning
def allowed_widths(size: int, channels_per_unit: int, min_width: int, round_to: int,
                   min_keep: float = 0.0) -> list[int]:
    """Widths a group may take, descending: its size, then every smaller width of at least
    ``max(min_width, ⌈min_keep · size⌉)`` units whose channel count (``width · channels_per_unit``) is a
    multiple of ``round_to``."""
    step = round_to // math.gcd(round_to, max(1, channels_per_unit))
    floor = max(min_width, math.ceil(min_keep * size - 1e-9))
    smaller = [w for w in range(step * ((size - 1) // step), 0, -step) if w >= floor]
    return [size, *smaller]


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def plan_for_target(
    graph: ChannelGraph,
    cost: Any,
    importance: dict[int, Any],
    target: Any,
    *,
    min_width: int = 1,
    round_to: int = 1,
    min_keep: float | str = 0.0,
    budget: float | Mapping[str, float] | None = None,
) -> WidthPlan:
    """The widths that bring ``cost`` to at most ``cost.full() / ratio`` losing the least importance.

    A global greedy over every prunable group (a knapsack in the spirit of HALP and Torch-Pruning's
    global ranking): at each step the group whose next removal costs the least importance per unit of
    cost saved, ``Σ importance(removed units) / (cost(w) − cost(w'))``, gives up its lowest-ranked units
    (``round_to`` channels at a time; ties: the larger saving first), until the cost meets the budget.
    No group goes below ``min_width`` units, nor below ``min_keep`` of its size; frozen groups keep
    their size.

    A target of several measures (``"5x params & 2x latency"``) takes one cost model per measure
    (``cost={"params": ..., "latency": ...}``); every part must hold. A removal then saves
    ``Σ_k saved_k / full_k`` over the parts not yet met, and removals go on until all are met. Costs only
    fall as widths do, so the parts never conflict: the target is reachable when each part is.

    Args:
        graph: ``ck.trace(model, example_inputs)``.
        cost: a :class:`~compresskit.plan.cost.CostModel` (``params_cost``, ``macs_cost``, a latency
            table), or ``{metric: CostModel}`` covering every measure of the target.
        importance: ``{group id: per-unit scores}`` (an :class:`~compresskit.plan.importance.Importance`).
        target: a ``ck.Target``, its string form (its metrics should be the cost models') or a ratio > 1.
        min_width: smallest width, in units.
        min_keep: smallest fraction of its units a group keeps (``⌈min_keep · size⌉``): the importance
            of a unit is a first-order, one-at-a-time estimate that is blind to what a layer left with a
            channel or two can still carry, so without a floor the greedy can leave a one-channel
            bottleneck that no recovery widens again. ``"auto"``: half the width that thinning every group
            alike would keep, ``1/(2·√r)`` for a target of ``r×`` (its largest ratio), else its half, its
            quarter or no floor: the first whose plan meets the goal within 5 % (coarse groups can land
            further past it), else the closest plan that meets it; ``plan.min_keep_why`` says which
            (:func:`resolve_min_keep`; ``compress`` resolves it once per run, ``PlanConfig.min_keep``).
        round_to: widths in channels are multiples of this (8 suits CUDA kernels), unless kept whole.
        budget: the absolute cost to reach instead of ``full / ratio`` (used to correct a verified plan);
            ``{metric: cost}`` for a target of several measures.

    Raises ValueError naming ``target`` when even the smallest allowed widths cost more than the budget
    of some part.
    """
    parts = _constraints(cost, target, budget)
    _check_int("min_width", min_width, 1)
    _check_int("round_to", round_to, 1)
    if min_keep == "auto":
        return _auto_floor(graph, parts, importance, min_width, round_to)
    floor = _check_fraction("min_keep", min_keep)
    return _plan_with_floor(graph, parts, importance, min_width, round_to, floor, "given")


def resolve_min_keep(graph: ChannelGraph, cost: Any, target: Any, *, min_width: int = 1, round_to: int = 1,
                     importance: dict[int, Any] | None = None) -> tuple[float, str]:
    """The floor ``min_keep="auto"`` picks, and why, with ``importance`` (default: every unit alike).
    ``compress`` resolves it once per run this way, so that stage I's calibrations and the final plan
    obey one floor."""
    import torch

    if importance is None:
        importance = {g.id: torch.ones(g.size, dtype=torch.float64) for g in graph.groups if g.prunable}
    parts = _constraints(cost, target, None)
    plan = _auto_floor(graph, parts, importance, min_width, round_to)
    return plan.min_keep, plan.min_keep_why


def _auto_floor(graph: ChannelGraph, parts: list[tuple], importance: dict[int, Any], min_width: int,
                round_to: int) -> WidthPlan:
    """``min_keep="auto"``: half the width that thinning every group alike keeps (weights scale with
    in × out channels, so ``1/√r`` of every group's units is about ``r×``), i.e. ``1/(2·√r)``; then its
    half, its quarter and no floor, taking the first plan that meets the goal and lands within 5 % of
    it, else the closest plan that meets it."""
    ratio = max(float(p[4]) for p in parts)
    first = 0.5 / math.sqrt(max(ratio, 1.0))
    rejected: list[str] = []
    plans: list[WidthPlan] = []
    for floor in (first, first / 2, first / 4, 0.0):
        try:
            plan = _plan_with_floor(graph, parts, importance, min_width, round_to, floor, "")
        except ValueError:
            if floor == 0.0:
                raise
            rejected.append(f"{floor:.3g}: the target is unreachable above it")
            continue
        meets = plan.tightness <= 1 + 1e-9
        if meets and plan.tightness >= 1 / AUTO_FLOOR_OVERSHOOT:
            chosen, note = plan, ""
            break
        plans.append(plan)
        rejected.append(f"{floor:.3g}: " + (f"lands {1 / max(plan.tightness, 1e-300) - 1:.0%} past the goal"
                                             if meets else "misses the goal"))
    else:  # no floor landed within 5 %: the closest plan that meets the goal
        chosen = max(plans, key=lambda p: (p.tightness <= 1 + 1e-9, p.tightness))
        note = "; none landed within 5 % of the goal: the closest kept"
    why = f"auto: 1/(2·√{ratio:.3g}) = {first:.3g}"
    if rejected:
        why += f" (rejected {'; '.join(rejected)}{note}) -> {chosen.min_keep:.3g}"
    chosen.min_keep_why = why
    return chosen


#: a floor chosen by ``min_keep="auto"`` gives way when the plan would land more than this far past the goal
AUTO_FLOOR_OVERSHOOT = 1.05


def _plan_with_floor(graph: ChannelGraph, parts: list[tuple], importance: dict[int, Any], min_width: int,
                     round_to: int, min_keep: float, why: str) -> WidthPlan:
    """:func:`plan_for_target` with one floor: the greedy, its plan and where the floor stopped it."""
    ladders = {g.id: allowed_widths(g.size, g.channels_per_unit, min_width, round_to, min_keep)
               for g in graph.groups if g.prunable}
    _check_floors(graph, parts, ladders, min_width, round_to, min_keep)
    search = _Greedy(parts, ladders, importance)
    rung, current = search.refine(*search.give_back(*search.remove_until(dict.fromkeys(ladders, 0), set())))
    widths = {gid: ladders[gid][r] for gid, r in rung.items()}
    plan = _assemble(graph, parts, widths, current, search, min_width, round_to)
    plan.min_keep, plan.min_keep_why, plan.tightness = min_keep, why, search.tightness(current)
    for gp in plan.groups:  # say where the floor, not the importance, stopped the removals
        ladder = ladders.get(gp.id, [])
        if len(ladder) > 1 and gp.width == ladder[-1] and ladder[-1] != allowed_widths(
                gp.size, gp.channels_per_unit, min_width, round_to)[-1]:
            gp.note += f"; at the floor min_keep={min_keep:.3g}"
    return plan


def _check_floors(graph: ChannelGraph, parts: list[tuple], ladders: dict[int, list[int]], min_width: int,
                  round_to: int, min_keep: float = 0.0) -> None:
    """ValueError naming ``target`` when every prunable group at its smallest width still misses a part."""
    smallest = {gid: ladder[-1] for gid, ladder in ladders.items()}
    short = []
    for c, goal, label, _, ratio, given in parts:
        floor, full = float(c(smallest)), float(c.full())
        if floor > goal * (1 + 1e-9):
            short.append(f"{label} is unreachable for this model: with every prunable group at its smallest "
                         f"allowed width (min_width={min_width}, round_to={round_to}"
                         + (f", min_keep={min_keep:g}" if min_keep else "") + ") it still costs "
                         f"{floor:.4g} of {full:.4g} {getattr(c, 'metric', '')}, "
                         + (f"{full / max(floor, 1e-300):.3g}x at most" if not given else
                            f"above the budget of {goal:.4g} (lowered from {full / ratio:.4g} because the "
                            "measured model missed the predicted cost)"))
    if short:
        frozen = sum(1 for g in graph.groups if not g.prunable)
        raise ValueError(f"target: {'; '.join(short)}; {frozen} of {len(graph.groups)} channel groups are "
                         "frozen (graph.explain(id) says why). Ask for a smaller ratio"
                         + (f", or a lower min_keep than {min_keep:g}." if min_keep else "."))


class _Greedy:
    """The global greedy of :func:`plan_for_target` over the groups' width ladders (``rung``: each
    group's index into its ladder, 0 = full size)."""

    def __init__(self, parts: list[tuple], ladders: dict[int, list[int]], importance: dict[int, Any]) -> None:
        from compresskit.plan.importance import removal_order

        self.ladders, self.importance = ladders, importance
        self.costs = [c for c, *_ in parts]
        self.fulls = [float(c.full()) or 1.0 for c in self.costs]
        self.goals = [goal for _, goal, *_ in parts]
        self.orders = {gid: removal_order(importance[gid]) for gid in ladders if gid in importance}
        self.has_delta = all(hasattr(c, "delta") and hasattr(c, "neighbours") for c in self.costs)

    def lost(self, gid: int, width: int) -> float:
        """Importance of the units a group loses at this width."""
        return float(self.importance[gid][self.orders[gid][: self.ladders[gid][0] - width]].sum())

    def evaluate(self, widths: dict[int, int]) -> list[float]:
        return [float(c(widths)) for c in self.costs]

    def unmet(self, current: list[float]) -> tuple[int, ...]:
        return tuple(k for k, (cur, goal) in enumerate(zip(current, self.goals)) if cur > goal)

    def tightness(self, current: list[float]) -> float:
        """The binding part's cost over its goal."""
        return max(cur / goal if goal > 0 else float("inf") for cur, goal in zip(current, self.goals))

    def _candidate(self, rung: dict[int, int], widths: dict[int, int], open_: tuple[int, ...], skip: set[int],
                   gid: int) -> tuple[float, float] | None:
        """``(importance lost per saved cost, saved cost)`` of ``gid``'s next step down, or None."""
        ladder = self.ladders[gid]
        if gid in skip or gid not in self.orders or rung[gid] + 1 >= len(ladder):
            return None
        new = ladder[rung[gid] + 1]
        saved = 0.0
        for k in open_:
            c = self.costs[k]
            diff = (c.delta(widths, gid, new) if self.has_delta
                    else float(c(widths)) - float(c({**widths, gid: new})))
            saved += diff / self.fulls[k]
        if not saved > 0:
            return None
        return max(self.lost(gid, new) - self.lost(gid, widths[gid]), 0.0) / saved, saved

    def remove_until(self, rung: dict[int, int], skip: set[int]) -> tuple[dict[int, int], list[float]]:
        """Greedy: the cheapest importance per saved cost goes first, until every cost meets its goal."""
        rung = dict(rung)
        widths = {gid: self.ladders[gid][r] for gid, r in rung.items()}
        current = self.evaluate(widths)
        open_ = self.unmet(current)
        scores = {gid: self._candidate(rung, widths, open_, skip, gid) for gid in self.ladders}
        while open_:
            live = [(c[0], -c[1], gid) for gid, c in scores.items() if c is not None]
            if not live:
                break
            gid = min(live)[2]
            rung[gid] += 1
            widths[gid] = self.ladders[gid][rung[gid]]
            current = self.evaluate(widths)
            now_open = self.unmet(current)
            if now_open != open_:  # a part was met: the savings that count change for every group
                open_ = now_open
                scores = {g: self._candidate(rung, widths, open_, skip, g) for g in self.ladders}
                continue
            near = set(self.ladders)
            if self.has_delta:
                near = {gid}.union(*(c.neighbours(gid) for c in self.costs)) & set(self.ladders)
            for g in near:
                scores[g] = self._candidate(rung, widths, open_, skip, g)
        return rung, current

    def give_back(self, rung: dict[int, int], current: list[float]) -> tuple[dict[int, int], list[float]]:
        """Undo removals, most important per cost first, while every cost stays within its goal."""
        rung = dict(rung)
        while True:
            widths = {gid: self.ladders[gid][r] for gid, r in rung.items()}
            best = None
            for gid, r in rung.items():
                if r == 0:
                    continue
                up = self.ladders[gid][r - 1]
                trial = self.evaluate({**widths, gid: up})
                if all(t <= goal for t, goal in zip(trial, self.goals)):
                    grown = sum((t - cur) / f for t, cur, f in zip(trial, current, self.fulls))
                    key = (-(self.lost(gid, widths[gid]) - self.lost(gid, up)) / max(grown, 1e-300), gid)
                    if best is None or key < best[0]:
                        best = (key, gid, trial)
            if best is None:
                return rung, current
            rung[best[1]] -= 1
            current = best[2]

    def refine(self, rung: dict[int, int], current: list[float]) -> tuple[dict[int, int], list[float]]:
        """Coarse groups (a few units, each a big share of the cost) can overshoot: raise each pruned group
        one step and re-spend the budget elsewhere; keep whatever lands closest under the goal."""
        for _ in range(3):
            if self.tightness(current) >= 0.98:
                break
            improved = False
            for gid in [g for g, r in rung.items() if r > 0]:
                if rung[gid] == 0:  # an earlier improvement of this pass gave this group back already
                    continue
                trial = {**rung, gid: rung[gid] - 1}
                trial, cur = self.give_back(*self.remove_until(trial, {gid}))
                if not self.unmet(cur) and self.tightness(current) < self.tightness(cur):
                    rung, current, improved = trial, cur, True
            if not improved:
                break
        return rung, current


def _assemble(graph: ChannelGraph, parts: list[tuple], widths: dict[int, int], current: list[float],
              search: _Greedy, min_width: int, round_to: int) -> WidthPlan:
    """The :class:`WidthPlan` of the greedy's widths, with a note per group and the predicted costs."""
    plans, sizes, all_widths = [], {}, {}
    for g in graph.groups:
        sizes[g.id] = g.size
        w = all_widths[g.id] = widths.get(g.id, g.size)
        gp = GroupPlan(g.id, g.size, g.channels_per_unit, w, g.prunable)
        if not g.prunable:
            gp.note = "frozen: " + (g.reasons[0] if g.reasons else "not prunable")
        elif w < g.size:
            removed = search.lost(g.id, w) if g.id in search.orders else 0.0
            total = float(search.importance[g.id].sum()) if g.id in search.importance else 0.0
            share = removed / total if total > 0 else 0.0
            gp.note = f"target: removed {g.size - w} lowest-importance units ({share:.1%} of its importance)"
        else:
            gp.note = "target: kept (its units cost more importance per saving than others)"
        plans.append(gp)
    plan = WidthPlan(all_widths, sizes, "target", "global", min_width, round_to, plans)
    plan.target = " & ".join(label for _, _, label, *_ in parts)
    plan.predicted, plan.full_cost, plan.budget = current[0], float(parts[0][0].full()), parts[0][1]
    plan.terms = [{"target": label, "metric": metric, "full": float(c.full()), "budget": goal,
                   "predicted": cur} for (c, goal, label, metric, *_), cur in zip(parts, current)]
    return plan


def _constraints(cost: Any, target: Any, budget: Any) -> list[tuple[Any, float, str, str, float, bool]]:
    """``[(cost model, goal, label, metric, ratio, whether the goal is a given budget)]``, one per part of
    the target (ValueError naming ``target``)."""
    from compresskit.plan.target import Target

    if isinstance(target, (int, float)) and not isinstance(target, bool):
        if not target > 1:
            raise ValueError(f"target: expected a ratio > 1, got {target!r}")
        if isinstance(cost, Mapping):
            raise ValueError("target: a bare ratio needs one cost model, got a mapping; pass a ck.Target")
        metric = getattr(cost, "metric", "cost")
        terms = [(cost, float(target), f"{float(target):g}x {metric}", metric)]
    else:
        t = Target.parse(target)
        terms = []
        for part in t.terms:
            if isinstance(cost, Mapping):
                if part.metric not in cost:
                    raise ValueError(f"target: {part} needs a {part.metric} cost model; got models for "
                                     f"{', '.join(map(str, cost))}")
                c = cost[part.metric]
            elif len(t.terms) > 1:
                raise ValueError(f"target: {t} has {len(t.terms)} parts; pass cost={{metric: CostModel}} "
                                 "with one cost model per measure")
            else:
                c = cost
            if part.metric != getattr(c, "metric", part.metric):
                raise ValueError(f"target: {part} needs a {part.metric} cost model, got a {c.metric} one")
            terms.append((c, part.ratio, str(part), part.metric))
    out = []
    for c, ratio, label, metric in terms:
        given = budget is not None and (not isinstance(budget, Mapping) or metric in budget)
        if not given:
            goal = float(c.full()) / ratio
        elif isinstance(budget, Mapping):
            goal = float(budget[metric])
        else:
            if len(terms) > 1:
                raise ValueError("budget: a target of several measures takes {metric: budget}")
            goal = float(budget)
        out.append((c, goal, label, metric, ratio, given))
    return out
