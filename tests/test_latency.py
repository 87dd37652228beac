"""LatencyTable: per-layer tables on a grid of kept channels, interpolated, cached (mocked clock)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.plan.latency import CACHE_FILE, LatencyTable, latency_cost

US = 1e-6  # the fake clock runs in seconds; a conv "costs" c_in * c_out microseconds, a ReLU 7


class Chain(nn.Module):
    """3 -> 8 -> 16 -> 4 channels; the input (3) and the output (4) channels are frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(self.act(self.c2(self.act(self.c1(x)))))


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A clock that only moves when a conv (by c_in * c_out µs) or a ReLU (by 7 µs) runs."""
    clock = [0.0]
    conv_forward, relu_forward = nn.Conv2d.forward, nn.ReLU.forward

    def conv(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        clock[0] += self.in_channels * self.out_channels * US
        return conv_forward(self, x)

    def relu(self: nn.ReLU, x: torch.Tensor) -> torch.Tensor:
        clock[0] += 7 * US
        return relu_forward(self, x)

    monkeypatch.setattr(nn.Conv2d, "forward", conv)
    monkeypatch.setattr(nn.ReLU, "forward", relu)
    return clock


def _groups(graph: ck.ChannelGraph) -> tuple[int, int]:
    """Ids of the 8- and 16-channel groups of Chain."""
    by_producer = {g.producers[0]: g.id for g in graph.groups if g.producers}
    return by_producer["c1"], by_producer["c2"]


def _build(clock: list[float], **kw):  # noqa: ANN202
    torch.manual_seed(0)
    clock[0] = 0.0  # the same clock readings from the start: the same table, to the bit
    model, x = Chain(), torch.randn(1, 3, 8, 8)
    graph = ck.trace(model, x)
    table = LatencyTable.build(model, graph, x, timer=lambda: clock[0], **kw)
    return model, graph, x, table


def test_prediction_is_the_hand_computed_interpolation(fake_clock: list[float]) -> None:
    _, graph, _, table = _build(fake_clock, repeats=3)
    g8, g16 = _groups(graph)
    # each layer alone: c_in * c_out µs = c_in * c_out / 1000 ms; the whole model adds 2 ReLUs (14 µs)
    assert table.measured_ms == pytest.approx((3 * 8 + 8 * 16 + 16 * 4 + 14) / 1000)
    assert table.fixed_ms == pytest.approx(14 / 1000)
    assert table.full() == pytest.approx(table.measured_ms)
    # grid counts: 8 -> 2, 4, 6, 8; 16 -> 4, 8, 12, 16; frozen dims are timed at full width only
    rows = {t.name: t for t in table.layers}
    assert rows["c1"].in_counts == [3] and rows["c1"].out_counts == [2, 4, 6, 8]
    assert rows["c2"].in_counts == [2, 4, 6, 8] and rows["c2"].out_counts == [4, 8, 12, 16]
    assert rows["c3"].in_counts == [4, 8, 12, 16] and rows["c3"].out_counts == [4]
    # 3 and 10 lie between grid points, 1 below the grid (linear extension); the cost c_in * c_out is
    # bilinear, so interpolating the tables must give it back exactly
    for w8, w16 in [(3, 10), (8, 16), (1, 5), (5, 16), (8, 2)]:
        want = (3 * w8 + w8 * w16 + w16 * 4 + 14) / 1000
        assert table({g8: w8, g16: w16}) == pytest.approx(want), (w8, w16)
    assert table({}) == pytest.approx(table.full())
    # the planner's extras: at width 0 only the frozen input/output products and the ReLUs remain
    assert table.fixed() == pytest.approx(14 / 1000)
    assert table.delta({g8: 8, g16: 16}, g8, 4) == pytest.approx((3 * 4 + 4 * 16) / 1000)
    assert table.neighbours(g8) == {g8, g16} and table.share_of(g8) == pytest.approx(
        (3 * 8 + 8 * 16) / (3 * 8 + 8 * 16 + 16 * 4 + 14))


def test_table_is_deterministic_and_read_back_from_the_cache(fake_clock: list[float], tmp_path) -> None:
    _, graph, _, first = _build(fake_clock, cache_dir=tmp_path)
    _, _, _, again = _build(fake_clock)
    assert first.to_dict() == again.to_dict()
    assert first.from_cache == 0
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    keys = list(data["entries"])
    # keyed by device, torch version, threads and the layer's signature
    machine = f"{first.key['device']}|torch={torch.__version__}|threads={torch.get_num_threads()}|"
    assert all(k.startswith(machine) for k in keys)
    assert any("Conv2d/8/16/(3,3)/(1,1)/(1,1)/(1,1)/1/True/zeros/()/(1,8,8,8)/float32" in k for k in keys)

    def no_timing() -> float:
        raise AssertionError("a cached table was timed again")

    model, x = Chain(), torch.randn(1, 3, 8, 8)
    cached = LatencyTable.build(model, ck.trace(model, x), x, timer=no_timing, cache_dir=tmp_path)
    assert cached.from_cache == 6  # 3 layers, the whole model, its layers inside it, the model shrunk to half
    g8, g16 = _groups(graph)
    assert cached({g8: 3, g16: 10}) == pytest.approx(first({g8: 3, g16: 10}))


def test_time_outside_the_layers_follows_the_activations(monkeypatch: pytest.MonkeyPatch,
                                                         fake_clock: list[float]) -> None:
    """A ReLU costing 1 ns per element: the rest is fitted as a + b · (elements of the layers' outputs)
    from the full model and the model shrunk to half, so it is exact at every width."""
    def relu(self: nn.ReLU, x: torch.Tensor) -> torch.Tensor:  # instead of the fixture's 7 µs a call
        fake_clock[0] += x.numel() * 1e-9
        return torch.relu(x)

    monkeypatch.setattr(nn.ReLU, "forward", relu)
    _, graph, _, table = _build(fake_clock, repeats=1)
    g8, g16 = _groups(graph)
    for w8, w16 in [(8, 16), (3, 10), (1, 5)]:
        convs = (3 * w8 + w8 * w16 + w16 * 4) / 1000
        relus = (w8 * 64 + w16 * 64) * 1e-6  # 8x8 pixels each, in ms
        assert table({g8: w8, g16: w16}) == pytest.approx(convs + relus, rel=1e-9), (w8, w16)
    assert table.fixed_ms == pytest.approx(0.0, abs=1e-12)
    # without calibration the rest is the full model's, whatever the widths
    _, _, _, plain = _build(fake_clock, repeats=1, calibrate=())
    assert plain({g8: 4, g16: 8}) == pytest.approx((3 * 4 + 4 * 8 + 8 * 4) / 1000 + (8 + 16) * 64 * 1e-6)


def test_a_layer_slower_inside_the_model_scales_its_table(monkeypatch: pytest.MonkeyPatch,
                                                          fake_clock: list[float]) -> None:
    """Alone, a layer runs with warm caches; the table is scaled to its time inside the forward."""
    torch.manual_seed(0)
    fake_clock[0] = 0.0
    model, x = Chain(), torch.randn(1, 3, 8, 8)
    patched = nn.Conv2d.forward

    def conv(self: nn.Conv2d, inp: torch.Tensor) -> torch.Tensor:
        if self is model.c2:  # the model's own c2 costs 3x what a copy of it costs alone
            fake_clock[0] += 2 * self.in_channels * self.out_channels * US
        return patched(self, inp)

    monkeypatch.setattr(nn.Conv2d, "forward", conv)
    graph = ck.trace(model, x)
    table = LatencyTable.build(model, graph, x, timer=lambda: fake_clock[0], repeats=1, calibrate=())
    g8, g16 = _groups(graph)
    assert {t.name: round(t.scale, 9) for t in table.layers} == {"c1": 1, "c2": 3, "c3": 1}
    assert table({g8: 4, g16: 8}) == pytest.approx((3 * 4 + 3 * 4 * 8 + 8 * 4 + 14) / 1000)


def test_layer_called_twice_counts_twice(fake_clock: list[float]) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 6, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.b(self.a(x)))

    model, x = Twice(), torch.randn(1, 3, 6, 6)
    table = latency_cost(model, ck.trace(model, x), x, timer=lambda: fake_clock[0], repeats=1)
    b = next(t for t in table.layers if t.name == "b")
    assert b.calls == 2 and table.full() == pytest.approx((3 * 6 + 2 * 36) / 1000)
    assert table.fixed_ms == pytest.approx(0.0)


class Mixed(nn.Module):
    """Depthwise, grouped, transposed, 3-D conv and linear layers: every kind the table resizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # depthwise, multiplier 2
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.vol = nn.Conv3d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.grouped(self.dw(self.stem(x))))
        y = self.vol(y.unsqueeze(2)).squeeze(2)
        return self.head(y.mean((2, 3)))


