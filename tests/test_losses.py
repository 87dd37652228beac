"""Built-in losses against hand-computed values and an independent Laplacian pyramid; the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.adversarial import GANLoss
from compresskit.losses import laplacian_pyramid, reconstruct_laplacian_pyramid

PRED = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
TARGET = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # differences -1, 0, 2, 3


def test_l1_mse_charbonnier_hand_values():
    assert float(ck.get_loss("l1")(PRED, TARGET)) == pytest.approx(6 / 4)
    assert float(ck.get_loss("l1", reduction="sum")(PRED, TARGET)) == pytest.approx(6)
    assert float(ck.get_loss("mse")(PRED, TARGET)) == pytest.approx((1 + 0 + 4 + 9) / 4)
    eps = 1e-3
    want = (math.sqrt(1 + eps**2) + eps + math.sqrt(4 + eps**2) + math.sqrt(9 + eps**2)) / 4
    assert float(ck.get_loss("charbonnier")(PRED.double(), TARGET.double())) == pytest.approx(want, rel=1e-12)
    assert float(ck.get_loss("charbonnier", eps=0.5)(PRED, PRED)) == pytest.approx(0.5)


def _naive_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of one (H, W) channel with explicit loops, written from the published ST-MFNet
    loss (losses/laplacianpyramid.py): blur, then the mean of each 2×2 block (avg_pool2d; an odd last row
    or column is averaged over the samples it has), expand = zero insertion and 4× the blur."""
    k1 = np.array([1, 4, 6, 4, 1], dtype=np.float64)
    kernel = np.outer(k1, k1) / 256

    def blur(x, k):
        p = np.pad(x, 2, mode="reflect")
        out = np.zeros_like(x)
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                out[i, j] = (p[i : i + 5, j : j + 5] * k).sum()  # kernel is symmetric
        return out

    def expand(x, shape):
        up = np.zeros((2 * x.shape[0], 2 * x.shape[1]))
        up[::2, ::2] = x
        return blur(up, 4 * kernel)[: shape[0], : shape[1]]

    def block_mean(x):
        h, w = (x.shape[0] + 1) // 2, (x.shape[1] + 1) // 2
        out = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                out[i, j] = x[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean()
        return out

    bands, g = [], img
    for _ in range(levels - 1):
        down = block_mean(blur(g, kernel))
        bands.append(g - expand(down, g.shape))
        g = down
    return [*bands, g]


def test_laplacian_pyramid_matches_naive_reference_and_reconstructs():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 29, 40, dtype=torch.float64)  # odd height on purpose
    bands = laplacian_pyramid(img, levels=4)
    assert [tuple(b.shape[-2:]) for b in bands] == [(29, 40), (15, 20), (8, 10), (4, 5)]
    ref = _naive_pyramid(img[1, 2].numpy(), 4)
    for got, want in zip(bands, ref):
        np.testing.assert_allclose(got[1, 2].numpy(), want, rtol=0, atol=1e-12)
    rec = reconstruct_laplacian_pyramid(laplacian_pyramid(img, levels=5))
    assert (rec - img).abs().max() < 1e-12


def test_laplacian_loss_hand_values():
    # constant images: every band-pass level is 0, the low-pass (level 4, weight 2^4) keeps the constant;
    # the published sum is 2^4 · Σ|diff| over the 2×3×2×2 low-pass, "mean" divides by the 2×3×32×32 inputs
    a, b = torch.full((2, 3, 32, 32), 0.25), torch.full((2, 3, 32, 32), 0.75)
    published = 16 * 0.5 * 2 * 3 * 2 * 2
    assert float(ck.get_loss("laplacian", reduction="sum")(a, b)) == pytest.approx(published)
    assert float(ck.get_loss("laplacian")(a, b)) == pytest.approx(published / (2 * 3 * 32 * 32))
    # one level is plain L1; two levels weight the low-pass difference by 2
    x, y = torch.rand(1, 1, 8, 8, dtype=torch.float64), torch.rand(1, 1, 8, 8, dtype=torch.float64)
    assert float(ck.get_loss("laplacian", levels=1)(x, y)) == pytest.approx(float((x - y).abs().mean()))
    bx, by = _naive_pyramid(x[0, 0].numpy(), 2), _naive_pyramid(y[0, 0].numpy(), 2)
    want = np.abs(bx[0] - by[0]).sum() + 2 * np.abs(bx[1] - by[1]).sum()
    assert float(ck.get_loss("laplacian", levels=2, reduction="sum")(x, y)) == pytest.approx(want, rel=1e-12)
    assert float(ck.get_loss("laplacian", levels=2)(x, y)) == pytest.approx(want / 64, rel=1e-12)


def test_loss_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        ck.get_loss("l1")(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="too small"):
        ck.get_loss("laplacian")(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="reduction"):
        ck.get_loss("laplacian", reduction="max")
    with pytest.raises(ValueError, match="eps"):
        ck.get_loss("charbonnier", eps=0)


def test_registry_register_get_list():
    assert {"l1", "mse", "charbonnier", "laplacian", "gan"} <= set(ck.list_losses())

    @ck.register_loss("test_scaled_l1")
    def scaled_l1(pred, target, scale=1.0):
        return scale * (pred - target).abs().mean()

    assert "test_scaled_l1" in ck.list_losses()
    assert float(ck.get_loss("test_scaled_l1", scale=3.0)(PRED, TARGET)) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="already registered"):
        ck.register_loss("test_scaled_l1")(lambda p, t: p)
    with pytest.raises(KeyError, match="unknown loss 'nope'.*charbonnier"):
        ck.get_loss("nope")
    fn = lambda p, t: (p - t).sum()  # noqa: E731
    assert ck.get_loss(fn) is fn


class _MeanLogit(nn.Module):
    """D(x) = w · mean(x) per image, as a (B, 1) logit."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.w * x.mean(dim=(1, 2, 3)).unsqueeze(1)


def test_gan_loss_hand_values_and_discriminator_step():
    d = _MeanLogit()
    gan = GANLoss(discriminator=d, optimizer=torch.optim.SGD(d.parameters(), lr=1.0))
    fake, real = torch.zeros(2, 3, 4, 4, requires_grad=True), torch.ones(2, 3, 4, 4)
    # D(·) = 0 at w = 0: student loss softplus(0) = log 2
    assert float(gan(fake, real).detach()) == pytest.approx(math.log(2))
    # discriminator: softplus(-w·1) + softplus(w·0); d/dw at 0 = -σ(0) = -0.5, SGD lr 1 -> w = 0.5
    assert gan.discriminator_step() == pytest.approx(2 * math.log(2))
    assert float(d.w.detach()) == pytest.approx(0.5)
    with torch.no_grad():  # validation forwards leave nothing for the discriminator
        gan(fake, real)
    assert math.isnan(gan.discriminator_step())


def test_plugin_losses_are_found_without_loading_plugins_first():
    """``ck.get_loss`` / ``ck.list_losses`` discover installed plugins like ``ck.create_model`` does: the
    adacof plugin registers ``g_spatial`` and ``cdfi`` (checked in a fresh interpreter)."""
    import subprocess
    import sys

    pytest.importorskip("compresskit_adacof")
    code = "import compresskit as ck; names = ck.list_losses(); print('g_spatial' in names, 'cdfi' in names)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
