"""Reproduce ST-MFNet Mini (Morris et al.) with compresskit: sparsify ST-MFNet, plan, distil, evaluate.

Published settings (see ``compresskit_stmfnet.recipe``) given local dataset folders and the pretrained
ST-MFNet:

    python examples/reproduce_stmfnet_mini.py --out runs/mini --stmfnet-checkpoint stmfnet.pth \\
        --vimeo-septuplet /data/vimeo_septuplet --bvidvc /data/bvidvc \\
        --ucf101 /data/ucf101_qvi --davis /data/davis90 --snufilm /data/snufilm

Several GPUs: ``torchrun --nproc_per_node=4 examples/reproduce_stmfnet_mini.py ...`` (DDP, NCCL; the
training stages shard the data, evaluation and reports run on rank 0). Rerunning the same command
resumes after an interruption: finished stages are skipped, an interrupted training stage continues from
its last checkpoint. ``--smoke`` runs the same code path on the embedded sample clips with a few steps
per stage (minutes on a CPU). Outputs: ``<out>/table.md`` (Table 1 layout), ``<out>/summary.json``,
``<out>/plan/plan.json`` (the compressed architecture) and per-stage folders.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from compresskit_stmfnet.recipe import MiniRecipeConfig, run
from compresskit_vfi.recipe import add_run_arguments, add_stop_arguments, run_from_args
from rich.console import Console

STAGES = ("sparsify", "plan", "distill", "evaluate")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Reproduce ST-MFNet Mini: OBProx-SG on ST-MFNet (Phase I), "
                                "distillation into the student (Phase II), Table 1 evaluation.")
    add_run_arguments(p, Path("runs/stmfnet_mini"), "MiniRecipeConfig")
    p.add_argument("--stmfnet-checkpoint", type=Path, default=None, help="pretrained ST-MFNet (.pth)")
    p.add_argument("--pwcnet-checkpoint", type=Path, default=None, help="PWC-Net 'default' weights (.pth)")
    p.add_argument("--vimeo-septuplet", type=Path, default=None, help="Vimeo-90K septuplet root")
    p.add_argument("--bvidvc", type=Path, default=None, help="BVI-DVC quintuplet strips root")
    p.add_argument("--ucf101", type=Path, default=None, help="UCF101 QVI quintuplets root")
    p.add_argument("--davis", type=Path, default=None, help="DAVIS root")
    p.add_argument("--snufilm", type=Path, default=None, help="SNU-FILM root")
    p.add_argument("--drop-flow", choices=("auto", "always", "never"), default=None,
                   help="drop the flow branch when its density collapses (auto), always or never")
    p.add_argument("--student", choices=("published", "plan", "uniform"), default=None,
                   help="Phase II student: the published Mini (default), compresskit's plan layer by layer, "
                        "or one width per part of that plan")
    p.add_argument("--teacher-mode", choices=("eval", "train"), default=None,
                   help="Phase II teacher in eval mode (default) or train mode (the published script)")
    add_stop_arguments(p, STAGES)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = p.parse_args(argv)
    console = Console(quiet=args.quiet or _rank() != 0)
    flags = {"stmfnet_checkpoint": args.stmfnet_checkpoint, "pwcnet_checkpoint": args.pwcnet_checkpoint,
             "vimeo_septuplet_dir": args.vimeo_septuplet, "bvidvc_dir": args.bvidvc,
             "ucf101_dir": args.ucf101, "davis_dir": args.davis, "snufilm_dir": args.snufilm,
             "drop_flow": args.drop_flow, "student": args.student,
             "teacher_mode": args.teacher_mode}
    return run_from_args(args, MiniRecipeConfig, flags, run, console)


if __name__ == "__main__":
    sys.exit(main())
