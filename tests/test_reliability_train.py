"""Issue 24, item 3: a finite loss with a NaN gradient never poisons a checkpoint.

The loss ``sqrt(s * Σ (y - t)²)`` is finite for every batch, but for the batch with ``s = 0`` its gradient
is ``0 · ∞ = NaN`` (d sqrt(u)/du is infinite at 0): that is the "finite loss, NaN gradient" case, built by
hand. Before the fix, Adam turned the weights into NaN, the next checkpoint saved them, the error named
that file as "the last good checkpoint", and every resume failed even with the data fixed.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compresskit.config import TrainConfig
from compresskit.training import checkpoint as ckpt
from compresskit.training.loop import train

BAD_BATCH = 3


def _data(bad: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(6):
        x, t = torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)
        out.append((x, t, torch.tensor(0.0 if bad and i == BAD_BATCH else 1.0)))
    return out


def _loss(y: torch.Tensor, batch: tuple) -> torch.Tensor:
    return torch.sqrt(batch[2] * ((y - batch[1]) ** 2).sum())


def _cfg() -> TrainConfig:
    return TrainConfig(steps=6, lr=1e-2, optimizer="adam", checkpoint_every=1, keep_last=10, progress=False)


def _finite(path) -> bool:
    state = ckpt.load_checkpoint(path)
    return not ckpt.nonfinite_tensors(state["model"]) and not ckpt.nonfinite_tensors(state["optimizer"])


def test_nan_gradient_with_finite_loss_stops_before_the_weights_change(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    with torch.no_grad():
        assert math.isfinite(float(_loss(model(_data(True)[BAD_BATCH][0]), _data(True)[BAD_BATCH])))
    with pytest.raises(FloatingPointError, match="gradient") as info:
        train(model, _data(True), _loss, config=_cfg(), out_dir=tmp_path, inputs_fn=lambda b: (b[0],))
    msg = str(info.value)
    assert "last good checkpoint" in msg and "ckpt-step00000003.pt" in msg
    assert all(torch.isfinite(p).all() for p in model.parameters())
    written = ckpt.list_checkpoints(tmp_path)
    assert written and all(_finite(p) for p in written)
    assert written[-1].name == "ckpt-step00000003.pt"
    # the data fixed, the run resumes from step 3 and finishes with finite weights
    torch.manual_seed(0)
    again = nn.Linear(3, 2)
    result = train(again, _data(False), _loss, config=_cfg(), out_dir=tmp_path, inputs_fn=lambda b: (b[0],))
    assert result.step == 6 and all(torch.isfinite(p).all() for p in again.parameters())


def test_non_finite_state_is_never_written(tmp_path) -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    moments = {"state": {0: {"exp_avg": torch.tensor([1.0, math.inf])}}}
    state = {"model": model.state_dict(), "optimizer": moments}
    with pytest.raises(ckpt.NonFiniteStateError) as info:
        ckpt.save_checkpoint(state, tmp_path, 7, keep_last=3)
    assert info.value.names == ["model.weight", "optimizer.state.0.exp_avg"]
    assert ckpt.list_checkpoints(tmp_path) == []


def test_resume_skips_a_poisoned_checkpoint_of_an_older_version(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    train(model, _data(False)[:2], _loss, config=TrainConfig(steps=2, checkpoint_every=1, progress=False),
          out_dir=tmp_path, inputs_fn=lambda b: (b[0],))
    good = ckpt.latest_checkpoint(tmp_path)
    state = ckpt.load_checkpoint(good)
    state["model"]["weight"][0, 0] = float("nan")
    state["step"] = 3
    torch.save(state, ckpt.checkpoint_path(tmp_path, 3))  # as an older version could write it
    with pytest.warns(UserWarning, match="NaN"):
        assert ckpt.latest_good_checkpoint(tmp_path) == good
