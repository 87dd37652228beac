"""The main job, end to end, on the embedded sample clips, on frames that move (``make demo``).

1. Take a VFI model that clearly beats frame blending: our FlowVFI (examples/flow_teacher.py), pretrained
   on the sample clips at a temporal gap of 4 frames (examples/assets/flowvfi_gap4_samples.pt, +3.1 dB
   over frame blending on the held-out triplets; examples/assets/README.md).
2. ``ck.compress(model, loader, target="5x params", budget="7min")``: nothing else. The library measures
   its step times, splits the budget between stage I (the units the plan removes driven to zero while the
   model trains) and recovery (distillation from the original), calibrates each stage's learning rate,
   holds out part of the training crops, validates on them and returns the best weights.
3. Evaluate the original, the compressed model and frame blending (I0 + I1) / 2 on the held-out triplets
   (whole frames; PSNR/SSIM, parameters, MACs, CPU latency) and print the loss of the compressed model
   against both the original and blending. Written into ``--out``: the compressed model, report JSON,
   density chart, validation curve, PSNR-vs-parameters plot and a side-by-side PNG.

Every stage checkpoints into ``--out``; run it again and it resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

import compresskit as ck

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # flow_teacher

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
        description="compresskit demo: compress a pretrained VFI model with target= and budget= only.",
        epilog="example: python examples/demo.py --out demo_output   (about 10 minutes on 2 CPU cores)")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (resumable)")
    p.add_argument("--target", default="5x params", help="what compress() must reach, e.g. '5x params', "
                   "'50%% macs', '2x latency'")
    p.add_argument("--budget", default="7min", help="what compress() may spend: '7min', '2000 steps', "
                   "'3 epochs'")
    p.add_argument("--clips", default="bikes,carphone",
                   help="sample clips (the teacher was trained on these two: their frames move)")
    p.add_argument("--gap", type=int, default=4,
                   help="triplets (t, t+2g, t+g): g frames between an input and the target (the "
                   "teacher's: 4)")
    p.add_argument("--crop", type=int, default=128, help="training crop size")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-frames", type=int, default=None, help="decode only this many frames per clip")
    p.add_argument("--val-samples", type=int, default=0, help="held-out triplets scored (0: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.gap < 1:
        p.error(f"--gap: expected an integer >= 1, got {args.gap}")
    return args


TEACHER = HERE / "assets" / "flowvfi_gap4_samples.pt"


def load_pretrained(path: Path = TEACHER) -> tuple[torch.nn.Module, dict]:
    """Our FlowVFI pretrained on the sample clips (fp16 weights in the file) and the file's metadata."""
    from flow_teacher import FlowVFI

    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    model = FlowVFI(tuple(meta["widths"]), refine=int(meta.get("refine", 0)))
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return model.eval(), meta


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


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def compare(small, original, dataset) -> dict[str, float]:
    """Mean L1 of the compressed model's frames against the original's and against frame blending's, and
    against the ground truth (each of the three, for scale), over ``dataset``'s whole frames."""
    sums = {"vs original": 0.0, "vs frame blending": 0.0, "original vs truth": 0.0,
            "compressed vs truth": 0.0, "frame blending vs truth": 0.0}
    with torch.no_grad():
        for i in range(len(dataset)):
            f0, f1, gt = (t.unsqueeze(0) for t in dataset[i])
            s_out, t_out, blend = small(f0, f1).clamp(0, 1), original(f0, f1).clamp(0, 1), (f0 + f1) / 2
            for key, a, b in (("vs original", s_out, t_out), ("vs frame blending", s_out, blend),
                              ("original vs truth", t_out, gt), ("compressed vs truth", s_out, gt),
                              ("frame blending vs truth", blend, gt)):
                sums[key] += l1(a, b)
    return {k: v / len(dataset) for k, v in sums.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    from compresskit_vfi.data import sample_dataset
    from compresskit_vfi.evaluate import evaluate

    console.print(Panel.fit("compresskit demo: FlowVFI → compress(target=..., budget=...) → evaluate",
                            style="bold"))
    if not TEACHER.is_file():
        console.print(f"[red]missing {TEACHER}: the pretrained teacher ships with the repository")
        return 1
    original, meta = load_pretrained()
    n_params = sum(p.numel() for p in original.parameters())
    console.print(f"original: FlowVFI ({n_params:,} parameters) pretrained on the sample clips at gap 4, "
                  f"from {TEACHER.relative_to(TEACHER.parents[2])} (examples/assets/README.md)")
    data = {"max_frames": args.max_frames, "gap": args.gap, "clips": args.clips.split(",")}
    train_set = sample_dataset("triplet", "train", size=args.crop, seed=args.seed, **data)
    val_full = sample_dataset("triplet", "val", size=None, **data)
    n_val = args.val_samples or len(val_full)
    stride = max(1, len(val_full) // n_val)
    val_set = torch.utils.data.Subset(val_full, list(range(0, len(val_full), stride))[:n_val])
    console.print(f"data: {len(train_set)} training triplets ({args.crop}² crops) and {len(val_set)} "
                  f"held-out triplets (whole {tuple(val_full[0][0].shape[-2:])} frames) from {args.clips}; "
                  f"inputs t and t+{2 * args.gap}, target t+{args.gap}")
    g = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               drop_last=True, generator=g)

    # the one call: what to reach and what to spend, nothing else
    result = ck.compress(original, train_loader, target=args.target, budget=args.budget,
                         config={"out_dir": args.out / "compress"})
    small = result.model.eval()
    result.save(args.out / "compressed_model.pt")

    # latency was measured by compress() at the training input size; skip the 480p timing here
    ev = evaluate({"original": original, "compressed": small, "frame blending": FrameBlend()},
                  {"sample-val": val_set}, convention="stmfnet", runtime=False)
    ev.save(args.out)
    side_by_side(val_full[len(val_full) // 2], original, small, args.out / "side_by_side.png")
    losses = compare(small, original, val_set)

    rep = result.report
    table = Table(title=f"compresskit demo: target {args.target!r}, budget {args.budget!r}", show_lines=False)
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
            table.add_row(f"{name.upper()} (held-out)", f"{vals[0]:.3f}", f"{vals[1]:.3f}",
                          f"{vals[1] - vals[0]:+.3f}", f"{vals[2]:.3f}")
    table.add_row("L1 vs ground truth", f"{losses['original vs truth']:.4f}",
                  f"{losses['compressed vs truth']:.4f}", "", f"{losses['frame blending vs truth']:.4f}")
    console.print(table)
    psnr = {m: scores[m].get("psnr") for m in scores}
    console.print(f"compressed vs original: L1 {losses['vs original']:.4f} between their frames, PSNR "
                  f"{psnr['compressed'] - psnr['original']:+.2f} dB; vs frame blending: L1 "
                  f"{losses['vs frame blending']:.4f}, PSNR "
                  f"{psnr['compressed'] - psnr['frame blending']:+.2f} dB "
                  f"(the original: {psnr['original'] - psnr['frame blending']:+.2f} dB)")
    spent = rep.budget.get("spent_s")
    summary = {"target": args.target, "budget": args.budget, "achieved": rep.target,
               "params": [rep.before.params, rep.after.params], "psnr": psnr, "l1": losses,
               "budget_spent_s": spent, "stages_s": rep.budget.get("seconds")}
    from compresskit.io import atomic_write_bytes

    atomic_write_bytes(json.dumps(summary, indent=1).encode(), args.out / "summary.json")
    console.print(f"wrote {args.out}/: compressed_model.pt (rebuild it with ck.load), compress/report.json, "
                  "compress/densities.png, compress/validation.png, side_by_side.png, the evaluation JSON "
                  "and PSNR-vs-parameters PNG")
    console.print(f"finished in {time.perf_counter() - started:.0f} s (compress: {spent or 0:.0f} s of the "
                  f"budget {args.budget})")
    console.print(Panel(RECIPES, title="next", expand=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
