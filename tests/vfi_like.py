"""Small frame-interpolation networks with the size arithmetic of published ones, written here for the
saving tests (not copied from any project): resizing by float factors (``F.interpolate(scale_factor=0.5,
0.25, 1/16)``), padding to a multiple and cropping back, floor division and truncation of sizes.

* ``PyramidFlowNet``: RIFE-like: coarse-to-fine flow blocks, each downscales its input by a float factor,
  estimates a flow residual, upscales it by the inverse factor (flow values scaled with it) and warps.
* ``PaddedEncoderDecoder``: IFRNet-like: pads both frames to a multiple of 16, a strided encoder, a decoder
  that upsamples by 2.0, crops back to the input size.
* ``RecursivePyramidNet``: UPR-Net-like: a pyramid built with ``int(h * 0.5)``-style sizes (truncation) and
  ``h // 8 * 8`` (floor division), the same small estimator reused at every level.
* ``SixteenthScaleNet``: a context branch at 1/16 scale (``scale_factor=0.0625``) added back at full scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: sample ``img`` at pixel + flow (bilinear, border padding)."""
    b, _, h, w = img.shape
    ys = torch.linspace(-1.0, 1.0, h, dtype=img.dtype).view(1, h, 1).expand(b, h, w)
    xs = torch.linspace(-1.0, 1.0, w, dtype=img.dtype).view(1, 1, w).expand(b, h, w)
    gx = xs + flow[:, 0] * (2.0 / max(w - 1, 1))
    gy = ys + flow[:, 1] * (2.0 / max(h - 1, 1))
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(cout))


class FlowBlock(nn.Module):
    def __init__(self, cin: int, c: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(conv(cin, c), conv(c, c))
        self.head = nn.Conv2d(c, 5, 3, 1, 1)  # 4 flow channels + 1 mask

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, scale_factor=1.0 / self.scale, mode="bilinear", align_corners=False)
        if flow is not None:
            small = F.interpolate(flow, scale_factor=1.0 / self.scale, mode="bilinear", align_corners=False)
            x = torch.cat([x, small / self.scale], 1)
        out = self.head(self.body(x))
        out = F.interpolate(out, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out[:, :4] * self.scale, out[:, 4:5]


class PyramidFlowNet(nn.Module):
    def __init__(self, c: int = 12) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([FlowBlock(6, c, 4.0), FlowBlock(6 + 4, c, 2.0),
                                     FlowBlock(6 + 4, c, 1.0)])

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        x = torch.cat([img0, img1], 1)
        flow, mask = None, None
        for block in self.blocks:
            delta, mask = block(x, flow)
            flow = delta if flow is None else flow + delta
        w0, w1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
        m = torch.sigmoid(mask)
        return w0 * m + w1 * (1 - m)


class PaddedEncoderDecoder(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.enc1, self.enc2 = conv(6, c, 2), conv(c, 2 * c, 2)
        self.mid = conv(2 * c, 2 * c)
        self.dec2, self.dec1 = conv(2 * c + c, c), conv(c + 6, c)
        self.out = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        h, w = img0.shape[2:]
        ph, pw = (16 - h % 16) % 16, (16 - w % 16) % 16
        x = torch.cat([F.pad(img0, [0, pw, 0, ph]), F.pad(img1, [0, pw, 0, ph])], 1)
        e1 = self.enc1(x)
        e2 = self.mid(self.enc2(e1))
        d2 = self.dec2(torch.cat([F.interpolate(e2, scale_factor=2.0, mode="bilinear"), e1], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear"), x], 1))
        mean = (img0 + img1) / 2
        return mean + self.out(d1)[:, :, :h, :w]


class RecursivePyramidNet(nn.Module):
    def __init__(self, c: int = 8, levels: int = 3) -> None:
        super().__init__()
        self.levels = levels
        self.estimator = nn.Sequential(conv(6 + 2, c), conv(c, c), nn.Conv2d(c, 2, 3, 1, 1))

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        h, w = img0.shape[2:]
        h8, w8 = h // 8 * 8, w // 8 * 8  # crop to a multiple of 8 (floor division)
        a, b = img0[:, :, :h8, :w8], img1[:, :, :h8, :w8]
        pyramid = [(a, b)]
        for _ in range(self.levels - 1):
            ph, pw = pyramid[-1][0].shape[2:]
            size = (int(ph * 0.5), int(pw * 0.5))  # truncation
            pyramid.append(tuple(F.interpolate(t, size=size, mode="bilinear") for t in pyramid[-1]))
        flow = torch.zeros_like(pyramid[-1][0][:, :2])
        for x0, x1 in reversed(pyramid):
            if flow.shape[2:] != x0.shape[2:]:
                flow = 2.0 * F.interpolate(flow, size=x0.shape[2:], mode="bilinear")
            flow = flow + self.estimator(torch.cat([x0, warp(x1, flow), flow], 1))
        mid = (a + warp(b, flow)) / 2
        return F.pad(mid, [0, w - w8, 0, h - h8], mode="replicate")


class SixteenthScaleNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.local = nn.Sequential(conv(3, c), conv(c, c))
        self.context = nn.Sequential(conv(3, c), conv(c, c))
        self.out = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.context(F.interpolate(x, scale_factor=1 / 16, mode="bilinear", align_corners=False))
        ctx = F.interpolate(ctx, size=x.shape[2:], mode="nearest")
        return x + self.out(self.local(x) + ctx)


def _two(h: int, w: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (torch.rand(1, 3, h, w), torch.rand(1, 3, h, w))


#: name -> (factory, example inputs, other inputs the loaded model must also take)
VFI_LIKE: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple], Callable[[], tuple]]] = {
    "pyramid_flow": (PyramidFlowNet, _two(32, 32), _two(64, 48)),
    "padded_encoder_decoder": (PaddedEncoderDecoder, _two(20, 28), _two(33, 17)),
    "recursive_pyramid": (RecursivePyramidNet, _two(36, 44), _two(50, 34)),
    "sixteenth_scale": (SixteenthScaleNet, lambda: (torch.rand(1, 3, 64, 48),),
                        lambda: (torch.rand(2, 3, 80, 96),)),
}

__all__ = ["VFI_LIKE"]
