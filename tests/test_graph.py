"""Channel groups: structure checked against what each architecture's wiring implies, frozen reasons,
custom rules and leaves, tracing fallbacks, and bad inputs."""

from __future__ import annotations

import importlib

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import build

import compresskit as ck


def _group_of(graph: ck.ChannelGraph, qualname: str, dim: int) -> ck.ChannelGroup:
    found = [g for g in graph.groups for m in g.members if m.qualname == qualname and m.dim == dim]
    assert len(found) == 1, f"{qualname} dim {dim} in {len(found)} groups"
    return found[0]


def _reasons(group: ck.ChannelGroup) -> str:
    return " | ".join(group.reasons)


def test_residual_stream_is_one_group() -> None:
    model, x = build("resnet_bottleneck")
    g = ck.trace(model, x)
    stream = _group_of(g, "layers.0.conv3.0.weight", 0)
    # the projection shortcut and every conv3 of the stage add into the same tensor
    assert {"layers.0.down.0", "layers.0.conv3.0", "layers.1.conv3.0"} <= set(stream.producers)
    assert {"layers.1.conv1.0", "layers.2.conv1.0", "layers.2.down.0"} <= set(stream.consumers)
    assert stream.size == 16 and stream.prunable
    assert _group_of(g, "layers.2.conv3.0.weight", 0) is _group_of(g, "fc.weight", 1)
    # a bottleneck's inner width is its own group
    assert _group_of(g, "layers.0.conv1.0.weight", 0).size == 4


def test_concat_segments_map_to_their_groups() -> None:
    model, x = build("densenet")
    g = ck.trace(model, x)
    # block.2 reads cat([stem, layer0, layer1]): 8 + 6 + 6 input channels at these positions
    stem = _group_of(g, "stem.weight", 0)
    l0 = _group_of(g, "block.0.conv2.weight", 0)
    l1 = _group_of(g, "block.1.conv2.weight", 0)
    assert len({stem.id, l0.id, l1.id}) == 3
    for group, positions in ((stem, range(0, 8)), (l0, range(8, 14)), (l1, range(14, 20))):
        m = next(m for m in group.members if m.qualname == "block.2.conv1.weight")
        assert m.role == "in" and m.positions.tolist() == list(positions)
        assert m.units.tolist() == list(range(len(positions)))
        bn = next(m for m in group.members if m.qualname == "block.2.bn1.weight")
        assert bn.positions.tolist() == list(positions)


def test_grouped_conv_keeps_groups_balanced() -> None:
    model, x = build("regnet")
    g = ck.trace(model, x)
    conv = model.stages[0].b[0]  # 16 -> 16 channels, 4 conv groups of width 4
    assert conv.groups == 4
    grp = _group_of(g, "stages.0.b.0.weight", 0)
    assert grp.size == 4 and grp.channels_per_unit == 4
    out = next(m for m in grp.members if m.qualname == "stages.0.b.0.weight")
    # unit j = channel j of every conv group
    assert out.units.tolist() == [0, 1, 2, 3] * 4
    small = ck.shrink(model, g, keep={grp.id: [1, 3]})
    assert small.stages[0].b[0].groups == 4 and small.stages[0].b[0].out_channels == 8


def test_depthwise_conv_follows_its_input() -> None:
    model, x = build("mobilenet_v3")
    g = ck.trace(model, x)
    expand = _group_of(g, "blocks.0.expand.0.weight", 0)
    dw = next(m for m in expand.members if m.qualname == "blocks.0.dw.0.weight")
    assert dw.role == "param" and dw.dim == 0
    assert "blocks.0.se.fc1" in expand.consumers and "blocks.0.se.fc2" in expand.producers
    small = ck.shrink(model, g, keep={expand.id: [0, 5, 9]})
    dwc = small.blocks[0].dw[0]
    assert (dwc.in_channels, dwc.out_channels, dwc.groups) == (3, 3, 3)


