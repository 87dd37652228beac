"""Plain progress lines when stdout is not a terminal: stage, step/total, loss, density, elapsed, ETA."""

from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.config import TrainConfig
from compresskit.sparsify.progress import DensityProgress
from compresskit.training.progress import ProgressLines


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lines_at_a_steady_interval_with_hand_computed_eta() -> None:
    clock, out = FakeClock(), io.StringIO()  # StringIO.isatty() is False: a log, not a terminal
    lines = ProgressLines(200, stage="sparsify", every=30, stream=out, clock=clock)
    lines.start(0)
    for step in range(1, 201):
        clock.t += 1.0  # one step per second
        lines.update(step, loss=0.5 / step, fields={"density": lambda: 0.625})
    lines.close(200, 0.0025, {"density": 0.5})
    text = out.getvalue().splitlines()
    assert len(text) == 2 + 200 // 30  # start, every 30 s (steps 30, 60, ..., 180), done
    assert re.search(r"\[sparsify\] start: 200 steps$", text[0])
    # at step 60: 60 s elapsed, 140 steps left at 1 step/s -> ETA 2m20s
    assert re.search(r"\[sparsify\] step 60/200 \(30%\) \| loss 0\.008333 \| density 0\.625 \| "
                     r"elapsed 1m00s \| ETA 2m20s$", text[2])
    done = r"done: step 200/200 \(100%\) \| loss 0\.0025 \| density 0\.5 \| elapsed 3m20s$"
    assert re.search(done, text[-1])


def test_nothing_on_a_terminal_but_the_log_file_keeps_the_lines(tmp_path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock, out = FakeClock(), Tty()
    lines = ProgressLines(10, every=1, stream=out, clock=clock, log_path=tmp_path / "log.txt")
    lines.start()
    clock.t += 2
    lines.update(5, 1.0)
    lines.close(10, 0.5)
    assert out.getvalue() == ""
    logged = (tmp_path / "log.txt").read_text().splitlines()
    assert len(logged) == 3 and "step 5/10 (50%) | loss 1 | elapsed 2s | ETA 2s" in logged[1]


def test_bad_interval() -> None:
    with pytest.raises(ValueError, match="every: expected a number of seconds > 0"):
        ProgressLines(10, every=0)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_training_prints_progress_lines_to_a_captured_stream(capsys, tmp_path) -> None:
    torch.manual_seed(0)
    batches = [(torch.randn(8, 4), torch.randn(8, 4)) for _ in range(3)]
    cfg = TrainConfig(steps=6, device="cpu", scheduler="none", progress_every=1e-9)

    def mse(out: torch.Tensor, batch: tuple) -> torch.Tensor:
        return (out - batch[-1]).pow(2).mean()

    model = Tiny()
    ck.train(model, batches, mse, config=cfg, optimizer=lambda p: ck.OBProxSG(p, lr=1e-2, lambda_=1e-3),
             out_dir=tmp_path, stage="sparsify", callbacks=[DensityProgress()])  # the sparsifier's field
    printed = [line for line in capsys.readouterr().out.splitlines() if "[sparsify]" in line]
    assert re.search(r"\[sparsify\] start: 6 steps$", printed[0])
    steps = [line for line in printed if " step " in line and "done" not in line]
    assert len(steps) == 6  # every step, the interval being tiny
    assert re.search(r"\[sparsify\] step 3/6 \(50%\) \| loss [0-9.e-]+ \| density [0-9.]+ \| elapsed \d+s \| "
                     r"ETA \d+s$", steps[2])
    assert "done: step 6/6 (100%)" in printed[-1]
    assert (tmp_path / "log.txt").read_text().splitlines() == printed


def test_a_failing_run_says_where_it_stopped(capsys) -> None:
    cfg = TrainConfig(steps=3, device="cpu", scheduler="none", progress_every=1e-9)
    batches = [(torch.randn(2, 4), torch.randn(2, 4)), (torch.randn(2, 4), torch.full((2, 4), float("nan")))]

    def mse(out: torch.Tensor, batch: tuple) -> torch.Tensor:
        return (out - batch[-1]).pow(2).mean()

    with pytest.raises(FloatingPointError):
        ck.train(Tiny(), batches, mse, config=cfg)
    assert re.search(r"\[train\] stopped at step 1/3 \(33%\): NonFiniteLossError", capsys.readouterr().out)


def test_compress_logs_each_training_stage(capsys) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    batches = [(torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)) for _ in range(2)]
    cfg = ck.CompressConfig(target="2x params", sparsify={"steps": 3}, recover={"steps": 2},
                            measure_latency=False, progress=True)

    def mse(out: torch.Tensor, batch: tuple) -> torch.Tensor:
        return (out - batch[-1]).pow(2).mean()

    ck.compress(net, batches, mse, config=cfg)
    out = capsys.readouterr().out
    assert re.search(r"\[sparsify\] start: 3 steps", out)
    assert re.search(r"\[sparsify\] done: step 3/3 \(100%\) \| loss [0-9.e-]+ \| density [0-9.]+ \|", out)
    assert re.search(r"\[(distill|fine-tune)\] done: step 2/2", out)
