"""ST-MFNet's U-shaped multi-scale ResNeXt feature extractor (Danier et al., CVPR 2022).

Each stage runs two ResNeXt bottlenecks (Xie et al., CVPR 2017) side by side, one with a small and one
with a large grouped kernel, each giving half the stage's channels; their concatenation is gated by
squeeze-excitation (Hu et al., CVPR 2018). Encoder stages stride 2; the decoder mirrors them with
transposed convs, each reading the previous decoder output plus the encoder skip of the same width
(published ``UMultiScaleResNext``). Output: ``widths[0]`` channels at H/2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

GROUPS = 32


class ResNeXtBottleneck(nn.Module):
    """1×1 → grouped k×k (stride s, or a stride-2 transposed conv) → 1×1, BN after each, projected residual.

    ``y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + downsample(x))``
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int, stride: int = 1,
                 transposed: bool = False, groups: int = GROUPS):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        if transposed:  # ×2 upsampling: kernel k+1, padding k//2 gives exactly 2H
            self.conv2 = nn.ConvTranspose2d(mid_ch, mid_ch, kernel + 1, stride=2, padding=kernel // 2,
                                            groups=groups, bias=False)
            project = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2, bias=False)
        else:
            self.conv2 = nn.Conv2d(mid_ch, mid_ch, kernel, stride=stride, padding=kernel // 2,
                                   groups=groups, bias=False)
            project = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = nn.Sequential(project, nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.downsample(x))


class SqueezeExcitation(nn.Module):
    """Channel gating ``x · σ(W2 relu(W1 mean_hw(x)))`` with Linear layers, reduction 16."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=False),
                                nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class MultiScaleResNeXtBlock(nn.Module):
    """``SE(cat(ResNeXt_k1(x), ResNeXt_k2(x)))``: two kernel sizes, half the output channels each."""

    def __init__(self, in_ch: int, out_ch: int, kernels: tuple[int, int], stride: int = 1,
                 transposed: bool = False):
        super().__init__()
        if out_ch % 2 or out_ch % GROUPS:
            raise ValueError(f"MultiScaleResNeXtBlock: out_ch must be even and a multiple of {GROUPS} "
                             f"(grouped convs), got {out_ch}")
        half = out_ch // 2
        self.resnext_small = ResNeXtBottleneck(in_ch, out_ch, half, kernels[0], stride, transposed)
        self.resnext_large = ResNeXtBottleneck(in_ch, out_ch, half, kernels[1], stride, transposed)
        self.attention = SqueezeExcitation(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(torch.cat([self.resnext_small(x), self.resnext_large(x)], 1))


class MultiScaleResNeXtUNet(nn.Module):
    """Encoder conv1..4 (stride 2, kernels (3,7),(3,7),(3,5),(3,5)); decoder deconv4 (stride 1), deconv3..1
    (transposed ×2), the skips added to each deconv's input (Danier et al.'s published wiring):

    ``d4 = deconv4(c4)``, ``d3 = deconv3(d4 + c4)``, ``d2 = deconv2(d3 + c3)``, ``d1 = deconv1(d2 + c2)``;
    the output is ``d1`` (``c1`` feeds conv2 only). The adds tie channels c4~d4, c3~d3 and c2~d2."""

    def __init__(self, in_ch: int = 6, widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.conv1 = MultiScaleResNeXtBlock(in_ch, w0, (3, 7), stride=2)
        self.conv2 = MultiScaleResNeXtBlock(w0, w1, (3, 7), stride=2)
        self.conv3 = MultiScaleResNeXtBlock(w1, w2, (3, 5), stride=2)
        self.conv4 = MultiScaleResNeXtBlock(w2, w3, (3, 5), stride=2)
        self.deconv4 = MultiScaleResNeXtBlock(w3, w3, (3, 5), stride=1)
        self.deconv3 = MultiScaleResNeXtBlock(w3, w2, (3, 5), transposed=True)
        self.deconv2 = MultiScaleResNeXtBlock(w2, w1, (3, 7), transposed=True)
        self.deconv1 = MultiScaleResNeXtBlock(w1, w0, (3, 7), transposed=True)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.conv1(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        d4 = self.deconv4(c4)
        d3 = self.deconv3(d4 + c4)
        d2 = self.deconv2(d3 + c3)
        return self.deconv1(d2 + c2)
