"""Does distillation beat ground-truth training for the same steps? A small real task, several seeds.

Task (a toy frame interpolation on a real photograph, ``skimage.data.astronaut()``): from two crops
shifted ``shift`` pixels left and right, predict the crop in between. The training targets carry sensor
noise (σ = ``noise``) that no model can predict; the test targets are clean and come from image rows the
training crops never touch. The teacher (3 conv layers, 32 wide) is trained on the same noisy ground
truth for ``teacher_steps`` (MSE, Adam); each student (2 conv layers, 8 wide, the same initialisation
and data order for both arms) trains ``student_steps`` with Adamax (lr 3e-3) either on ground truth alone
(Laplacian loss) or with the papers' objective ``0.1·Lap(S, GT) + Lap(S, T)``.
Reported: test PSNR (dB) of both students per seed, mean ± std, and of the teacher.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_vs_gt.py --seeds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compresskit as ck


def make_task(n_train: int = 512, n_test: int = 128, crop: int = 24, shift: int = 2, noise: float = 0.1,
              seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(frame0, frame1, target) crops of the astronaut: training rows [0, 352), test rows [384, 512)."""
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1).float() / 255.0
    g = torch.Generator().manual_seed(seed)

    def crops(n: int, rows: tuple[int, int], noisy: bool) -> TensorDataset:
        ys = torch.randint(rows[0], rows[1] - crop + 1, (n,), generator=g)
        xs = torch.randint(shift, img.shape[2] - crop - shift + 1, (n,), generator=g)
        f0 = torch.stack([img[:, y : y + crop, x - shift : x - shift + crop] for y, x in zip(ys, xs)])
        f1 = torch.stack([img[:, y : y + crop, x + shift : x + shift + crop] for y, x in zip(ys, xs)])
        gt = torch.stack([img[:, y : y + crop, x : x + crop] for y, x in zip(ys, xs)])
        if noisy:
            gt = gt + noise * torch.randn(gt.shape, generator=g)
        return TensorDataset(f0, f1, gt)

    return crops(n_train, (0, 352), True), crops(n_test, (384, 512), False)


class Interpolator(nn.Module):
    """The frames' average plus a correction: ``depth`` 3×3 convolutions over both frames, ReLU between."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = 6
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
            c = width
        layers.append(nn.Conv2d(c, 3, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)  # starts as the plain average of the frames
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
        return 0.5 * (frame0 + frame1) + self.net(torch.cat([frame0, frame1], dim=1))


def psnr(model: nn.Module, test: TensorDataset) -> float:
    """PSNR (dB) on 8-bit quantised outputs against the clean test targets."""
    f0, f1, gt = test.tensors
    model.eval()
    with torch.no_grad():
        out = torch.round(model(f0, f1).clamp(0, 1) * 255) / 255
    mse = float((out - gt).square().mean())
    return 10 * float(np.log10(1.0 / mse))


def laplacian(output, batch):
    return ck.get_loss("laplacian")(output, batch[-1])


def mse(output, batch):
    return nn.functional.mse_loss(output, batch[-1])


def train_teacher(train_set: TensorDataset, steps: int, seed: int = 0, width: int = 32) -> nn.Module:
    """The teacher's own recipe (any will do): 3 layers, ``width`` wide, MSE, Adam 3e-3."""
    torch.manual_seed(seed)
    teacher = Interpolator(width, 3)
    cfg = ck.TrainConfig(steps=steps, optimizer="adam", lr=3e-3, seed=seed, progress=False, scheduler="none")
    ck.train(teacher, DataLoader(train_set, batch_size=8, shuffle=True), mse, config=cfg)
    return teacher


def compare(seed: int, teacher: nn.Module, train_set: TensorDataset, test_set: TensorDataset,
            steps: int, lr: float = 3e-3, cache_dir: Path | None = None) -> tuple[float, float]:
    """(PSNR trained on ground truth, PSNR distilled) for one seed: same init, data order, optimizer
    (Adamax), learning rate and steps; Laplacian loss vs the default 0.1·Lap(S, GT) + Lap(S, T).
    With ``cache_dir`` the teacher's outputs are computed once and cached there (the data is fixed)."""
    torch.manual_seed(1000 + seed)
    gt_student = Interpolator(8, 2)
    kd_student = Interpolator(8, 2)
    kd_student.load_state_dict(gt_student.state_dict())
    loader = DataLoader(train_set, batch_size=8, shuffle=True)
    common = dict(steps=steps, lr=lr, seed=seed, progress=False, scheduler="none")
    ck.train(gt_student, loader, laplacian, config=ck.TrainConfig(**common))
    cache = {"cache_teacher": True, "cache_dir": cache_dir} if cache_dir is not None else {}
    ck.distill(kd_student, teacher, loader, config=ck.DistillConfig(**common, **cache))
    return psnr(gt_student, test_set), psnr(kd_student, test_set)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3, help="the students' Adamax learning rate")
    parser.add_argument("--noise", type=float, default=0.1, help="σ of the noise on the training targets")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    train_set, test_set = make_task(noise=args.noise)
    teacher = train_teacher(train_set, args.teacher_steps)
    with tempfile.TemporaryDirectory() as cache_dir:
        rows = [compare(s, teacher, train_set, test_set, args.student_steps, args.lr, Path(cache_dir))
                for s in range(args.seeds)]
    gt, kd = [r[0] for r in rows], [r[1] for r in rows]
    gain = [b - a for a, b in rows]
    result = {
        "teacher_psnr": psnr(teacher, test_set), "teacher_steps": args.teacher_steps,
        "student_steps": args.student_steps, "seeds": args.seeds, "lr": args.lr, "noise": args.noise,
        "average_psnr": psnr(Interpolator(8, 2), test_set),
        "gt_psnr": gt, "distill_psnr": kd,
        "gt_mean": statistics.mean(gt), "gt_std": statistics.stdev(gt) if len(gt) > 1 else 0.0,
        "distill_mean": statistics.mean(kd), "distill_std": statistics.stdev(kd) if len(kd) > 1 else 0.0,
        "gain_mean": statistics.mean(gain), "gain_std": statistics.stdev(gain) if len(gain) > 1 else 0.0,
        "wins": sum(g > 0 for g in gain),
    }
    table = Table(title=f"student test PSNR (dB) after {args.student_steps} steps")
    for col in ("seed", "ground truth only", "distilled", "gain"):
        table.add_column(col, justify="right")
    for s, (a, b) in enumerate(rows):
        table.add_row(str(s), f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}")
    table.add_row("mean ± std", f"{result['gt_mean']:.3f} ± {result['gt_std']:.3f}",
                  f"{result['distill_mean']:.3f} ± {result['distill_std']:.3f}",
                  f"{result['gain_mean']:+.3f} ± {result['gain_std']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"teacher: {result['teacher_psnr']:.3f} dB after {args.teacher_steps} steps; the frames' "
                  f"average (an untrained student): {result['average_psnr']:.3f} dB; "
                  f"distillation wins {result['wins']}/{args.seeds} seeds")
    if args.json is not None:
        from compresskit.io import atomic_write_json

        atomic_write_json(result, args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
