"""Compress your own model: a non-VFI example, start to finish, in a few minutes on a CPU.

The task: denoise patches of the photos bundled with scikit-image with a small residual CNN (conv + BN +
ReLU blocks with skip adds, the coupling case that naive pruners get wrong). The script

1. trains the CNN (the "original"),
2. calls ``ck.compress(model, loader, target="3x params", val_loader=..., metrics=...)``: trace →
   sparsify (the units the plan removes go to zero) → plan for the target → shrink → distillation from
   the original,
3. prints the report and shows that ``ck.load`` rebuilds the small model from its file alone.

Run: ``python examples/compress_your_model.py --out runs/denoise``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import compresskit as ck


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class Denoiser(nn.Module):
    """noisy image → clean image, predicted as a residual."""

    def __init__(self, width: int = 48, blocks: int = 4):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return noisy - self.tail(self.blocks(self.head(noisy)))


class NoisyPatches(torch.utils.data.Dataset):
    """(noisy, clean) patches of skimage's colour photos, Gaussian noise σ = ``sigma``."""

    def __init__(self, n: int, size: int = 48, sigma: float = 0.1, seed: int = 0, split: str = "train"):
        from skimage import data

        photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
        # train on the left 3/4 of each photo, validate on the right 1/4
        self.images = []
        for p in photos:
            t = torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1).float() / 255
            cut = t.shape[-1] * 3 // 4
            self.images.append(t[..., :cut] if split == "train" else t[..., cut:])
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            img = self.images[i % len(self.images)]
            y = int(torch.randint(0, img.shape[-2] - size + 1, (1,), generator=g))
            x = int(torch.randint(0, img.shape[-1] - size + 1, (1,), generator=g))
            clean = img[:, y:y + size, x:x + size]
            self.items.append(((clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0, 1), clean))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def psnr(out: torch.Tensor, batch) -> torch.Tensor:
    mse = (out.clamp(0, 1) - batch[-1]).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).mean()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compress a residual denoising CNN trained on skimage photos.",
                                epilog="example: python examples/compress_your_model.py --out runs/denoise")
    p.add_argument("--out", type=Path, default=Path("runs/denoise"))
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--target", default="3x params",
                   help="what to reach: '3x params', '50%% macs', '2x latency' (default: 3x params)")
    p.add_argument("--sparsify-steps", type=int, default=300)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--lambda", dest="lambda_", type=float, default=None,
                   help="expert knob: train stage I with OBProx-SG at this fixed l1 strength λ (each weight "
                        "moves about lr·λ per step towards zero) instead of the progressive default")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the sparsify stage (default 1e-3; with --lambda use SGD sizes, "
                        "e.g. 5e-2)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    train_set, val_set = NoisyPatches(512, seed=0), NoisyPatches(64, seed=1, split="val")
    loader = torch.utils.data.DataLoader(train_set, batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=16)

    model = Denoiser()
    ck.train(model, loader, lambda out, batch: (out - batch[-1]).abs().mean(),
             config=ck.TrainConfig(steps=args.train_steps, lr=2e-3, scheduler="none"),
             out_dir=args.out / "original")
    model.eval()

    sparsify: dict = {"steps": args.sparsify_steps}
    if args.lambda_ is not None:  # the papers' l1 training with a hand-picked λ
        sparsify.update(method="obproxsg", lambda_=args.lambda_, n_prox_steps=args.sparsify_steps // 2)
    if args.lr is not None:
        sparsify["lr"] = args.lr
    recover = {"steps": args.finetune_steps, "distill_loss": "l1"}  # from the original, frozen
    config = ck.CompressConfig(sparsify=sparsify, recover=recover, out_dir=args.out / "compress")
    result = ck.compress(model, loader, target=args.target, val_loader=val_loader, metrics={"psnr": psnr},
                         config=config)
    path = result.save(args.out / "denoiser_small.pt")
    small = ck.load(path)  # from the file alone: no access to the Denoiser object above is needed
    x = val_set[0][0][None]
    assert torch.equal(small.eval()(x), result.model.eval()(x))
    print(f"small model saved to {path}: {result.report.before.params:,} → {result.report.after.params:,} "
          "parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
