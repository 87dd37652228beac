"""The main job, end to end, on the embedded sample clips (``make demo``).

1. Take a VFI model: by default our quarter-width AdaCoF pretrained on the sample clips
   (examples/assets/adacof_w025_samples.pt, made by examples/train_teacher.py); ``--checkpoint`` takes
   the official AdaCoF instead, and without either a quarter-width AdaCoF is first trained here.
2. ``ck.compress(model, loader, target="4x params", teacher=model, val_loader=...)``: the channels the
   target-driven plan removes are driven to zero while the model trains (``--lambda X`` runs OBProx-SG
   with that λ instead), the per-layer density table, widths planned to meet the target, shrink, and
   distillation from the original (output + automatically paired features, cosine learning rate,
   early stopping on held-out crops).
3. Evaluate the original, the compressed model and frame blending (I0 + I1) / 2 (PSNR/SSIM, parameters,
   MACs, CPU latency) and write into ``--out``: the compressed model, report JSON, density chart,
   PSNR-vs-parameters plot and a side-by-side PNG.

Every stage checkpoints into ``--out``; run it again and it resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

import compresskit as ck

RECIPES = """\
Full-scale recipes (datasets on local disk, one GPU or several with torchrun):

  python examples/reproduce_cdfi.py --adacof-checkpoint adacof.pth --vimeo DIR --middlebury DIR \\
      --ucf101-dvf DIR --out runs/cdfi
  torchrun --nproc_per_node 4 examples/reproduce_stmfnet_mini.py --stmfnet-checkpoint stmfnet.pth \\
      --vimeo-septuplet DIR --bvidvc DIR --ucf101 DIR --davis DIR --snufilm DIR --out runs/mini

Both take --smoke (the same code path on the sample clips, minutes on a CPU) and --help.
Guides: docs/reproduce_cdfi.md, docs/reproduce_stmfnet_mini.md; your own model: docs/compress_your_model.md"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="compresskit demo: sparsify, plan, shrink and distill a VFI model on the sample clips.",
        epilog="example: python examples/demo.py --out demo_output   (about 5 minutes on 2 CPU cores)")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (resumable)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="official AdaCoF (F=5, d=1) checkpoint (default: the pretrained teacher in "
                        "examples/assets/; with --train-teacher a quarter-width AdaCoF is trained here)")
    p.add_argument("--train-teacher", action="store_true",
                   help="train the original here (--teacher-steps) instead of loading examples/assets/")
    p.add_argument("--target", default="4x params", help="what compress() must reach, e.g. '4x params', "
                   "'50%% macs', '2x latency'")
    p.add_argument("--width-scale", type=float, default=0.25, help="width of the trained original (0-1]")
    p.add_argument("--crop", type=int, default=64, help="training crop size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--teacher-steps", type=int, default=400, help="training steps of the original")
    p.add_argument("--sparsify-steps", type=int, default=200, help="stage I training steps")
    p.add_argument("--finetune-steps", type=int, default=300, help="distillation steps of the small model")
    p.add_argument("--lambda", dest="lambda_", default="auto",
                   help="l1 strength λ: a number runs OBProx-SG with it (expert knob); default 'auto': "
                        "progressive zeroing of the units the plan removes")
    p.add_argument("--sparsify-lr", type=float, default=1e-2,
                   help="stage I learning rate (with --lambda: OBProx-SG's step size; each weight moves "
                        "~lr·λ per step)")
    p.add_argument("--gap", type=int, default=1,
                   help="triplets (t, t+2g, t+g) of the sample clips: g frames between an input and the "
                        "target (the pretrained teacher was trained and scored at 1, adjacent frames, which "
                        "barely move at a 144-pixel short side; at 4 blending is 6.7 dB worse, RIFE v3.8 3.0 "
                        "dB better)")
    p.add_argument("--max-frames", type=int, default=None, help="decode only this many frames per clip")
    p.add_argument("--val-samples", type=int, default=48, help="validation triplets scored")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.lambda_ != "auto":
        try:
            args.lambda_ = float(args.lambda_)
        except ValueError:
            p.error(f"--lambda: expected a number or 'auto', got {args.lambda_!r}")
    if args.gap < 1:
        p.error(f"--gap: expected an integer >= 1, got {args.gap}")
    if not 0 < args.width_scale <= 1:
        p.error(f"--width-scale: expected a number in (0, 1], got {args.width_scale}")
    return args


