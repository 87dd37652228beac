"""compresskit.report: MACs and parameter counts against hand formulas, evaluation, JSON, tables, plots."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compresskit.report import (
    CompressReport,
    LayerRecord,
    ModelStats,
    count_macs,
    count_params,
    evaluate,
    measure_latency,
    normalize_metrics,
    plot_metric_vs_params,
    print_report,
)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4),
        nn.ConvTranspose2d(12, 4, 4, stride=2, padding=1),
        nn.Conv2d(4, 6, (1, 3), padding=(0, 1), bias=False),
        nn.Flatten(),
        nn.Linear(6 * 16 * 16, 10),
    )


def _hand_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Textbook MAC formulas, from the shapes seen by forward hooks."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.ConvTranspose2d):  # every input pixel scatters a C_out·k·k kernel
            n, c_in, h, w = inp[0].shape
            kh, kw = mod.kernel_size
            total += n * h * w * c_in * (mod.out_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Conv2d):  # every output pixel gathers C_in/g·k·k inputs
            n, c_out, h, w = out.shape
            kh, kw = mod.kernel_size
            total += n * c_out * h * w * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total += inp[0].shape[0] * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def test_macs_match_textbook_formulas():
    torch.manual_seed(0)
    model = _net()
    x = torch.randn(2, 3, 16, 16)
    assert count_macs(model, x) == _hand_macs(model, x) > 0
    assert count_macs(model, (x,)) == count_macs(model, [x])
    # the same, written out: conv 3→8 on 16×16; grouped conv 8→12 (4 groups) to 8×8; transposed conv
    # 12→4, 4×4 kernel, from 8×8; 1×3 conv 4→6; linear 1536→10; batch 2
    assert count_macs(model, x) == 2 * (8 * 256 * 3 * 9 + 12 * 64 * 2 * 9 + 64 * 12 * 4 * 16 + 6 * 256 * 4 * 3
                                        + 1536 * 10)


def test_macs_of_functional_calls_matmuls_and_attention():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 16))
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x, q):
            y = nn.functional.linear(x, self.w)  # (2, 5, 16) → (2, 5, 4)
            z = y @ torch.ones(4, 3)  # (2, 5, 4) @ (4, 3)
            a = nn.functional.scaled_dot_product_attention(q, q, q)  # (1, 2, 5, 8): Q·Kᵀ and ·V
            b, _ = self.mha(q[0], q[0], q[0])  # batch 2, 5 tokens, E = 8: 4 projections + Q·Kᵀ + ·V
            return z.sum() + a.sum() + b.sum()

    expected = 2 * 5 * 4 * 16 + 2 * 5 * 3 * 4 + 2 * (2 * 5 * 5 * 8) + 2 * ((4 * 5) * 64 + 2 * 25 * 8)
    assert count_macs(Functional(), (torch.randn(2, 5, 16), torch.randn(1, 2, 5, 8))) == expected


def test_params_counted_by_hand():
    model = _net()
    expected = (3 * 8 * 9 + 8) + (12 * 2 * 9 + 12) + (12 * 4 * 16 + 4) + (6 * 4 * 3) + (6 * 256 * 10 + 10)
    assert count_params(model) == expected
    with pytest.raises(TypeError, match="model"):
        count_params("not a model")


def test_measure_latency_restores_mode_and_validates():
    model = _net().train()
    out = measure_latency(model, torch.randn(1, 3, 16, 16), repeats=3, warmup=1)
    assert set(out) >= {"median_ms", "min_ms", "repeats", "threads", "device"}
    assert out["repeats"] == 3 and out["min_ms"] <= out["median_ms"]
    assert model.training
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, torch.randn(1, 3, 16, 16), repeats=0)
    with pytest.raises(TypeError, match="example_inputs"):
        count_macs(model, 3)


def test_evaluate_weights_batches_by_size():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    batches = [(torch.randn(3, 4), torch.randn(3, 2)), (torch.randn(1, 4), torch.randn(1, 2))]

    def sq_err(output, batch):  # per-sample mean, averaged over the batch
        return ((output - batch[-1]) ** 2).mean()

    got = evaluate(model, batches, {"mse": sq_err}, lambda b: b[:-1])
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        ref = ((model(x) - y) ** 2).mean().item()
    assert got["mse"] == pytest.approx(ref, rel=1e-6)
    assert evaluate(model, batches, {"mse": sq_err}, lambda b: b[:-1], max_batches=1)["mse"] == pytest.approx(
        sq_err(model(batches[0][0]), batches[0]).item(), rel=1e-6)
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [], {"mse": sq_err}, lambda b: b[:-1])


def test_normalize_metrics_forms_and_errors():
    def psnr(o, b):
        return 0.0

    assert list(normalize_metrics([psnr])) == ["psnr"]
    assert list(normalize_metrics(psnr)) == ["psnr"]
    assert normalize_metrics(None) == {}
    with pytest.raises(TypeError, match="metrics"):
        normalize_metrics(3)
    with pytest.raises(TypeError, match="metrics"):
        normalize_metrics({"x": 3})


def _report() -> CompressReport:
    return CompressReport(
        model="tiny", loss="L1", inputs="batch[:-1]",
        before=ModelStats(1000, 50_000, 1.5, {"psnr": 30.0}),
        after=ModelStats(400, 20_000, 0.8, {"psnr": 29.6}),
        layers=[LayerRecord("conv1", "Conv2d", 0.4, [8, 3, 3, 3], [4, 3, 3, 3], 224, 112)],
        widths={"3": [8, 4]}, plan="group 3: 8 -> 4", stages={"sparsify": 1.0},
    )


def test_report_json_round_trip(tmp_path):
    rep = _report()
    path = rep.save(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["param_ratio"] == pytest.approx(0.4) and data["mac_ratio"] == pytest.approx(0.4)
    back = CompressReport.load(path)
    assert back == rep
    with pytest.raises(ValueError, match="not a compresskit report"):
        CompressReport.from_dict({"model": "x"})
    with pytest.raises(FileNotFoundError):
        CompressReport.load(tmp_path / "missing.json")


def test_print_report_shows_the_numbers():
    from rich.console import Console

    console = Console(record=True, width=140)
    print_report(_report().to_dict(), console)
    text = console.export_text()
    needles = ("parameters", "1,000", "400", "0.400×", "50k", "psnr", "29.6", "-0.4", "conv1",
               "8×3 → 4×3", "0.500×")
    for needle in needles:
        assert needle in text, needle


def test_plots_are_png_and_written_atomically(tmp_path):
    import matplotlib.image

    path = plot_metric_vs_params([("a", 1000, 30.0), ("b", 400, 29.5)], tmp_path / "p.png", "psnr")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[0] > 50
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temp files left
    assert sorted(p.name for p in _report().plot(tmp_path / "r")) == ["densities.png", "psnr_vs_params.png"]
    with pytest.raises(ValueError, match="points"):
        plot_metric_vs_params([], tmp_path / "e.png")