def test_depthwise_channel_multiplier() -> None:
    model, x = build("efficientnet")
    g = ck.trace(model, x)
    stem = _group_of(g, "stem.0.weight", 0)
    mult = next(m for m in stem.members if m.qualname == "mult.0.weight")
    assert mult.units.tolist() == [u for u in range(8) for _ in range(2)]  # output 2c, 2c+1 <- input c
    small = ck.shrink(model, g, keep={stem.id: [2, 7]})
    conv = small.mult[0]
    assert (conv.in_channels, conv.out_channels, conv.groups) == (2, 4, 2)


def test_layernorm_over_channels_freezes_them_and_mlp_stays_prunable() -> None:
    model, x = build("convnext")
    g = ck.trace(model, x)
    stream = _group_of(g, "stem.weight", 0)
    assert not stream.prunable and "LayerNorm normalises over these channels" in _reasons(stream)
    hidden = _group_of(g, "blocks.0.pwconv1.weight", 0)
    assert hidden.prunable and hidden.size == 48
    assert "LayerNorm" in g.explain(stream.id) and "FROZEN" in g.explain(stream.id)


def test_multihead_attention_is_frozen_with_reason() -> None:
    model, x = build("vit_mha")
    g = ck.trace(model, x)
    stream = _group_of(g, "patch.weight", 0)
    assert not stream.prunable and "MultiheadAttention" in _reasons(stream)
    assert any(m.qualname == "cls_token" and m.dim == 2 for m in stream.members)
    assert any(m.qualname == "pos_embed" and m.dim == 2 for m in stream.members)
    assert _group_of(g, "blocks.0.mlp.0.weight", 0).prunable


def test_sdpa_heads_are_whole_units() -> None:
    model, x = build("sdpa_transformer")
    g = ck.trace(model, x)
    heads = _group_of(g, "attn.qkv.weight", 0)
    assert heads.size == 4 and heads.channels_per_unit == 12  # q, k and v rows of one head
    small = ck.shrink(model, g, keep={heads.id: [0, 2]})
    assert small.attn.qkv.out_features == 24 and small.attn.proj.in_features == 8


def test_pixel_shuffle_and_groupnorm_units() -> None:
    model, x = build("pixelshuffle_sr")
    g = ck.trace(model, x)
    up = _group_of(g, "up.0.weight", 0)
    assert up.size == 16 and up.channels_per_unit == 4  # r*r input channels per output channel
    body = _group_of(g, "body.0.norm.weight", 0)
    assert body.size == 4  # GroupNorm(4, 16): whole groups
    small = ck.shrink(model, g, keep={body.id: [1, 2]})
    assert small.body[0].norm.num_groups == 2 and small.body[0].norm.num_channels == 8
    assert small.body[0].act.num_parameters == 8


def test_vfi_heads_read_by_meaning_are_frozen() -> None:
    model, x = build("two_frame_vfi")
    g = ck.trace(model, x)
    assert g.method == "fx"  # the pad-to-32 branch is taken on concrete values
    flow, taps = _group_of(g, "flow.weight", 0), _group_of(g, "taps.weight", 0)
    assert not flow.prunable and "grid_sample" in _reasons(flow)
    assert not taps.prunable and "softmax over the channels" in _reasons(taps)
    assert _group_of(g, "dec.0.weight", 1).prunable


class HardCodedView(nn.Module):
    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.literal = literal
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b = y.shape[0]
        y = y.view(b, 16, -1) if self.literal else y.view(b, y.shape[1], -1)
        return self.fc(y.mean(-1))


def test_hard_coded_channel_count_is_detected() -> None:
    x = torch.randn(1, 3, 8, 8)
    g = ck.trace(HardCodedView(True), x)
    grp = _group_of(g, "conv.weight", 0)
    assert not grp.prunable and "hard-codes 16 channels" in _reasons(grp)
    g2 = ck.trace(HardCodedView(False), x)
    assert _group_of(g2, "conv.weight", 0).prunable
    ck.testing.assert_shrink_exact(HardCodedView(False), x)


class SplitModel(nn.Module):
    def __init__(self, sizes: list[int] | None) -> None:
        super().__init__()
        self.sizes = sizes
        self.conv = nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        p, q = torch.split(y, self.sizes, 1) if self.sizes else y.chunk(2, 1)
        return self.a(p) + self.b(q)


