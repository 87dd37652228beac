"""``FlowVFI``: the benchmark's own flow-based interpolation network (our design, trained by
examples/train_teacher.py ``--arch flow`` on the sample clips).

Coarse to fine (the idea of intermediate-flow estimation, Huang et al., ECCV 2022): block k looks at the
frames downscaled by ``scales[k]`` (4, 2, 1), together with both frames warped by the current estimate,
the flows and the blend mask, and adds a residual to the flows to frame 0 and frame 1 (F_t→0, F_t→1, in
pixels of the full frame) and to the mask logit. The interpolated frame is

    I_t = σ(m) · W(I0, F_t→0) + (1 − σ(m)) · W(I1, F_t→1),   W = backward bilinear warping.

Each block computes at 1/4 of its own input resolution (two stride-2 convs) and decodes with one
transposed conv, so the full-resolution block costs as much as a 1/4-resolution conv net. Every block's
last conv starts at zero: the untrained network *is* frame blending, and training only adds motion.
``forward_all`` returns the frame after every block (deep supervision in training); ``forward`` the last.
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


class FlowVFI(nn.Module):
    """Two frames (B, 3, H, W) in [0, 1] → the middle frame (any H, W: each block resizes back to it)."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS, depth: int = 4):
        super().__init__()
        if len(widths) != len(SCALES):
            raise ValueError(f"widths: expected {len(SCALES)} block widths, got {widths!r}")
        self.widths = tuple(int(w) for w in widths)
        self.blocks = nn.ModuleList(
            [FlowBlock(6, self.widths[0], depth)]
            + [FlowBlock(6 + 6 + 4 + 1, w, depth) for w in self.widths[1:]])

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
        return outs

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
        return self.forward_all(frame0, frame1)[-1]
