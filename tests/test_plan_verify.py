"""The verification loop of a target plan, called with explicit arguments (no stage state)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.measure.counts import count_params
from compresskit.plan.cost import params_cost
from compresskit.plan.importance import L1Importance, keep_from_importance
from compresskit.plan.verify import next_budget, verify_plan


def test_next_budget_follows_the_line_through_the_last_two_tries():
    # measured = predicted + 2 (an offset the cost model misses): to measure 5, plan for 3
    assert next_budget([(10.0, 12.0), (6.0, 8.0)], budget=6.0, goal=5.0) == pytest.approx(3.0)
    # one try: the error taken as proportional, budget · goal / measured
    assert next_budget([(10.0, 20.0)], budget=10.0, goal=5.0) == pytest.approx(2.5)


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(32, 3, 3, padding=1))
    x = torch.rand(1, 3, 8, 8)
    graph = ck.trace(model, x)
    importance = L1Importance()(model, graph)

    def build(plan):
        return ck.shrink(model, graph, keep=keep_from_importance(importance, plan.widths, plan.sizes))

    return model, graph, importance, build


def test_verify_corrects_a_measure_the_cost_model_misses():
    """The measurement adds 400 parameters the cost model does not see: the first plan misses, the loop
    lowers the budget until the measured model fits the goal (full / 2)."""
    model, graph, importance, build = _setup()
    full = count_params(model)
    offset = 400
    measured = []

    def measure(m, metric):
        assert metric == "params"
        measured.append(count_params(m) + offset)
        return float(measured[-1])

    target = ck.Target.parse("2x params")
    plan, record = verify_plan(graph, {"params": params_cost(model, graph)}, importance, target,
                               model=model, build=build, measure=measure, tolerance={"params": 0.0})
    assert record["full"] == full and record["goal"] == pytest.approx(full / 2)
    assert len(record["verification"]) >= 2  # the first plan missed by the offset
    assert record["verification"][0]["measured"] > full / 2
    assert count_params(build(plan)) + offset <= full / 2  # the plan returned fits, measured independently


def test_without_verification_one_plan_and_no_measurement():
    model, graph, importance, build = _setup()

    def measure(m, metric):
        raise AssertionError("verify=False measures nothing for an exact measure")

    plan, record = verify_plan(graph, {"params": params_cost(model, graph)}, importance,
                               ck.Target.parse("2x params"), model=model, build=build, measure=measure,
                               verify=False)
    assert record["verification"] == []
    assert count_params(build(plan)) <= count_params(model) / 2


def test_a_corrected_budget_that_cannot_be_planned_keeps_the_best_plan_measured():
    """A clock that reads 200x too much (a loaded machine; a measure with a tolerance is a timed one):
    the correction asks for a budget no plan can reach; the loop stops there, returns the best plan it
    measured, says why it stopped and warns that the plan missed when measured."""
    model, graph, importance, build = _setup()
    full = count_params(model)

    def measure(m, metric):
        return float(count_params(m) * 200)

    target = ck.Target.parse("3x params")
    with pytest.warns(UserWarning, match="missed the target when measured"):
        plan, record = verify_plan(graph, {"params": params_cost(model, graph)}, importance, target,
                                   model=model, build=build, measure=measure, tolerance={"params": 0.05})
    assert "unreachable" in record["stopped"]
    assert len(record["verification"]) == 1  # the first correction was already out of reach
    assert count_params(build(plan)) <= full / 3  # the first plan, which truly fits


def test_a_counted_measure_that_misses_for_good_is_an_unreachable_target():
    """40 % of the parameters that no width removes (a counted measure: no noise to wait out): the
    correction cannot be planned, and the target is refused by message, not returned missed."""
    model, graph, importance, build = _setup()
    full = count_params(model)

    def measure(m, metric):
        return float(count_params(m) + 0.4 * full)

    with pytest.raises(ValueError, match="target: 3x params is unreachable"):
        verify_plan(graph, {"params": params_cost(model, graph)}, importance, ck.Target.parse("3x params"),
                    model=model, build=build, measure=measure, tolerance={"params": 0.0})
