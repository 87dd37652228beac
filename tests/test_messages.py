"""Errors and notes that say what is actually wrong (issue 15, point 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo import build

import compresskit as ck

_QUICK = dict(sparsify={"steps": 0}, recover={"steps": 0}, measure_latency=False, progress=False)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))


def _batches(n: int = 2):
    return [(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)) for _ in range(n)]


def _l2(out, batch):  # noqa: ANN001, ANN202
    return ((out - batch[-1]) ** 2).mean()


def test_a_generator_loader_is_refused_up_front() -> None:
    gen = (b for b in _batches())
    with pytest.raises(TypeError, match=r"train_loader: .*generator.*re-iterable \(a DataLoader or list\)"):
        ck.compress(_net(), gen, config=dict(_QUICK, sparsify={"steps": 2}))
    with pytest.raises(TypeError, match=r"train_loader: .*re-iterable"):
        ck.train(_net(), iter(_batches()), _l2, config=ck.TrainConfig(steps=2, progress=False))
    with pytest.raises(TypeError, match=r"val_loader: .*re-iterable"):
        ck.compress(_net(), _batches(), config=_QUICK, val_loader=(b for b in _batches()))
    # the same batches as a list are fine
    ck.train(_net(), _batches(), _l2, config=ck.TrainConfig(steps=2, progress=False))


def test_an_unknown_distill_loss_fails_without_a_teacher_too() -> None:
    with pytest.raises(ValueError, match=r"config.recover.distill_loss: unknown loss 'l_one'"):
        ck.compress(_net(), _batches(), config=dict(_QUICK, recover={"steps": 0, "distill_loss": "l_one"}))


def test_frozen_groups_and_their_reasons_are_in_the_report_notes() -> None:
    model, inputs = build("fft_global_filter")
    data = [(inputs[0], torch.randn(1, 3, 16, 16))]
    result = ck.compress(model, data, config=_QUICK, stop_after="sparsify")
    frozen = [n for n in result.report.notes if n.startswith("frozen channel group")]
    assert len(frozen) == 1, result.report.notes  # the stem's 8 channels feed rfft2; mix and mlp do not
    assert "8 channels of stem.0" in frozen[0] and "fft_rfft2" in frozen[0]
    assert "graph output" not in frozen[0]
    # a model frozen only at its inputs and outputs gets no such note
    plain = ck.compress(_net(), _batches(), config=_QUICK, stop_after="sparsify")
    assert not [n for n in plain.report.notes if n.startswith("frozen channel group")]
    assert type(result.report).from_dict(result.report.to_dict()).notes == result.report.notes


def test_a_loss_of_the_wrong_signature_fails_before_any_stage(tmp_path):
    """F.l1_loss(output, batch) gets the whole batch (a tuple): refused naming loss_fn while the trace
    stage checks the batches, before any training stage runs (nothing of stage I is written)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 3, 1))
    batches = [(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)) for _ in range(2)]
    with pytest.raises(ValueError, match=r"loss_fn: calling .* on the first batch failed.*batch\[-1\]"):
        ck.compress(model, batches, torch.nn.functional.l1_loss,
                    config=ck.CompressConfig(target="2x params", out_dir=tmp_path / "run"))
    assert not any(p.name.startswith("sparsify") for p in (tmp_path / "run").iterdir())
    with pytest.raises(ValueError, match="loss_fn: expected .* scalar tensor, got a tensor of shape"):
        ck.compress(model, batches, lambda out, b: (out - b[-1]).abs(),
                    config=ck.CompressConfig(target="2x params"))
