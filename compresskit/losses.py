"""Losses by name, and the generic image losses: L1, MSE, Charbonnier and the Laplacian pyramid loss.

``@register_loss("name")`` adds a loss that configs can name; :func:`get_loss` builds it. A registered
object is either an ``nn.Module`` class (``get_loss(name, **kw)`` instantiates it) or a function
``f(pred, target, **kw) -> Tensor`` (``get_loss`` returns it, with ``kw`` bound when given). Each loss takes
``(pred, target)`` tensors of the same shape and returns a scalar tensor. The table, :data:`LOSSES`, also
holds the adversarial ``"gan"`` loss of :mod:`compresskit.adversarial` (registered at the end of
this module) and the plugins' losses (discovered on the first lookup).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from compresskit._registry import Registry
from compresskit.adversarial import GANLoss

Reduction = Literal["mean", "sum"]
T = TypeVar("T")

#: every registered loss: an ``nn.Module`` class or a function ``f(pred, target, **kw) -> Tensor``, by name
LOSSES: Registry[Any] = Registry("loss")


def register_loss(name: str, *, replace: bool = False, override: bool | None = None) -> Callable[[T], T]:
    """Decorator: register a loss class or function under ``name``.

    A name registered to another object raises :class:`~compresskit._registry.AlreadyRegisteredError`
    unless ``replace=True`` (``override=`` is its deprecated old name).

    >>> @register_loss("my_l1")
    ... def my_l1(pred, target):
    ...     return (pred - target).abs().mean()
    """
    if override is not None:
        warnings.warn("register_loss(override=...) is deprecated; use replace=...", DeprecationWarning,
                      stacklevel=2)
        replace = replace or override
    return LOSSES.decorator("register_loss", name, "a loss class or function", replace=replace)


def get_loss(name: str | Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """The loss registered as ``name``, built with ``kwargs``; a callable passes through unchanged."""
    if callable(name) and not isinstance(name, str):
        if kwargs:
            raise TypeError("get_loss: keyword arguments are only used with a registered loss name")
        return name
    obj = LOSSES.get(name)
    if isinstance(obj, type):
        return obj(**kwargs)
    return functools.partial(obj, **kwargs) if kwargs else obj


def list_losses() -> list[str]:
    """Names of every registered loss, sorted."""
    return LOSSES.names()


def _check_pair(pred: torch.Tensor, target: torch.Tensor, who: str) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"{who}: pred and target must be tensors, got {type(pred).__name__} and "
                        f"{type(target).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"{who}: pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


@register_loss("l1")
class L1Loss(nn.Module):
    """``mean |x − y|`` (or the sum)."""

    def __init__(self, reduction: Reduction = "mean"):
        super().__init__()
        _reduce(torch.zeros(1), reduction)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "l1 loss")
        return _reduce((pred - target).abs(), self.reduction)


@register_loss("mse")
class MSELoss(nn.Module):
    """``mean (x − y)²`` (or the sum)."""

    def __init__(self, reduction: Reduction = "mean"):
        super().__init__()
        _reduce(torch.zeros(1), reduction)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "mse loss")
        return _reduce((pred - target).square(), self.reduction)


@register_loss("charbonnier")
class CharbonnierLoss(nn.Module):
    """Charbonnier loss ``mean sqrt((x − y)² + ε²)``, ε = 1e-3: a smooth L1 (AdaCoF / CDFI)."""

    def __init__(self, eps: float = 1e-3, reduction: Reduction = "mean"):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"charbonnier: eps must be > 0, got {eps}")
        _reduce(torch.zeros(1), reduction)
        self.eps = float(eps)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "charbonnier loss")
        return _reduce(torch.sqrt((pred - target).square() + self.eps**2), self.reduction)


# ---------------------------------------------------------------- Laplacian pyramid (Burt & Adelson 1983)

def gaussian_kernel(channels: int, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The 5×5 binomial kernel ``outer([1,4,6,4,1], [1,4,6,4,1]) / 256``, one copy per channel (C,1,5,5)."""
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
    k2 = torch.outer(k1, k1) / 256.0
    return k2.to(dtype=dtype, device=device).expand(channels, 1, 5, 5).contiguous()


