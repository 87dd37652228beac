"""``FlowVFI``: the benchmark's own flow-based interpolation network (our design, trained by
examples/train_teacher.py ``--arch flow`` on the sample clips).

Coarse to fine (the idea of intermediate-flow estimation, Huang et al., ECCV 2022): block k looks at the
frames downscaled by ``scales[k]`` (4, 2, 1), together with both frames warped by the current estimate,
the flows and the blend mask, and adds a residual to the flows to frame 0 and frame 1 (F_t→0, F_t→1, in
pixels of the full frame) and to the mask logit. The interpolated frame is

    I_t = σ(m) · W(I0, F_t→0) + (1 − σ(m)) · W(I1, F_t→1),   W = backward bilinear warping.

Each block computes at 1/4 of its own input resolution (two stride-2 convs) and decodes with one
transposed conv, so the full-resolution block costs as much as a 1/4-resolution conv net. Optionally
(``refine`` > 0 channels) a small U-Net adds a residual to the frame from the inputs, the warped frames,
the flows and the mask (the refinement step of RIFE and of most flow-based interpolators: it repairs
what warping cannot, such as occlusions and brightness changes). Every block's and the refiner's last
layer starts at zero: the untrained network *is* frame blending, training only adds motion, and a
refiner added to a trained network starts as the identity (fine-tuning continues from where it was).
``forward_all`` returns the frame after every block, and after the refiner (deep supervision in
training); ``forward`` the last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_WIDTHS = (96, 64, 48)
SCALES = (4, 2, 1)


def conv_prelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(cout))


def backward_warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``img`` sampled at (x + flow_x, y + flow_y) (pixels), bilinear, border padding; the grid is built
    as RIFE builds it (linspace in [-1, 1], flow / ((size - 1) / 2)), so RIFEFlow shares it exactly."""
    b, _, h, w = img.shape
    ys = torch.linspace(-1.0, 1.0, h, device=img.device, dtype=img.dtype).view(1, h, 1).expand(b, h, w)
    xs = torch.linspace(-1.0, 1.0, w, device=img.device, dtype=img.dtype).view(1, 1, w).expand(b, h, w)
    gx = xs + flow[:, 0] / ((w - 1.0) / 2.0)
    gy = ys + flow[:, 1] / ((h - 1.0) / 2.0)
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=True)


class FlowBlock(nn.Module):
    """Residual (flow, mask) at one scale: encoder (2 stride-2 convs), ``depth`` convs, a transposed conv
    to 1/2 of the block's input size; the result is upsampled to the full frame."""

    def __init__(self, cin: int, width: int, depth: int = 4):
        super().__init__()
        self.encode = nn.Sequential(conv_prelu(cin, width // 2, 2), conv_prelu(width // 2, width, 2))
        self.body = nn.Sequential(*(conv_prelu(width, width) for _ in range(depth)))
        self.head = nn.ConvTranspose2d(width, 5, 4, 2, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, scale: int,
                size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if scale != 1:
            x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        feat = self.encode(x)
        out = self.head(feat + self.body(feat))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        # the head works at 1/(2·scale) of the frame: its flow unit is that many full-frame pixels
        return out[:, :4] * (2.0 * scale), out[:, 4:5]


class Refiner(nn.Module):
    """Residual RGB from (I0, I1, warped I0, warped I1, merged frame, flows, mask) = 20 channels: a two-level
    U-Net at 1/2 and 1/4 resolution (skip by addition), decoded by transposed convs; last layer zero."""

    def __init__(self, width: int):
        super().__init__()
        self.down1 = conv_prelu(20, width, 2)
        self.down2 = conv_prelu(width, 2 * width, 2)
        self.body = nn.Sequential(conv_prelu(2 * width, 2 * width), conv_prelu(2 * width, 2 * width))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.PReLU(width))
        self.up1 = nn.ConvTranspose2d(width, 3, 4, 2, 1)
        nn.init.zeros_(self.up1.weight)
        nn.init.zeros_(self.up1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad = (0, (-w) % 4, 0, (-h) % 4)  # two stride-2 levels: work on a multiple of 4, crop back
        x = F.pad(x, pad, mode="replicate")
        d1 = self.down1(x)
        d2 = self.down2(d1)
        u2 = self.up2(d2 + self.body(d2))
        return self.up1(u2 + d1)[..., :h, :w]


class FlowVFI(nn.Module):
    """Two frames (B, 3, H, W) in [0, 1] → the middle frame (any H, W: each block resizes back to it)."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS, depth: int = 4, refine: int = 0):
        super().__init__()
        if len(widths) != len(SCALES):
            raise ValueError(f"widths: expected {len(SCALES)} block widths, got {widths!r}")
        if refine < 0:
            raise ValueError(f"refine: expected the refiner's width (0 = none), got {refine!r}")
        self.widths = tuple(int(w) for w in widths)
        self.blocks = nn.ModuleList(
            [FlowBlock(6, self.widths[0], depth)]
            + [FlowBlock(6 + 6 + 4 + 1, w, depth) for w in self.widths[1:]])
        self.refine_width = int(refine)
        self.refiner = Refiner(refine) if refine else None

    def forward_all(self, frame0: torch.Tensor, frame1: torch.Tensor) -> list[torch.Tensor]:
        h, w = frame0.shape[-2:]
        outs = []
        flow = mask = warped0 = warped1 = None
        for k, (block, scale) in enumerate(zip(self.blocks, SCALES)):
            if k == 0:
                x = torch.cat([frame0, frame1], 1)
            else:
                x = torch.cat([frame0, frame1, warped0, warped1, flow / scale, mask], 1)
            d_flow, d_mask = block(x, scale, (h, w))
            flow = d_flow if flow is None else flow + d_flow
            mask = d_mask if mask is None else mask + d_mask
            warped0 = backward_warp(frame0, flow[:, :2])
            warped1 = backward_warp(frame1, flow[:, 2:4])
            alpha = torch.sigmoid(mask)
            outs.append(alpha * warped0 + (1 - alpha) * warped1)
        if self.refiner is not None:
            # flows in units of 8 pixels: a fixed scale, the same on training crops and whole frames
            x = torch.cat([frame0, frame1, warped0, warped1, outs[-1], flow / 8.0, mask], 1)
            outs.append(outs[-1] + self.refiner(x))
        return outs

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
        return self.forward_all(frame0, frame1)[-1]
