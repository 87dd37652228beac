"""The evaluation table against PSNR/SSIM computed independently in the test (numpy, skimage)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from compresskit_vfi.data.datasets import ArrayLoader, FrameTupleDataset
from compresskit_vfi.evaluate import EvaluationResult, evaluate, quantize
from torch import nn


class Average(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, frame0, frame1):
        return self.scale * (frame0 + frame1) / 2


class First(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, frame0, frame1):
        return frame0 * self.scale[0]


class FourAverage(nn.Module):
    def forward(self, i0, i1, i2, i3):
        return (i1 + i2) / 2


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(6, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 3, 1)

    def forward(self, x, y):
        return torch.sigmoid(self.b(torch.relu(self.a(torch.cat([x, y], 1)))))


def _clip(n=9, h=20, w=24):
    """A smooth pattern moving 1.5 px per frame (real motion, so interpolation error is not zero).

    Values are even, so the mean of two frames is an integer and 8-bit rounding has no ties.
    """
    y, x = np.mgrid[0:h, 0:w + 2 * n].astype(np.float64)
    pattern = 120 + 60 * np.sin(x / 2.5) + 50 * np.cos(y / 3.0 + x / 7.0)
    rgb = np.stack([pattern, pattern[::-1], 255 - pattern], axis=-1)
    frames = [rgb[:, int(1.5 * t):int(1.5 * t) + w] for t in range(n)]
    return (2 * np.round(np.stack(frames) / 2)).clip(0, 254).astype(np.uint8)


def _dataset(kind="triplet"):
    frames = _clip()
    if kind == "triplet":
        samples = [((0, t), (0, t + 2), (0, t + 1)) for t in range(4)]
    else:
        samples = [((0, t), (0, t + 2), (0, t + 4), (0, t + 6), (0, t + 3)) for t in range(3)]
    return FrameTupleDataset(samples, loader=ArrayLoader([frames]), name=f"synthetic_{kind}"), frames


def _psnr(pred_u8, gt_u8):
    mse = np.mean((pred_u8.astype(np.float64) - gt_u8.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def _ssim_skimage(pred_u8, gt_u8):
    from skimage.metrics import structural_similarity

    return structural_similarity(pred_u8 / 255.0, gt_u8 / 255.0, channel_axis=2, data_range=1.0)


def test_quantize():
    x = torch.tensor([-0.2, 0.0, 0.5, 0.50197, 1.3])
    assert torch.equal(quantize(x) * 255, torch.tensor([0.0, 0.0, 128.0, 128.0, 255.0]))


def test_scores_match_independent_reference(tmp_path):
    ds, frames = _dataset()
    res = evaluate({"avg": Average(), "first": First()}, {"syn": ds}, "cdfi", runtime=False, macs=False,
                   out_dir=tmp_path, progress=False)
    f = frames.astype(np.float64)
    avg_u8 = [np.clip(np.round((f[t] + f[t + 2]) / 2), 0, 255) for t in range(4)]
    exp_psnr = np.mean([_psnr(avg_u8[t], frames[t + 1]) for t in range(4)])
    exp_ssim = np.mean([_ssim_skimage(avg_u8[t], frames[t + 1]) for t in range(4)])
    assert res.scores["avg"]["syn"]["psnr"] == pytest.approx(exp_psnr, abs=1e-4)
    assert res.scores["avg"]["syn"]["ssim"] == pytest.approx(exp_ssim, abs=1e-4)
    assert res.scores["avg"]["syn"]["n"] == 4
    exp_first = np.mean([_psnr(frames[t], frames[t + 1]) for t in range(4)])
    assert res.scores["first"]["syn"]["psnr"] == pytest.approx(exp_first, abs=1e-4)
    assert res.scores["avg"]["syn"]["psnr"] > res.scores["first"]["syn"]["psnr"]
    # saved: JSON that round-trips, and one PSNR-vs-parameters PNG per test set
    data = json.loads((tmp_path / "results.json").read_text())
    assert EvaluationResult.from_dict(data).scores == res.scores
    assert (tmp_path / "psnr_vs_params_syn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_frame_model_sees_the_middle_pair_of_a_quintuplet():
    ds, frames = _dataset("quintuplet")
    res = evaluate({"first": First(), "four": FourAverage()}, ds, "stmfnet", runtime=False, macs=False,
                   limit=2, progress=False)
    # First on (I1, I2) returns I1 = frame t+2; the target is frame t+3
    exp = np.mean([_psnr(frames[t + 2], frames[t + 3]) for t in range(2)])
    assert res.scores["first"]["synthetic_quintuplet"]["psnr"] == pytest.approx(exp, abs=1e-4)
    assert res.scores["first"]["synthetic_quintuplet"]["n"] == 2
    assert set(res.scores["four"]) == {"synthetic_quintuplet"}


def test_four_frame_model_on_triplets_is_an_error():
    ds, _ = _dataset("triplet")
    with pytest.raises(ValueError, match="takes 4 frames but dataset 'synthetic_triplet' gives 2"):
        evaluate({"four": FourAverage()}, ds, runtime=False, macs=False, progress=False)
    with pytest.raises(ValueError, match="convention"):
        evaluate({"avg": Average()}, ds, convention="vimeo")
    with pytest.raises(TypeError, match="nn.Module"):
        evaluate({"avg": "not a model"}, ds)


def test_params_macs_runtime_and_table():
    ds, _ = _dataset()
    net = TinyNet()
    res = evaluate({"tiny": net}, ds, runtime=True, runtime_repeats=1, limit=1, progress=False)
    s = res.models["tiny"]
    assert s.params == 6 * 4 * 9 + 4 + 4 * 3 + 3
    assert s.macs == 256 * 256 * (4 * 6 * 9 + 3 * 4)  # conv MACs at 256x256, textbook formula
    assert s.runtime_s is not None and s.runtime_s > 0 and s.runtime_size == (480, 854)
    from rich.console import Console

    console = Console(record=True, width=200)
    res.print(console)
    text = console.export_text()
    assert "tiny" in text and f"{res.scores['tiny']['synthetic_triplet']['psnr']:.3f}" in text


class SecondInput(nn.Module):
    """A four-frame model that returns I1 (the frame before the target)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, i0, i1, i2, i3):
        return self.w * i1


