"""Reproduce CDFI (Ding et al., CVPR 2021) with compresskit: compress AdaCoF, train CDFI, evaluate.

Published settings (see ``compresskit_adacof.recipe``) given local dataset folders:

    python examples/reproduce_cdfi.py --out runs/cdfi \\
        --vimeo /data/vimeo_triplet --middlebury /data/middlebury --ucf101-dvf /data/ucf101_dvf \\
        --adacof-checkpoint adacof_F_5_D_1.pth --vgg-weights vgg16-397923af.pth

Rerunning the same command resumes after an interruption (finished stages are skipped, an interrupted
training stage continues from its last checkpoint). ``--smoke`` runs the same code path on the embedded
sample clips with a few steps per stage (minutes on a CPU). ``--published-plan`` only prints the widths
that ``ck.plan_widths`` gives for the densities published with CDFI, beside the published compressed
AdaCoF. Outputs: ``<out>/table.md`` (paper-style table), ``<out>/summary.json``, per-stage folders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compresskit_adacof.models.adacof import compressed_widths
from compresskit_adacof.recipe import CDFIRecipeConfig, plan_published_widths, published_densities, run
from compresskit_vfi.recipe import add_run_arguments, add_stop_arguments, run_from_args
from rich.console import Console
from rich.table import Table

STAGES = ("sparsify", "shrink", "retrain", "cdfi", "evaluate")


def published_plan_table(console: Console | None = None) -> dict:
    """Print the widths ``ck.plan_widths`` gives for the published densities (both rules) beside the
    published compressed AdaCoF; returns them with the parameter counts."""
    console = console or Console()
    planned = {rule: plan_published_widths(rule=rule) for rule in ("linear", "sqrt")}
    published = compressed_widths()
    table = Table(title="compressed AdaCoF (F=5, d=1): widths planned from the densities published with "
                        "CDFI vs the published widths")
    table.add_column("layer", no_wrap=True)
    table.add_column("published density", justify="right", no_wrap=True)
    for rule in planned:
        table.add_column(f"planned, {rule!r}", justify="right", no_wrap=True)
    table.add_column("published", justify="right", no_wrap=True)
    densities = published_densities()
    for name in published:
        indices = (1,) if name.startswith("Upsample") else (0, 2, 4)
        d = [densities.get(f"get_kernel.module{name}.{i}") for i in indices]
        dens = " ".join(f"{x:.3f}" for x in d) if all(x is not None for x in d) else "-"
        table.add_row(name, dens, *(" ".join(map(str, planned[r][0][name])) for r in planned),
                      " ".join(map(str, published[name])))
    table.add_row("[bold]parameters", "", *(f"{planned[r][1]:,}" for r in planned), "2,452,094")
    console.print(table)
    return {"published": published, **{r: {"widths": w, "params": n} for r, (w, n) in planned.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Reproduce CDFI: compress AdaCoF (stage I), train CDFI "
                                "(stage II), evaluate on Middlebury, UCF101-DVF and Vimeo-90K.")
    add_run_arguments(p, Path("runs/cdfi"), "CDFIRecipeConfig")
    p.add_argument("--vimeo", type=Path, default=None, help="Vimeo-90K triplet root")
    p.add_argument("--middlebury", type=Path, default=None, help="Middlebury root (other-data/, ...)")
    p.add_argument("--ucf101-dvf", type=Path, default=None, help="UCF101-DVF root")
    p.add_argument("--adacof-checkpoint", type=Path, default=None, help="pretrained AdaCoF F=5 d=1 (.pth)")
    p.add_argument("--vgg-weights", type=Path, default=None, help="local ImageNet VGG16 state_dict (.pth)")
    p.add_argument("--lpips", action="store_true", help="also score LPIPS (needs lpips and its weights)")
    add_stop_arguments(p, STAGES)
    p.add_argument("--published-plan", action="store_true",
                   help="only print the widths planned from the published densities")
    p.add_argument("--rule", choices=("linear", "sqrt", "published"), default=None,
                   help="widths of the compressed AdaCoF: planned from stage I's densities by the 'linear' "
                        "rule (default) or the CDFI code's 'sqrt' rule, or the 'published' widths (no rule "
                        "reproduces them)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = p.parse_args(argv)
    console = Console(quiet=args.quiet)
    if args.published_plan:
        published_plan_table(console)
        return 0
    flags = {"vimeo_dir": args.vimeo, "middlebury_dir": args.middlebury, "ucf101_dvf_dir": args.ucf101_dvf,
             "adacof_checkpoint": args.adacof_checkpoint, "vgg_weights": args.vgg_weights,
             "width_rule": args.rule, "lpips": args.lpips or None}
    return run_from_args(args, CDFIRecipeConfig, flags, run, console)


if __name__ == "__main__":
    sys.exit(main())
