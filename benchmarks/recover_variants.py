"""Does recovery improve on stage I? Variants of ``ck.recover`` on the stage-I model of a finished run.

Restores a ``compress_targets.py --recipe budget`` run up to the shrink stage (``ck.compress(...,
stop_after="shrink")`` on the run's folder: nothing is retrained when the fingerprints match), then runs
each recovery variant for ``--steps`` on the same training data and scores it on the benchmark's 28 held-out
gap-4 triplets (whole frames), next to the stage-I model itself:

    R=runs/compress_targets
    python benchmarks/recover_variants.py --teacher flow --run $R/flow/5x-g4-c128-budget-7000steps \\
        --run-budget "7000 steps" --steps "600 steps" --variants defaults,low_lr,no_features,ground_truth
    python benchmarks/recover_variants.py --teacher rife --run $R/rife/5x-g4-c128-budget-600steps \\
        --run-budget "600 steps" --steps "360 steps" --variants defaults,no_features,old_objective,old

Variants: ``defaults`` (the library's recovery), ``low_lr`` (lr 1e-4), ``no_features`` (no feature terms),
``ground_truth`` (no teacher, lr 1e-4), ``old_objective`` (α 0.1, no features, probed lr), ``old`` (α 0.1,
no features, lr 1e-3: the recovery of the old defaults). Results: docs/results.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

VARIANTS = {
    "defaults": ({}, True),
    "low_lr": ({"recover": {"lr": 1e-4}}, True),
    "no_features": ({"recover": {"features": None}}, True),
    "ground_truth": ({"recover": {"lr": 1e-4, "teacher": "none"}}, False),
    "old_objective": ({"recover": {"alpha": 0.1, "features": None}}, True),
    "old": ({"recover": {"lr": 1e-3, "alpha": 0.1, "features": None}}, True),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="flow", help="flow, rife or gmfss (compress_targets.py's keys)")
    p.add_argument("--run", type=Path, required=True, help="a finished compress_targets.py budget run folder")
    p.add_argument("--run-budget", required=True, help="that run's budget, e.g. '7000 steps'")
    p.add_argument("--target", default="5x params")
    p.add_argument("--steps", default="600 steps", help="each variant's recovery budget")
    p.add_argument("--variants", default="defaults,no_features", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
    if not (args.run / "config.json").is_file():
        p.error(f"--run: {args.run} is not a finished compress() run folder (no config.json)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import compress_targets as ct
    from compresskit_vfi.data import sample_dataset
    from train_teacher import mean_psnr

    import compresskit as ck

    data = {"gap": 4, "clips": ["bikes", "carphone"], "max_frames": None}
    train_set = sample_dataset("triplet", "train", size=128, seed=0, **data)
    scored = sample_dataset("triplet", "val", size=None, **data)
    g = torch.Generator().manual_seed(0)  # the benchmark's loader
    loader = torch.utils.data.DataLoader(train_set, batch_size=4, shuffle=True, drop_last=True, generator=g)
    teacher = ct.load_teacher(args.teacher)
    small = ck.compress(teacher, loader, target=args.target, budget=args.run_budget,
                        config={"out_dir": str(args.run)}, stop_after="shrink").model
    before, t_psnr = mean_psnr(small.eval(), scored), mean_psnr(teacher, scored)
    print(f"stage-I model {before:.3f} dB (teacher {t_psnr:.3f})", flush=True)
    for name in args.variants.split(","):
        cfg, with_teacher = VARIANTS[name]
        t0 = time.time()
        out = ck.recover(copy.deepcopy(small), loader, teacher if with_teacher else None, budget=args.steps,
                         config=cfg)
        rec = out.record.get("recover", {})
        best = rec.get("best") or {}
        psnr = mean_psnr(out.model.eval(), scored)
        print(f"{name} {cfg}: {psnr:.3f} dB; lr {rec.get('lr'):.3g}; best step "
              f"{best.get('best_step')} of {rec.get('steps_done')}; {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
