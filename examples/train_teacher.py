"""Train the benchmark's own VFI teacher on the sample clips and save it under examples/assets/.

The teacher is a quarter-width AdaCoF (F=5, d=1; the published widths × 0.25, 1.38 M parameters) trained
on random crops of the sample clips' training split with the Charbonnier loss and Adamax
(AdaCoF's recipe, Lee et al. CVPR 2020), starting as frame blending (``blend_init_``), a cosine
learning-rate schedule, and a wall-clock budget. Every
``--eval-every`` steps it scores PSNR on the held-out validation triplets (whole frames, the same set
examples/demo.py scores) next to frame blending (I0 + I1) / 2, and keeps the best weights. The file
written holds the weights in fp16, the widths and the measured PSNRs; the PSNR of the fp16 weights is
measured again before saving.

    nice -n 10 python examples/train_teacher.py --out examples/assets/adacof_w025_samples.pt

``--arch flow`` trains the benchmark's FlowVFI instead (examples/flow_teacher.py; AdamW, Charbonnier on
every block's frame; the command that made examples/assets/flowvfi_gap4_samples.pt is in
examples/assets/README.md).

Resumable: the training state is checkpointed to ``--work`` at every evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "examples" / "assets" / "adacof_w025_samples.pt")
    p.add_argument("--work", type=Path, default=Path("runs/train_teacher"), help="checkpoints (resume)")
    p.add_argument("--arch", choices=("adacof", "flow"), default="adacof",
                   help="'adacof': quarter-width AdaCoF (the demo's teacher); 'flow': FlowVFI "
                        "(examples/flow_teacher.py, the benchmark's teacher for moving content)")
    p.add_argument("--width-scale", type=float, default=0.25, help="adacof: the published widths × this")
    p.add_argument("--flow-widths", default="96,64,48", help="flow: the three blocks' widths")
    p.add_argument("--flow-refine", type=int, default=0,
                   help="flow: width of the refining U-Net (0: none); with --init-from a file without one, "
                        "the refiner starts as the identity on top of the loaded flow blocks")
    p.add_argument("--steps", type=int, default=500, help="length of the cosine schedule")
    p.add_argument("--max-minutes", type=float, default=30.0, help="wall-clock budget; best weights kept")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--gap", type=int, default=1,
                   help="triplets (t, t+2g, t+g): frames between an input and the target (1 = adjacent)")
    p.add_argument("--train-gaps", default=None,
                   help="comma list of gaps whose training triplets are mixed (default: --gap alone); the "
                        "held-out score is always at --gap")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of a file this script wrote (fine-tuning; its record is kept "
                        "in the new file's meta under 'init_from')")
    p.add_argument("--short-side", type=int, default=144, help="frames downscaled to this short side")
    p.add_argument("--clips", default=None, help="comma list of sample clips (default: all installed)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-samples", type=int, default=24, help="held-out triplets scored (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init", choices=("blend", "random"), default="blend",
                   help="'blend': the heads start as frame blending (see blend_init_); 'random': PyTorch's")
    p.add_argument("--center-logit", type=float, default=7.0,
                   help="blend init: logit of each kernel's centre tap (7: softmax ≈ 0.98 there; lower lets "
                        "the other taps learn sooner)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="decay of an exponential moving average of the weights (e.g. 0.999; 0: off): the "
                        "average is what is scored and written (torch.optim.swa_utils.AveragedModel)")
    p.add_argument("--keep", choices=("best", "last"), default="best",
                   help="weights written: the best held-out score seen, or the last step's (no selection "
                        "on the scored frames)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def scaled_widths(scale: float) -> dict[str, tuple[int, ...]]:
    """The published AdaCoF widths times ``scale`` (at least 4 channels each)."""
    from compresskit_adacof.models.adacof import dense_widths

    return {k: tuple(max(4, math.ceil(c * scale)) for c in v) for k, v in dense_widths(5).items()}


@torch.no_grad()
def blend_init_(model, center_logit: float = 7.0):
    """Start AdaCoF *as* frame blending: the last conv of every head gets zero weights, the offset
    heads zero bias (α = β = 0), the occlusion head zero bias (V = σ(0) = ½), and the weight heads a
    bias of ``center_logit`` on the centre tap (softmax ≈ 0.98 there). The output is then ≈ (I0 + I1) / 2
    and training only has to add what blending misses (the same idea as zero-initialised residual
    branches); from a random start, a few hundred CPU steps do not even reach blending."""
    from compresskit_adacof.models.adacof import HEADS

    f2 = model.kernel_size ** 2
    for name in HEADS:
        conv = getattr(model.get_kernel, f"module{name}")[7]
        conv.weight.zero_()
        conv.bias.zero_()
        if name.startswith("Weight"):
            conv.bias[f2 // 2] = center_logit
    return model


def val_subset(val_full, n: int):
    """``n`` validation triplets spread evenly over the whole validation split (the demo's choice)."""
    n = n or len(val_full)
    stride = max(1, len(val_full) // n)
    return torch.utils.data.Subset(val_full, list(range(0, len(val_full), stride))[:n])


@torch.no_grad()
def mean_psnr(model, dataset) -> float:
    """Mean PSNR (8-bit, ``compresskit_vfi.metrics.psnr``) of ``model(f0, f1)`` over ``dataset``'s triplets,
    in eval mode (each module's mode restored after); ``model=None`` scores frame blending (f0 + f1) / 2."""
    from compresskit_vfi.metrics import psnr

    modes = {} if model is None else {m: m.training for m in model.modules()}
    if model is not None:
        model.eval()
    try:
        vals = []
        for i in range(len(dataset)):
            f0, f1, gt = (t.unsqueeze(0) for t in dataset[i])
            out = (f0 + f1) / 2 if model is None else model(f0, f1)
            vals.append(float(psnr(out.clamp(0, 1), gt)))
    finally:
        for m, training in modes.items():
            m.training = training
    return sum(vals) / len(vals)


def parse_gaps(text: str) -> list[int]:
    """``"3,4,5"`` → ``[3, 4, 5]``; each gap an integer >= 1."""
    try:
        gaps = [int(g) for g in text.split(",")]
    except ValueError:
        raise SystemExit(f"--train-gaps: expected a comma list of integers, got {text!r}") from None
    if min(gaps) < 1:
        raise SystemExit(f"--train-gaps: expected integers >= 1, got {text!r}")
    return gaps


def load_init(model, path: Path, arch: str) -> dict:
    """Load the weights of a file :func:`main` wrote into ``model`` (strictly: same architecture and
    widths) and return that file's meta without its curve, so the new file records where it started."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    want = "flowvfi" if arch == "flow" else "adacof"
    if meta.get("model", "adacof") != want:
        raise SystemExit(f"--init-from: {path} holds a {meta.get('model')!r} model, "
                         f"--arch {arch} wants {want!r}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    fits = f"--init-from: {path} does not fit the model built from the arguments (widths?)"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape differs
        raise SystemExit(f"{fits}: {e}") from None
    # a FlowVFI refiner may be new, all of it (it starts as the identity); every other weight must be there
    refiner = {k for k in model.state_dict() if k.startswith("refiner.")}
    if unexpected or set(missing) not in (set(), refiner):
        raise SystemExit(f"{fits}: missing keys {sorted(set(missing))[:5]}, unexpected {unexpected[:5]}")
    return {"file": path.name, **{k: v for k, v in meta.items() if k != "history"}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gap < 1:
        raise SystemExit(f"--gap: expected an integer >= 1, got {args.gap}")
    train_gaps = parse_gaps(args.train_gaps) if args.train_gaps else [args.gap]
    if not 0.0 <= args.ema < 1.0:
        raise SystemExit(f"--ema: expected a decay in [0, 1), got {args.ema}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from compresskit_vfi.data import sample_dataset

    import compresskit as ck
    from compresskit.losses import CharbonnierLoss

    if args.arch == "adacof":
        widths = scaled_widths(args.width_scale)
        model = ck.create_model("adacof", widths=widths)
        if args.init == "blend":
            blend_init_(model, args.center_logit)
        opt = torch.optim.Adamax(model.parameters(), lr=args.lr)
        label = f"AdaCoF ×{args.width_scale}"
    else:
        from flow_teacher import FlowVFI  # FlowVFI starts as frame blending by construction

        widths = tuple(int(w) for w in args.flow_widths.split(","))
        model = FlowVFI(widths, refine=args.flow_refine)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
        label = f"FlowVFI {widths}" + (f" + refiner {args.flow_refine}" if args.flow_refine else "")
    init_meta = None
    if args.init_from is not None:
        init_meta = load_init(model, args.init_from, args.arch)
        label += f" from {args.init_from.name}"
    data = {"gap": args.gap, "short_side": args.short_side,
            "clips": args.clips.split(",") if args.clips else None}
    train_set = torch.utils.data.ConcatDataset(
        [sample_dataset("triplet", "train", size=args.crop, seed=args.seed + i, **{**data, "gap": g})
         for i, g in enumerate(train_gaps)])
    val_set = val_subset(sample_dataset("triplet", "val", size=None, **data), args.val_samples)
    blend = mean_psnr(None, val_set)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
           if args.ema else None)
    scored = ema.module if ema is not None else model  # what is evaluated and written
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    loss_fn = CharbonnierLoss(eps=1e-3)
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = args.work / "state.pt"
    step, best, best_state, history, spent = 0, -1.0, None, [], 0.0
    if ckpt.is_file():
        s = torch.load(ckpt, weights_only=False)
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        sched.load_state_dict(s["sched"])
        if ema is not None:
            if s.get("ema") is None:
                raise SystemExit(f"--ema: {ckpt} was written without a weight average; resume without "
                                 "--ema or use a new --work")
            ema.load_state_dict(s["ema"])
        step, best, best_state = s["step"], s["best"], s["best_state"]
        history, spent = s["history"], s["spent"]
        print(f"resumed at step {step} (best {best:.3f} dB)", flush=True)
    print(f"teacher: {label}, {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"{len(train_set)} training triplets, {len(val_set)} held-out; blending {blend:.3f} dB", flush=True)
    started = time.perf_counter() - spent
    done = False
    while not done:
        for batch in loader:
            model.train()
            if args.arch == "flow":  # deep supervision: every frame, weighted 1, 1/2, 1/4, ... from the end
                outs = model.forward_all(batch[0], batch[1])
                loss = sum(0.5 ** (len(outs) - 1 - i) * loss_fn(o, batch[2]) for i, o in enumerate(outs))
            else:
                loss = loss_fn(model(batch[0], batch[1]), batch[2])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            elapsed = time.perf_counter() - started
            done = step >= args.steps or elapsed > args.max_minutes * 60
            if step % args.eval_every == 0 or done:
                p = mean_psnr(scored, val_set)
                history.append({"step": step, "psnr": p, "minutes": elapsed / 60,
                                "loss": float(loss.detach())})
                if p > best or args.keep == "last":
                    best, best_state = p, {k: v.detach().clone() for k, v in scored.state_dict().items()}
                print(f"step {step}: loss {float(loss.detach()):.4f}, held-out PSNR {p:.3f} dB "
                      f"(blending {blend:.3f}, "
                      f"{p - blend:+.2f} dB), {elapsed / 60:.1f} min", flush=True)
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step, "best": best, "best_state": best_state, "history": history,
                            "spent": elapsed, "ema": ema.state_dict() if ema is not None else None}, ckpt)
            if done:
                break
    # the file keeps fp16 weights: check the PSNR survives the cast
    half = {k: v.half() if v.is_floating_point() else v for k, v in best_state.items()}
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    model.eval()
    p16 = mean_psnr(model, val_set)
    arch_meta = ({"model": "adacof", "kernel_size": 5, "dilation": 1, "width_scale": args.width_scale,
                  "widths": {k: list(v) for k, v in widths.items()}} if args.arch == "adacof"
                 else {"model": "flowvfi", "widths": list(widths), "refine": args.flow_refine})
    meta = {**arch_meta, "gap": args.gap, "train_gaps": train_gaps, "init_from": init_meta, "ema": args.ema,
            "short_side": args.short_side, "clips": args.clips, "held_out_psnr": p16, "blend_psnr": blend,
            "steps": step, "minutes": history[-1]["minutes"], "history": history,
            "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import io

    from compresskit.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"state_dict": half, "meta": meta}, buf)
    atomic_write_bytes(buf.getvalue(), args.out)
    print(json.dumps({k: meta[k] for k in ("held_out_psnr", "blend_psnr", "steps", "minutes")}), flush=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
