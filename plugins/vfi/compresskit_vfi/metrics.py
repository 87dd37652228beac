"""Quality metrics of the VFI papers, on outputs quantised to 8 bits as the papers saved them.

* :func:`psnr` – −10·log10(MSE / 255² + 1e-8) on round(clamp(x, 0, 1)·255), ST-MFNet's ``calc_psnr``:
  10·log10(255² / MSE) up to the 1e-8, which caps identical images at 80 dB instead of ``inf``.
* :func:`ssim_matlab` – the ST-MFNet / ST-MFNet Mini convention: SSIM with a 3-D Gaussian window
  11×11×11 (σ = 1.5) over (C, H, W) taken as one volume, replicate padding, C1 = (0.01·255)²,
  C2 = (0.03·255)², on 0–255 quantised images (Wang et al., "Image quality assessment: from error
  visibility to structural similarity", TIP 2004).
* :func:`ssim_skimage` – the CDFI convention: ``skimage.metrics.structural_similarity`` with its defaults
  (7×7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, border of 3 cropped) over the RGB channels,
  data_range 1, on 8-bit quantised outputs; written here in torch.
* :class:`LPIPS` / :func:`lpips` – LPIPS (Zhang et al., CVPR 2018) as CDFI's table computed it: the
  SqueezeNet backbone, weights v0.1, images in [0, 1] fed as they are (no rescaling to [−1, 1]); through
  the ``lpips`` package, never downloading: the package and its backbone weights must be present locally.

Every function takes ``pred`` and ``gt`` as (B, C, H, W) or (C, H, W) tensors in [0, 1] and returns the
mean over images (``reduction="mean"``) or one value per image (``reduction="none"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PSNR_EPS", "quantize_8bit", "psnr", "ssim_matlab", "ssim_skimage", "LPIPS", "lpips"]

Reduction = Literal["mean", "none"]


def quantize_8bit(x: Tensor) -> Tensor:
    """round(clamp(x, 0, 1)·255) as float64: the 0–255 values an 8-bit image file would hold."""
    return torch.round(x.detach().double().clamp(0, 1) * 255)


def _pair(pred: Tensor, gt: Tensor, min_size: int = 1) -> tuple[Tensor, Tensor]:
    for name, t in (("pred", pred), ("gt", gt)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {t.dtype}")
        if t.dim() not in (3, 4):
            raise ValueError(f"{name} must be (B, C, H, W) or (C, H, W), got shape {tuple(t.shape)}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(gt.shape)}")
    if pred.dim() == 3:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    if min(pred.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size} pixels, "
                         f"got {tuple(pred.shape[-2:])}")
    return pred, gt


def _reduce(per_image: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


#: added to MSE / 255² inside the log, as ST-MFNet's ``calc_psnr`` does: identical images score 80 dB
PSNR_EPS = 1e-8


def psnr(pred: Tensor, gt: Tensor, reduction: Reduction = "mean") -> Tensor:
    """PSNR in dB on 8-bit quantised images: −10·log10(MSE / 255² + 1e-8) per image.

    This is ST-MFNet's ``calc_psnr``; the 1e-8 caps identical images at 80 dB (never ``inf``, so a mean
    over a test set stays finite) and lowers a 40 dB score by 4e-4 dB. CDFI's skimage PSNR has no cap
    (``inf`` for identical images) and otherwise agrees to that precision.
    """
    pred, gt = _pair(pred, gt)
    mse = (quantize_8bit(pred) - quantize_8bit(gt)).pow(2).flatten(1).mean(1)
    return _reduce(-10 * torch.log10(mse / 255.0**2 + PSNR_EPS), reduction)


def _gaussian_1d(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_matlab(pred: Tensor, gt: Tensor, reduction: Reduction = "mean", window_size: int = 11,
                sigma: float = 1.5) -> Tensor:
    """SSIM with a 3-D Gaussian window over (C, H, W) as one volume (the ST-MFNet convention).

    μ, σ², σ_xy are Gaussian-weighted (window 11×11×11, σ=1.5, replicate padding of 5 on all three dims)
    on 0–255 quantised images; SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)) with
    C1 = (0.01·255)², C2 = (0.03·255)², averaged over the whole volume of each image.
    """
    pred, gt = _pair(pred, gt)
    g = _gaussian_1d(window_size, sigma).to(pred.device)
    # the 3-D window is g⊗g⊗g: three 1-D passes over the padded volume give the same valid convolution
    taps = [g.view(1, 1, -1, 1, 1), g.view(1, 1, 1, -1, 1), g.view(1, 1, 1, 1, -1)]
    half = window_size // 2

    def blur(v: Tensor) -> Tensor:  # v: (B, 1, C, H, W)
        v = F.pad(v, [half] * 6, mode="replicate")
        for k in taps:
            v = F.conv3d(v, k)
        return v

    x = quantize_8bit(pred).unsqueeze(1)
    y = quantize_8bit(gt).unsqueeze(1)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _reduce(ssim_map.flatten(1).mean(1), reduction)


def ssim_skimage(pred: Tensor, gt: Tensor, reduction: Reduction = "mean", win_size: int = 7) -> Tensor:
    """SSIM as ``skimage.metrics.structural_similarity(gt, pred, data_range=1, channel_axis=...)``.

    Per channel: uniform 7×7 means, sample (co)variances (×49/48), K1 = 0.01, K2 = 0.03, the SSIM map
    cropped by 3 pixels at each border, averaged; then averaged over channels. Images are quantised to
    8 bits and scaled to [0, 1] first (CDFI saved its outputs as PNG).
    """
    pred, gt = _pair(pred, gt, min_size=win_size)
    x = quantize_8bit(pred) / 255
    y = quantize_8bit(gt) / 255

    def mean(v: Tensor) -> Tensor:  # the uniform filter over the valid (cropped) region only
        return F.avg_pool2d(v, win_size, stride=1)

    cov_norm = win_size**2 / (win_size**2 - 1)
    mu_x, mu_y = mean(x), mean(y)
    var_x = cov_norm * (mean(x * x) - mu_x**2)
    var_y = cov_norm * (mean(y * y) - mu_y**2)
    cov = cov_norm * (mean(x * y) - mu_x * mu_y)
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _reduce(ssim_map.flatten(2).mean(2).mean(1), reduction)


# torchvision file names of the LPIPS backbones (looked for in the torch hub cache, never downloaded)
_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


class LPIPS(nn.Module):
    """LPIPS distance (lower is better) on 8-bit quantised images, by default as CDFI's table computed it.

    CDFI's ``test.py`` calls ``lpips(gt, out, net_type='squeeze')`` of lpips-pytorch (weights v0.1) on the
    [0, 1] tensors of the PNG images, without rescaling them to [−1, 1]; the defaults ``net="squeeze"``,
    ``normalize=False`` reproduce that. ``normalize=True`` maps [0, 1] to [−1, 1] first, the ``lpips``
    package's own recommendation (as in ``lpips.LPIPS()(x, y, normalize=True)``).

    Nothing is downloaded: the ``lpips`` package (which ships its linear-layer weights v0.1 and needs
    torchvision) must be installed, and the backbone's torchvision weights must be in the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``) or given as ``backbone_path``. Otherwise construction raises a
    ``RuntimeError`` saying what is missing. ``model`` replaces all that with a network of your own with
    the ``lpips.LPIPS`` call convention ``model(x, y, normalize=bool) -> (B, 1, 1, 1)``.
    """

    def __init__(self, net: Literal["alex", "vgg", "squeeze"] = "squeeze",
                 backbone_path: str | os.PathLike | None = None, normalize: bool = False,
                 model: nn.Module | None = None):
        super().__init__()
        if net not in _BACKBONE_FILES:
            raise ValueError(f"LPIPS: net must be one of {sorted(_BACKBONE_FILES)}, got {net!r}")
        self.net, self.normalize = net, bool(normalize)
        if model is not None:
            self.model = model.eval()
        else:
            self.model = self._load_lpips(net, backbone_path)
        for p in self.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _load_lpips(net: str, backbone_path: str | os.PathLike | None) -> nn.Module:
        try:
            import lpips
        except ImportError as e:
            raise RuntimeError(
                "LPIPS needs the 'lpips' package and torchvision (pip install lpips torchvision), which are "
                f"not importable here ({e}); PSNR and SSIM work without them") from e
        path = Path(backbone_path) if backbone_path is not None else \
            Path(torch.hub.get_dir()) / "checkpoints" / _BACKBONE_FILES[net]
        if not path.is_file():
            raise RuntimeError(
                f"LPIPS: backbone weights for net={net!r} not found at {str(path)!r}; put torchvision's "
                f"{_BACKBONE_FILES[net]} there or pass backbone_path (nothing is downloaded)")
        # random backbone first (no download), then the local torchvision weights, mapped onto the slices;
        # the linear layers (version 0.1) come with the package
        model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False).eval()
        state = torch.load(path, map_location="cpu", weights_only=True)
        backbone = {}
        # "slice<k>.<i>.<param>" holds torchvision's "features.<i>.<param>"
        for key in model.net.state_dict():
            _, index, param = key.split(".", 2)
            backbone[key] = state[f"features.{index}.{param}"]
        model.net.load_state_dict(backbone)
        return model

    @torch.no_grad()
    def forward(self, pred: Tensor, gt: Tensor, reduction: Reduction = "mean") -> Tensor:
        pred, gt = _pair(pred, gt)
        x, y = (quantize_8bit(t).float() / 255 for t in (pred, gt))
        per_image = self.model(x, y, normalize=self.normalize).flatten(1).mean(1)
        return _reduce(per_image.double(), reduction)


_LPIPS_CACHE: dict[tuple[str, str | None, bool, str], LPIPS] = {}


Backbone = Literal["alex", "vgg", "squeeze"]


def lpips(pred: Tensor, gt: Tensor, reduction: Reduction = "mean", net: Backbone = "squeeze",
          backbone_path: str | os.PathLike | None = None, normalize: bool = False) -> Tensor:
    """LPIPS with a cached :class:`LPIPS` per (net, weights, normalize, device); see :class:`LPIPS`."""
    key = (net, None if backbone_path is None else str(backbone_path), bool(normalize), str(pred.device))
    if key not in _LPIPS_CACHE:
        _LPIPS_CACHE[key] = LPIPS(net, backbone_path, normalize=normalize).to(pred.device)
    return _LPIPS_CACHE[key](pred, gt, reduction=reduction)
