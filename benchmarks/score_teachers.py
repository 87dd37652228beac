"""Score teachers and frame blending on the held-out triplets compress_targets.py scores (whole frames).

    python benchmarks/score_teachers.py --teachers gmfss --clips bikes,carphone --gap 4

Same data as ``compress_targets.py`` with the same ``--clips``/``--gap`` (every validation triplet, no
``--quick``): prints the mean PSNR of each teacher, of frame blending (I0 + I1)/2, the margin, and the
seconds per frame on this machine (one process, ``--threads``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teachers", default="gmfss", help="comma list of compress_targets.py's teacher keys")
    p.add_argument("--clips", default=None, help="comma list of sample clips (default: all installed)")
    p.add_argument("--gap", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from compress_targets import LABELS, load_teacher
    from compresskit_vfi.data import sample_dataset
    from train_teacher import mean_psnr

    val = sample_dataset("triplet", "val", size=None, gap=args.gap,
                         clips=args.clips.split(",") if args.clips else None)
    blend = mean_psnr(None, val)
    print(f"{len(val)} held-out triplets of {tuple(val[0][0].shape)}; frame blending {blend:.2f} dB")
    for name in args.teachers.split(","):
        model = load_teacher(name)
        params = sum(p.numel() for p in model.parameters())
        start = time.perf_counter()
        with torch.no_grad():
            score = mean_psnr(model, val)
        per_frame = (time.perf_counter() - start) / len(val)
        print(f"{LABELS[name]}: {params:,} params, {score:.2f} dB ({score - blend:+.2f} vs blending), "
              f"{per_frame:.2f} s/frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
