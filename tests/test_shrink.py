"""ck.shrink: keep-set validation, surgery details (checked against hand-sliced tensors), init, plan hook."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn
from zoo import build

import compresskit as ck


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, tuple, ck.ChannelGraph]:
    model, x = build("resnet_bottleneck")
    return model, x, ck.trace(model, x)


def _first(graph: ck.ChannelGraph, prunable: bool = True) -> ck.ChannelGroup:
    return next(g for g in graph.groups if g.prunable == prunable)


def test_keep_set_validation(resnet) -> None:
    model, _, g = resnet
    grp = _first(g)
    frozen = _first(g, prunable=False)
    cases = [
        ({len(g.groups) + 3: [0]}, KeyError, "unknown group id"),
        ({-1: [0]}, KeyError, "unknown group id"),
        ({"0": [0]}, TypeError, "group ids must be ints"),
        ({grp.id: []}, ValueError, "empty keep-set"),
        ({grp.id: [0, grp.size]}, ValueError, r"indices must lie in \[0, "),
        ({grp.id: [-1, 0]}, ValueError, "indices must lie"),
        ({grp.id: [1, 1]}, ValueError, "duplicate"),
        ({grp.id: torch.tensor([[0, 1]])}, TypeError, "1-D tensor of integer"),
        ({grp.id: torch.tensor([0.0, 1.0])}, TypeError, "integer"),
        ({grp.id: "01"}, TypeError, "LongTensor"),
        ({frozen.id: [0]}, ValueError, f"group {frozen.id} is frozen"),
        ([0, 1], TypeError, "keep: expected a mapping"),
    ]
    for keep, err, msg in cases:
        with pytest.raises(err, match=msg):
            ck.shrink(model, g, keep=keep)
    with pytest.raises(ValueError, match="exactly one of keep"):
        ck.shrink(model, g)
    with pytest.raises(ValueError, match="init"):
        ck.shrink(model, g, keep={grp.id: [0]}, init="random")
    with pytest.raises(TypeError, match="graph"):
        ck.shrink(model, "graph", keep={grp.id: [0]})
    with pytest.raises(TypeError, match="model"):
        ck.shrink(None, g, keep={grp.id: [0]})
    other, _ = build("densenet")
    with pytest.raises(ValueError, match="another model"):
        ck.shrink(other, g, keep={grp.id: [0]})


def test_surgery_slices_exactly_what_was_asked(resnet) -> None:
    model, x, g = resnet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream = next(grp for grp in g.groups for m in grp.members if m.qualname == "layers.0.conv3.0.weight")
    keep = torch.tensor([9, 2, 14])  # unsorted on purpose
    small = ck.shrink(model, g, keep={stream.id: keep})
    idx = torch.tensor([2, 9, 14])
    sd, osd = small.state_dict(), model.state_dict()
    assert list(sd) == list(osd)
    torch.testing.assert_close(sd["layers.0.conv3.0.weight"], osd["layers.0.conv3.0.weight"][idx])
    torch.testing.assert_close(sd["layers.0.conv3.1.running_var"], osd["layers.0.conv3.1.running_var"][idx])
    torch.testing.assert_close(sd["layers.1.conv1.0.weight"], osd["layers.1.conv1.0.weight"][:, idx])
    torch.testing.assert_close(sd["layers.2.down.0.weight"], osd["layers.2.down.0.weight"][:, idx])
    assert small.layers[0].conv3[0].out_channels == 3 and small.layers[1].conv1[0].in_channels == 3
    assert small.layers[0].conv3[1].num_features == 3
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])
    assert small(*x).shape == model(*x).shape


class TransposedGrouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.up = nn.ConvTranspose2d(8, 12, 2, 2, groups=4)  # weight (8, 3, 2, 2)
        self.dw = nn.ConvTranspose2d(12, 12, 3, padding=1, groups=12)
        self.c = nn.Conv1d(12, 4, 1)
        self.fc = nn.Linear(4 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.up(self.a(x)))
        y = self.c(y.flatten(2)).mean(-1, keepdim=True)
        return self.fc(torch.cat([y, y], -1).flatten(1))


def test_transposed_grouped_and_depthwise() -> None:
    model, x = TransposedGrouped().eval(), torch.randn(2, 3, 3, 3)
    g = ck.trace(model, x)
    a = next(grp for grp in g.groups for m in grp.members if m.qualname == "a.weight" and m.dim == 0)
    up = next(grp for grp in g.groups for m in grp.members if m.qualname == "up.weight" and m.dim == 1)
    assert a.size == 2 and a.channels_per_unit == 4  # 8 input channels, 4 conv groups
    assert up.size == 3 and up.channels_per_unit == 4
    small = ck.shrink(model, g, keep={a.id: [1], up.id: [0, 2]})
    assert tuple(small.up.weight.shape) == (4, 2, 2, 2) and small.up.groups == 4
    assert small.up.out_channels == 8 and small.dw.groups == 8 and small.c.in_channels == 8
    ck.testing.assert_shrink_exact(model, x, graph=g)


def test_reinit_resets_parameters(resnet) -> None:
    model, x, g = resnet
    keep = ck.testing.random_keep(g, 0.5, seed=1)
    inherit = ck.shrink(model, g, keep=keep)
    torch.manual_seed(0)
    fresh = ck.shrink(model, g, keep=keep, init="reinit")
    for (k, a), b in zip(inherit.state_dict().items(), fresh.state_dict().values()):
        assert a.shape == b.shape, k
    w_new, w_old = fresh.layers[0].conv1[0].weight, inherit.layers[0].conv1[0].weight
    assert not torch.equal(w_new, w_old)
    assert torch.equal(fresh.layers[0].conv1[1].running_var, torch.ones_like(w_new[:, 0, 0, 0]))
    # kaiming-uniform bound of nn.Conv2d.reset_parameters: 1/sqrt(fan_in)
    fan_in = w_new[0].numel()
    assert float(w_new.detach().abs().max()) <= 1 / fan_in**0.5 + 1e-6


def test_plan_goes_through_keep_from_plan(resnet, monkeypatch) -> None:
    model, x, g = resnet
    grp = _first(g)
    calls = []

    def keep_from_plan(m, graph, plan, init):
        calls.append((m, graph, plan, init))
        return {grp.id: torch.arange(plan["width"])}

    fake = types.ModuleType("compresskit.surgery.select")
    fake.keep_from_plan = keep_from_plan
    monkeypatch.setitem(sys.modules, "compresskit.surgery.select", fake)
    small = ck.shrink(model, g, plan={"width": 2}, init="reinit")
    assert calls and calls[0][0] is model and calls[0][3] == "reinit"
    member = next(m for m in grp.members if m.role == "out")
    assert (
        getattr(small.get_submodule(member.module), member.tensor).shape[member.dim]
        == 2 * grp.channels_per_unit
    )


def test_assert_shrink_exact_reports_and_validates() -> None:
    model, x = build("flatten_classifier")
    report = ck.testing.assert_shrink_exact(model, x, keep_fraction=0.5, seed=0)
    assert report.params_removed > 0 and report.shrunk_groups == report.prunable == 3
    assert report.max_rel_error <= 1e-5 and report.method == "fx"
    with pytest.raises(ValueError, match="keep_fraction"):
        ck.testing.assert_shrink_exact(model, x, keep_fraction=1.5)
    frozen_only = nn.Sequential(nn.Conv2d(3, 3, 1))
    with pytest.raises(AssertionError, match="no prunable group"):
        ck.testing.assert_shrink_exact(frozen_only, torch.randn(1, 3, 2, 2))


def test_exactness_check_has_teeth() -> None:
    """Without zeroing the consumers, the shrunk model is NOT equal to the original: the check compares
    against something that changes when channels go."""
    model, x = build("flatten_classifier")
    g = ck.trace(model, x)
    keep = ck.testing.random_keep(g, 0.5, seed=0)
    small = ck.shrink(model, g, keep=keep)
    ref = ck.testing.zeroed_reference(model, g, keep)
    torch.testing.assert_close(small(*x), ref(*x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(small(*x), model(*x), rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------- resizers for custom layers
class ChannelScale(nn.Module):
    """A custom per-channel layer that keeps its width as an attribute and uses it in the forward."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, self.width, 1, 1)


class ScaleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.s, self.b = nn.Conv2d(3, 6, 1), ChannelScale(6), nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.s(self.a(x)))


def _channel_scale_rule(ctx):
    """``scale`` travels with the input's channels on dim 1 (a per-channel layer)."""
    from compresskit.graph.rules import per_channel_core

    return per_channel_core(ctx, ctx.arg(0), ctx.module_name, ["scale"], "ChannelScale")


def _resize_channel_scale(new: ChannelScale, old: ChannelScale) -> None:
    new.width = new.scale.shape[0]


def test_custom_resizer_updates_a_stored_width(isolated_registries) -> None:
    """The rule makes ``scale`` a member, so surgery cuts it; without a resizer ``width`` stays 6 and the
    forward's ``view(1, 6, 1, 1)`` fails on 3 channels; with one the small model equals a hand-built one."""
    torch.manual_seed(0)
    model, x = ScaleNet(), torch.randn(2, 3, 4, 4)
    ck.register_rule(ChannelScale, _channel_scale_rule)
    graph = ck.trace(model, x)
    group = next(g for g in graph.groups if any(m.qualname == "s.scale" for m in g.members))
    assert group.prunable and group.size == 6
    keep = torch.tensor([0, 2, 5])

    stale = ck.shrink(model, graph, keep={group.id: keep})
    assert stale.s.width == 6 and stale.s.scale.shape == (3,)
    with pytest.raises(RuntimeError, match="shape"):
        stale(x)

    ck.register_resizer(ChannelScale, _resize_channel_scale)
    small = ck.shrink(model, graph, keep={group.id: keep})
    assert small.s.width == 3
    # reference built by hand: the kept channels of a, their scales, the matching input columns of b
    h = nn.functional.conv2d(x, model.a.weight[keep], model.a.bias[keep])
    h = h * model.s.scale[keep].view(1, 3, 1, 1)
    ref = nn.functional.conv2d(h, model.b.weight[:, keep], model.b.bias)
    torch.testing.assert_close(small(x), ref)
    ck.testing.assert_shrink_exact(model, x, graph=graph)


def test_resizer_lookup_follows_the_class_hierarchy(isolated_registries) -> None:
    from compresskit.surgery.resize import resizer_for

    class WideConv(nn.Conv2d):
        pass

    conv_resizer = resizer_for(nn.Conv2d(2, 2, 1))
    assert conv_resizer is not None and resizer_for(WideConv(2, 2, 1)) is conv_resizer  # inherited
    assert resizer_for(nn.ReLU()) is None
    calls = []
    ck.register_resizer(WideConv, lambda new, old: calls.append(type(new).__name__))
    assert resizer_for(WideConv(2, 2, 1)) is not conv_resizer  # its own one is looked up first
    with pytest.raises(ValueError, match="already registered"):
        ck.register_resizer(WideConv, _resize_channel_scale)
    with pytest.raises(TypeError, match="module_type must be an nn.Module subclass"):
        ck.register_resizer(int, _resize_channel_scale)