def test_split_sizes_and_chunks() -> None:
    x = torch.randn(1, 3, 4, 4)
    g = ck.trace(SplitModel([4, 4]), x)
    assert "hard-coded split sizes" in _reasons(_group_of(g, "conv.weight", 0))
    g = ck.trace(SplitModel(None), x)
    grp = _group_of(g, "conv.weight", 0)
    assert grp.prunable and grp.size == 4 and grp.channels_per_unit == 2
    ck.testing.assert_shrink_exact(SplitModel(None), x)


class SegmentSplit(nn.Module):
    """Two convs (6 and 10 channels) concatenated, then taken apart again by ``mode``; each part feeds a
    conv of its own."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 10, 1)
        self.p, self.q = nn.Conv2d(6, 4, 3, padding=1), nn.Conv2d(10, 4, 1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.a(x)), self.b(x)
        y = torch.cat([a, b], 1)
        if self.mode == "split_shapes":
            u, v = torch.split(y, [a.shape[1], b.shape[1]], 1)
        elif self.mode == "split_method":
            u, v = y.split([a.size(1), b.size(1)], dim=1)
        elif self.mode == "split_with_sizes":
            u, v = torch.split_with_sizes(y, [a.shape[1], y.shape[1] - a.shape[1]], 1)
        elif self.mode == "slices":
            c1 = a.shape[1]
            u, v = y[:, :c1], y[:, c1:]
        elif self.mode == "negative_slice":
            u, v = y[:, : -b.shape[1]], y[:, -b.shape[1] :]
        elif self.mode == "narrow":
            u, v = y.narrow(1, 0, a.shape[1]), torch.narrow(y, 1, a.shape[1], b.shape[1])
        elif self.mode == "split_literal":
            u, v = torch.split(y, [6, 10], 1)
        elif self.mode == "slice_literal":
            u, v = y[:, :6], y[:, 6:]
        elif self.mode == "narrow_literal":
            u, v = y.narrow(1, 0, 6), y.narrow(1, 6, 10)
        elif self.mode == "split_inside":  # computed sizes, but in the wrong order: 10 | 6
            w, z = torch.split(y, [b.shape[1], a.shape[1]], 1)
            u, v = z, w
        elif self.mode == "slice_inside":  # computed bound, but 10 falls inside b's segment 6:16
            u, v = y[:, b.shape[1] :], y[:, : b.shape[1]]
        else:
            raise ValueError(self.mode)
        return self.out(self.p(u) + self.q(v))


@pytest.mark.parametrize(
    "mode", ["split_shapes", "split_method", "split_with_sizes", "slices", "negative_slice", "narrow"]
)
def test_split_and_slices_computed_from_shapes_take_the_concat_segments(mode: str) -> None:
    x = torch.randn(2, 3, 5, 5)
    model = SegmentSplit(mode)
    g = ck.trace(model, x)
    a, b = _group_of(g, "a.weight", 0), _group_of(g, "b.weight", 0)
    assert a.prunable and b.prunable, g.explain(a.id) + "\n" + g.explain(b.id)
    assert (a.size, b.size) == (6, 10)
    assert a.consumers == ["p"] and b.consumers == ["q"]  # each part is exactly its segment
    check = ck.testing.assert_shrink_exact(model, x, graph=g)
    assert {a.id, b.id} <= set(check.keep)


@pytest.mark.parametrize(
    ("mode", "frozen", "reason"),
    [
        ("split_literal", "ab", "hard-coded split sizes [6, 10]"),
        ("narrow_literal", "ab", "hard-coded start, length"),
        # y[:, :6] pins a's 6 channels; y[:, 6:] then takes "the rest", which b may shrink
        ("slice_literal", "a", "hard-coded bounds [:6]"),
        ("split_inside", "ab", "a boundary falls inside a segment"),
        ("slice_inside", "ab", "a boundary falls inside a segment"),
    ],
)
def test_split_and_slices_with_literal_sizes_or_inside_a_segment_are_frozen(
    mode: str, frozen: str, reason: str
) -> None:
    x = torch.randn(2, 3, 5, 5)
    model = SegmentSplit(mode)
    g = ck.trace(model, x)
    for name in "ab":
        group = _group_of(g, f"{name}.weight", 0)
        if name in frozen:
            assert not group.prunable and reason in _reasons(group), g.explain(group.id)
            assert reason in g.explain(group.id)
        else:
            assert group.prunable, g.explain(group.id)
    assert _group_of(g, "p.weight", 0).prunable  # the layers after the split are not affected
    ck.testing.assert_shrink_exact(model, x, graph=g)


@pytest.mark.parametrize("mode", ["split_shapes", "narrow"])
def test_split_under_torch_export_is_frozen(mode: str) -> None:
    """torch.export specialises every size, so a split it traced cannot be known to follow the shapes."""
    x = torch.randn(2, 3, 5, 5)
    g = ck.trace(SegmentSplit(mode), x, method="export")
    group = _group_of(g, "a.weight", 0)
    assert not group.prunable and "torch.export specialises every size" in _reasons(group)
    ck.testing.assert_shrink_exact(SegmentSplit(mode), x, graph=g)


class SplitOffTheFrame(nn.Module):
    """``cat([frame, features])`` sliced back with a hard-coded 3: the frame's channels are frozen anyway
    (graph input), so the literal cannot go wrong and the features stay prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.g = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, self.f(x)], 1)
        rgb, feats = torch.split(y, [3, y.shape[1] - 3], 1)
        return self.g(feats) + rgb[:, :2]


