"""Verification of a target plan: plan, shrink, measure, correct the budget, replan.

Parameters and conv/linear MACs are predicted exactly, so one pass usually does; matmuls between
activations (attention) and measured latency are where the correction earns its keep. Each part of a
target of several measures is verified and corrected on its own budget: from the last two tries the line
``measured = a · predicted + b`` through them gives the next budget (an offset the cost model misses,
such as a fixed time per call, is corrected in one step), bisection between the budgets known to fit and
not to fit when that line points outside them. Everything comes in as arguments (the graph, the cost
models, the importance, how to build and how to measure a shrunk model); nothing here reads the stages'
state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compresskit.plan.metric import get_metric
from compresskit.plan.planner import WidthPlan, plan_for_target

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.channels import ChannelGraph
    from compresskit.plan.target import Target

__all__ = ["measure_cost", "verify_plan", "next_budget", "EXACT"]

#: measures whose cost model predicts the count exactly: the full cost is the model's ``full()``
EXACT = ("params", "macs")


def measure_cost(model: nn.Module, metric: str, example_inputs: Any, *, repeats: int,
                 layout: str | None = None) -> float:
    """The registered measurement of ``metric`` on ``model`` (latency in ``layout`` when one is given)."""
    extra = {"layout": layout} if metric == "latency" and layout else {}
    return float(get_metric(metric).measure(model, example_inputs, repeats=repeats, **extra))


def next_budget(seen: list[tuple[float, float]], budget: float, goal: float) -> float:
    """The budget to plan for next so the measured cost lands on ``goal``: from the last two tries
    ``(predicted, measured)``, the line through them; from one, the error taken as proportional."""
    (p1, m1), (p0, m0) = seen[-1], (seen[-2] if len(seen) > 1 else (0.0, 0.0))
    if len(seen) > 1 and p1 != p0 and (m1 - m0) / (p1 - p0) > 0:
        return p1 + (goal - m1) * (p1 - p0) / (m1 - m0)
    return budget * goal / max(m1, 1e-300)


@dataclass
class _Search:
    """The budgets of each measure: current, known to fit (``lo``) or not (``hi``), and every try."""

    budget: dict[str, float]
    goal: dict[str, float]
    hi: dict[str, float]
    tol: dict[str, float]
    lo: dict[str, float] = field(default_factory=dict)
    seen: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lo = dict.fromkeys(self.budget, 0.0)
        self.seen = {m: [] for m in self.budget}

    def judge(self, predicted: dict[str, float], achieved: dict[str, float]) -> tuple[tuple, bool, dict]:
        """``(score, done, fits)`` of one try: lower scores are better plans; done when every part fits
        and one of them binds (within 10% of its goal)."""
        for m in self.budget:
            self.seen[m].append((predicted[m], achieved[m]))
        fits = {m: achieved[m] <= self.goal[m] * (1 + self.tol[m]) for m in self.budget}
        miss = sum(max(0.0, achieved[m] / self.goal[m] - 1) for m in self.budget)
        slack = min(abs(achieved[m] - self.goal[m]) / self.goal[m] for m in self.budget)
        tight = any(achieved[m] >= self.goal[m] * 0.9 for m in self.budget)
        return (not all(fits.values()), miss, slack), all(fits.values()) and tight, fits

    def step(self, fits: dict[str, bool]) -> bool:
        """Move the budgets of the parts that miss (all of them, when every part fits but none binds);
        True when the bracket of every moved part has closed."""
        everything_fits = all(fits.values())
        closed = True
        for m in self.budget:
            if fits[m] and not everything_fits:
                continue  # this part holds; only the missing ones move
            if fits[m]:
                self.lo[m] = max(self.lo[m], self.budget[m])
            else:
                self.hi[m] = min(self.hi[m], self.budget[m])
            guess = next_budget(self.seen[m], self.budget[m], self.goal[m])
            lo, hi = self.lo[m], self.hi[m]
            self.budget[m] = guess if lo < guess < hi else (lo + hi) / 2  # else bisect
            closed = closed and hi - lo < 1e-6 * hi
        return closed


def _attempt(search: _Search, full: dict[str, float], predicted: dict[str, float],
             achieved: dict[str, float], budget: dict[str, float]) -> dict[str, Any]:
    """The record of one try: the first measure's numbers, and every measure's in ``terms``."""
    def one(m: str) -> dict[str, Any]:
        return {"budget": budget[m], "predicted": predicted[m], "measured": achieved[m],
                "ratio": full[m] / achieved[m] if achieved[m] else None}

    metrics = list(search.budget)
    attempt = one(metrics[0])
    if len(metrics) > 1:
        attempt["terms"] = {m: one(m) for m in metrics}
    return attempt


def verify_plan(graph: ChannelGraph, costs: Mapping[str, Any], importance: Mapping[int, torch.Tensor],
                target: Target, *, model: nn.Module, build: Callable[[WidthPlan], nn.Module],
                measure: Callable[[nn.Module, str], float], verify: bool = True, min_width: int = 1,
                round_to: int = 1, min_keep: float | str = 0.0, tolerance: Mapping[str, float] | None = None
                ) -> tuple[WidthPlan, dict[str, Any]]:
    """Plan ``target`` (:func:`~compresskit.plan.planner.plan_for_target`), then ``build(plan)`` the
    shrunk model and ``measure(model, metric)`` each measure; correct the budgets and replan while a part
    misses (up to 8 tries, 4 for a measured time). Returns the best plan and the record
    ``{"full", "goal", "predicted", "verification": [one dict per try], "terms"}``.

    ``model``: the sparsified model the plan shrinks (its full cost of a measure that is not exact);
    ``costs``: ``{metric: CostModel}`` of every measure of the target; ``tolerance``: the relative error
    each measure accepts (default: the registered metric's). ``min_keep``: the plans' width floor
    (:func:`~compresskit.plan.planner.plan_for_target`). When a timed measure's correction asks for a
    budget no plan reaches, the loop stops and keeps the best plan measured (``record["stopped"]`` says
    why, with a warning when that plan missed); for counted measures that is an unreachable target.
    """
    metrics = list(target.metrics)
    tol = dict(tolerance) if tolerance is not None else {m: get_metric(m).tolerance for m in metrics}
    full = {m: float(costs[m].full()) if m in EXACT else measure(model, m) for m in metrics}
    goal = {t.metric: full[t.metric] / t.ratio for t in target.terms}
    search = _Search(budget={t.metric: float(costs[t.metric].full()) / t.ratio for t in target.terms},
                     goal=goal, hi={m: float(costs[m].full()) for m in metrics}, tol=tol)
    attempts: list[dict[str, Any]] = []
    best, stopped = None, None
    for _ in range((4 if any(tol.values()) else 8) if verify else 1):
        budget = dict(search.budget)
        try:
            plan = plan_for_target(graph, costs, importance, target, budget=dict(budget), min_width=min_width,
                                   round_to=round_to, min_keep=min_keep)
        except ValueError as err:
            # a budget lowered after a measured miss cannot be planned. A timed measure (a noisy clock can
            # ask for much less than it needs): keep the best plan measured and say why the correction
            # stopped. A counted one misses for good: the target is unreachable, say so
            if best is None or not any(tol[m] > 0 for m in metrics):
                raise
            stopped = f"the corrected budget {budget} is unreachable ({err})"
            if best[0][0]:  # no plan measured fits
                stopped += "; the plan kept missed the target when measured"
                warnings.warn(f"target: {target}: {stopped}", stacklevel=2)
            break
        if not verify:
            best = (None, plan)
            break
        small = build(plan)
        achieved = {m: measure(small, m) for m in metrics}
        predicted = {t["metric"]: t["predicted"] for t in plan.terms}
        attempts.append(_attempt(search, full, predicted, achieved, budget))
        score, done, fits = search.judge(predicted, achieved)
        if best is None or score < best[0]:
            best = (score, plan)
        if done or search.step(fits):
            break
    plan = best[1]
    first = metrics[0]
    record = {"full": full[first], "goal": goal[first], "predicted": plan.predicted, "verification": attempts}
    if stopped:
        record["stopped"] = stopped
    if len(metrics) > 1:
        record["terms"] = [{"target": str(t), "metric": t.metric, "full": full[t.metric],
                            "goal": goal[t.metric]} for t in target.terms]
    return plan, record

