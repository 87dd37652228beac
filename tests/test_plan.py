"""plan_widths and keep_from_plan on hand-built nets; expected widths come from the rule formulas here."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.measure.mass import unit_l1_mass
from compresskit.plan.planner import WidthPlan
from compresskit.surgery.select import keep_from_plan


def linear(d: float, c: int) -> int:  # ST-MFNet Mini: C_in' = ceil(d · C_in)
    return math.ceil(d * c)


def sqrt_rule(d: float, c: int) -> int:  # CDFI code: C' = floor(√d · C)
    return math.floor(math.sqrt(d) * c)


def combine(coupling: str, ws: list[int]) -> int:
    return {"max": max(ws), "min": min(ws), "mean": math.ceil(sum(ws) / len(ws))}[coupling]


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class Residual(nn.Module):
    """a → (+ c(b(·))) → e; d and e read the residual stream; cat(d, e) → f."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 10, 3, padding=1)
        self.c = nn.Conv2d(10, 12, 3, padding=1)
        self.d = nn.Conv2d(12, 6, 1)
        self.e = nn.Conv2d(12, 5, 1)
        self.f = nn.Conv2d(11, 3, 1)

    def forward(self, x):
        y = self.a(x)
        z = y + self.c(torch.relu(self.b(y)))
        return self.f(torch.cat([self.d(z), self.e(z)], 1))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.h = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.h(torch.relu(self.g(torch.relu(self.a(x)))))


X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _trace(model):
    return ck.trace(model, (X,))


def _group(graph, producer: str):
    (g,) = [g for g in graph.groups if producer in g.producers]
    return g


def test_chain_linear_and_sqrt():
    m = Chain()
    graph = _trace(m)
    dens = {"a": 0.9, "b": 0.3, "c": 0.55}
    ga, gb, gc = _group(graph, "a"), _group(graph, "b"), _group(graph, "c")
    plan = ck.plan_widths(graph, dens, rule="linear")
    # the width of a layer's output follows the next layer's input: ceil(d_next · C)
    assert plan.widths[ga.id] == linear(0.3, 8) == 3
    assert plan.widths[gb.id] == linear(0.55, 16) == 9
    assert plan.widths[gc.id] == 4  # graph output: frozen
    frozen = [g for g in graph.groups if not g.prunable]
    assert frozen and all(plan.widths[g.id] == g.size for g in frozen)
    for coupling in ("max", "min", "mean"):
        plan = ck.plan_widths(graph, dens, rule="sqrt", coupling=coupling)
        assert plan.widths[ga.id] == combine(coupling, [sqrt_rule(0.9, 8), sqrt_rule(0.3, 8)])
        assert plan.widths[gb.id] == combine(coupling, [sqrt_rule(0.3, 16), sqrt_rule(0.55, 16)])
    # back to front: the planning order meets b's output before a's
    order = [gp.id for gp in plan.groups]
    assert order.index(gb.id) < order.index(ga.id)


@pytest.mark.parametrize("coupling", ["max", "min", "mean"])
def test_residual_and_concat_coupling(coupling):
    graph = _trace(Residual())
    dens = {"a": 0.8, "b": 0.5, "c": 0.7, "d": 0.25, "e": 0.6, "f": 0.4}
    stream = _group(graph, "a")
    assert set(stream.producers) == {"a", "c"} and set(stream.consumers) == {"b", "d", "e"}
    plan = ck.plan_widths(graph, dens, rule="linear", coupling=coupling)
    # the residual stream is read by b, d and e: one width by the coupling policy
    assert plan.widths[stream.id] == combine(coupling, [linear(dens[n], 12) for n in ("b", "d", "e")])
    assert plan.widths[_group(graph, "b").id] == linear(0.7, 10)
    # the concat's two segments are each read by f
    assert plan.widths[_group(graph, "d").id] == linear(0.4, 6)
    assert plan.widths[_group(graph, "e").id] == linear(0.4, 5)
    sq = ck.plan_widths(graph, dens, rule="sqrt", coupling=coupling)
    want = combine(coupling, [sqrt_rule(dens[n], 12) for n in ("a", "c", "b", "d", "e")])
    assert sq.widths[stream.id] == want


def test_grouped_conv_keeps_divisibility():
    graph = _trace(Grouped())
    ga = _group(graph, "a")
    assert ga.channels_per_unit * ga.size == 16
    for d in (0.1, 0.3, 0.55, 0.8, 1.0):
        plan = ck.plan_widths(graph, {"a": 1.0, "g": d, "h": 1.0})
        channels = plan.widths[ga.id] * ga.channels_per_unit
        assert channels % 4 == 0  # the grouped conv's 4 groups each keep the same count
        # the channel rule ceil(d·C) rounded up to whole groups of the grouped conv
        assert channels == 4 * math.ceil(linear(d, 16) / 4)


