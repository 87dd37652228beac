"""How far the ST-MFNet Mini's Phase I (OBProx-SG, λ 1e-4, lr 1e-3, eps 1e-4) drives the density, with the
published summed Laplacian loss versus a mean-reduced one.

The published λ and lr were tuned with the summed loss (ST-MFNet Mini's ``LaplacianLoss``,
``L1Loss(reduction="sum")``), whose gradients are B·C·H·W (≈ 4·10⁵ at batch 2, 256²) times those of the
mean: with the mean, OBProx-SG barely moves the weights and the density stays near 1. The paper reached
≈ 0.24 after 20 epochs (2 of Prox-SG steps, then orthant steps) from the pretrained ST-MFNet on Vimeo-90K
+ BVI-DVC. This script runs the same optimizer and loss for a few steps on the embedded sample clips (CPU,
no pretrained weights needed) and prints, as it goes, the overall density (nonzeros / size of every trained
weight of ≥ 2 dims) and ``would_zero``: the fraction of the nonzero weights that one orthant step with this
step's gradient would zero (``(w − lr·(g + λ·sign w))·sign w ≤ eps``), the mechanism that lowers the density
after the Prox-SG steps. A run stops at the first non-finite loss::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/stmfnet_phase1_density.py --steps 60 --json density.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from compresskit_stmfnet.models import STMFNet
from compresskit_stmfnet.recipe import MiniRecipeConfig, density_ours, phase1_loss
from compresskit_vfi.data.samples import sample_dataset
from torch.utils.data import DataLoader

import compresskit as ck
from compresskit.sparsify.obproxsg import l1_param_groups


def would_zero(model: torch.nn.Module, lr: float, lam: float, eps: float) -> float:
    """Fraction of the nonzero trained weights (≥ 2 dims) an orthant step with the current gradient zeroes."""
    hit = total = 0
    for p in model.parameters():
        if p.requires_grad and p.dim() >= 2 and p.grad is not None:
            w, sign = p.detach(), p.detach().sign()
            live = sign != 0
            step = w - lr * (p.grad + lam * sign)
            hit += int(((step * sign <= eps) & live).sum())
            total += int(live.sum())
    return hit / max(total, 1)


def run(reduction: str, args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    widths = None if args.full else MiniRecipeConfig(out_dir=".", smoke=True).smoke_widths
    model = STMFNet(widths).train()
    if args.checkpoint:
        ck.load_state_dict_strict(model, args.checkpoint)
    data = sample_dataset("quintuplet", "train", size=args.crop, short_side=args.short_side,
                          clips=args.clips, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    opt = ck.OBProxSG(l1_param_groups(model, args.lam), lr=args.lr, lambda_=args.lam, eps=args.eps,
                      n_prox_steps=args.prox_steps, n_orthant_steps=None)
    loss_fn = phase1_loss(reduction)
    rows, step, start = [], 0, time.perf_counter()
    while step < args.steps:
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(*batch[:4]), batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                row = {"reduction": reduction, "step": step + 1, "loss": value, "diverged": True}
                rows.append(row)
                print(json.dumps(row), flush=True)
                return rows
            loss.backward()
            log = (step + 1) % args.every == 0 or step + 1 == args.steps or step == 0
            zeroable = would_zero(model, args.lr, args.lam, args.eps) if log else None
            opt.step()
            step += 1
            if log:
                row = {"reduction": reduction, "step": step, "loss": value, "would_zero": zeroable,
                       "density": density_ours(model), "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if step == args.steps:
                break
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--prox-steps", type=int, default=10, help="Prox-SG steps, then orthant steps")
    p.add_argument("--every", type=int, default=10, help="print the density every N steps")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--short-side", type=int, default=None, help="downscale frames first (None: original)")
    p.add_argument("--clips", nargs="+", default=["bikes", "bigbuckbunny"])
    p.add_argument("--lam", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eps", type=float, default=1e-4)
    p.add_argument("--reductions", nargs="+", default=["sum", "mean"], choices=["sum", "mean"])
    p.add_argument("--full", action="store_true", help="the full-width ST-MFNet (default: the smoke widths)")
    p.add_argument("--checkpoint", default=None, help="start from these weights (e.g. the official ST-MFNet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every printed row here")
    args = p.parse_args()
    rows = [r for reduction in args.reductions for r in run(reduction, args)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
