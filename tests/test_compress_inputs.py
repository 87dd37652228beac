"""compress() and the modules' train/eval modes, batches of changing spatial size, and reruns at another
input resolution in the same out_dir."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit._modes import copy_modes, eval_mode
from compresskit.config import CompressConfig


class FCN(nn.Module):
    """Fully convolutional: any H×W works."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return x + self.conv3(torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x))))))


def _batches(sizes, n_each: int = 3, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for size in sizes:
        for _ in range(n_each):
            x = torch.rand(batch, 3, size, size, generator=g)
            out.append((x, x.roll(1, dims=-1)))
    return out


def _config(out_dir=None, **kw) -> CompressConfig:
    return CompressConfig(**{**dict(target="2x params", sparsify={"steps": 4}, recover={"steps": 2},
                                    checkpoint_every=2, measure_latency=False, progress=False,
                                    out_dir=out_dir), **kw})


def _l1(output, batch):
    return nn.functional.l1_loss(output, batch[-1])


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_eval_mode_restores_each_submodule():
    model = FCN().train()
    model.bn.eval()  # frozen by the user
    with eval_mode(model):
        assert not any(_modes(model).values())
    assert _modes(model) == {"": True, "conv1": True, "bn": False, "conv2": True, "conv3": True}
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("restored on errors too")
    assert not model.bn.training and model.conv1.training
    other = FCN().eval()
    copy_modes(model, other)
    assert _modes(other) == _modes(model)


def test_compress_keeps_a_frozen_batchnorm_frozen():
    torch.manual_seed(0)
    model = FCN().train()
    model.bn.eval()
    given = _modes(model)
    result = ck.compress(model, _batches([12]), _l1, config=_config(), val_loader=_batches([12], 1, seed=1),
                         metrics={"l1": _l1})
    assert _modes(model) == given  # the user's model, measured and traced in eval, is as it was given
    small = _modes(result.model)
    assert small == given  # same module names: each returned in its namesake's mode
    assert not result.model.bn.training and result.model.conv2.training


def test_batches_of_changing_spatial_size_train_with_batch_shapes_spatial():
    torch.manual_seed(0)
    loader = _batches([12, 16])  # batch 3 is 16×16
    with pytest.raises(ValueError, match="batch"):
        ck.compress(FCN(), loader, _l1, config=_config())
    result = ck.compress(FCN(), loader, _l1, config=_config(batch_shapes="spatial"))
    n_before = sum(p.numel() for p in FCN().parameters())
    assert sum(p.numel() for p in result.model.parameters()) <= 0.5 * n_before
    assert result.model(torch.rand(1, 3, 20, 20)).shape == (1, 3, 20, 20)


def test_a_rerun_at_another_resolution_redoes_the_stages(tmp_path):
    torch.manual_seed(0)
    model = FCN().eval()
    first = ck.compress(model, _batches([12]), _l1, config=_config(tmp_path))
    stamp = (tmp_path / "sparsified.pt").stat().st_mtime_ns
    ck.compress(model, _batches([12]), _l1, config=_config(tmp_path))
    assert (tmp_path / "sparsified.pt").stat().st_mtime_ns == stamp  # same inputs: reused
    again = ck.compress(model, _batches([16]), _l1, config=_config(tmp_path))
    assert (tmp_path / "sparsified.pt").stat().st_mtime_ns != stamp  # 16×16: stage I redone
    # MACs of conv layers: C_out·C_in·9 per output pixel and image (2 images), here of the 16×16 input
    hand = 2 * 16 * 16 * 9 * (3 * 8 + 8 * 8 + 8 * 3)
    assert again.report.before.macs == hand and first.report.before.macs == hand * 12 * 12 // (16 * 16)
    half = ck.compress(model, _batches([12]), _l1, config=_config(tmp_path))
    assert half.report.before.macs == first.report.before.macs


def test_eval_mode_of_roots_sharing_modules_restores_the_first_roots_modes():
    model = FCN()
    shared = nn.Sequential(model.conv1, model.bn)  # a second root over the same modules, in train mode
    model.eval()
    assert shared.training and not model.conv1.training
    with eval_mode(model, shared):
        assert not shared.training and not model.conv1.training
    assert not model.conv1.training and not model.bn.training  # as in ``model``
    assert shared.training
