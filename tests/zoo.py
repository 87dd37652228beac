"""A zoo of small architectures, written here from their papers' block structure, for the graph tests.

Each entry: name -> (factory, example-input factory). Widths and inputs are tiny so the whole zoo traces
and shrinks in seconds on one thread; the structure (residuals, concat, depthwise, grouped, SE, heads,
channels-last norms, pixel shuffle, transposed convs, 3-D convs) is what matters.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(
    cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type | None = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ResNet (He et al. 2016): bottlenecks with projection shortcuts -----------------------------------------
class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, mid, 1)
        self.conv2 = conv_bn(mid, mid, 3, stride)
        self.conv3 = conv_bn(mid, cout, 1, act=None)
        self.down = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + idt)


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32), blocks: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, 3)
        layers, cin = [], 8
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(Bottleneck(cin, w // 4, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# DenseNet (Huang et al. 2017): every layer reads the concat of all before -------------------------------
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.bn2, self.conv2 = (
            nn.BatchNorm2d(2 * growth),
            nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(feats, 1)
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


class DenseNet(nn.Module):
    def __init__(self, growth: int = 6, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block = nn.ModuleList(DenseLayer(8 + i * growth, growth) for i in range(layers))
        c = 8 + layers * growth
        self.trans = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)
        )
        self.head = nn.Linear(c // 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for layer in self.block:
            feats.append(layer(feats))
        x = self.trans(torch.cat(feats, 1))
        return self.head(x.mean((2, 3)))


# MobileNetV3 (Howard et al. 2019): inverted residual, depthwise, SE with hard-sigmoid, hard-swish --------
class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4, gate: type = nn.Hardsigmoid, act: type = nn.ReLU) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.gate = (
            nn.Conv2d(c, max(1, c // r), 1),
            act(),
            nn.Conv2d(max(1, c // r), c, 1),
            gate(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, se: bool, act: type) -> None:
        super().__init__()
        self.expand = conv_bn(cin, exp, 1, act=act)
        self.dw = conv_bn(exp, exp, k, stride, groups=exp, act=act)
        self.se = SqueezeExcite(exp) if se else nn.Identity()
        self.project = conv_bn(exp, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2, act=nn.Hardswish)
        self.blocks = nn.Sequential(
            InvertedResidual(8, 16, 8, 3, 1, True, nn.ReLU),
            InvertedResidual(8, 24, 12, 5, 2, False, nn.Hardswish),
            InvertedResidual(12, 36, 12, 3, 1, True, nn.Hardswish),
        )
        self.head = nn.Sequential(nn.Conv2d(12, 32, 1), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(32, 24), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


# EfficientNet (Tan & Le 2019): MBConv with SiLU and SE, 5x5 depthwise, channel multiplier 2 --------------
class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        exp = cin * expand
        self.expand = conv_bn(cin, exp, 1, act=nn.SiLU) if expand != 1 else nn.Identity()
        self.dw = conv_bn(exp, exp, k, stride, groups=exp, act=nn.SiLU)
        self.se = SqueezeExcite(exp, 4, nn.Sigmoid, nn.SiLU)
        self.project = conv_bn(exp, cout, 1, act=None)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.skip else y


class EfficientNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2, act=nn.SiLU)
        self.mult = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.SiLU())  # depthwise x2
        self.blocks = nn.Sequential(MBConv(16, 8, 1, 3, 1), MBConv(8, 12, 4, 5, 2), MBConv(12, 12, 4, 3, 1))
        self.top = conv_bn(12, 40, 1, act=nn.SiLU)
        self.fc = nn.Linear(40, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.top(self.blocks(self.mult(self.stem(x))))
        return self.fc(x.mean((2, 3)))


# RegNet (Radosavovic et al. 2020): X block with grouped 3x3 conv (group width 4) -------------------------
class XBlock(nn.Module):
    def __init__(self, cin: int, cout: int, group_width: int, stride: int) -> None:
        super().__init__()
        self.a = conv_bn(cin, cout, 1)
        self.b = conv_bn(cout, cout, 3, stride, groups=cout // group_width)
        self.c = conv_bn(cout, cout, 1, act=None)
        self.proj = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.proj is None else self.proj(x)
        return F.relu(self.c(self.b(self.a(x))) + idt)


class RegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        self.stages = nn.Sequential(XBlock(8, 16, 4, 1), XBlock(16, 16, 4, 1), XBlock(16, 24, 4, 2))
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


# ConvNeXt (Liu et al. 2022): depthwise 7x7, channels-last LayerNorm, inverted MLP, layer scale ----------
class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, c: int = 12) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.blocks = nn.Sequential(ConvNeXtBlock(c), ConvNeXtBlock(c))
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.norm(x.mean((-2, -1))))


# ViT (Dosovitskiy et al. 2021) with nn.MultiheadAttention, class token, positional embedding ------------
class EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2, self.mlp = (
            nn.LayerNorm(d),
            nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2, patch: int = 8, image: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, d) * 0.1)
        self.blocks = nn.Sequential(EncoderBlock(d, heads), EncoderBlock(d, heads))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# Attention written with scaled_dot_product_attention: whole heads are prunable ---------------------------
class SDPAttention(nn.Module):
    def __init__(self, d: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.qkv, self.proj = nn.Linear(d, 3 * heads * head_dim), nn.Linear(heads * head_dim, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


class SDPATransformer(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.attn = SDPAttention(d, heads=4, head_dim=4)
        self.ffn = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, d))
        self.out = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h)
        return self.out(h + self.ffn(h))


# ShuffleNetV2 (Ma et al. 2018): chunk in two, channel shuffle by view-transpose-view -------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, act=None), conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.units = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.shuffle = nn.ChannelShuffle(2)
        self.conv = conv_bn(16, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.shuffle(self.units(self.stem(x))))
        return self.fc(x.mean((2, 3)))


# U-Net (Ronneberger et al. 2015): concat skips, ConvTranspose2d up-sampling ----------------------------
def double_conv(cin: int, cout: int, nd: int = 2) -> nn.Sequential:
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if nd == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return nn.Sequential(
        conv(cin, cout, 3, padding=1),
        bn(cout),
        nn.ReLU(),
        conv(cout, cout, 3, padding=1),
        bn(cout),
        nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(self, nd: int = 2, c: int = 8) -> None:
        super().__init__()
        up = nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        self.nd = nd
        self.enc1, self.enc2 = double_conv(3, c, nd), double_conv(c, 2 * c, nd)
        self.mid = double_conv(2 * c, 4 * c, nd)
        self.up2, self.dec2 = up(4 * c, 2 * c, 2, 2), double_conv(4 * c, 2 * c, nd)
        self.up1, self.dec1 = up(2 * c, c, 2, 2), double_conv(2 * c, c, nd)
        self.out = conv(c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.nd == 2 else F.max_pool3d
        e1 = self.enc1(x)
        e2 = self.enc2(pool(e1, 2))
        m = self.mid(pool(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


# Pixel-shuffle super-resolution (ESPCN/EDSR style) with GroupNorm and per-channel PReLU ------------------
class SRBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.norm, self.act = nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(4, c), nn.PReLU(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.norm(self.conv1(x))))


class PixelShuffleSR(nn.Module):
    def __init__(self, c: int = 16, scale: int = 2) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.PReLU(c))
        self.body = nn.Sequential(SRBlock(c), SRBlock(c))
        self.up = nn.Sequential(
            nn.Conv2d(c, c * scale * scale, 3, padding=1), nn.PixelShuffle(scale), nn.PReLU(c)
        )
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tail(self.up(self.body(self.head(x))))
        return y + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


# Classic classifier: conv features flattened into Linear layers ----------------------------------------
class FlattenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 4, 20), nn.ReLU(), nn.Linear(20, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# Two-frame VFI net: pad to a multiple of 32, flow heads feed grid_sample, softmax over blend taps --------
def backwarp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    b, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = torch.stack([xs, ys], -1).unsqueeze(0)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = base + flow.permute(0, 2, 3, 1) * scale
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


class TwoFrameVFI(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(6, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 2 * c, 3, 2, 1), nn.ReLU()
        )
        self.dec = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU())
        self.flow = nn.Conv2d(c, 4, 3, padding=1)
        self.taps = nn.Conv2d(c, 2, 3, padding=1)
        self.refine = nn.Sequential(
            nn.Conv2d(3 + c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 3, 3, padding=1)
        )

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
        h, w = frame0.shape[2:]
        ph, pw = (32 - h % 32) % 32, (32 - w % 32) % 32
        if ph or pw:
            frame0 = F.pad(frame0, [0, pw, 0, ph], mode="reflect")
            frame1 = F.pad(frame1, [0, pw, 0, ph], mode="reflect")
        feat = self.dec(self.enc(torch.cat([frame0, frame1], 1)))
        f0, f1 = self.flow(feat).chunk(2, 1)
        weights = torch.softmax(self.taps(feat), dim=1)
        mix = weights[:, 0:1] * backwarp(frame0, f0) + weights[:, 1:2] * backwarp(frame1, f1)
        out = mix + self.refine(torch.cat([mix, feat], 1))
        return out[:, :, :h, :w]


# Awkward code a tracer meets in the wild -------------------------------------------------------------------
class RoundSTE(torch.autograd.Function):
    """Straight-through rounding (Bengio et al. 2013): round in the forward, identity in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: float) -> torch.Tensor:  # noqa: ANN001
        return torch.round(x / step) * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad, None


