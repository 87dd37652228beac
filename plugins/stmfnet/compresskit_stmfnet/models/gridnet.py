"""Multi-input GridNet (Fourure et al., BMVC 2017; the multi-scale synthesis of ST-MFNet).

3 rows (2×, 1×, ½× resolution, grid channels ``grid``) × 4 columns. Every row has its own input, fed by
``lateral_i_0``; columns 0–1 add down blocks (row i → i+1, stride 2), columns 2–3 add up blocks
(row i+1 → i, bilinear ×2), computed bottom-up. The output is ``lateral_final_1`` on the middle row.

    x[i,0] = lat[i,0](in_i) + down[i−1,0](x[i−1,0])          x[i,1] = lat[i,1](x[i,0]) + down[i−1,1](x[i−1,1])
    x[i,2] = lat[i,2](x[i,1]) + up[i,0](x[i+1,2])            x[i,3] = lat[i,3](x[i,2]) + up[i,1](x[i+1,3])

The top row's up-path (``lateral_0_2``, ``lateral_0_3``, ``up_0_0``, ``up_0_1``) can only feed a top-row
output, which ST-MFNet does not use: those blocks are kept for checkpoint compatibility and skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class LateralBlock(nn.Module):
    """``f(x) + skip(x)``, f = PReLU, conv3×3, PReLU, conv3×3; skip a 3×3 conv when widths differ."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.f = nn.Sequential(nn.PReLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
                               nn.PReLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        return self.f(x) + (x if self.conv is None else self.conv(x))


class DownBlock(nn.Module):
    """PReLU, conv3×3 stride 2, PReLU, conv3×3."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.f = nn.Sequential(nn.PReLU(), nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1),
                               nn.PReLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.f(x)


class UpBlock(nn.Module):
    """Bilinear ×2, PReLU, conv3×3, PReLU, conv3×3."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.f = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                               nn.PReLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
                               nn.PReLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.f(x)


class MultiInputGridNet(nn.Module):
    """``forward(in_2x, in_1x, in_half) -> (B, out_ch, H, W)``; inputs of ``in_chs`` channels per row."""

    def __init__(self, in_chs: Sequence[int] = (6, 12, 6), grid: Sequence[int] = (32, 64, 96),
                 out_ch: int = 3):
        super().__init__()
        g = list(grid)
        for i in range(3):
            self.add_module(f"lateral_{i}_0", LateralBlock(in_chs[i], g[i]))
            for j in range(1, 4):
                self.add_module(f"lateral_{i}_{j}", LateralBlock(g[i], g[i]))
        for i in range(2):
            for j in range(2):
                self.add_module(f"down_{i}_{j}", DownBlock(g[i], g[i + 1]))
        for i in range(2):
            for j in range(2):
                self.add_module(f"up_{i}_{j}", UpBlock(g[i + 1], g[i]))
        self.lateral_final_1 = LateralBlock(g[1], out_ch)

    def block(self, name: str) -> nn.Module:
        return getattr(self, name)

    def forward(self, in_2x: Tensor, in_1x: Tensor, in_half: Tensor) -> Tensor:
        b = self.block
        x00 = b("lateral_0_0")(in_2x)
        x10 = b("lateral_1_0")(in_1x) + b("down_0_0")(x00)
        x20 = b("lateral_2_0")(in_half) + b("down_1_0")(x10)
        x01 = b("lateral_0_1")(x00)
        x11 = b("lateral_1_1")(x10) + b("down_0_1")(x01)
        x21 = b("lateral_2_1")(x20) + b("down_1_1")(x11)
        x22 = b("lateral_2_2")(x21)
        x12 = b("lateral_1_2")(x11) + b("up_1_0")(x22)
        x23 = b("lateral_2_3")(x22)
        x13 = b("lateral_1_3")(x12) + b("up_1_1")(x23)
        return self.lateral_final_1(x13)
