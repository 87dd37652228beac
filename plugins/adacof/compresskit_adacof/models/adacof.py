"""AdaCoF: Adaptive Collaboration of Flows for video frame interpolation (Lee et al., CVPR 2020).

A U-Net (``get_kernel``) reads both frames and predicts, for each output pixel and each frame, F² weights
W (softmax over the taps), vertical offsets α and horizontal offsets β, plus an occlusion map V. The
middle frame is ``V·op(I0; W1, α1, β1) + (1−V)·op(I1; W2, α2, β2)`` with the AdaCoF sampling op.

Every width of the U-Net is a parameter (``widths``), so the dense original, the compressed network of
CDFI stage I, and any network produced by a width plan are the same class; module names follow the
published checkpoints (``get_kernel.moduleConv1.0.weight`` ...), so official files load with strict=True.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AdaCoF",
    "KernelEstimation",
    "ENCODER",
    "DECODER",
    "HEADS",
    "dense_widths",
    "compressed_widths",
    "widths_from_state_dict",
    "pad_to_multiple",
    "frame_mean",
]

#: per-channel RGB means subtracted before the kernel-estimation U-Net (published AdaCoF constants)
FRAME_MEAN = (0.4631, 0.4352, 0.3990)
#: the U-Net downsamples 5 times, so frames are padded to a multiple of 2**5
MULTIPLE = 32

ENCODER = ("Conv1", "Conv2", "Conv3", "Conv4", "Conv5")
DECODER = ("Deconv5", "Deconv4", "Deconv3", "Deconv2")
UPSAMPLE = ("Upsample5", "Upsample4", "Upsample3", "Upsample2")
KERNEL_HEADS = ("Weight1", "Alpha1", "Beta1", "Weight2", "Alpha2", "Beta2")
HEADS = (*KERNEL_HEADS, "Occlusion")

Widths = dict[str, tuple[int, ...]]


def dense_widths(kernel_size: int) -> Widths:
    """Widths of the published dense AdaCoF (F = ``kernel_size``)."""
    f2 = kernel_size * kernel_size
    w: Widths = {}
    for name, c in zip(ENCODER, (32, 64, 128, 256, 512)):
        w[name] = (c, c, c)
    for name, c in zip(DECODER, (512, 256, 128, 64)):
        w[name] = (c, c, c)
    for name, c in zip(UPSAMPLE, (512, 256, 128, 64)):
        w[name] = (c,)
    for name in KERNEL_HEADS:
        w[name] = (64, 64, f2)
    w["Occlusion"] = (64, 64, 64)
    return w


def compressed_widths() -> Widths:
    """Widths of the compressed AdaCoF published with CDFI (stage I); the same for F=5 and F=11."""
    return {
        "Conv1": (24, 24, 24), "Conv2": (48, 48, 51), "Conv3": (99, 97, 94),
        "Conv4": (156, 142, 159), "Conv5": (92, 72, 121),
        "Deconv5": (99, 69, 36), "Deconv4": (74, 83, 81), "Deconv3": (83, 88, 72), "Deconv2": (45, 47, 44),
        "Upsample5": (121,), "Upsample4": (159,), "Upsample3": (94,), "Upsample2": (51,),
        "Weight1": (51, 49, 21), "Alpha1": (50, 48, 20), "Beta1": (51, 50, 20),
        "Weight2": (50, 49, 20), "Alpha2": (50, 49, 20), "Beta2": (51, 50, 20),
        "Occlusion": (52, 51, 48),
    }


def _expected_lengths() -> dict[str, int]:
    n = {name: 3 for name in (*ENCODER, *DECODER, *HEADS)}
    n.update({name: 1 for name in UPSAMPLE})
    return n


def check_widths(widths: Mapping[str, Sequence[int]], extra: Sequence[str] = ()) -> Widths:
    """Validate a widths mapping: every layer present, positive ints, residual-coupled widths equal."""
    if not isinstance(widths, Mapping):
        raise TypeError(f"widths: expected a mapping layer name -> tuple of ints, "
                        f"got {type(widths).__name__}")
    lengths = _expected_lengths()
    lengths.update({name: 3 for name in extra})
    missing = sorted(set(lengths) - set(widths))
    unknown = sorted(set(widths) - set(lengths))
    if missing or unknown:
        raise ValueError(f"widths: missing layers {missing}, unknown layers {unknown}; "
                         f"expected exactly {sorted(lengths)}")
    out: Widths = {}
    for name, n in lengths.items():
        value = widths[name]
        value = (value,) if isinstance(value, int) else tuple(value)
        if len(value) != n or not all(type(c) is int and c > 0 for c in value):
            raise ValueError(f"widths[{name!r}]: expected {n} positive ints, got {widths[name]!r}")
        out[name] = value
    for k in (5, 4, 3, 2):
        if out[f"Upsample{k}"][0] != out[f"Conv{k}"][-1]:
            raise ValueError(f"widths: Upsample{k} ({out[f'Upsample{k}'][0]}) must equal the last width of "
                             f"Conv{k} ({out[f'Conv{k}'][-1]}): they are added (residual connection)")
    return out


def widths_from_state_dict(state_dict: Mapping[str, Any], prefix: str = "get_kernel.",
                           extra: Sequence[str] = ()) -> Widths:
    """Read the widths of a kernel-estimation U-Net from a checkpoint's tensor shapes."""
    w: Widths = {}
    for name, n in {**_expected_lengths(), **{e: 3 for e in extra}}.items():
        indices = (1,) if n == 1 else (0, 2, 4)
        try:
            w[name] = tuple(int(state_dict[f"{prefix}module{name}.{i}.weight"].shape[0]) for i in indices)
        except KeyError as e:
            raise ValueError(f"state_dict: no key {e.args[0]!r}; is this an AdaCoF-family checkpoint?") from e
    return w


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


