"""Latency as deployed: every runtime computes the same outputs, the report names the one it used and shows
the others, and a latency that lags the MACs is explained by measured time per op kind."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compresskit as ck
from compresskit.deploy.onnx import onnx_available
from compresskit.deploy.profile import OpTimes, kept_time_note, op_kind, time_by_op_kind
from compresskit.deploy.runtime import available_runtimes, measure_runtimes, prepare
from compresskit.report import CompressReport, ModelStats, print_report


class _Net(nn.Module):
    """conv → warp (grid_sample) → resize (upsample) → element-wise: one op of each kind."""

    def __init__(self, c=8):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        theta = torch.tensor([[[1.0, 0.1, 0.0], [0.0, 1.0, 0.05]]]).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(y.shape), align_corners=False)
        y = F.grid_sample(y, grid, align_corners=False)
        y = F.interpolate(F.avg_pool2d(y, 2), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(y) + x


def test_every_runtime_computes_the_models_outputs():
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.rand(2, 3, 16, 16)
    names = available_runtimes((x,))
    assert names[:2] == ["eager", "channels_last"]
    assert ("onnxruntime" in names) == (onnx_available() is None)
    with torch.inference_mode():
        want = model(x)
        for name in names:
            out = prepare(model, (x,), name)()
            got = torch.as_tensor(out[0]) if name == "onnxruntime" else out
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert available_runtimes((torch.rand(2, 5),), onnx=False) == ["eager"]  # no layout for 2-D inputs
    with pytest.raises(ValueError, match="runtimes: unknown runtime 'tensorrt'"):
        measure_runtimes(model, x, ["tensorrt"])


def test_measure_runtimes_reports_each_and_the_fastest():
    model, x = _Net().eval(), torch.rand(1, 3, 16, 16)
    times = measure_runtimes(model, (x,), ["eager", "channels_last"], repeats=2, warmup=1)
    assert set(times.ms) == {"eager", "channels_last"} and not times.errors
    assert times.best == min(times.ms, key=times.ms.get) and times.best_ms == times.ms[times.best]

    class Broken(nn.Module):  # channels-last only: the runtime that fails is left out, with why
        def forward(self, x):
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                raise RuntimeError("no NHWC here")
            return x * 2

    times = measure_runtimes(Broken(), (x,), ["eager", "channels_last"], repeats=1, warmup=0)
    assert list(times.ms) == ["eager"] and "no NHWC here" in times.errors["channels_last"]


@pytest.mark.parametrize("name,kind", [
    ("aten::conv2d", "conv"), ("aten::conv_transpose2d", "conv"), ("aten::linear", "matmul"),
    ("aten::bmm", "matmul"), ("aten::grid_sampler", "warp"), ("compresskit_vfi::adacof", "warp"),
    ("compresskit_stmfnet::sum_splat", "warp"), ("aten::upsample_bilinear2d", "resize"),
    ("aten::avg_pool2d", "resize"), ("aten::batch_norm", "norm"), ("aten::relu", "element-wise"),
    ("aten::cat", "element-wise"),
])
def test_op_kinds(name, kind):
    assert op_kind(name) == kind


def test_time_by_op_kind_counts_top_level_ops_once():
    times = time_by_op_kind(_Net().eval(), torch.rand(1, 3, 16, 16), repeats=1)
    for op in ("aten::conv2d", "aten::grid_sampler", "aten::upsample_bilinear2d", "aten::relu"):
        assert op in times.ops, sorted(times.ops)
    assert "aten::convolution" not in times.ops  # conv2d's own inner call is inside conv2d's time
    assert {k for k, v in times.kinds.items() if v > 0} >= {"conv", "warp", "resize", "element-wise"}
    assert sum(times.kinds.values()) == pytest.approx(sum(times.ops.values()))


def test_kept_time_note_names_the_kinds_and_ops_that_kept_their_time():
    before = OpTimes({"conv": 40.0, "warp": 11.0, "element-wise": 8.0, "resize": 0.5},
                     {"aten::conv2d": 40.0, "compresskit_vfi::adacof": 10.0, "aten::relu": 8.0,
                      "aten::upsample_bilinear2d": 0.5, "compresskit_stmfnet::correlation": 1.0},
                     "channels_last")
    after = OpTimes({"conv": 10.0, "warp": 9.5, "element-wise": 4.0, "resize": 0.5},
                    {"aten::conv2d": 10.0, "compresskit_vfi::adacof": 9.5, "aten::relu": 4.0,
                     "aten::upsample_bilinear2d": 0.5}, "channels_last")
    note = kept_time_note(before, after, mac_gain=4.0)  # correlation is gone: not among what kept its time
    assert note.startswith("time by op kind (channels_last), before → after: conv 40 → 10 ms (4.00x)")
    # warp fell 1.16x (< half the 4x MACs factor); element-wise 2x does not count as kept; resize is tiny
    assert note.endswith("kept their time (fell less than 2x): warp (compresskit_vfi::adacof 10 → 9.5 ms)")
    # MACs 1.5x: anything that fell less than 1.3x kept its time (warp), conv's 4x did not
    assert kept_time_note(before, after, mac_gain=1.5).endswith("(fell less than 1.3x): warp "
                                                                 "(compresskit_vfi::adacof 10 → 9.5 ms)")


def test_latency_note_is_measured_and_recorded():
    from compresskit.graph.trace import trace
    from compresskit.plan.cost import macs_cost
    from compresskit.report_builder import _latency_note

    torch.manual_seed(0)
    model, x = _Net(16).eval(), (torch.rand(1, 3, 16, 16),)
    small = _Net(4).eval()
    state = SimpleNamespace(inputs=SimpleNamespace(model=model, example_inputs=x),
                            art=SimpleNamespace(before=ModelStats(100, 1000, 10.0, latency_runtime="eager"),
                                                final=small, records={},
                                                costs={"macs": macs_cost(model, trace(model, x), x)}))
    note = _latency_note(state, ModelStats(25, 250, 8.0, latency_runtime="eager"))
    assert "latency fell 1.25x while MACs fell 4.00x" in note and "time by op kind (eager)" in note
    assert "per-op overhead" not in note  # the generic guess is replaced by the measurement
    rec = state.art.records["op_times"]
    assert set(rec) == {"before", "after"} and "aten::conv2d" in rec["before"]["ops"]


def test_report_names_the_runtime_and_shows_the_others(capsys):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    data = [(torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)) for _ in range(2)]
    cfg = dict(sparsify={"steps": 0}, recover={"steps": 0}, progress=False, latency_repeats=2,
               latency_runtimes=["eager", "channels_last"])
    rep = ck.compress(net, data, config=cfg).report
    for stats in (rep.before, rep.after):
        assert set(stats.latency_by_runtime) == {"eager", "channels_last"}
        assert stats.latency_runtime == min(stats.latency_by_runtime, key=stats.latency_by_runtime.get)
        assert stats.latency_ms == stats.latency_by_runtime[stats.latency_runtime]
    again = CompressReport.from_dict(rep.to_dict())
    assert again.before.latency_by_runtime == rep.before.latency_by_runtime
    from rich.console import Console

    print_report(rep, Console(width=200))
    out = capsys.readouterr().out
    assert f"latency (ms, {rep.before.latency_runtime}" in out
    assert "eager (ms)" in out and "channels_last (ms)" in out


def test_channels_last_takes_models_mixing_2d_and_3d_convs():
    class Mixed(nn.Module):  # ST-MFNet's shape: 2-D features, a 3-D U-Net over the frames
        def __init__(self):
            super().__init__()
            self.c2, self.c3 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv3d(4, 2, 3, padding=1)

        def forward(self, a, b):
            v = torch.stack([self.c2(a), self.c2(b)], 2)  # (B, 4, 2, H, W)
            return self.c3(v).mean(2)

    torch.manual_seed(0)
    model, xs = Mixed().eval(), (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with torch.inference_mode():
        torch.testing.assert_close(prepare(model, xs, "channels_last")(), model(*xs))
    assert set(measure_runtimes(model, xs, ["eager", "channels_last"], repeats=1, warmup=0).ms) == {
        "eager", "channels_last"}


def test_latency_table_times_layers_in_the_layout_it_plans_for():
    from compresskit.graph.trace import trace
    from compresskit.plan.latency import LatencyTable

    seen = []

    class Spy(nn.Conv2d):  # records the layout each call of the layer receives
        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return super().forward(x)

    model = nn.Sequential(Spy(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    x = (torch.rand(1, 3, 12, 12),)
    graph = trace(model, x)
    clock = iter(range(10**6))
    kw = dict(repeats=1, warmup=0, calibrate=(), timer=lambda: next(clock) * 1e-3)
    eager = LatencyTable.build(model, graph, x, **kw)
    assert "layout" not in eager.key and not any(seen)
    seen.clear()
    cl = LatencyTable.build(model, graph, x, layout="channels_last", **kw)
    assert cl.key["layout"] == "channels_last" and seen and all(seen)  # the model timed channels-last
    assert model[0].weight.is_contiguous()  # the caller's model is left as it was
    with pytest.raises(ValueError, match="layout: expected"):
        LatencyTable.build(model, graph, x, layout="nhwc", **kw)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runtimes_are_timed_with_cuda_events():  # pragma: no cover - needs a GPU
    model, x = _Net().cuda().eval(), torch.rand(1, 3, 64, 64, device="cuda")
    assert "onnxruntime" not in available_runtimes((x,))  # the ONNX Runtime session here is CPU-only
    times = measure_runtimes(model, (x,), repeats=3, warmup=1)
    assert set(times.ms) == {"eager", "channels_last"} and all(v > 0 for v in times.ms.values())


def test_channels_last_softmax_over_channels_keeps_the_layout_and_the_values():
    from compresskit.deploy.softmax import ChannelsLastSoftmax, replace_channel_softmax

    g = torch.Generator().manual_seed(0)
    for shape, fmt in (((2, 7, 5, 6), torch.channels_last), ((2, 7, 3, 5, 4), torch.channels_last_3d)):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        xc = x.contiguous(memory_format=fmt)
        for log, ref_fn in ((False, torch.softmax), (True, torch.log_softmax)):
            for dim in (1, 1 - x.dim()):  # the channel dim, counted from either end
                m = ChannelsLastSoftmax(dim, log=log)
                # the definition written out: exp(x − max) / Σ over the channels
                shifted = x - x.amax(1, keepdim=True)
                expected = shifted - shifted.exp().sum(1, keepdim=True).log() if log else \
                    shifted.exp() / shifted.exp().sum(1, keepdim=True)
                fast = m(xc)
                assert fast.is_contiguous(memory_format=fmt) and not fast.is_contiguous()
                torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(m(x), ref_fn(x, dim), rtol=0, atol=0)  # NCHW: torch's own call
        # another dim than the channels: torch's call, whatever the layout
        torch.testing.assert_close(ChannelsLastSoftmax(2)(xc), torch.softmax(xc, 2), rtol=0, atol=0)

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 9, 3, padding=1)
            self.taps = nn.Sequential(nn.Conv2d(9, 9, 1), nn.Softmax(dim=1))
            self.logp = nn.LogSoftmax(dim=-3)
            self.rows = nn.Softmax(dim=2)  # over rows: left alone

        def forward(self, x):
            y = self.conv(x)
            return self.taps(y) + self.logp(y) + self.rows(y)

    torch.manual_seed(0)
    model, x = Heads().eval(), torch.rand(2, 3, 8, 8)
    keys = list(model.state_dict())
    with torch.inference_mode():
        expected = model(x)
        twin = prepare(model, (x,), "channels_last")  # a copy: the model itself is not changed
        torch.testing.assert_close(twin(), expected, rtol=1e-5, atol=1e-6)
    assert type(model.taps[1]) is nn.Softmax
    assert replace_channel_softmax(model) == 2
    assert isinstance(model.taps[1], ChannelsLastSoftmax) and model.taps[1].dim == 1
    assert isinstance(model.logp, ChannelsLastSoftmax) and model.logp.log and model.logp.dim == -3
    assert type(model.rows) is nn.Softmax and list(model.state_dict()) == keys