def scaled_widths(scale: float) -> dict[str, tuple[int, ...]]:
    """The published AdaCoF widths times ``scale`` (residual-coupled widths stay equal)."""
    from compresskit_adacof.models.adacof import dense_widths

    return {k: tuple(max(4, math.ceil(c * scale)) for c in v) for k, v in dense_widths(5).items()}


TEACHER = Path(__file__).resolve().parent / "assets" / "adacof_w025_samples.pt"


def load_pretrained(path: Path = TEACHER) -> tuple[torch.nn.Module, dict]:
    """Our AdaCoF pretrained on the sample clips (fp16 weights in the file) and the file's metadata."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    model = ck.create_model("adacof", widths={k: tuple(v) for k, v in meta["widths"].items()})
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return model.eval(), meta


def build_original(args: argparse.Namespace, train_loader, console: Console) -> torch.nn.Module:
    if args.checkpoint is not None:
        console.print(f"original: official AdaCoF from {args.checkpoint}")
        return ck.create_model("adacof", checkpoint=args.checkpoint)
    if not args.train_teacher and TEACHER.is_file():
        model, meta = load_pretrained()
        console.print(f"original: AdaCoF ×{meta['width_scale']} pretrained on the sample clips "
                      f"({meta['steps']} steps, {meta['minutes']:.0f} minutes on a shared CPU; held-out PSNR "
                      f"{meta['held_out_psnr']:.2f} dB vs frame blending {meta['blend_psnr']:.2f} dB), "
                      f"from {TEACHER.relative_to(TEACHER.parents[2])}")
        return model
    model = ck.create_model("adacof", widths=scaled_widths(args.width_scale))
    console.print(f"original: AdaCoF at width ×{args.width_scale}, trained {args.teacher_steps} steps on the "
                  "sample clips (pass --checkpoint for the official weights)")
    from compresskit_vfi.task import default_loss  # Charbonnier(output, batch[-1])

    ck.train(model, train_loader, default_loss,
             config=ck.TrainConfig(steps=args.teacher_steps, lr=1e-3, scheduler="none", seed=args.seed,
                                   checkpoint_every=100),
             out_dir=args.out / "original", resume=True)
    return model.eval()


class FrameBlend(torch.nn.Module):
    """The baseline every interpolator must beat: (I0 + I1) / 2."""

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
        return (frame0 + frame1) / 2


def side_by_side(sample, teacher, student, path: Path) -> None:
    """inputs | ground truth | original | compressed, one row, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compresskit.io import atomic_write_bytes

    f0, f1, gt = (t.unsqueeze(0) for t in sample)
    with torch.no_grad():
        outs = [teacher(f0, f1), student(f0, f1)]
    from compresskit_vfi.metrics import psnr

    panels = [("frame 0", f0), ("frame 1", f1), ("ground truth", gt),
              (f"original {float(psnr(outs[0], gt)):.2f} dB", outs[0]),
              (f"compressed {float(psnr(outs[1], gt)):.2f} dB", outs[1])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img[0].clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    from compresskit_vfi.data import sample_dataset
    from compresskit_vfi.evaluate import evaluate
    from compresskit_vfi.metrics import psnr

    console.print(Panel.fit("compresskit demo: AdaCoF → sparsify → plan → shrink → distill → evaluate",
                            style="bold"))
    data = {"max_frames": args.max_frames, "gap": args.gap}
    train_set = sample_dataset("triplet", "train", size=args.crop, seed=args.seed, **data)
    val_full = sample_dataset("triplet", "val", size=None, **data)
    stride = max(1, len(val_full) // args.val_samples)
    val_set = torch.utils.data.Subset(val_full, list(range(0, len(val_full), stride))[: args.val_samples])
    console.print(f"data: {len(train_set)} training triplets ({args.crop}² crops), {len(val_set)} validation "
                  f"triplets (whole {tuple(val_full[0][0].shape[-2:])} frames; inputs t and "
                  f"t+{2 * args.gap}, target t+{args.gap}) from the sample clips "
                  f"{', '.join(c.name for c in train_set.clips)}")
    g = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               drop_last=True, generator=g)

    original = build_original(args, train_loader, console)

    # early stopping watches held-out crops that are not the scored frames
    scored = set(val_set.indices)
    val_crops = sample_dataset("triplet", "val", size=min(args.crop * 2, 128), **data)
    watch = [i for i in range(len(val_crops)) if i not in scored][:16] or [0]
    watch_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val_crops, watch), batch_size=4)
    result = ck.compress(
        original, train_loader, target=args.target, teacher=original, val_loader=watch_loader,
        metrics={"psnr": lambda out, batch: psnr(out.clamp(0, 1), batch[-1])},
        config=ck.CompressConfig(
            sparsify={"steps": args.sparsify_steps, "lambda_": args.lambda_, "lr": args.sparsify_lr},
            recover={"steps": args.finetune_steps, "lr": 1e-3, "alpha": 0.1, "distill_loss": "laplacian",
                     "features": "auto", "early_stop_patience": 3,
                     "val_every": max(1, args.finetune_steps // 10)},
            out_dir=args.out / "compress", seed=args.seed))
    small = result.model.eval()
    result.save(args.out / "compressed_model.pt")

    # latency was measured by compress() at the training input size; skip the 480p timing here
    ev = evaluate({"original": original, "compressed": small, "frame blending": FrameBlend()},
                  {"sample-val": val_set}, convention="stmfnet", runtime=False)
    ev.save(args.out)
    side_by_side(val_full[len(val_full) // 2], original, small, args.out / "side_by_side.png")

    rep = result.report
    table = Table(title=f"compresskit demo: target {args.target!r}", show_lines=False)
    for col in ("", "original", "compressed", "ratio", "frame blending (baseline)"):
        table.add_column(col, justify="left" if not col else "right")
    for key, label, fmt in (("params", "parameters", "{:,.0f}"), ("macs", "GMACs per batch", "{:.3g}"),
                            ("latency_ms", "CPU latency (ms)", "{:.1f}")):
        b, a = getattr(rep.before, key), getattr(rep.after, key)
        if b is None or a is None:
            continue
        if key == "macs":
            b, a = b / 1e9, a / 1e9
        table.add_row(label, fmt.format(b), fmt.format(a), f"{b / a:.2f}× fewer" if a else "",
                      "0" if key != "latency_ms" else "~0")
    scores = {m: ev.scores[m]["sample-val"] for m in ("original", "compressed", "frame blending")}
    for name in ("psnr", "ssim"):
        vals = [scores[m].get(name) for m in scores]
        if None not in vals:
            table.add_row(f"{name.upper()} (sample-val)", f"{vals[0]:.3f}", f"{vals[1]:.3f}",
                          f"{vals[1] - vals[0]:+.3f}", f"{vals[2]:.3f}")
    summary = {"target": args.target, "achieved": rep.target, "params": [rep.before.params, rep.after.params],
               "psnr": {m: scores[m].get("psnr") for m in scores}}
    from compresskit.io import atomic_write_bytes

    atomic_write_bytes(json.dumps(summary, indent=1).encode(), args.out / "summary.json")
    console.print(table)
    console.print(f"wrote {args.out}/: compressed_model.pt (rebuild it with ck.load), compress/report.json, "
                  "compress/densities.png, side_by_side.png, the evaluation JSON and PSNR-vs-parameters PNG")
    console.print(f"finished in {time.perf_counter() - started:.0f} s")
    console.print(Panel(RECIPES, title="next", expand=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