class QuantizedActNet(nn.Module):
    """Activations quantised by a custom autograd.Function between two conv blocks."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(3, c), conv_bn(c, 2 * c)
        self.conv3, self.head = conv_bn(2 * c, 2 * c), nn.Conv2d(2 * c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = RoundSTE.apply(self.conv1(x), 0.25)
        return self.head(self.conv3(self.conv2(y)))


class GlobalFilterNet(nn.Module):
    """GFNet's global filter (Rao et al. 2021): rfft2, a learned complex filter per channel, irfft2."""

    def __init__(self, c: int = 8, size: int = 16) -> None:
        super().__init__()
        self.stem, self.mix = conv_bn(3, c, act=nn.GELU), conv_bn(c, c, 1, act=nn.GELU)
        self.filter = nn.Parameter(torch.randn(c, size, size // 2 + 1, 2) * 0.02)
        self.mlp, self.head = conv_bn(c, 2 * c, 1, act=nn.GELU), nn.Conv2d(2 * c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        f = torch.fft.rfft2(y, dim=(2, 3), norm="ortho") * torch.view_as_complex(self.filter)
        y = y + torch.fft.irfft2(f, s=y.shape[2:], dim=(2, 3), norm="ortho")
        return self.head(self.mlp(self.mix(y)))


class NumpyForwardNet(nn.Module):
    """numpy inside forward: a Hann window built from the feature size, and a median read from the data."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(3, c), conv_bn(c, c)
        self.conv3, self.head = conv_bn(c, 2 * c), nn.Conv2d(2 * c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        scale = float(np.median(np.abs(y.detach().cpu().numpy()))) + 1.0  # reads every channel of y
        y = self.conv2(y / scale)
        h, w = y.shape[-2:]
        window = torch.from_numpy(np.outer(np.hanning(h), np.hanning(w))).to(y.dtype)
        return self.head(self.conv3(y * window))


# Patterns of published VFI networks that graphs get wrong (issue 24, item 12), each written small ---------
class SharedEncoderVFI(nn.Module):
    """A feature layer with shared weights run on one frame's features and on features whose channels the
    graph cannot follow (after a spectral filter), and once more a scale down, as pyramid VFI nets share
    their encoder across frames and levels (UPR-Net)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.pre0, self.pre1 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(3, c, 3, padding=1)
        self.shared = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
        f0 = torch.relu(self.pre0(frame0))
        f1 = torch.fft.ifft2(torch.fft.fft2(self.pre1(frame1)) * 0.5).real  # channels not tracked
        g0, g1 = self.shared(f0), self.shared(f1)
        half = self.shared(F.avg_pool2d(f0, 2))
        g0 = g0 + F.interpolate(half, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(self.fuse(torch.cat([g0, g1], 1)))


class TiedConvs(nn.Module):
    """Two convolutions sharing one weight tensor (a recurrent refinement applied twice)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.step1, self.step2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.step2.weight = self.step1.weight  # tied; biases stay separate
        self.mix, self.head = nn.Conv2d(c, c, 1), nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        y = torch.relu(self.step2(torch.relu(self.step1(y))))
        return self.head(torch.relu(self.mix(y)))


class TiedEmbeddingLM(nn.Module):
    """A token embedding tied to the output head (Press & Wolf 2017), a hidden layer between."""

    def __init__(self, vocab: int = 40, d: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mid = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens)
        return self.head(h + self.mid(h))


class VariableWrapNet(nn.Module):
    """Old-style ``torch.autograd.Variable(x)`` around features in the forward (XVFI)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2, self.head = conv_bn(3, c), conv_bn(c, c), nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.autograd.Variable(self.conv1(x))
        return self.head(self.conv2(y))


class InPlaceWriteNet(nn.Module):
    """In-place writes into features: a border zeroed, a spatial band overwritten by another branch, and
    two channels overwritten (that one cannot shrink)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.a, self.b, self.d = conv_bn(3, c), conv_bn(3, c), conv_bn(c, c)
        self.e, self.head = conv_bn(c, c, 1), nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x).clone()  # (autograd needs the ReLU output itself unchanged)
        w = y.shape[-1]
        y[..., :, w - 2 : w] = 0.0
        y[:, :, 1:3] = self.b(x)[:, :, 1:3]
        z = self.d(y).clone()
        z[:, 0:2] = 1.0
        return self.head(self.e(z))


class SizeTensorNet(nn.Module):
    """Flow scaled by ``torch.tensor`` of the frame size, as warping code normalises pixel offsets."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.feat, self.flow = conv_bn(3, c), nn.Conv2d(c, 2, 3, padding=1)
        self.refine = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = torch.tensor([w, h], dtype=x.dtype).view(1, 2, 1, 1)
        return self.refine(backwarp(x, self.flow(self.feat(x)) / size * 4.0))


class ItemBranchNet(nn.Module):
    """A Python branch on ``.item()`` of the input (8-bit frames rescaled), as EMA-VFI-style code does."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.body, self.head = nn.Sequential(conv_bn(3, c), conv_bn(c, c)), nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max().item() > 2.0:
            x = x / 255.0
        return self.head(self.body(x))


class InstanceNormCopyNet(nn.Module):
    """``F.instance_norm`` (style transfer, FILM-like decoders) and a ``copy_`` into a fresh buffer."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.instance_norm(self.conv1(x), weight=self.gamma)
        buf = torch.empty_like(y)
        buf.copy_(torch.relu(y))
        return self.head(torch.relu(self.conv2(buf)))


_GRID_CACHE: dict = {}  # module-level, keyed by shape, as warping helpers keep it


class ShapeCacheNet(nn.Module):
    """Sampling grids cached by input shape, in the module and in a module-level dict."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.feat, self.mid = conv_bn(3, c), conv_bn(c, c, 1)
        self.flow = nn.Conv2d(c, 2, 3, padding=1)
        self.grids: dict = {}

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape[-2:])
        if key not in self.grids:
            h, w = key
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            self.grids[key] = torch.stack([xs, ys], -1).unsqueeze(0)
        return self.grids[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.shape)
        if key not in _GRID_CACHE:
            _GRID_CACHE[key] = torch.zeros_like(x[:, :1])
        off = self.flow(self.mid(self.feat(x))).permute(0, 2, 3, 1) * 0.1
        return F.grid_sample(x, self._grid(x) + off, align_corners=True) + _GRID_CACHE[key]


def _img(h: int = 32, w: int = 32, b: int = 1) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (torch.randn(b, 3, h, w),)


ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple]]] = {
    "resnet_bottleneck": (ResNet, _img()),
    "densenet": (DenseNet, _img(16, 16)),
    "mobilenet_v3": (MobileNetV3, _img()),
    "efficientnet": (EfficientNet, _img()),
    "regnet": (RegNet, _img()),
    "convnext": (ConvNeXt, _img()),
    "vit_mha": (ViT, _img()),
    "sdpa_transformer": (SDPATransformer, lambda: (torch.randn(2, 5, 6),)),
    "shufflenet_v2": (ShuffleNetV2, _img()),
    "unet2d": (lambda: UNet(2), _img(16, 16)),
    "unet3d": (lambda: UNet(3, 4), lambda: (torch.randn(1, 3, 8, 8, 8),)),
    "pixelshuffle_sr": (PixelShuffleSR, _img(12, 12)),
    "flatten_classifier": (FlattenClassifier, _img(16, 16)),
    "two_frame_vfi": (TwoFrameVFI, lambda: (torch.rand(1, 3, 20, 24), torch.rand(1, 3, 20, 24))),
    "custom_function": (QuantizedActNet, _img(12, 12)),
    "fft_global_filter": (GlobalFilterNet, _img(16, 16)),
    "numpy_forward": (NumpyForwardNet, _img(12, 12)),
    # issue 24, item 12: patterns of published VFI networks
    "shared_encoder_vfi": (SharedEncoderVFI, lambda: (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))),
    "tied_convs": (TiedConvs, _img(12, 12)),
    "variable_wrap": (VariableWrapNet, _img(12, 12)),
    "inplace_write": (InPlaceWriteNet, _img(12, 12)),
    "size_tensor": (SizeTensorNet, _img(12, 16)),
    "item_branch": (ItemBranchNet, _img(12, 12)),
    "instance_norm_copy": (InstanceNormCopyNet, _img(12, 12)),
    "shape_cache": (ShapeCacheNet, _img(12, 16)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple]:
    """The model (random weights, non-trivial BN statistics) and example inputs for a zoo entry."""
    torch.manual_seed(seed)
    factory, inputs = ZOO[name]
    model = factory()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.GroupNorm | nn.LayerNorm) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval(), inputs()


__all__ = ["ZOO", "build"]
