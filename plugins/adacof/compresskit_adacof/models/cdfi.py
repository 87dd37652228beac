"""CDFI: Compression-Driven Network Design for Frame Interpolation (Ding et al., CVPR 2021).

The compressed AdaCoF+ (F=11, d=2) U-Net, extended with
- a feature pyramid: 1×1 convs (``module1by1_1..5``, padding=1 as published, so level k is
  (H/2^(k−1)+2)×(W/2^(k−1)+2)) on the five encoder outputs, each resized bilinearly (align_corners=False)
  to the size of the kernel-padded frame, (H+2p)×(W+2p) with p = (F−1)·d/2, and warped with no further
  padding (the frames themselves are replicate-padded by p), as the published ``cdfi_adacof.py`` does;
- warping of the frames and of the pyramid with both kernel sets, fed to a GridNet (126 → 3 channels);
- path selection: ``warp = V·op1 + (1−V)·op2``; ``out = B·GridNet(...) + (1−B)·warp`` with the blend
  map B of ``moduleBlend``.

The op samples every channel with the same taps, so the frame and all five feature maps of one kernel set
are warped by ONE op call on their channel concatenation (3+4+8+12+16+20 = 63 channels): 2 calls where the
published code makes 12. ``separate_warps=True`` keeps the published 12 calls (same result, for speed
comparisons). The GridNet input is ordered ``[I0', I1', P1', P1'', P2', P2'', ..., P5', P5'']`` (' is kernel
set 1, '' kernel set 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .adacof import (
    ENCODER,
    HEADS,
    AdaCoF,
    KernelEstimation,
    _head,
    adacof_op,
    check_frames,
    pad_to_multiple,
)

__all__ = ["CDFI", "CDFIKernelEstimation", "GridNet", "cdfi_widths", "PYRAMID_CHANNELS"]

#: output channels of the five 1×1 convs of the feature pyramid
PYRAMID_CHANNELS = (4, 8, 12, 16, 20)


def cdfi_widths() -> dict[str, tuple[int, ...]]:
    """Widths of the published CDFI kernel-estimation U-Net (the compressed AdaCoF with small edits)."""
    w = {
        "Conv1": (24, 24, 24), "Conv2": (48, 48, 52), "Conv3": (99, 97, 95),
        "Conv4": (156, 142, 159), "Conv5": (92, 72, 121),
        "Deconv5": (99, 69, 36), "Deconv4": (74, 83, 81), "Deconv3": (83, 88, 72), "Deconv2": (45, 45, 45),
        "Upsample5": (121,), "Upsample4": (159,), "Upsample3": (95,), "Upsample2": (52,),
        "Occlusion": (52, 52, 48), "Blend": (52, 52, 48),
    }
    for name in HEADS[:-1]:
        w[name] = (52, 49, 21)
    return w


class CDFIKernelEstimation(KernelEstimation):
    """The U-Net of :class:`KernelEstimation` plus ``moduleBlend`` and the pyramid's 1×1 convs.

    ``forward`` returns ``([W1, α1, β1, W2, α2, β2, V, B], [P1 .. P5])`` where Pk is the 1×1 conv of
    encoder output k (still at its own resolution).
    """

    def __init__(self, kernel_size: int, widths: Mapping[str, Sequence[int]],
                 pyramid: Sequence[int] = PYRAMID_CHANNELS):
        unet = {k: v for k, v in widths.items() if k != "Blend"}
        super().__init__(kernel_size, unet)
        if "Blend" not in widths:
            raise ValueError("widths: CDFI needs a 'Blend' entry (3 hidden widths of the blend head)")
        if len(pyramid) != len(ENCODER):
            raise ValueError(f"pyramid: expected {len(ENCODER)} channel counts, got {pyramid!r}")
        blend = tuple(widths["Blend"])
        if len(blend) != 3 or not all(isinstance(c, int) and c > 0 for c in blend):
            raise ValueError(f"widths['Blend']: expected 3 positive ints, got {widths['Blend']!r}")
        shared = tuple(widths["Upsample2"])[0]
        self.moduleBlend = _head(shared, blend, 1, nn.Sigmoid())
        for k, (name, cout) in enumerate(zip(ENCODER, pyramid), start=1):
            cin = tuple(widths[name])[-1]
            setattr(self, f"module1by1_{k}", nn.Conv2d(cin, cout, kernel_size=1, stride=1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        shared, features = self.unet(x)
        outputs = [getattr(self, f"module{name}")(shared) for name in (*HEADS, "Blend")]
        pyramid = [getattr(self, f"module1by1_{k}")(f) for k, f in enumerate(features, start=1)]
        return outputs, pyramid


class _Lateral(nn.Module):
    """PReLU-conv-PReLU-conv plus a skip (identity, or a 3×3 conv where the widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.f = nn.Sequential(nn.PReLU(), nn.Conv2d(cin, cout, 3, padding=1),
                               nn.PReLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.conv = nn.Conv2d(cin, cout, 3, padding=1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x) + (x if self.conv is None else self.conv(x))


class _Down(nn.Module):
    """PReLU, stride-2 conv, PReLU, conv: half the resolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.f = nn.Sequential(nn.PReLU(), nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                               nn.PReLU(), nn.Conv2d(cout, cout, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


class _Up(nn.Module):
    """Bilinear ×2, PReLU, conv, PReLU, conv: double the resolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.f = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                               nn.PReLU(), nn.Conv2d(cin, cout, 3, padding=1),
                               nn.PReLU(), nn.Conv2d(cout, cout, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


class GridNet(nn.Module):
    """GridNet (Fourure et al., BMVC 2017; as in Niklaus & Liu, CVPR 2018): ``rows`` streams at halving
    resolutions with ``channels`` widths, ``columns`` columns. The first half of the columns go down (each
    row below = its lateral block + the down block from the row above), the second half go up.

    Module names: ``lateral_init``, ``lateral_{row}_{col}`` (col < columns−1), ``down_{row}_{col}`` and
    ``up_{row}_{col}`` (row < rows−1, col < columns/2), ``lateral_final``.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = (32, 64, 96),
                 columns: int = 6):
        super().__init__()
        if columns < 2 or columns % 2:
            raise ValueError(f"columns: expected an even number >= 2, got {columns}")
        self.rows, self.columns = len(channels), columns
        self.lateral_init = _Lateral(in_channels, channels[0])
        for r, c in enumerate(channels):
            for j in range(columns - 1):
                setattr(self, f"lateral_{r}_{j}", _Lateral(c, c))
        for r in range(len(channels) - 1):
            for j in range(columns // 2):
                setattr(self, f"down_{r}_{j}", _Down(channels[r], channels[r + 1]))
        for r in range(len(channels) - 1):
            for j in range(columns // 2):
                setattr(self, f"up_{r}_{j}", _Up(channels[r + 1], channels[r]))
        self.lateral_final = _Lateral(channels[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, half = self.rows, self.columns // 2
        state = [self.lateral_init(x)]
        for r in range(1, rows):  # column 0: only the down path
            state.append(getattr(self, f"down_{r - 1}_0")(state[r - 1]))
        for j in range(1, half):  # remaining down columns
            state[0] = getattr(self, f"lateral_0_{j - 1}")(state[0])
            for r in range(1, rows):
                state[r] = (getattr(self, f"lateral_{r}_{j - 1}")(state[r])
                            + getattr(self, f"down_{r - 1}_{j}")(state[r - 1]))
        for j in range(half, self.columns):  # up columns
            u = j - half
            state[rows - 1] = getattr(self, f"lateral_{rows - 1}_{j - 1}")(state[rows - 1])
            for r in range(rows - 2, -1, -1):
                state[r] = (getattr(self, f"lateral_{r}_{j - 1}")(state[r])
                            + getattr(self, f"up_{r}_{u}")(state[r + 1]))
        return self.lateral_final(state[0])


class CDFI(AdaCoF):
    """CDFI (F=11, d=2 as published): compressed AdaCoF+ U-Net, feature pyramid, GridNet, path selection.

    ``forward(frame0, frame1)`` → middle frame of the same size; ``return_aux=True`` also returns the
    kernels (as :class:`AdaCoF`) and ``blend``.
    """

    def __init__(self, kernel_size: int = 11, dilation: int = 2,
                 widths: Mapping[str, Sequence[int]] | None = None,
                 pyramid: Sequence[int] = PYRAMID_CHANNELS, grid_channels: Sequence[int] = (32, 64, 96),
                 grid_columns: int = 6, separate_warps: bool = False):
        nn.Module.__init__(self)
        self._init_op(kernel_size, dilation)
        self.get_kernel = CDFIKernelEstimation(kernel_size, widths or cdfi_widths(), pyramid)
        self.separate_warps = bool(separate_warps)
        self.context_synthesis = GridNet(2 * (3 + sum(pyramid)), 3, grid_channels, grid_columns)

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor, return_aux: bool = False) -> Any:
        check_frames(frame0, frame1)
        h, w = frame0.shape[-2:]
        f0, f1 = pad_to_multiple(frame0), pad_to_multiple(frame1)
        (w1, a1, b1, w2, a2, b2, occ, blend), pyramid = self.get_kernel(
            torch.cat([f0 - self.mean, f1 - self.mean], 1))
        # the published geometry: the frames are replicate-padded by p = (F−1)·d/2; each pyramid level is
        # stretched to that padded size (H+2p)×(W+2p) and warped as it is, with no padding of its own
        k = self.kernel_pad
        x0, x1 = (F.pad(f, [k, k, k, k], mode="replicate") for f in (f0, f1))
        size = x0.shape[-2:]
        pyramid = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        op, d = adacof_op(), self.dilation
        if self.separate_warps:  # the published structure: one op call per tensor (12 calls)
            warped1 = [op(t, w1, a1, b1, d) for t in (x0, *pyramid)]
            warped2 = [op(t, w2, a2, b2, d) for t in (x1, *pyramid)]
        else:  # one op call per kernel set on the channel concatenation (2 calls)
            splits = [x0.shape[1], *(p.shape[1] for p in pyramid)]  # from the shapes: right after shrinking
            warped1 = list(torch.split(op(torch.cat([x0, *pyramid], 1), w1, a1, b1, d), splits, dim=1))
            warped2 = list(torch.split(op(torch.cat([x1, *pyramid], 1), w2, a2, b2, d), splits, dim=1))
        warp = occ * warped1[0] + (1 - occ) * warped2[0]
        pairs = [t for pair in zip(warped1[1:], warped2[1:]) for t in pair]
        grid_in = torch.cat([warped1[0], warped2[0], *pairs], dim=1)
        out = blend * self.context_synthesis(grid_in) + (1 - blend) * warp
        out = out[:, :, :h, :w]
        if return_aux:
            return out, {"weight1": w1, "alpha1": a1, "beta1": b1, "weight2": w2, "alpha2": a2, "beta2": b2,
                         "occlusion": occ, "blend": blend}
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, separate_warps={self.separate_warps}"