def test_every_layer_kind_is_timed_at_valid_sizes() -> None:
    model, x = Mixed(), torch.randn(1, 3, 6, 6)
    graph = ck.trace(model, x)
    table = LatencyTable.build(model, graph, x, repeats=1, warmup=0, min_run_s=0.0)  # real clock, no asserts
    rows = {t.name: t for t in table.layers}
    assert set(rows) == {"stem", "dw", "grouped", "up", "vol", "head"}
    assert rows["dw"].depthwise and rows["dw"].out_counts == [-1]
    assert all(c % 4 == 0 for c in rows["grouped"].in_counts + rows["grouped"].out_counts)
    assert all(ms >= 0 for t in table.layers for row in t.ms for ms in row)
    half = {g.id: max(1, g.size // 2) for g in graph.prunable_groups}
    assert table(half) >= 0 and table.full() > 0


def test_bad_arguments_are_named(fake_clock: list[float]) -> None:
    _, graph, _, table = _build(fake_clock, repeats=1)
    g8, _ = _groups(graph)
    with pytest.raises(ValueError, match=r"widths: group \d+ must keep 0..8 units, got 9"):
        table({g8: 9})
    with pytest.raises(KeyError, match="widths: unknown group id 99"):
        table({99: 1})
    model, x = Chain(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="repeats"):
        LatencyTable.build(model, graph, x, repeats=0)
    with pytest.raises(ValueError, match="grid"):
        LatencyTable.build(model, graph, x, grid=(0.0, 0.5))


def test_the_target_planner_meets_a_latency_target_with_the_table(fake_clock: list[float]) -> None:
    from compresskit.plan.cost import CostModel
    from compresskit.plan.importance import L1Importance
    from compresskit.plan.planner import plan_for_target

    model, graph, _, table = _build(fake_clock, repeats=1)
    assert isinstance(table, CostModel)
    plan = plan_for_target(graph, table, L1Importance()(model, graph), "2x latency")
    g8, g16 = _groups(graph)
    w8, w16 = plan.widths[g8], plan.widths[g16]
    budget = table.full() / 2
    got = (3 * w8 + w8 * w16 + w16 * 4 + 14) / 1000  # the fake clock's cost of those widths, by hand
    assert got <= budget * (1 + 1e-9) and got >= 0.85 * budget, (w8, w16, got, budget)