def test_davis_is_the_mean_of_sequence_means(tmp_path):
    # ST-MFNet's Davis90 eval: per-sequence mean over t = 0, 2, ..., then the mean over sequences
    from compresskit_vfi.data import DAVIS90
    from PIL import Image

    for seq, n, speed in (("long", 11, 1), ("short", 7, 3)):  # 3 samples at Δ = 1 level, 1 at Δ = 3 levels
        (tmp_path / seq).mkdir()
        for t in range(n):
            img = Image.fromarray(np.full((8, 12, 3), 10 + speed * t, np.uint8))
            img.save(tmp_path / seq / f"{t:05d}.png")
    ds = DAVIS90(tmp_path)
    res = evaluate({"prev": SecondInput()}, {"davis": ds}, runtime=False, macs=False, progress=False)
    p_long, p_short = -10 * np.log10(1 / 255**2 + 1e-8), -10 * np.log10(9 / 255**2 + 1e-8)
    scores = res.scores["prev"]["davis"]
    assert scores["psnr"] == pytest.approx((p_long + p_short) / 2, abs=1e-9)  # not (3·p_long + p_short)/4
    assert scores["n"] == 4 and scores["n_groups"] == 2


def test_identical_prediction_keeps_the_mean_finite():
    frames = _clip()
    ds = FrameTupleDataset([((0, 0), (0, 2), (0, 0)), ((0, 1), (0, 3), (0, 2))], loader=ArrayLoader([frames]),
                           name="with_exact")
    res = evaluate({"first": First()}, {"s": ds}, runtime=False, macs=False, progress=False)
    expected = (80.0 + _psnr(frames[1], frames[2])) / 2  # identical images: ST-MFNet's 80 dB cap
    assert res.scores["first"]["s"]["psnr"] == pytest.approx(expected, abs=1e-4)