def test_literal_size_over_frozen_channels_keeps_the_rest_prunable() -> None:
    x = torch.randn(1, 3, 4, 4)
    g = ck.trace(SplitOffTheFrame(), x)
    assert _group_of(g, "f.weight", 0).prunable, g.explain(_group_of(g, "f.weight", 0).id)
    ck.testing.assert_shrink_exact(SplitOffTheFrame(), x, graph=g)


class UsesFFT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.fft.fft2(self.conv(x)).abs())


def test_unknown_op_freezes_with_reason() -> None:
    g = ck.trace(UsesFFT(), torch.randn(1, 3, 4, 4))
    grp = _group_of(g, "conv.weight", 0)
    assert not grp.prunable and "no channel rule" in _reasons(grp) and "fft2" in _reasons(grp)
    assert "unknown means frozen" in g.explain(grp.id)


def mix_channels(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # traced as one leaf below
    return x * w.mean()


class LeafUser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gate, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 5, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(mix_channels(self.conv(x), self.gate(x)))


def test_register_leaf_and_passthrough_rule() -> None:
    x = torch.randn(1, 3, 4, 4)
    ck.register_leaf(mix_channels)
    try:
        g = ck.trace(LeafUser(), x)
        node_targets = [n.target for n in g.fx_graph.nodes if n.op == "call_function"]
        assert mix_channels in node_targets
        assert not _group_of(g, "conv.weight", 0).prunable  # no rule yet: frozen
        ck.register_rule(mix_channels, passthrough={0: 0}, reason="gate is read as a whole")
        g = ck.trace(LeafUser(), x)
        assert _group_of(g, "conv.weight", 0).prunable
        gate = _group_of(g, "gate.weight", 0)
        assert not gate.prunable and "gate is read as a whole" in _reasons(gate)
        ck.testing.assert_shrink_exact(LeafUser(), x)
    finally:
        from compresskit.graph import rules

        rules.RULES.unregister(mix_channels)
        importlib.import_module("compresskit.graph.trace")._LEAF_FUNCTIONS.pop(id(mix_channels), None)


@torch.library.custom_op("compresskit_test::channel_scale", mutates_args=())
def channel_scale(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x * s.sigmoid().mean()


@channel_scale.register_fake
def _(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOpUser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.s, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 2, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.ops.compresskit_test.channel_scale(self.conv(x), self.s(x)))


@pytest.mark.parametrize(("method", "overload"), [("fx", False), ("export", False), ("fx", True)])
def test_custom_library_op_rule(method: str, overload: bool) -> None:
    x = torch.randn(1, 3, 4, 4)
    from compresskit.graph import rules

    op = torch.ops.compresskit_test.channel_scale
    for key in (op, op.default):
        rules.RULES.unregister(key)
    ck.register_rule(op.default if overload else op, passthrough=0)
    g = ck.trace(CustomOpUser(), x, method=method)
    assert _group_of(g, "conv.weight", 0).prunable
    assert not _group_of(g, "s.weight", 0).prunable
    ck.testing.assert_shrink_exact(CustomOpUser(), x, graph=g)


class Mean0(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(1, keepdim=True)


class WithMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.center, self.out = nn.Conv2d(3, 8, 1), Mean0(), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.center(self.conv(x)))


def test_wrong_rule_is_caught_by_the_exactness_check() -> None:
    """A rule that lies (calls a channel-mixing module element-wise) must fail assert_shrink_exact."""
    x = torch.randn(1, 3, 4, 4)
    assert not _group_of(ck.trace(WithMean(), x), "conv.weight", 0).prunable  # traced through: frozen
    from compresskit.graph import rules

    ck.register_rule(Mean0, passthrough=0)
    try:
        g = ck.trace(WithMean(), x)
        assert _group_of(g, "conv.weight", 0).prunable
        with pytest.raises(AssertionError, match="relative error"):
            ck.testing.assert_shrink_exact(WithMean(), x, graph=g)
    finally:
        rules.RULES.unregister(Mean0)


class Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.enc(a), self.enc(b)], 1))


