"""Losses of AdaCoF and CDFI: the offset smoothness term g_Spatial, the occlusion smoothness term
g_Occlusion, the VGG16 conv4_3 perceptual loss, AdaCoF's total loss
``Charbonnier + 0.01·g_Spatial + 0.005·g_Occlusion`` (Lee et al., CVPR 2020) and CDFI's
``Charbonnier + 0.01·g_Spatial + 0.005·VGG`` (Ding et al., CVPR 2021).

Models return ``(frame, aux)`` with ``return_aux=True``; ``aux`` holds the kernels g_Spatial reads and the
occlusion map g_Occlusion reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import compresskit as ck

__all__ = ["g_spatial", "g_occlusion", "GSpatialLoss", "VGG16Conv43", "PerceptualLoss", "CDFILoss",
           "AdaCoFLoss",
           "register"]


def _charbonnier(eps: float) -> nn.Module:
    """The core's registered Charbonnier loss ``mean sqrt((x − y)² + ε²)``."""
    return ck.get_loss("charbonnier", eps=eps)


def _smoothness(x: torch.Tensor, charbonnier: nn.Module) -> torch.Tensor:
    """Charbonnier of the horizontal plus the vertical first differences of ``x``."""
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return charbonnier(dx, torch.zeros_like(dx)) + charbonnier(dy, torch.zeros_like(dy))


def g_spatial(aux: Mapping[str, torch.Tensor], eps: float = 1e-3) -> torch.Tensor:
    """Offset smoothness of AdaCoF/CDFI.

    For each kernel set k and each offset map O ∈ {α_k, β_k} (B, F², H, W): Ō = (1/F²)·Σ_t W_k[t]·O[t]
    (B, 1, H, W), the mean over the F² taps of W·O as the published AdaCoF/CDFI code takes it (the softmax
    makes Σ_t W = 1, so this is the tap-weighted mean offset divided by F²); the term is
    Σ Charbonnier(∂x Ō) + Charbonnier(∂y Ō) over the four maps.
    """
    missing = [k for k in ("weight1", "alpha1", "beta1", "weight2", "alpha2", "beta2") if k not in aux]
    if missing:
        raise KeyError(f"aux: missing {missing}; call the model with return_aux=True")
    charbonnier = _charbonnier(eps)
    total = aux["weight1"].new_zeros(())
    for k in ("1", "2"):
        weight = aux["weight" + k]
        for name in ("alpha", "beta"):
            total = total + _smoothness((weight * aux[name + k]).mean(1, keepdim=True), charbonnier)
    return total


def g_occlusion(aux: Mapping[str, torch.Tensor], eps: float = 1e-3) -> torch.Tensor:
    """Occlusion smoothness of AdaCoF (Lee et al., CVPR 2020), weight 0.005 in its loss: for the occlusion
    map V (B, 1, H, W), Charbonnier(∂x V) + Charbonnier(∂y V), each the mean of √(Δ² + ε²)."""
    if "occlusion" not in aux:
        raise KeyError("aux: missing 'occlusion'; call the model with return_aux=True")
    return _smoothness(aux["occlusion"], _charbonnier(eps))


