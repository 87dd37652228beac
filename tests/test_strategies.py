"""Core V items 4-6 and House III's strategy seams: the Taylor importance against a hand-computed case,
parameters forward never reads (reported, refused with their share, dropped on request), targets of
several measures (met, or refused before training), and importance / sparsifier / metric registries
reachable from the config by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.plan.cost import macs_cost, params_cost
from compresskit.plan.importance import IMPORTANCES, TaylorImportance, get_importance
from compresskit.plan.metric import METRICS
from compresskit.plan.planner import plan_for_target
from compresskit.report import count_macs, count_params
from compresskit.sparsify.auto import SPARSIFIERS
from compresskit.stages import PlanStage, SparsifyStage


# ------------------------------------------------------------------------------------- Taylor importance
def _two_linear() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
        net[1].weight.copy_(torch.tensor([[1.0, -1.0, 2.0]]))
    return net


def test_taylor_importance_against_a_hand_computed_case():
    """L = y = W2 (W1 x + b1), x = (1, 2). By hand: h = (1.5, 2, 2); ∂L/∂W1[i, j] = W2[i] x[j],
    ∂L/∂b1[i] = W2[i], ∂L/∂W2[i] = h[i]. Unit i of the hidden group scores
    Σ_j |W1[i,j] W2[i] x[j]| + |b1[i] W2[i]| + |W2[i] h[i]|:
    unit 0: 1 + 0 + 0.5 + 1.5 = 3; unit 1: 0 + 2 + 0 + 2 = 4; unit 2: 2 + 4 + 2 + 4 = 12."""
    net = _two_linear()
    x = torch.tensor([[1.0, 2.0]])
    graph = ck.trace(net, (x,))
    (hidden,) = graph.prunable_groups
    imp = get_importance("taylor")
    assert isinstance(imp, TaylorImportance) and not imp.has_data()
    with pytest.raises(RuntimeError, match="no gradients yet"):
        imp(net, graph)
    imp.estimate(net, [(x, None)], lambda m, batch: m(batch[0]).sum())
    assert all(p.grad is None for p in net.parameters())  # gradients cleared, weights untouched
    want = torch.tensor([3.0, 4.0, 12.0], dtype=torch.float64)
    torch.testing.assert_close(imp(net, graph)[hidden.id], want)
    # normalize=True: over the group's mean (19/3), as l1 is, so groups compare by relative score
    norm = TaylorImportance(normalize=True)
    norm.load_state_dict(imp.state_dict())
    torch.testing.assert_close(norm(net, graph)[hidden.id], want * 3 / 19)


def test_fisher_importance_against_the_same_hand_computed_case():
    """Group Taylor (Fisher): (Σ_{i∈unit} w_i ∂L/∂w_i)² per batch. With the numbers above the signed sums
    are unit 0: 1 + 0 + 0.5 + 1.5 = 3; unit 1: 0 − 2 + 0 − 2 = −4; unit 2: 2 + 4 − 2 + 4 = 8 → 9, 16, 64."""
    net = _two_linear()
    x = torch.tensor([[1.0, 2.0]])
    graph = ck.trace(net, (x,))
    (hidden,) = graph.prunable_groups
    imp = get_importance("fisher")
    imp.estimate(net, [(x,)], lambda m, batch: m(batch[0]).sum(), graph=graph)
    want = torch.tensor([9.0, 16.0, 64.0], dtype=torch.float64)
    torch.testing.assert_close(imp(net, graph)[hidden.id], want)
    with torch.no_grad():  # a unit whose weights are all zero scores 0
        net[0].weight[2].zero_()
        net[0].bias[2] = 0
        net[1].weight[0, 2] = 0
    assert imp(net, graph)[hidden.id][2] == 0


def test_taylor_averages_gradient_magnitudes_over_batches_and_scores_current_weights():
    """Two batches with decay 0.5: the bias-corrected mean of |g| is (0.5·0.5|g1| + 0.5|g2|) / (1 − 0.25)
    per entry, times the current |w|; a unit whose weights are zero scores 0."""
    net = _two_linear()
    x1, x2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, 1.0]])
    graph = ck.trace(net, (x1,))
    (hidden,) = graph.prunable_groups
    imp = TaylorImportance(decay=0.5, batches=2)
    imp.estimate(net, [(x1,), (x2,), (x1,)], lambda m, batch: m(batch[0]).sum())  # the third is not used
    grads = []
    for x in (x1, x2):  # a naive reference with autograd, one batch at a time
        net.zero_grad()
        net(x).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    net.zero_grad()
    mean = {n: (0.25 * grads[0][n].abs() + 0.5 * grads[1][n].abs()) / 0.75 for n in grads[0]}
    w = dict(net.named_parameters())
    want = torch.stack([
        (w["0.weight"][i].abs() * mean["0.weight"][i]).sum() + (w["0.bias"][i].abs() * mean["0.bias"][i])
        + (w["1.weight"][0, i].abs() * mean["1.weight"][0, i]) for i in range(3)]).double()
    torch.testing.assert_close(imp(net, graph)[hidden.id], want.detach())
    with torch.no_grad():
        net[0].weight[1].zero_()
        net[0].bias[1] = 0
        net[1].weight[0, 1] = 0
    assert imp(net, graph)[hidden.id][1] == 0


def test_taylor_units_without_any_gradient_go_last():
    """A group none of whose parameters ever got a gradient (frozen) has no evidence: it scores
    NO_GRADIENT; a group with one trainable member is scored from that member alone."""
    from compresskit.plan.importance import NO_GRADIENT

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2), nn.Linear(2, 1))
    x = torch.rand(4, 2)
    graph = ck.trace(net, (x,))
    first = next(g for g in graph.prunable_groups if g.size == 3)
    second = next(g for g in graph.prunable_groups if g.size == 2)
    for p in [*net[0].parameters(), *net[1].parameters()]:
        p.requires_grad_(False)
    imp = TaylorImportance()
    imp.estimate(net, [(x,)], lambda m, batch: m(batch[0]).sum())
    scores = imp(net, graph)
    assert torch.all(scores[first.id] == NO_GRADIENT)
    # ∂L/∂W2[0, j] = Σ_b h2[b, j]: the second group's units score |W2[0, j]| · |Σ_b h2[b, j]|
    h2 = net[1](net[0](x))
    want = (net[2].weight[0].abs() * h2.sum(0).abs()).double()
    torch.testing.assert_close(scores[second.id], want.detach())


def _batches(x: torch.Tensor, n: int = 4) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(x.shape, generator=g), torch.rand(x.shape[0], 3, *x.shape[2:], generator=g))
            for _ in range(n)]


def _chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 3, 3, padding=1))


def _cfg(**kw):
    base = {"sparsify": {"steps": 4, "calibrate_every": 1}, "recover": {"steps": 1}, "measure_latency": False,
            "progress": False}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return ck.CompressConfig(**base)


def test_taylor_is_the_default_and_gathers_during_stage_one():
    """plan.importance="taylor" (the default): stage I's gradients are observed (its statistics ride in
    the stage's checkpoint), and the units stage I zeroed score 0 and go."""
    net = _chain()
    data = _batches(torch.rand(2, 3, 8, 8))
    seen = []
    original = TaylorImportance.observe

    def spy(self, name, grad):
        seen.append(name)
        original(self, name, grad)

    TaylorImportance.observe = spy
    try:
        result = ck.compress(net, data, target="2x params", config=_cfg(plan={"importance": "taylor"}))
        n_progressive = len(seen)
        seen.clear()  # OBProx-SG with a fixed λ does not steer by the plan: no warm-up, stage I's gradients
        fixed = ck.compress(net, data, target="2x params", config=_cfg(sparsify={"lambda_": 1e-4}))
    finally:
        TaylorImportance.observe = original
    assert result.report.planning["importance"] == "taylor"  # the default
    assert result.report.planning["removed_importance"] == 0.0  # only zeroed units went
    # the warm-up estimate (8 batches max, 4 given) then 4 training steps, every parameter each time
    assert n_progressive == (4 + 4) * len(list(net.parameters()))
    assert count_params(result.model) <= count_params(net) / 2
    assert len(seen) == 4 * len(list(net.parameters())) and fixed.report.calibration["lambda"] == 1e-4