def test_min_width_divisor_and_zero_density():
    graph = _trace(Chain())
    ga, gb = _group(graph, "a"), _group(graph, "b")
    plan = ck.plan_widths(graph, {"b": 0.0, "c": 0.0})
    assert plan.widths[ga.id] == 1 and plan.widths[gb.id] == 1
    plan = ck.plan_widths(graph, {"b": 0.0, "c": 0.0}, min_width=3)
    assert plan.widths[ga.id] == 3 and plan.widths[gb.id] == 3
    plan = ck.plan_widths(graph, {"b": 0.3, "c": 0.55}, divisor=4)
    assert plan.widths[ga.id] == 4 and plan.widths[gb.id] == 12  # 3 → 4, 9 → 12
    plan = ck.plan_widths(graph, {"b": 0.9, "c": 0.55}, divisor=16)
    assert plan.widths[ga.id] == 8  # rounded up past the size: capped at the original width
    plan = ck.plan_widths(graph, {"a": 0.5})  # nobody that consumes b's output has a density
    assert plan.widths[gb.id] == 16 and plan.widths[ga.id] == 8


def test_frozen_groups_keep_width():
    graph = _trace(Residual())
    plan = ck.plan_widths(graph, {n: 0.01 for n in "abcdef"})
    for g in graph.groups:
        if not g.prunable:
            assert plan.widths[g.id] == g.size
        else:
            assert plan.widths[g.id] == 1


def test_strict_false_ignores_modules_outside_the_graph():
    class WithUnused(Chain):
        def __init__(self):
            super().__init__()
            self.unused = nn.Linear(4, 4)

    m = WithUnused()
    graph = _trace(m)
    dens = {**ck.layer_densities(m), "b": 0.3}  # a plain dict: names outside the graph are errors
    with pytest.raises(ValueError, match=r"not in the traced graph: \['unused'\].*strict=False"):
        ck.plan_widths(graph, dens)
    plan = ck.plan_widths(graph, dens, strict=False)
    assert plan.ignored == ["unused"] and "unused" in plan.explain_text()
    assert plan.widths[_group(graph, "a").id] == linear(0.3, 8)
    assert WidthPlan.from_dict(plan.to_dict()).ignored == ["unused"]
    # measured on the model by ck.layer_densities: the unreached module is ignored by default
    assert ck.plan_widths(graph, ck.layer_densities(m)).ignored == ["unused"]
    with pytest.raises(ValueError, match="not in the traced graph"):
        ck.plan_widths(graph, ck.layer_densities(m), strict=True)
    with pytest.raises(ValueError, match="not in the traced graph"):  # nothing matches: another model
        ck.plan_widths(graph, ck.layer_densities(Residual().d), strict=False)


def test_explain_and_serialisation(tmp_path):
    graph = _trace(Residual())
    plan = ck.plan_widths(graph, {"a": 0.8, "b": 0.5, "c": 0.7, "d": 0.25, "e": 0.6, "f": 0.4}, rule="sqrt")
    table = plan.explain()
    assert table.row_count == len(graph.groups)
    text = plan.explain_text()
    assert "rule=sqrt" in text and f"group {_group(graph, 'a').id}:" in text
    path = tmp_path / "plan.json"
    ck.io.atomic_write_json(plan.to_dict(), path)
    again = WidthPlan.from_dict(json.loads(path.read_text()))
    assert again.widths == plan.widths and again.sizes == plan.sizes
    assert again.to_dict() == plan.to_dict()
    with pytest.raises(ValueError, match="not a WidthPlan"):
        WidthPlan.from_dict({"widths": {}})
    with pytest.raises(ValueError, match="not in"):
        WidthPlan.from_dict({**plan.to_dict(), "widths": {"1": 0}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rule="cube"), "rule must be one of"),
        (dict(coupling="median"), "coupling must be one of"),
        (dict(min_width=0), "min_width must be an int >= 1"),
        (dict(divisor=2.5), "divisor must be an int >= 1"),
        (dict(densities={"b": 1.2}), r"densities\['b'\] must be a number in \[0, 1\]"),
        (dict(densities={"b": float("nan")}), r"densities\['b'\]"),
        (dict(densities={"nope": 0.5}), "not in the traced graph.*nope"),
    ],
)
def test_bad_arguments(kwargs, match):
    graph = _trace(Chain())
    args = {"densities": {"b": 0.5}, **kwargs}
    with pytest.raises(ValueError, match=match):
        ck.plan_widths(graph, **args)


