"""PWC-Net optical flow (Sun et al., CVPR 2018), the layout of the widely used "default" PyTorch weights.

6-level feature pyramid (16, 32, 64, 96, 128, 196 channels, each level 3 convs, the first stride 2),
coarse-to-fine decoders from level 6 to level 2: cost volume ``lrelu(corr(f1, backwarp(f2, up(flow)·s)))``
(9×9, averaged over channels), DenseNet-style convs 128, 128, 96, 64, 32 → flow; a dilated context
network (dilations 1, 2, 4, 8, 16, 1, 1) refines the level-2 flow. The output flow lives at H/4, in units
where ``20 · resize(flow)`` is the full-resolution flow in pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compresskit_stmfnet.ops import correlation

PYRAMID = (16, 32, 64, 96, 128, 196)
DENSE = (128, 128, 96, 64, 32)
BACKWARP_SCALE = {2: 5.0, 3: 2.5, 4: 1.25, 5: 0.625}  # flow unit at each level, in that level's pixels
_NAMES = {1: "One", 2: "Two", 3: "Thr", 4: "Fou", 5: "Fiv", 6: "Six"}


def backwarp(x: Tensor, flow: Tensor) -> Tensor:
    """Backward warping as in the published PWC-Net / ST-MFNet: ``out(p) = x(p + flow(p)·W/(W−1))``.

    The sampling grid is the pixel centres ``−1 + (2i + 1)/W`` (``align_corners=False``) plus the flow
    divided by ``(W − 1)/2`` (``(H − 1)/2`` vertically), bilinear with zeros outside; the result is
    multiplied by a validity mask, a warped ones channel thresholded at 0.999, so samples that reach
    outside the frame give 0 (flow channel 0 is horizontal)."""
    b, _, h, w = flow.shape
    gx = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w).expand(b, h, w)
    gy = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1).expand(b, h, w)
    nx = (2.0 * gx + 1.0) / w - 1.0 + flow[:, 0] * (2.0 / (x.shape[3] - 1.0))
    ny = (2.0 * gy + 1.0) / h - 1.0 + flow[:, 1] * (2.0 / (x.shape[2] - 1.0))
    grid = torch.stack([nx, ny], 3)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ones = flow.new_ones(b, 1, h, w)
    valid = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.999
    return out * valid.to(out.dtype)


class Extractor(nn.Module):
    def __init__(self):
        super().__init__()
        prev = 3
        for level, ch in enumerate(PYRAMID, start=1):
            self.add_module(f"net{_NAMES[level]}", nn.Sequential(
                nn.Conv2d(prev, ch, 3, stride=2, padding=1), nn.LeakyReLU(0.1, inplace=False),
                nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.1, inplace=False),
                nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.1, inplace=False)))
            prev = ch

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.children():
            x = stage(x)
            feats.append(x)
        return feats


def decoder_in_channels(level: int) -> int:
    """Channels entering a level's dense block: cost volume (+ features, upsampled flow and features)."""
    return 81 if level == 6 else 81 + PYRAMID[level - 1] + 2 + 2


class Decoder(nn.Module):
    def __init__(self, level: int):
        super().__init__()
        self.level = level
        cur = decoder_in_channels(level)
        if level < 6:
            prev_total = decoder_in_channels(level + 1) + sum(DENSE)
            self.netUpflow = nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1)
            self.netUpfeat = nn.ConvTranspose2d(prev_total, 2, 4, stride=2, padding=1)
        for k, ch in enumerate(DENSE, start=1):
            self.add_module(f"net{_NAMES[k]}", nn.Sequential(nn.Conv2d(cur, ch, 3, padding=1),
                                                             nn.LeakyReLU(0.1, inplace=False)))
            cur += ch
        self.netSix = nn.Sequential(nn.Conv2d(cur, 2, 3, padding=1))
        self.lrelu = nn.LeakyReLU(0.1, inplace=False)

    def forward(self, f1: Tensor, f2: Tensor, prev: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        if prev is None:
            feat = self.lrelu(correlation(f1, f2))
        else:
            flow_up = self.netUpflow(prev[0])
            feat_up = self.netUpfeat(prev[1])
            volume = self.lrelu(correlation(f1, backwarp(f2, flow_up * BACKWARP_SCALE[self.level])))
            feat = torch.cat([volume, f1, flow_up, feat_up], 1)
        for k in range(1, len(DENSE) + 1):
            feat = torch.cat([getattr(self, f"net{_NAMES[k]}")(feat), feat], 1)
        return self.netSix(feat), feat


class Refiner(nn.Module):
    def __init__(self):
        super().__init__()
        chans = [decoder_in_channels(2) + sum(DENSE), 128, 128, 128, 96, 64, 32]
        dil = [1, 2, 4, 8, 16, 1]
        layers: list[nn.Module] = []
        for k in range(6):
            layers += [nn.Conv2d(chans[k], chans[k + 1], 3, padding=dil[k], dilation=dil[k]),
                       nn.LeakyReLU(0.1, inplace=False)]
        layers.append(nn.Conv2d(32, 2, 3, padding=1))
        self.netMain = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.netMain(x)


class PWCNet(nn.Module):
    """``forward(img1, img2) -> flow`` (B,2,H/4,W/4) from img1 to img2 (H, W multiples of 64)."""

    def __init__(self):
        super().__init__()
        self.netExtractor = Extractor()
        for level in (2, 3, 4, 5, 6):
            self.add_module(f"net{_NAMES[level]}", Decoder(level))
        self.netRefiner = Refiner()

    def forward(self, img1: Tensor, img2: Tensor) -> Tensor:
        p1 = self.netExtractor(img1)
        p2 = self.netExtractor(img2)
        est = None
        for level in (6, 5, 4, 3, 2):
            est = getattr(self, f"net{_NAMES[level]}")(p1[level - 1], p2[level - 1], est)
        flow, feat = est
        return flow + self.netRefiner(feat)

    def full_resolution_flow(self, img1: Tensor, img2: Tensor) -> Tensor:
        """Flow in pixels at the input size: ``20 · resize(forward)`` (the vectors are not rescaled)."""
        flow = self(img1, img2)
        return 20.0 * F.interpolate(flow, size=img1.shape[2:], mode="bilinear", align_corners=False)