def test_shared_weights_called_twice() -> None:
    x = (torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6))
    g = ck.trace(Siamese(), x)
    grp = _group_of(g, "enc.2.weight", 0)
    head = next(m for m in grp.members if m.qualname == "head.weight")
    assert head.positions.tolist() == list(range(16)) and head.units.tolist() == list(range(8)) * 2
    ck.testing.assert_shrink_exact(Siamese(), x)


class ShapeBranch(nn.Module):
    """Branches on a shape and pads to a multiple of 8 (as VFI models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 8 != 0 or w % 8 != 0:
            x = F.pad(x, [0, (8 - w % 8) % 8, 0, (8 - h % 8) % 8])
        return self.out(F.relu(self.conv(x)))[..., :h, :w]


class SizeTensor(ShapeBranch):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.tensor([x.shape[-2], x.shape[-1]])  # traced by fx as one node (issue 24 item 12)
        return super().forward(x) * (size.prod() > 0)


class NeedsExport(ShapeBranch):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:  # fx cannot trace forward(*args)
        return super().forward(xs[0])


class ChecksInputs(ShapeBranch):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:  # input checks as user code writes them
            raise TypeError("expected a (B, C, H, W) tensor")
        return super().forward(x)


def test_isinstance_checks_on_inputs_trace_with_fx() -> None:
    g = ck.trace(ChecksInputs(), torch.randn(1, 3, 10, 13))
    assert g.method == "fx" and _group_of(g, "conv.weight", 0).prunable


def test_shape_branches_trace_with_fx_and_export_fallback() -> None:
    x = torch.randn(1, 3, 10, 13)
    g = ck.trace(ShapeBranch(), x)
    assert g.method == "fx" and _group_of(g, "conv.weight", 0).prunable
    with pytest.raises((TypeError, RuntimeError)):
        ck.trace(NeedsExport(), x, method="fx")
    g = ck.trace(NeedsExport(), x)
    assert g.method == "export" and _group_of(g, "conv.weight", 0).prunable
    ck.testing.assert_shrink_exact(NeedsExport(), x, graph=g)
    g = ck.trace(SizeTensor(), x, method="fx")
    assert _group_of(g, "conv.weight", 0).prunable
    ck.testing.assert_shrink_exact(SizeTensor(), x, graph=g)


def test_to_networkx_summary_and_layers() -> None:
    model, x = build("unet2d")
    g = ck.trace(model, x)
    nxg = g.to_networkx()
    assert isinstance(nxg, nx.DiGraph)
    assert sum(1 for _, d in nxg.nodes(data=True) if d["kind"] == "group") == len(g.groups)
    grp = _group_of(g, "enc1.3.weight", 0)  # e1: consumed by enc2 and (through the skip) by dec1
    assert set(nxg.successors(f"group:{grp.id}")) == {"enc2.0", "dec1.0"}
    assert nxg.has_edge("enc1.3", f"group:{grp.id}")
    assert g.summary().row_count == len(g.groups)
    # layers come in execution order, input to output
    names = [layer.name for layer in g.layers]
    assert names.index("enc1.0") < names.index("mid.0") < names.index("up2") < names.index("out")
    order = g.group_order()
    assert sorted(order) == list(range(len(g.groups)))
    assert g.to_dict()["groups"][grp.id]["producers"] == grp.producers


def test_trace_rejects_bad_inputs() -> None:
    model, x = build("flatten_classifier")
    with pytest.raises(TypeError, match="model"):
        ck.trace(lambda t: t, x)
    with pytest.raises(TypeError, match="example_inputs"):
        ck.trace(model, "an image")
    with pytest.raises(TypeError, match="example_inputs"):
        ck.trace(model, ())
    with pytest.raises(ValueError, match="example_inputs.*shapes"):
        ck.trace(model, torch.randn(1, 3, 9, 9))  # Linear expects 12*4*4 features
    with pytest.raises(ValueError, match="method"):
        ck.trace(model, x, method="onnx")
    with pytest.raises(TypeError, match="register_leaf"):
        ck.register_leaf(42)
    with pytest.raises(TypeError, match="register_rule"):
        ck.register_rule(42, passthrough=0)
    with pytest.raises(ValueError, match="either"):
        ck.register_rule(mix_channels, lambda ctx: None, passthrough=0)


def test_trace_leaves_model_untouched() -> None:
    model, x = build("mobilenet_v3")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ck.trace(model, x)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class DataBranch(nn.Module):
    """Takes a branch on the *values* of a conv output: traced on real values, not shapes only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.pos, self.neg = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 5, 1)
        with torch.no_grad():
            self.conv.bias.fill_(10.0)  # outputs are positive for inputs near zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.pos(y) if y.mean() > 0 else self.neg(y).sum(1, keepdim=True)