def _sparse_residual():
    """A Residual net whose dropped channels are exactly zero where they are produced and consumed."""
    torch.manual_seed(0)
    m = Residual()
    with torch.no_grad():
        for name in ("a", "c"):  # residual stream: channels 1, 4, 5, 9 dead
            getattr(m, name).weight[[1, 4, 5, 9]] = 0
            getattr(m, name).bias[[1, 4, 5, 9]] = 0
        for name in ("b", "d", "e"):
            getattr(m, name).weight[:, [1, 4, 5, 9]] = 0
        m.b.weight[[0, 3, 6]] = 0  # b's output: channels 0, 3, 6 dead
        m.b.bias[[0, 3, 6]] = 0
        m.c.weight[:, [0, 3, 6]] = 0
    return m


def test_keep_from_plan_picks_the_heaviest_units():
    m = _sparse_residual()
    graph = _trace(m)
    stream, gb = _group(graph, "a"), _group(graph, "b")
    plan = ck.plan_widths(graph, ck.layer_densities(m))
    plan.widths[stream.id], plan.widths[gb.id] = 8, 7
    keep = keep_from_plan(m, graph, plan, init="inherit")
    assert keep[stream.id].tolist() == [0, 2, 3, 6, 7, 8, 10, 11]
    assert keep[gb.id].tolist() == [1, 2, 4, 5, 7, 8, 9]
    reinit = keep_from_plan(m, graph, plan, init="reinit")
    assert reinit.keys() == keep.keys() and all(torch.equal(keep[k], v) for k, v in reinit.items())
    # the mass itself: b's output unit k = |row k of b.weight| + |b.bias[k]| + |column k of c.weight|
    mass = unit_l1_mass(m, gb)
    m.requires_grad_(False)
    want = [
        float(m.b.weight[k].abs().sum() + m.b.bias[k].abs() + m.c.weight[:, k].abs().sum()) for k in range(10)
    ]
    torch.testing.assert_close(mass, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="init must be one of"):
        keep_from_plan(m, graph, plan, init="random")
    with pytest.raises(ValueError, match="does not match the graph"):
        keep_from_plan(m, _trace(Chain()), plan)


def test_unit_density_by_hand_and_a_model_changed_after_trace():
    from compresskit.plan.importance import unit_density

    m = _sparse_residual()
    graph = _trace(m)
    gb = _group(graph, "b")
    m.requires_grad_(False)
    with torch.no_grad():
        m.b.weight[2, :3] = 0  # a few more zeros in unit 2's row
    # b's output unit k: its row of b.weight, b.bias[k], column k of c.weight
    nnz = [int((m.b.weight[k] != 0).sum() + (m.b.bias[k] != 0) + (m.c.weight[:, k] != 0).sum())
           for k in range(10)]
    total = m.b.weight[0].numel() + 1 + m.c.weight[:, 0].numel()
    want = torch.tensor([n / total for n in nnz], dtype=torch.float64)
    torch.testing.assert_close(unit_density(m, gb), want, rtol=0, atol=1e-12)
    assert unit_density(m, gb)[[0, 3, 6]].tolist() == [0.0, 0.0, 0.0]
    m.b = nn.Conv2d(m.b.in_channels, 6, 3, padding=1)  # fewer outputs than the graph has units
    for per_unit in (unit_density, unit_l1_mass):
        with pytest.raises(ValueError, match="changed after ck.trace"):
            per_unit(m, gb)


def test_plan_then_shrink_gives_planned_widths_and_same_outputs():
    m = _sparse_residual().eval()
    graph = _trace(m)
    dens = ck.layer_densities(m)
    plan = ck.plan_widths(graph, dens, rule="linear", coupling="max")
    stream, gb, gd = _group(graph, "a"), _group(graph, "b"), _group(graph, "d")
    # b: 7 live rows x 8 live columns of 10 x 12; d, e: 8 of 12 columns; c: 8 rows x 7 columns of 12 x 10
    assert plan.widths[stream.id] == max(linear(56 / 120, 12), linear(8 / 12, 12)) == 8
    assert plan.widths[gb.id] == linear(56 / 120, 10) == 5
    small = ck.shrink(m, graph, plan=plan, init="inherit")
    assert small.a.out_channels == small.c.out_channels == plan.widths[stream.id]
    assert small.b.in_channels == small.d.in_channels == small.e.in_channels == plan.widths[stream.id]
    assert small.b.out_channels == small.c.in_channels == plan.widths[gb.id]
    ge = _group(graph, "e")
    assert small.d.out_channels == plan.widths[gd.id]
    assert small.f.in_channels == plan.widths[gd.id] + plan.widths[ge.id]
    with torch.no_grad():
        assert small(X).shape == m(X).shape
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())
    # keeping every live channel (and nothing else) inherits the sparse solution: same outputs
    plan.widths[gb.id], plan.widths[gd.id] = 7, 6
    plan.widths[ge.id] = 5
    exact = ck.shrink(m, graph, plan=plan, init="inherit")
    with torch.no_grad():
        torch.testing.assert_close(exact(X), m(X), rtol=1e-5, atol=1e-6)
