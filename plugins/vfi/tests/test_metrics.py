"""PSNR / SSIM / LPIPS against hand formulas, skimage itself and a naive scipy implementation."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from compresskit_vfi.metrics import LPIPS, lpips, psnr, quantize_8bit, ssim_matlab, ssim_skimage
from scipy import ndimage
from skimage import data
from skimage.metrics import structural_similarity


def photo(name: str, crop=(slice(100, 196), slice(120, 248))) -> torch.Tensor:
    """A real photo from skimage.data as a (3, H, W) float tensor in [0, 1]."""
    img = getattr(data, name)()[crop]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).double() / 255


def degraded(img: torch.Tensor, seed: int) -> torch.Tensor:
    """A plausible interpolation error: a slight shift, blur and noise (values may leave [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    shifted = torch.roll(img, shifts=(1, -2), dims=(1, 2))
    blurred = torch.nn.functional.avg_pool2d(shifted[None], 3, stride=1, padding=1,
                                             count_include_pad=False)[0]
    return 0.6 * img + 0.4 * blurred + 0.03 * torch.randn(img.shape, generator=g, dtype=img.dtype)


def test_psnr_by_hand():
    gt = torch.zeros(2, 3, 4, 5)
    pred = torch.zeros(2, 3, 4, 5)
    pred[0] = 10.4 / 255  # quantised to 10: MSE 100
    pred[1, 0] = 2.0  # clamped to 255 on one channel of three: MSE 255²/3
    values = psnr(pred, gt, reduction="none")
    expected = torch.tensor([10 * math.log10(255**2 / 100), 10 * math.log10(3.0)], dtype=torch.float64)
    torch.testing.assert_close(values, expected, atol=1e-4, rtol=0)  # the 1e-8 moves these < 1e-4 dB
    # exactly ST-MFNet's calc_psnr: -10·log10(mse/255² + 1e-8)
    torch.testing.assert_close(values, -10 * torch.log10(torch.tensor([100 / 255**2, 1 / 3],
                                                                      dtype=torch.float64) + 1e-8))
    torch.testing.assert_close(psnr(pred, gt), values.mean())


def test_psnr_of_identical_images_is_capped_at_80_db():
    # ST-MFNet's calc_psnr adds 1e-8 to mse/255²: identical images give -10·log10(1e-8) = 80 dB, not inf
    gt = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    assert psnr(gt, gt).item() == pytest.approx(80.0, abs=1e-9)
    pred = gt.clone()
    pred[1] = quantize_8bit(gt[1]) / 255 + 10 / 255  # exactly 10 levels off where that stays <= 255
    q = quantize_8bit(gt[1])
    mse = ((torch.clamp(q + 10, max=255) - q) ** 2).mean().item()
    expected = (80.0 - 10 * math.log10(mse / 255**2 + 1e-8)) / 2
    mean = psnr(pred, gt).item()
    assert math.isfinite(mean) and mean == pytest.approx(expected, abs=1e-9)


def test_quantize_8bit():
    x = torch.tensor([-0.2, 0.0, 0.4 / 255, 1.49 / 255, 254.6 / 255, 1.3])
    assert quantize_8bit(x).tolist() == [0.0, 0.0, 0.0, 1.0, 255.0, 255.0]


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_ssim_skimage_equals_skimage(name):
    gt = photo(name)
    pred = degraded(gt, seed=len(name))
    ours = ssim_skimage(pred, gt).item()
    to_np = lambda t: (quantize_8bit(t) / 255).permute(1, 2, 0).numpy()  # noqa: E731
    theirs = structural_similarity(to_np(gt), to_np(pred), data_range=1, channel_axis=-1)
    assert ours == pytest.approx(theirs, abs=1e-10)
    assert 0.3 < ours < 0.999  # a real, non-trivial comparison


def naive_ssim_matlab(pred: np.ndarray, gt: np.ndarray) -> float:
    """The ST-MFNet convention with scipy: 3-D Gaussian (11, σ 1.5) over (C, H, W), edges replicated."""
    x = np.round(np.clip(pred, 0, 1) * 255)
    y = np.round(np.clip(gt, 0, 1) * 255)
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    g /= g.sum()
    window = np.einsum("i,j,k->ijk", g, g, g)

    def blur(v):
        return ndimage.convolve(v, window, mode="nearest")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_ssim_matlab_equals_naive_scipy(name):
    gt = photo(name, crop=(slice(200, 248), slice(300, 364)))
    pred = degraded(gt, seed=3)
    expected = naive_ssim_matlab(pred.numpy(), gt.numpy())
    assert ssim_matlab(pred, gt).item() == pytest.approx(expected, abs=1e-9)


def test_per_image_values_and_mean():
    gts = torch.stack([photo("astronaut"), photo("chelsea")])
    preds = torch.stack([degraded(gts[0], 1), gts[1]])
    for metric in (psnr, ssim_matlab, ssim_skimage):
        per_image = metric(preds, gts, reduction="none")
        assert per_image.shape == (2,)
        torch.testing.assert_close(per_image[0], metric(preds[0], gts[0]))
        if metric is not psnr:
            torch.testing.assert_close(metric(preds, gts), per_image.mean())


def test_identical_images_give_one():
    img = photo("coffee")
    assert ssim_matlab(img, img).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim_skimage(img, img).item() == pytest.approx(1.0, abs=1e-12)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match="pred must be"):
        ssim_matlab(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim_skimage(torch.zeros(3, 5, 9), torch.zeros(3, 5, 9))
    with pytest.raises(TypeError, match="float tensor in"):
        psnr(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="reduction"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), reduction="sum")


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips is installed here")
def test_lpips_without_package_says_what_is_missing():
    with pytest.raises(RuntimeError, match="'lpips' package"):
        LPIPS()
    with pytest.raises(RuntimeError, match="'lpips' package"):
        lpips(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="needs the lpips package")
def test_lpips_without_weights_never_downloads(tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        LPIPS(backbone_path=tmp_path / "missing.pth")


class StandIn(torch.nn.Module):
    """The ``lpips.LPIPS`` call convention: ``(x, y, normalize) -> (B, 1, 1, 1)``; here mean |x − y|."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, y, normalize=False):
        self.calls.append((x.clone(), y.clone(), normalize))
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        return (x - y).abs().mean((1, 2, 3), keepdim=True)


def test_lpips_cdfi_network_and_input_range():
    # CDFI's test.py: lpips(gt, out, net_type='squeeze') of lpips-pytorch, v0.1, on [0, 1] tensors as they
    # are (its BaseNet.z_score is applied straight to them; no 2x - 1)
    import inspect

    assert inspect.signature(LPIPS).parameters["net"].default == "squeeze"
    assert inspect.signature(LPIPS).parameters["normalize"].default is False
    assert inspect.signature(lpips).parameters["net"].default == "squeeze"
    net = StandIn()
    metric = LPIPS(model=net)
    pred = torch.full((2, 3, 4, 5), 0.5)
    pred[1] = 1.7  # clamped to 1, as an 8-bit PNG holds it
    gt = torch.full((2, 3, 4, 5), 0.25)
    values = metric(pred, gt, reduction="none")
    x, y, normalize = net.calls[-1]
    assert normalize is False
    assert x.min() >= 0 and x.max() <= 1 and y.min() >= 0  # [0, 1], quantised to 8 bits
    torch.testing.assert_close(x[0], torch.full((3, 4, 5), 128 / 255))
    torch.testing.assert_close(values, torch.tensor([64 / 255, 191 / 255], dtype=torch.float64))
    torch.testing.assert_close(metric(pred, gt), values.mean())
    # normalize=True (the lpips package's advice) doubles this distance: |(2x-1) - (2y-1)| = 2|x - y|
    assert LPIPS(model=StandIn(), normalize=True)(pred[:1], gt[:1]).item() == pytest.approx(2 * 64 / 255)