class GSpatialLoss(nn.Module):
    """``loss(output, target)`` = g_Spatial of the kernels of ``output = (frame, aux)`` (target unused)."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, output: Any, target: Any = None) -> torch.Tensor:
        _, aux = _split_output(output, "g_spatial")
        return g_spatial(aux, self.eps)


#: VGG16 ``features`` up to conv4_3 (torchvision numbering): conv channels, "M" = 2×2 max pool
_VGG16_TO_CONV4_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)


class VGG16Conv43(nn.Module):
    """VGG16 (Simonyan & Zisserman, 2015) ``features[:22]``: images in [0, 1] → conv4_3 features, taken
    before their ReLU, as CDFI's published perceptual loss does.

    Layer indices follow the common VGG16 checkpoints (``features.0.weight`` ... ``features.21.bias``),
    so a standard ImageNet VGG16 state_dict loads with :meth:`from_file`. Inputs enter as they are (no
    ImageNet mean/std normalisation, as published). Frozen (no gradients to its weights; gradients flow to
    the input).
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16_TO_CONV4_3:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers[:-1])  # conv4_3 without its ReLU: features[:22]
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> VGG16Conv43:
        """Load ImageNet VGG16 weights from a local ``.pth`` (keys ``features.N.*``; others are ignored)."""
        if path is None:
            raise ValueError("vgg_weights: the perceptual loss needs a local VGG16 weights file "
                             "(e.g. vgg16-397923af.pth); nothing is downloaded")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vgg_weights: VGG16 weights file {str(path)!r} does not exist (give "
                                    "the path of a local ImageNet VGG16 state_dict; nothing is downloaded)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        model = cls()
        wanted = model.features.state_dict()
        picked = {}
        for key in wanted:
            for candidate in (f"features.{key}", key, f"vgg.features.{key}"):
                if candidate in state:
                    picked[key] = state[candidate]
                    break
        missing = sorted(set(wanted) - set(picked))
        if missing:
            raise ValueError(f"vgg_weights: {str(path)!r} is not a VGG16 state_dict: missing "
                             f"{['features.' + k for k in missing[:6]]}{' ...' if len(missing) > 6 else ''}")
        bad = [f"features.{k}: {tuple(picked[k].shape)} vs {tuple(v.shape)}" for k, v in wanted.items()
               if tuple(picked[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"vgg_weights: shapes differ from VGG16: {bad[:4]}")
        model.features.load_state_dict(picked)
        return model

    def train(self, mode: bool = True) -> VGG16Conv43:  # always in eval mode: it is a fixed feature map
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class PerceptualLoss(nn.Module):
    """MSE between VGG16 conv4_3 features (before ReLU, raw [0, 1] input) of the output and of the target
    (CDFI's perceptual term; the target's features are computed without gradients, as published)."""

    def __init__(self, vgg_weights: str | os.PathLike | None = None, vgg: VGG16Conv43 | None = None):
        super().__init__()
        self.vgg = vgg if vgg is not None else VGG16Conv43.from_file(vgg_weights)

    def forward(self, output: Any, target: Any) -> torch.Tensor:
        frame, _ = _split_output(output, "perceptual", need_aux=False)
        with torch.no_grad():
            reference = self.vgg(_target(target).detach())
        return F.mse_loss(self.vgg(frame), reference)


class CDFILoss(nn.Module):
    """``Charbonnier(out, gt) + spatial·g_Spatial + perceptual·MSE(VGG16 conv4_3) + occlusion·g_Occlusion``
    (CDFI: 0.01, 0.005, 0; AdaCoF: 0.01, 0, 0.005 — :class:`AdaCoFLoss`).

    Called as ``loss(output, target)`` or ``loss(output, batch)``: ``output`` is the frame or
    ``(frame, aux)`` (needed when ``spatial`` or ``occlusion`` > 0), ``target`` the ground truth (or
    ``batch[-1]``). ``perceptual > 0`` needs ``vgg_weights``.
    """

    def __init__(self, spatial: float = 0.01, perceptual: float = 0.005,
                 vgg_weights: str | os.PathLike | None = None, eps: float = 1e-3,
                 vgg: VGG16Conv43 | None = None, occlusion: float = 0.0):
        super().__init__()
        if spatial < 0 or perceptual < 0 or occlusion < 0:
            raise ValueError(f"spatial, perceptual, occlusion: expected weights >= 0, got {spatial}, "
                             f"{perceptual}, {occlusion}")
        self.spatial, self.perceptual_weight, self.eps = spatial, perceptual, eps
        self.occlusion = occlusion
        self.charbonnier = _charbonnier(eps)
        self.perceptual = PerceptualLoss(vgg_weights, vgg) if perceptual > 0 else None

    def terms(self, output: Any, target: Any) -> dict[str, torch.Tensor]:
        """``{"loss": total, "charbonnier": .., ["g_spatial": ..,] ["perceptual": ..]}`` (raw terms)."""
        frame, aux = _split_output(output, "cdfi", need_aux=self.spatial > 0 or self.occlusion > 0)
        gt = _target(target)
        terms = {"charbonnier": self.charbonnier(frame, gt)}
        loss = terms["charbonnier"]
        if self.spatial > 0:
            terms["g_spatial"] = g_spatial(aux, self.eps)
            loss = loss + self.spatial * terms["g_spatial"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(frame, gt)
            loss = loss + self.perceptual_weight * terms["perceptual"]
        if self.occlusion > 0:
            terms["g_occlusion"] = g_occlusion(aux, self.eps)
            loss = loss + self.occlusion * terms["g_occlusion"]
        return {"loss": loss, **terms}

    def forward(self, output: Any, target: Any) -> torch.Tensor:
        """``target``: the ground-truth frame, or the whole batch (its last item is the target)."""
        return self.terms(output, target)["loss"]


class AdaCoFLoss(CDFILoss):
    """AdaCoF's published loss: ``Charbonnier + 0.01·g_Spatial + 0.005·g_Occlusion`` (no VGG term)."""

    def __init__(self, spatial: float = 0.01, occlusion: float = 0.005, eps: float = 1e-3):
        super().__init__(spatial=spatial, perceptual=0.0, eps=eps, occlusion=occlusion)


def _target(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[-1], torch.Tensor):
        return batch[-1]
    raise TypeError("batch: expected the ground-truth frame or a (frame0, frame1, ..., target) tuple")


def _split_output(output: Any, loss: str, need_aux: bool = True) -> tuple[torch.Tensor, Any]:
    if isinstance(output, torch.Tensor):
        if need_aux:
            raise TypeError(f"{loss} loss: the model output has no kernels; call the model with "
                            "return_aux=True so it returns (frame, aux)")
        return output, None
    if isinstance(output, (tuple, list)) and len(output) == 2 and isinstance(output[1], Mapping):
        return output[0], output[1]
    raise TypeError(f"{loss} loss: expected the output frame or (frame, aux), got {type(output).__name__}")


def register() -> None:
    """Register the losses by name: ``ck.get_loss("g_spatial" | "vgg16_conv4_3" | "cdfi" | "adacof")``."""
    for name, cls in (("g_spatial", GSpatialLoss), ("vgg16_conv4_3", PerceptualLoss), ("cdfi", CDFILoss),
                      ("adacof", AdaCoFLoss)):
        ck.register_loss(name)(cls)
