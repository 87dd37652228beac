"""ST-MFNet's texture enhancement: a 3-D U-Net over the five frames (I0, I1, Ĩ, I2, I3).

Encoder like R3D-18 (Tran et al., CVPR 2018) with squeeze-excitation gating in every block (as in FLAVR,
Kalluri et al.), time never strided: stem conv (3,7,7) stride (1,2,2); layer1 stride 1, layer2 and layer3
stride (1,2,2), layer4 stride 1. Decoder: conv, up, up, conv, up (transposed (3,4,4) stride (1,2,2)), each
followed by SE gating, BN and LeakyReLU(0.2), with skip concatenation of layer3, layer2, layer1 and the
stem. Time folded into channels (C·T) → 1×1 conv, BN, LeakyReLU → reflect pad 3, 7×7 conv to 3 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import compresskit as ck


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs oneDNN for float32 on the CPU: same maths, same parameters.

    PyTorch's CPU heuristic sends batch-1 3-D convs with B·C·T·H ≤ 20480 (every conv of the Mini's U-Net at
    256², and the widest of ST-MFNet's) to its reference kernel ``slow_conv3d``, about 4× slower here.
    Under a ``TorchFunctionMode`` (MAC counters, tracers) the standard ``conv3d`` runs, so they see it."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (input.device.type == "cpu" and input.dtype == torch.float32 and self.padding_mode == "zeros"
                and torch.backends.mkldnn.is_available() and not isinstance(input, torch.fx.Proxy)
                and not torch._C._is_torch_function_mode_enabled()):
            return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super()._conv_forward(input, weight, bias)


ck.register_leaf(Conv3d)  # traced as one module node; nn.Conv3d's channel rule applies (subclass)


class SEGating(nn.Module):
    """``x · σ(conv1×1×1(mean_thw(x)))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.attn_layer = nn.Sequential(Conv3d(channels, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attn_layer(x.mean(dim=(2, 3, 4), keepdim=True))


class BasicBlock3D(nn.Module):
    """``relu(fg(bn(conv(relu(bn(conv(x)))))) + downsample(x))`` with 3×3×3 convs."""

    def __init__(self, in_ch: int, out_ch: int, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.conv1 = nn.Sequential(Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                                   nn.BatchNorm3d(out_ch), nn.ReLU(inplace=False))
        self.conv2 = nn.Sequential(Conv3d(out_ch, out_ch, 3, padding=1, bias=False),
                                   nn.BatchNorm3d(out_ch))
        self.fg = SEGating(out_ch)
        self.downsample = None
        if in_ch != out_ch or stride != (1, 1, 1):
            self.downsample = nn.Sequential(Conv3d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm3d(out_ch))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fg(self.conv2(self.conv1(x)))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Encoder3D(nn.Module):
    def __init__(self, widths: Sequence[int]):
        super().__init__()
        w = list(widths)
        self.stem = nn.Sequential(Conv3d(3, w[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3),
                                            bias=False),
                                  nn.BatchNorm3d(w[0]), nn.ReLU(inplace=False))
        strides = [(1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 1, 1)]
        ins = [w[0], w[0], w[1], w[2]]
        for k in range(4):
            self.add_module(f"layer{k + 1}", nn.Sequential(BasicBlock3D(ins[k], w[k], strides[k]),
                                                           BasicBlock3D(w[k], w[k])))

    def forward(self, x: Tensor) -> list[Tensor]:
        x0 = self.stem(x)
        x1 = self.layer1(x0)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x0, x1, x2, x3, x4]


class Conv3DBlock(nn.Module):
    """conv3×3×3 (bias), SE gating, BN."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Sequential(Conv3d(in_ch, out_ch, 3, padding=1), SEGating(out_ch),
                                  nn.BatchNorm3d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class UpConv3DBlock(nn.Module):
    """Transposed conv (3,4,4) stride (1,2,2) (bias), SE gating, BN."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.upconv = nn.Sequential(nn.ConvTranspose3d(in_ch, out_ch, (3, 4, 4), stride=(1, 2, 2), padding=1),
                                    SEGating(out_ch), nn.BatchNorm3d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        return self.upconv(x)


class UNet3D(nn.Module):
    """``forward(frames (B,3,T,H,W)) -> residual (B,3,H,W)``; ``widths`` = encoder channels per layer."""

    def __init__(self, widths: Sequence[int] = (32, 64, 96, 128), fuse_ch: int = 32, n_frames: int = 5):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.n_frames = n_frames
        self.encoder = Encoder3D(widths)
        self.decoder = nn.Sequential(
            Conv3DBlock(w3, w2),              # x4 -> d3, cat x3
            UpConv3DBlock(2 * w2, w1),        # -> d2, cat x2
            UpConv3DBlock(2 * w1, w0),        # -> d1, cat x1
            Conv3DBlock(2 * w0, w0),          # -> d0, cat x0
            UpConv3DBlock(2 * w0, w0),        # -> full resolution
        )
        self.lrelu = nn.LeakyReLU(0.2, inplace=False)
        self.feature_fuse = nn.Sequential(nn.Conv2d(w0 * n_frames, fuse_ch, 1, bias=False),
                                          nn.BatchNorm2d(fuse_ch), nn.LeakyReLU(0.2, inplace=False))
        self.outconv = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(fuse_ch, 3, 7))

    def forward(self, frames: Tensor) -> Tensor:
        x0, x1, x2, x3, x4 = self.encoder(frames)
        d = self.lrelu(self.decoder[0](x4))
        d = self.lrelu(self.decoder[1](torch.cat([d, x3], 1)))
        d = self.lrelu(self.decoder[2](torch.cat([d, x2], 1)))
        d = self.lrelu(self.decoder[3](torch.cat([d, x1], 1)))
        d = self.lrelu(self.decoder[4](torch.cat([d, x0], 1)))
        if d.shape[2] != self.n_frames:
            raise ValueError(f"UNet3D: expected {self.n_frames} frames, got {d.shape[2]}")
        d = torch.cat([d[:, :, t] for t in range(self.n_frames)], 1)  # (B, C·T, H, W), channel t·C + c
        return self.outconv(self.feature_fuse(d))