def _blur(img: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Reflect-pad by 2 and convolve each channel with ``gain ·`` the 5×5 binomial kernel, applied as its
    two separable 5-tap factors ``[1,4,6,4,1]/16`` (the same filter as :func:`gaussian_kernel`)."""
    b, c, h, w = img.shape
    if min(h, w) < 3:
        raise ValueError(f"laplacian pyramid: an image level of size {h}x{w} is too small for the 5x5 "
                         "reflect-padded blur (needs at least 3x3): use fewer levels or larger images")
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0
    taps = (taps * gain).to(dtype=img.dtype, device=img.device)
    padded = F.pad(img, (2, 2, 2, 2), mode="reflect")
    vertical = F.conv2d(padded, taps.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return F.conv2d(vertical, taps.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)


def pyramid_reduce(img: torch.Tensor) -> torch.Tensor:
    """Blur with the 5×5 binomial kernel (reflect padding), then average each 2×2 block (``avg_pool2d``),
    as the published ST-MFNet loss does, not every second sample. An odd last row or column is a block of
    its own (the mean of the samples it has), so odd sizes work too."""
    return F.avg_pool2d(_blur(img), 2, ceil_mode=True)


def pyramid_expand(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Insert zeros between samples, blur with 4× the kernel (reflect padding), crop to ``size``."""
    b, c, h, w = img.shape
    up = img.new_zeros(b, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = img
    return _blur(up, gain=2.0)[..., : size[0], : size[1]]  # 2 per separable factor: 4 in all


def laplacian_pyramid(img: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
    """``levels`` bands: ``L_i = G_i − expand(reduce(G_i))`` for i < levels−1, then the low-pass G_{levels−1}.

    ``G_0`` is the image, ``G_{i+1} = reduce(G_i)``; :func:`reconstruct_laplacian_pyramid` inverts it.
    """
    if not isinstance(img, torch.Tensor) or img.dim() != 4:
        raise ValueError("laplacian pyramid: expected an image batch of shape (B, C, H, W), got "
                         f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}")
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"laplacian pyramid: levels must be an int >= 1, got {levels!r}")
    bands = []
    current = img
    for _ in range(levels - 1):
        down = pyramid_reduce(current)
        bands.append(current - pyramid_expand(down, current.shape[-2:]))
        current = down
    bands.append(current)
    return bands


def reconstruct_laplacian_pyramid(bands: list[torch.Tensor]) -> torch.Tensor:
    """Invert :func:`laplacian_pyramid`: ``G_i = L_i + expand(G_{i+1})`` from the low-pass up."""
    img = bands[-1]
    for band in reversed(bands[:-1]):
        img = band + pyramid_expand(img, band.shape[-2:])
    return img


@register_loss("laplacian")
class LaplacianPyramidLoss(nn.Module):
    """Laplacian pyramid loss ``Σ_i 2^i · ‖L_i(x) − L_i(y)‖₁`` over ``levels`` bands (Bojanowski et al.
    2018; the loss of ST-MFNet and ST-MFNet Mini, 5 levels).

    ``reduction="sum"`` is the published loss, whose value grows with batch and crop size;
    ``reduction="mean"`` divides it by the number of input elements (B·C·H·W): the same balance between
    levels and the same gradient direction, independent of batch and crop size. (Averaging each level
    on its own would instead weight a low-pass element 8^i times a full-resolution one.)
    """

    def __init__(self, levels: int = 5, reduction: Reduction = "mean"):
        super().__init__()
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"laplacian loss: levels must be an int >= 1, got {levels!r}")
        _reduce(torch.zeros(1), reduction)
        self.levels = levels
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "laplacian loss")
        # the pyramid is linear: L_i(x) − L_i(y) = L_i(x − y), one pyramid instead of two
        total = pred.new_zeros(())
        for i, band in enumerate(laplacian_pyramid(pred - target, self.levels)):
            total = total + (2.0**i) * band.abs().sum()
        return total / pred.numel() if self.reduction == "mean" else total


# the adversarial loss trains its own discriminator (compresskit.adversarial); registered
# here, beside the others, so every loss name is known once this module is imported
register_loss("gan")(GANLoss)