def test_value_dependent_branch_is_traced_on_real_values() -> None:
    g = ck.trace(DataBranch(), torch.zeros(1, 3, 4, 4))
    called = {n.target for n in g.fx_graph.nodes if n.op == "call_module"}
    assert called == {"conv", "pos"}
    assert [layer.name for layer in g.layers] == ["conv", "pos"]


def test_group_num_params_counts_member_slices() -> None:
    model, x = build("flatten_classifier")
    g = ck.trace(model, x)
    grp = _group_of(g, "features.0.weight", 0)
    # conv1 rows (8 x 3*3*3) + its bias (8) + conv2 columns (12 x 8 x 3*3)
    assert grp.num_params(model) == 8 * 27 + 8 + 12 * 8 * 9
    assert grp.num_params() == 0  # without the model there are no tensors to count


class Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 2


class UsesOpaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.opaque, self.out = nn.Conv2d(3, 8, 1), Opaque(), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.opaque(self.conv(x)))


def test_leaf_module_without_rule_is_frozen() -> None:
    x = torch.randn(1, 3, 4, 4)
    g = ck.trace(UsesOpaque(), x)
    assert _group_of(g, "conv.weight", 0).prunable  # traced through: the inner conv is seen
    ck.register_leaf(Opaque)
    try:
        g = ck.trace(UsesOpaque(), x)
        assert "opaque" in {n.target for n in g.fx_graph.nodes if n.op == "call_module"}
        grp = _group_of(g, "conv.weight", 0)
        assert not grp.prunable and "Opaque 'opaque'" in _reasons(grp) and "no channel rule" in _reasons(grp)
    finally:
        importlib.import_module("compresskit.graph.trace")._LEAF_MODULES.discard(Opaque)


def test_shrunk_model_exports() -> None:
    model, x = build("mobilenet_v3")
    g = ck.trace(model, x)
    small = ck.shrink(model, g, keep=ck.testing.random_keep(g, 0.5, seed=2))
    ep = torch.export.export(small, x, strict=False)
    torch.testing.assert_close(ep.module()(*x), small(*x))
