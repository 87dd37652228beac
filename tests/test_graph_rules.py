"""One small model per channel rule: every prunable case shrinks exactly, every case that must be frozen
is frozen with the expected reason."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compresskit as ck


class Lambda(nn.Module):
    """conv(3 -> 8) then ``body(self, y)`` then whatever ``body`` returns is the output."""

    def __init__(self, body: Callable, extra: Callable[[nn.Module], None] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.body = body
        if extra is not None:
            extra(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self, self.conv(x))


def _head(cin: int = 8, cout: int = 2) -> Callable[[nn.Module], None]:
    def add(m: nn.Module) -> None:
        m.head = nn.Conv2d(cin, cout, 1)

    return add


def _conv_group(graph: ck.ChannelGraph) -> ck.ChannelGroup:
    return next(g for g in graph.groups for m in g.members if m.qualname == "conv.weight" and m.dim == 0)


X = torch.randn(2, 3, 6, 6)

EXACT: dict[str, tuple[Callable[[], nn.Module], torch.Tensor]] = {
    "interpolate": (
        lambda: Lambda(lambda s, y: s.head(F.interpolate(y, scale_factor=2.0, mode="nearest")), _head()),
        X,
    ),
    "pools": (lambda: Lambda(lambda s, y: s.head(F.max_pool2d(y, 2) + F.avg_pool2d(y, 2)), _head()), X),
    "pad": (lambda: Lambda(lambda s, y: s.head(F.pad(y, [1, 1, 2, 0], mode="replicate")), _head()), X),
    "stack_sum": (lambda: Lambda(lambda s, y: s.head(torch.stack([y, y * 2], 0).sum(0)), _head()), X),
    "where_masked_fill": (
        lambda: Lambda(lambda s, y: s.head(torch.where(y > 0, y, 0.1 * y).masked_fill(y > 2, 0.0)), _head()),
        X,
    ),
    "param_scale_view": (
        lambda: Lambda(
            lambda s, y: s.head(y * s.scale.view(1, -1, 1, 1) + s.shift[None, :, None, None]),
            lambda m: (
                setattr(m, "scale", nn.Parameter(torch.rand(8) + 0.5)),
                setattr(m, "shift", nn.Parameter(torch.rand(8))),
                _head()(m),
            ),
        ),
        X,
    ),
    "unsqueeze_squeeze": (lambda: Lambda(lambda s, y: s.head(y.unsqueeze(2).squeeze(2)), _head()), X),
    "permute_linear": (
        lambda: Lambda(
            lambda s, y: s.fc(y.permute(0, 2, 3, 1)).mean((1, 2)),
            lambda m: setattr(m, "fc", nn.Linear(8, 3)),
        ),
        X,
    ),
    "movedim_layernorm_spatial": (
        lambda: Lambda(
            lambda s, y: s.head(s.ln(y.movedim(1, 1))),
            lambda m: (setattr(m, "ln", nn.LayerNorm([6, 6])), _head()(m)),
        ),
        X,
    ),
    "instance_norm": (
        lambda: Lambda(
            lambda s, y: s.head(s.norm(y)),
            lambda m: (setattr(m, "norm", nn.InstanceNorm2d(8, affine=True)), _head()(m)),
        ),
        X,
    ),
    "repeat_channels": (
        lambda: Lambda(lambda s, y: s.head(y.repeat(1, 2, 1, 1)), _head(16)),
        X,
    ),
    "pixel_unshuffle": (
        lambda: Lambda(lambda s, y: s.head(F.pixel_unshuffle(y, 2)), _head(32)),
        X,
    ),
    "functional_conv_params": (
        lambda: Lambda(
            lambda s, y: F.conv2d(F.relu(y), s.w, s.b, padding=1),
            lambda m: (
                setattr(m, "w", nn.Parameter(torch.randn(4, 8, 3, 3))),
                setattr(m, "b", nn.Parameter(torch.randn(4))),
            ),
        ),
        X,
    ),
    "norm_spatial_new_zeros_index_select": (
        lambda: Lambda(
            lambda s, y: s.head(
                y / (1 + y.norm(2, 3, keepdim=True))
                + y.new_zeros(y.shape[0], 1, 1, 1)
                + y.index_select(2, torch.tensor([0, 2, 2, 1, 5, 4]))
            ),
            _head(),
        ),
        X,
    ),
    "max_values_and_T": (
        lambda: Lambda(
            lambda s, y: s.fc(torch.stack([y, -y], -1).max(-1).values.mean((2, 3)).T.T),
            lambda m: setattr(m, "fc", nn.Linear(8, 3)),
        ),
        X,
    ),
    "matmul_spatial_mixing": (
        lambda: Lambda(
            lambda s, y: s.head((y.flatten(2) @ torch.softmax(s.mix, -1)).view_as(y)),
            lambda m: (setattr(m, "mix", nn.Parameter(torch.randn(36, 36))), _head()(m)),
        ),
        X,
    ),
    "batched_matmul_heads": (
        lambda: Lambda(
            lambda s, y: s.head((y.unsqueeze(2) @ s.m).squeeze(2)),
            lambda m: (setattr(m, "m", nn.Parameter(torch.randn(6, 6))), _head()(m)),
        ),
        X,
    ),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_rule_is_exact(name: str) -> None:
    factory, x = EXACT[name]
    torch.manual_seed(0)
    model = factory().eval()
    graph = ck.trace(model, x)
    assert _conv_group(graph).prunable, graph.explain(_conv_group(graph).id)
    ck.testing.assert_shrink_exact(model, x, graph=graph)


FROZEN: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "softmax_channels": (
        lambda: Lambda(lambda s, y: torch.softmax(y, 1).sum(1)),
        "softmax over the channels",
    ),
    "mean_channels": (lambda: Lambda(lambda s, y: y.mean(1)), "reduction over the channels"),
    "normalize": (
        lambda: Lambda(lambda s, y: F.normalize(y, dim=1).sum(1)),
        "normalisation over the channels",
    ),
    "norm_channels": (lambda: Lambda(lambda s, y: y.norm(2, 1)), "reduction over the channels"),
    "index_select_channels": (
        lambda: Lambda(lambda s, y: y.index_select(1, torch.tensor([1, 0]))),
        "index_select picks channels",
    ),
    "select_channel": (lambda: Lambda(lambda s, y: y[:, 3]), "picks channels by position"),
    "slice_channels": (lambda: Lambda(lambda s, y: s.head(y[:, :4]), _head(4)), "picks channels by position"),
    "slice_channels_literal": (
        lambda: Lambda(lambda s, y: s.head(y[:, :4]), _head(4)),
        "hard-coded bounds [:4]: sizes computed from tensor shapes",
    ),
    "split_channels_literal": (
        lambda: Lambda(lambda s, y: s.head(torch.split(y, [4, 4], 1)[1]), _head(4)),
        "hard-coded split sizes [4, 4]",
    ),
    "flip_channels": (lambda: Lambda(lambda s, y: y.flip(1).sum(1)), "reorders the channels"),
    "unbind": (lambda: Lambda(lambda s, y: sum(y.unbind(1))), "unbind"),
    "pad_channels": (
        lambda: Lambda(lambda s, y: F.pad(y, [0, 0, 0, 0, 1, 1]).sum(1)),
        "padding along the channel dim",
    ),
    "layernorm_channels_first": (
        lambda: Lambda(
            lambda s, y: s.ln(y.permute(0, 2, 3, 1)).sum(-1), lambda m: setattr(m, "ln", nn.LayerNorm(8))
        ),
        "LayerNorm normalises",
    ),
    "einsum_unknown": (lambda: Lambda(lambda s, y: torch.einsum("bchw->bhw", y)), "no channel rule"),
    "output": (lambda: Lambda(lambda s, y: y), "graph output"),
}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_rule_freezes(name: str) -> None:
    factory, reason = FROZEN[name]
    graph = ck.trace(factory().eval(), X)
    group = _conv_group(graph)
    assert not group.prunable
    assert any(reason in r for r in group.reasons), group.reasons


@pytest.mark.parametrize(
    "body",
    [
        lambda s, y: s.head(torch.sigmoid(s.gate(y)) * y),  # spatial gate V·x (AdaCoF's occlusion map)
        lambda s, y: s.head(y - s.gate(y).expand(-1, y.shape[1], -1, -1) * s.gate(y).expand_as(y)),
        lambda s, y: s.head(torch.where(s.gate(y) > 0, y, -y)),
    ],
    ids=["mul", "expand", "where"],
)
def test_single_channel_broadcast_over_channels_is_frozen(body: Callable) -> None:
    def extra(m: nn.Module) -> None:
        m.gate = nn.Conv2d(8, 1, 3, padding=1)
        _head()(m)

    model = Lambda(body, extra).eval()
    graph = ck.trace(model, X)
    gate = next(g for g in graph.groups if "gate" in g.producers)
    assert (gate.size, gate.prunable) == (1, False), graph.explain(gate.id)
    assert "broadcast over channels" in graph.explain(gate.id)
    assert _conv_group(graph).prunable  # the n channels it is broadcast over are not affected
    ck.testing.assert_shrink_exact(model, X, graph=graph)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.net = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.PReLU(12), nn.Linear(12, 4))
        self.conv1d = nn.Sequential(
            nn.Conv1d(6, 5, 3, padding=1), nn.BatchNorm1d(5), nn.ReLU(), nn.Conv1d(5, 3, 1)
        )

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.emb(tokens)  # (B, T, 6)
        return self.net(e.mean(1)), self.conv1d(e.transpose(1, 2))


def test_embedding_linear_bn1d_conv1d_tuple_output() -> None:
    model = MLP().eval()
    with torch.no_grad():
        model.net[1].running_var.uniform_(0.5, 2)
    tokens = torch.randint(0, 10, (3, 7))
    graph = ck.trace(model, tokens)
    emb = next(g for g in graph.groups for m in g.members if m.qualname == "emb.weight")
    assert emb.prunable and "net.0" in emb.consumers and "conv1d.0" in emb.consumers
    ck.testing.assert_shrink_exact(model, tokens, graph=graph)
    small = ck.shrink(model, graph, keep={emb.id: [1, 4]})
    assert small.emb.embedding_dim == 2 and small.net[0].in_features == 2 and small.conv1d[0].in_channels == 2


class Inplace(nn.Module):
    """torchvision-style residual: in-place ReLU and ``out += identity``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = self.relu(self.bn(self.a(x)))
        out = self.b(idt)
        out += idt
        return self.head(self.relu(out))