def test_taylor_without_stage_one_estimates_from_batches(tmp_path):
    net = _chain()
    data = _batches(torch.rand(2, 3, 8, 8))
    cfg = _cfg(plan={"importance": "taylor"}, sparsify={"steps": 0}, out_dir=str(tmp_path))
    result = ck.compress(net, data, target="2x params", config=cfg)
    assert result.report.planning["importance"] == "taylor"
    stamp = torch.load(tmp_path / PlanStage.artifact, weights_only=True)["fingerprint"]
    assert stamp["plan"]["importance"] == {"name": "taylor", "decay": 0.98, "batches": 8}
    assert count_params(result.model) <= count_params(net) / 2
    again = ck.compress(net, data, target="2x params", config=cfg)  # every stage restored, same model
    for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


# -------------------------------------------------------------------------------- unused parameters
class WithTeacherBlock(nn.Module):
    """A body used by forward and a training-only block (``block_tea``) it calls only with ``gt``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        self.block_tea = nn.Sequential(nn.Conv2d(6, 16, 3, padding=1), nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, x, gt=None):
        y = self.body(x)
        if gt is not None:
            y = y + self.block_tea(torch.cat([x, gt], 1))
        return y


BODY = (3 * 9 * 8 + 8) + (8 * 9 * 3 + 3)  # 443 parameters by hand
TEA = (6 * 9 * 16 + 16) + (16 * 9 * 3 + 3)  # 1,315


def test_unused_parameters_are_found_and_reported():
    from compresskit.surgery.unused import unused_parameters, unused_summary

    torch.manual_seed(0)
    net = WithTeacherBlock()
    assert count_params(net) == BODY + TEA
    x = torch.rand(1, 3, 8, 8)
    unused = unused_parameters(net, (x,))
    assert sorted(unused) == [f"block_tea.{i}.{t}" for i in (0, 1) for t in ("bias", "weight")]
    assert unused_summary(net, unused) == {"block_tea": TEA}
    # default: kept and counted; the report names them
    result = ck.compress(net, _batches(x), target="1.2x params", config=_cfg())
    assert result.report.before.params == BODY + TEA
    assert count_params(result.model) == result.report.after.params
    assert result.model.block_tea[0].weight.shape == (16, 6, 3, 3)
    assert any(f"block_tea: {TEA:,} params" in n and "kept" in n for n in result.report.notes)
    assert result.report.planning["unused_parameters"] == {"block_tea": TEA}


def test_unreachable_target_names_unused_parameters_and_drop_unused_removes_them(tmp_path):
    torch.manual_seed(0)
    net = WithTeacherBlock()
    x = torch.rand(1, 3, 8, 8)
    data = _batches(x)
    calls = []

    def loss(out, batch):
        if torch.is_grad_enabled():  # a training step (compress checks the loss once without grad)
            calls.append(1)
        return (out - batch[-1]).abs().mean()

    # one unit per prunable group (the body's 8 hidden channels): 3*9+1 + 1*9*3+3 = 58 + TEA by hand
    floor = (3 * 9 * 1 + 1) + (1 * 9 * 3 + 3) + TEA
    with pytest.raises(ValueError) as info:
        ck.compress(net, data, loss, target="3x params", config=_cfg())
    msg = str(info.value)
    assert calls == []  # refused before any training
    assert f"block_tea: {TEA:,} params ({TEA / (BODY + TEA):.0%}) is never used by forward()" in msg
    assert f"cap the ratio at {(BODY + TEA) / floor:.3g}x (asked: 3x params)" in msg
    assert f"pass `drop_unused=True` to remove them (then up to {BODY / (floor - TEA):.3g}x" in msg
    result = ck.compress(net, data, loss, target="3x params", config=_cfg(out_dir=str(tmp_path)),
                         drop_unused=True)
    assert "block_tea" not in dict(result.model.named_parameters(prefix="")) and not any(
        n.startswith("block_tea") for n, _ in result.model.named_parameters())
    assert result.report.before.params == BODY  # the counts leave them out
    assert count_params(result.model) <= BODY / 3
    assert any("removed (drop_unused=True)" in n for n in result.report.notes)
    with pytest.raises(RuntimeError, match="removed by drop_unused=True"):
        result.model(x, x)  # the training-only path is gone, and says so
    # the original is untouched
    assert count_params(net) == BODY + TEA


def test_unused_parameters_named_for_a_registered_measure_that_counts_them():
    """A measure of parameter bytes counts the unread block too: its share of that measure is named."""

    class Bytes:
        metric = "weightbytes"

        def __init__(self, model, graph, example_inputs, **_):
            self.params = params_cost(model, graph)

        def __call__(self, widths):
            return 4 * self.params(widths)

        def full(self):
            return 4 * self.params.full()

    def measure(model, example_inputs=None, **_):
        return 4.0 * sum(p.numel() for p in model.parameters())

    torch.manual_seed(0)
    net = WithTeacherBlock()
    x = torch.rand(1, 3, 8, 8)
    with METRICS.snapshot():
        ck.register_metric("weightbytes", cost=Bytes, measure=measure)
        with pytest.raises(ValueError) as info:
            ck.compress(net, _batches(x), target="3x weightbytes", config=_cfg())
        share = TEA / (BODY + TEA)
        assert f"block_tea: {TEA:,} params ({share:.0%} of the weightbytes) is never used" in str(info.value)
        with pytest.raises(ValueError) as info:  # MACs: unread parameters cost none; the usual message
            ck.compress(net, _batches(x), target="1000x macs", config=_cfg())
        assert "never used by forward()" not in str(info.value)
        assert "1000x macs is unreachable for this model" in str(info.value)


def test_drop_unused_survives_save_and_load_of_a_registered_model(tmp_path):
    from compresskit.models import MODELS

    with MODELS.snapshot():
        ck.register_model("with_tea_test", task="test")(WithTeacherBlock)
        net = ck.create_model("with_tea_test")
        x = torch.rand(1, 3, 8, 8)
        result = ck.compress(net, _batches(x), target="2x params", config=_cfg(), drop_unused=True)
        loaded = ck.load(result.save(tmp_path / "small.pt"))
        assert count_params(loaded) == count_params(result.model)
        torch.testing.assert_close(loaded.eval()(x), result.model.eval()(x))


# ---------------------------------------------------------------------------- several measures at once
def test_target_with_several_measures_parses_and_dumps():
    t = ck.Target.parse("5x params & 50% macs")
    assert [(p.metric, p.ratio) for p in t.terms] == [("params", 5.0), ("macs", 2.0)]
    assert str(t) == "5x params & 2x macs" and ck.Target.parse("5x params and 2x flops") == t
    assert ck.Target.model_validate(t.model_dump()) == t
    assert ck.Target.parse("4x params").model_dump() == {"metric": "params", "ratio": 4.0}  # as before
    with pytest.raises(ValueError, match="params is named twice"):
        ck.Target.parse("2x params & 3x parameters")


def test_planner_meets_every_measure_counted_on_the_shrunk_model():
    net = _chain()
    x = (torch.rand(1, 3, 8, 8),)
    graph = ck.trace(net, x)
    costs = {"params": params_cost(net, graph), "macs": macs_cost(net, graph, x)}
    imp = get_importance("l1")(net, graph)
    for target in ("2x params & 1.5x macs", "1.2x params & 3x macs"):
        plan = plan_for_target(graph, costs, imp, target)
        keep = {g: torch.arange(w) for g, w in plan.widths.items() if w < plan.sizes[g]}
        small = ck.shrink(net, graph, keep=keep)
        for part in ck.Target.parse(target).terms:
            got = count_params(net) / count_params(small) if part.metric == "params" else \
                count_macs(net, x) / count_macs(small, x)
            assert got >= part.ratio, (target, part, got)
        assert [t["metric"] for t in plan.terms] == ["params", "macs"] if target.startswith("2x") else True
    with pytest.raises(ValueError, match="one cost model per measure"):
        plan_for_target(graph, costs["params"], imp, "2x params & 2x macs")


def test_compress_meets_several_measures_and_reports_each():
    net = _chain()
    x = torch.rand(2, 3, 8, 8)
    result = ck.compress(net, _batches(x), target="2x params & 2.5x macs", config=_cfg())
    t = result.report.target
    assert t["target"] == "2x params & 2.5x macs" and [p["metric"] for p in t["terms"]] == ["params", "macs"]
    by_hand = {"params": count_params(net) / count_params(result.model),
               "macs": count_macs(net, x[:2]) / count_macs(result.model, x[:2])}
    for part in t["terms"]:
        assert part["achieved"] == pytest.approx(by_hand[part["metric"]])
        assert part["achieved"] >= part["ratio"] and part["met"]


def test_a_measure_the_cost_model_mispredicts_is_corrected_by_verification_per_part():
    """A registered measure whose cost model predicts 1 per parameter while the measurement reads 1 per
    parameter plus 200 (a fixed cost the model missed): the plan is verified by measuring, and the budget
    of that part alone is corrected until its measured ratio holds; the exact params part stays met."""

    class PerParam:
        metric = "slowms"

        def __init__(self, model, graph, example_inputs, **_):
            self.params = params_cost(model, graph)

        def __call__(self, widths):
            return self.params(widths)

        def full(self):
            return self.params.full()

    def measure(model, example_inputs=None, **_):
        return float(count_params(model)) + 200.0

    net = _chain()
    x = torch.rand(2, 3, 8, 8)
    with METRICS.snapshot():
        ck.register_metric("slowms", cost=PerParam, measure=measure, tolerance=0.01)
        result = ck.compress(net, _batches(x), target="1.5x params & 2.5x slowms", config=_cfg())
        want = (count_params(net) + 200) / (count_params(result.model) + 200)  # by hand
        parts = {p["metric"]: p for p in result.report.target["terms"]}
        assert parts["slowms"]["achieved"] == pytest.approx(want) and want >= 2.5 * 0.99
        assert parts["params"]["achieved"] >= 1.5 and parts["params"]["met"]
        tried = result.report.planning["verification"]
        assert len(tried) >= 2  # the first plan missed the measured goal and was corrected
        assert tried[0]["terms"]["slowms"]["measured"] > tried[0]["terms"]["slowms"]["budget"]


def test_unreachable_combination_is_refused_by_message_before_training():
    net = _chain()
    x = torch.rand(2, 3, 8, 8)
    calls = []

    def loss(out, batch):
        if torch.is_grad_enabled():  # a training step (compress checks the loss once without grad)
            calls.append(1)
        return out.square().mean()

    with pytest.raises(ValueError) as info:
        ck.compress(net, _batches(x), loss, target="2x params & 1000x macs", config=_cfg())
    msg = str(info.value)
    assert "1000x macs is unreachable for this model" in msg and "2x params is unreachable" not in msg
    assert calls == []


# ------------------------------------------------------------------------------------------ registries
def test_strategies_are_registries_reachable_by_name():
    assert {"l1", "density", "taylor"} <= set(IMPORTANCES.names())
    assert {"obproxsg", "progressive"} <= set(SPARSIFIERS.names())
    assert {"params", "macs", "latency"} <= set(METRICS.names())
    assert ck.register_importance is not None and ck.register_sparsifier and ck.register_metric


def test_a_registered_sparsifier_and_importance_object_run_from_the_config(tmp_path):
    runs = []

    class ScaleHalf:
        """A toy sparsifier: halves every weight once (no training)."""

        name = "scale_half"
        uses_plan = False

        def __init__(self, config):
            self.config = config

        def fingerprint(self):
            return {"name": self.name, "steps": self.config.steps}

        def run(self, model, ctx):
            runs.append(ctx.graph)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.5)
            return {"method": self.name}

    class Reverse:
        """Importance object: later units matter more."""

        def __call__(self, model, graph):
            return {g.id: torch.arange(g.size, dtype=torch.float64) for g in graph.prunable_groups}

    net = _chain()
    x = torch.rand(2, 3, 8, 8)
    with SPARSIFIERS.snapshot():
        ck.register_sparsifier("scale_half", ScaleHalf)
        cfg = _cfg(sparsify={"method": "scale_half"}, plan={"importance": Reverse()}, recover={"steps": 0},
                   out_dir=str(tmp_path))
        result = ck.compress(net, _batches(x), target="2x params", config=cfg)
        assert len(runs) == 1 and result.report.calibration == {"method": "scale_half"}
        # the stage fingerprint is the strategy's own fingerprint()
        stamp = torch.load(tmp_path / SparsifyStage.artifact, weights_only=True)["fingerprint"]
        assert stamp["sparsify"] == {"name": "scale_half", "steps": 4}
        assert "plan" not in stamp  # uses_plan=False: stage I does not depend on the plan
        stamp = torch.load(tmp_path / PlanStage.artifact, weights_only=True)["fingerprint"]
        assert stamp["plan"]["importance"].endswith("<locals>.Reverse")  # no fingerprint(): its class
    # Reverse keeps the last units of every group: the first conv's kept filters are its last ones
    kept = result.model[0].weight.shape[0]
    torch.testing.assert_close(result.model[0].weight, 0.5 * net[0].weight[-kept:])
    with pytest.raises(ValueError, match="unknown sparsifier 'scale_half'"):
        _cfg(sparsify={"method": "scale_half"})


def test_restored_gradient_statistics_follow_the_gradients_device():
    """Statistics come back from a checkpoint on the CPU; a resumed run on another device (meta stands in
    for CUDA here) must keep accumulating instead of failing on a device mismatch."""
    from compresskit.plan.importance import TaylorImportance

    imp = TaylorImportance()
    imp.load_state_dict({"avg": {"w": torch.ones(3)}, "seen": {"w": 1}})
    imp.observe("w", torch.ones(3, device="meta"))
    assert imp._avg["w"].device.type == "meta" and imp._seen["w"] == 2