def _upsample2x() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)


def _stage(cin: int, widths: Sequence[int]) -> nn.Sequential:
    """Three 3×3 conv + ReLU (convs at Sequential indices 0, 2, 4)."""
    a, b, c = widths
    return nn.Sequential(_conv(cin, a), nn.ReLU(), _conv(a, b), nn.ReLU(), _conv(b, c), nn.ReLU())


def _upsample(cin: int, cout: int) -> nn.Sequential:
    """Bilinear ×2 (align_corners=True), 3×3 conv, ReLU (conv at index 1)."""
    return nn.Sequential(_upsample2x(), _conv(cin, cout), nn.ReLU())


def _head(cin: int, hidden: Sequence[int], cout: int, final: nn.Module | None) -> nn.Sequential:
    """conv-ReLU ×3, bilinear ×2, conv to ``cout`` (indices 0, 2, 4, 7), then ``final`` (softmax/sigmoid)."""
    a, b, c = hidden
    layers: list[nn.Module] = [_conv(cin, a), nn.ReLU(), _conv(a, b), nn.ReLU(), _conv(b, c), nn.ReLU(),
                               _upsample2x(), _conv(c, cout)]
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


class KernelEstimation(nn.Module):
    """The kernel-estimation U-Net: 6-channel input at H×W (a multiple of 32) →
    (W1, α1, β1, W2, α2, β2) each (B, F², H, W), the occlusion map V (B, 1, H, W), and the five encoder
    outputs (used by CDFI's feature pyramid)."""

    def __init__(self, kernel_size: int, widths: Mapping[str, Sequence[int]]):
        super().__init__()
        w = check_widths(widths)
        f2 = kernel_size * kernel_size
        cin = 6
        for name in ENCODER:
            setattr(self, f"module{name}", _stage(cin, w[name]))
            cin = w[name][-1]
        for k, name in zip((5, 4, 3, 2), DECODER):
            setattr(self, f"module{name}", _stage(cin, w[name]))
            setattr(self, f"moduleUpsample{k}", _upsample(w[name][-1], w[f"Upsample{k}"][0]))
            cin = w[f"Upsample{k}"][0]
        for name in KERNEL_HEADS:
            final = nn.Softmax(dim=1) if name.startswith("Weight") else None
            setattr(self, f"module{name}", _head(cin, w[name], f2, final))
        self.moduleOcclusion = _head(cin, w["Occlusion"], 1, nn.Sigmoid())
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def unet(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The shared 64-channel (dense) map at H/2 and the encoder outputs [Conv1 .. Conv5]."""
        features = []
        for name in ENCODER:
            x = getattr(self, f"module{name}")(x)
            features.append(x)
            x = self.pool(x)
        for k, name in zip((5, 4, 3, 2), DECODER):
            x = getattr(self, f"module{name}")(x)
            x = getattr(self, f"moduleUpsample{k}")(x) + features[k - 1]
        return x, features

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``([W1, α1, β1, W2, α2, β2, V], [Conv1 .. Conv5 outputs])``."""
        shared, features = self.unet(x)
        outputs = [getattr(self, f"module{name}")(shared) for name in HEADS]
        return outputs, features


def frame_mean(device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.tensor(FRAME_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Reflect-pad bottom/right so H and W are multiples of ``multiple`` (as published)."""
    h, w = x.shape[-2:]
    return F.pad(x, [0, (-w) % multiple, 0, (-h) % multiple], mode="reflect")


def check_frames(frame0: torch.Tensor, frame1: torch.Tensor) -> None:
    for name, f in (("frame0", frame0), ("frame1", frame1)):
        if not isinstance(f, torch.Tensor) or f.dim() != 4 or f.shape[1] != 3:
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"{name}: expected a (B, 3, H, W) tensor, got {shape}")
    if frame0.shape != frame1.shape:
        raise ValueError(f"frame0 and frame1 must have the same shape, got {tuple(frame0.shape)} "
                         f"and {tuple(frame1.shape)}")
    h, w = frame0.shape[-2:]
    if min(h, w) <= MULTIPLE // 2:
        raise ValueError(f"frames: H and W must be > {MULTIPLE // 2} for the reflect padding to a multiple "
                         f"of {MULTIPLE}, got {h}×{w}")


def adacof_op() -> Any:
    """The AdaCoF sampling op ``adacof(x, weight, alpha, beta, dilation)`` of compresskit-vfi."""
    from compresskit_vfi.ops.adacof import adacof

    return adacof


class AdaCoF(nn.Module):
    """AdaCoF with any widths: ``AdaCoF(5, 1)`` is the published dense model, ``AdaCoF(11, 2)`` AdaCoF+,
    ``AdaCoF(5, 1, compressed_widths())`` CDFI's compressed AdaCoF.

    ``forward(frame0, frame1)`` takes frames (B, 3, H, W) in [0, 1] of any size (> 16) and returns the
    middle frame (B, 3, H, W). With ``return_aux=True`` it returns ``(frame, aux)`` where ``aux`` holds the
    kernels at the padded size (``weight1, alpha1, beta1, weight2, alpha2, beta2, occlusion``), which the
    g_Spatial loss needs.
    """

    def __init__(self, kernel_size: int = 5, dilation: int = 1,
                 widths: Mapping[str, Sequence[int]] | None = None):
        super().__init__()
        self._init_op(kernel_size, dilation)
        widths = dense_widths(kernel_size) if widths is None else widths
        self.get_kernel = KernelEstimation(kernel_size, widths)

    def _init_op(self, kernel_size: int, dilation: int) -> None:
        """Validate and store the op's F and d, and the frame mean (a buffer outside the state_dict)."""
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size: expected a positive int, got {kernel_size!r}")
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"dilation: expected a positive int, got {dilation!r}")
        if (kernel_size - 1) * dilation % 2:
            raise ValueError(f"(kernel_size - 1) * dilation must be even, got kernel_size={kernel_size}, "
                             f"dilation={dilation}")
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.kernel_pad = (kernel_size - 1) * dilation // 2
        self.register_buffer("mean", frame_mean(), persistent=False)

    def warp(self, frame: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor,
             beta: torch.Tensor) -> torch.Tensor:
        """The AdaCoF op on ``frame`` (B, C, H, W), replicate-padded by (F−1)·d/2 first."""
        p = self.kernel_pad
        return adacof_op()(F.pad(frame, [p, p, p, p], mode="replicate"), weight, alpha, beta, self.dilation)

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor, return_aux: bool = False) -> Any:
        check_frames(frame0, frame1)
        h, w = frame0.shape[-2:]
        f0, f1 = pad_to_multiple(frame0), pad_to_multiple(frame1)
        (w1, a1, b1, w2, a2, b2, occ), _ = self.get_kernel(torch.cat([f0 - self.mean, f1 - self.mean], 1))
        out = occ * self.warp(f0, w1, a1, b1) + (1 - occ) * self.warp(f1, w2, a2, b2)
        out = out[:, :, :h, :w]
        if return_aux:
            return out, {"weight1": w1, "alpha1": a1, "beta1": b1, "weight2": w2, "alpha2": a2, "beta2": b2,
                         "occlusion": occ}
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}"