def test_inplace_ops_and_mixed_train_modes_are_kept() -> None:
    model = Inplace()
    model.bn.eval()  # a frozen BN inside a training model
    x = torch.randn(1, 3, 5, 5)
    x0 = x.clone()
    graph = ck.trace(model, x)
    assert torch.equal(x, x0)  # example inputs untouched
    assert model.training and not model.bn.training
    stream = next(g for g in graph.groups for m in g.members if m.qualname == "b.weight" and m.dim == 0)
    assert "a" in stream.producers and stream.prunable
    ck.testing.assert_shrink_exact(model.eval(), x, graph=graph)


class KwargsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor, scale: float = 2.0, extra: torch.Tensor | None = None) -> dict:
        y = self.conv(x) * scale
        if extra is not None:
            y = y + extra
        return {"out": self.out(y), "aux": y.mean((2, 3))}


def test_default_arguments_and_dict_outputs() -> None:
    model = KwargsModel().eval()
    x = torch.randn(1, 3, 4, 4)
    graph = ck.trace(model, x)
    grp = next(g for g in graph.groups for m in g.members if m.qualname == "conv.weight" and m.dim == 0)
    assert not grp.prunable and "graph output" in grp.reasons  # "aux" returns these channels
    graph = ck.trace(model, (x, 1.0, torch.randn(1, 6, 1, 1)))
    grp = next(g for g in graph.groups for m in g.members if m.qualname == "conv.weight" and m.dim == 0)
    assert any("graph input" in r for r in grp.reasons)  # joined with the `extra` input
    assert graph.method == "fx"


class TokenMixer(nn.Module):
    """Class token and positional embedding used directly, on a stream without LayerNorm."""

    def __init__(self, d: int = 8, n: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(5, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, d))
        self.mlp = nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self.pos_embed
        t = t + self.mlp(t)
        return self.head(t[:, 0])


def test_parameters_used_directly_are_members() -> None:
    model, x = TokenMixer().eval(), torch.randn(2, 4, 5)
    g = ck.trace(model, x)
    stream = next(gr for gr in g.groups for m in gr.members if m.qualname == "embed.weight" and m.dim == 0)
    assert stream.prunable
    dims = {m.qualname: m.dim for m in stream.members if m.role == "param"}
    assert dims["cls_token"] == 2 and dims["pos_embed"] == 2
    small = ck.shrink(model, g, keep={stream.id: [0, 3, 5]})
    assert small.cls_token.shape == (1, 1, 3) and small.pos_embed.shape == (1, 5, 3)
    ck.testing.assert_shrink_exact(model, x, graph=g)


class SizeFromOther(nn.Module):
    """``y.view(b, c, -1)`` with ``c`` read from ``x``: x's and y's channels must shrink together."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 3, padding=1)
        self.fc_a, self.fc_b = nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xa, xb = self.a(x), self.b(x)
        n, c = xa.shape[:2]
        return self.fc_a(xa.mean((2, 3))) + self.fc_b(xb.view(n, c, -1).mean(-1))


def test_view_sized_by_another_tensor_couples_their_channels() -> None:
    model, x = SizeFromOther().eval(), torch.randn(1, 3, 4, 4)
    g = ck.trace(model, x)
    a = next(gr for gr in g.groups for m in gr.members if m.qualname == "a.weight" and m.dim == 0)
    assert "b" in a.producers  # b's output is viewed with a's channel count
    ck.testing.assert_shrink_exact(model, x, graph=g)


@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2), (2, 4, 11)),
        (nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(0, 2), groups=2), (1, 4, 9, 10)),
        (nn.Conv3d(4, 4, 3, stride=2, padding=1, groups=4), (1, 4, 5, 6, 7)),
        (nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, output_padding=1, dilation=1), (1, 4, 5, 7)),
        (nn.ConvTranspose3d(4, 2, 3, stride=2, padding=1, output_padding=1, dilation=2), (1, 4, 3, 4, 5)),
        (nn.ConvTranspose1d(4, 4, 5, stride=3, groups=4), (2, 4, 6)),
        (nn.Conv2d(4, 6, 3), (4, 7, 7)),  # unbatched input
        (nn.Linear(5, 3), (2, 7, 5)),
    ],
)
def test_shapes_only_layer_output_shape_matches_the_layer(module: nn.Module, shape: tuple) -> None:
    """The fast path of the tracer computes conv/linear output shapes by formula: compare with the layer."""
    from importlib import import_module

    x = torch.randn(*shape)
    formula = import_module("compresskit.graph.trace")._layer_output_shape(module, (x,), {})
    assert formula == tuple(module(x).shape)
